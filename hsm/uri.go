package hsm

import (
	"errors"

	"github.com/hsmsigner/hsmsigner/hsm/pkcs11uri"
)

// URI is a PKCS#11 URI (RFC 7512) as far as the appliance uses it; package
// pkcs11uri parses and formats it without cgo.
type URI = pkcs11uri.URI

// TokenSelector names a token by label, serial or both; package pkcs11uri
// parses and formats it without cgo.
type TokenSelector = pkcs11uri.TokenSelector

// ParseURI is pkcs11uri.ParseURI with this package's errors: a refused URI
// is an error wrapping ErrInvalidURI (and the *pkcs11uri.Error).
func ParseURI(s string) (URI, error) {
	u, err := pkcs11uri.ParseURI(s)
	return u, uriError(err)
}

// ParseTokenSelector accepts a PKCS#11 URI (`pkcs11:token=…;serial=…`),
// `serial:NNN`, `label:NAME`, or a bare label, as
// pkcs11uri.ParseTokenSelector does. A refused URI is an error wrapping
// ErrInvalidURI, any other refused selector one wrapping
// ErrInvalidArgument (each also wraps the *pkcs11uri.Error).
func ParseTokenSelector(s string) (TokenSelector, error) {
	sel, err := pkcs11uri.ParseTokenSelector(s)
	return sel, uriError(err)
}

// uriError turns an error of package pkcs11uri into one of this package:
// the same words after this package's sentinel.
func uriError(err error) error {
	var pe *pkcs11uri.Error
	if !errors.As(err, &pe) {
		return err
	}
	sentinel := ErrInvalidURI
	if errors.Is(err, pkcs11uri.ErrInvalidSelector) {
		sentinel = ErrInvalidArgument
	}
	return &parseError{sentinel: sentinel, err: pe}
}

// parseError is a *pkcs11uri.Error under one of this package's sentinels.
type parseError struct {
	sentinel error
	err      *pkcs11uri.Error
}

func (e *parseError) Error() string { return e.sentinel.Error() + ": " + e.err.Detail }

func (e *parseError) Unwrap() []error { return []error{e.sentinel, e.err} }
