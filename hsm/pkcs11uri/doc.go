// Package pkcs11uri parses PKCS#11 URIs (RFC 7512) and the token selectors
// of signerd's configuration ("pkcs11:token=…;serial=…", "serial:…",
// "label:…" or a bare label), and formats both back.
//
// It is pure Go and imports no cgo, so that code that must build without
// cgo (signer/config checks the selectors of a configuration file) parses
// with the same parser as the hsm package, which uses these types under
// its own names (hsm.URI, hsm.TokenSelector) and wraps these errors in its
// own (hsm.ErrInvalidURI, hsm.ErrInvalidArgument).
//
// PINs never travel in a URI: pin-value is refused, and no error holds a
// URI's query, so that a PIN given there cannot reach a log.
package pkcs11uri
