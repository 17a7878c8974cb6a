package pkcs11uri

import "errors"

var (
	// ErrInvalidURI is wrapped by every error about a PKCS#11 URI,
	// including a URI given as a token selector.
	ErrInvalidURI = errors.New("invalid PKCS#11 URI")
	// ErrInvalidSelector is wrapped by the errors about a token selector
	// that is not a URI: an empty one, or "serial:" or "label:" with
	// nothing after it.
	ErrInvalidSelector = errors.New("invalid token selector")
)

// Problem says what is wrong with a URI or selector, for a caller that
// words its errors its own way (as signer/config does).
type Problem int

// The problems an *Error reports.
const (
	// ProblemScheme: the URI does not start with "pkcs11:".
	ProblemScheme Problem = iota + 1
	// ProblemNotNameValue: a path attribute is not name=value; Attr is
	// the attribute as written.
	ProblemNotNameValue
	// ProblemRepeated: the attribute Attr is given twice.
	ProblemRepeated
	// ProblemEncoding: the value of Attr has bad percent-encoding.
	ProblemEncoding
	// ProblemUnknownAttribute: Attr is not a path attribute RFC 7512
	// defines.
	ProblemUnknownAttribute
	// ProblemObjectType: the value of type= is not an object type.
	ProblemObjectType
	// ProblemPINValue: the URI gives a pin-value.
	ProblemPINValue
	// ProblemNoToken: the selector names no token (a URI without token=
	// or serial=, "serial:" or "label:" without a value).
	ProblemNoToken
	// ProblemEmpty: the selector is empty.
	ProblemEmpty
)

// Error is a URI or a token selector that is refused. It wraps Err, which
// is ErrInvalidURI or ErrInvalidSelector.
type Error struct {
	Err     error   // ErrInvalidURI or ErrInvalidSelector
	Problem Problem // what is wrong
	// Attr is the attribute concerned, when there is one: its name, or
	// for ProblemNotNameValue the path attribute as written. It is never
	// taken from a query value.
	Attr string
	// Query says that Attr is a query attribute.
	Query bool
	// Detail says what is wrong, in words; it never holds the URI's
	// query.
	Detail string
}

// Error returns Err's text and the detail: "invalid PKCS#11 URI:
// attribute "token" given twice".
func (e *Error) Error() string { return e.Err.Error() + ": " + e.Detail }

// Unwrap returns Err.
func (e *Error) Unwrap() error { return e.Err }
