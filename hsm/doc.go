// Package hsm does all PKCS#11 work of the appliance: it loads modules,
// finds tokens by label, serial or PKCS#11 URI (RFC 7512), logs in and keeps
// the PIN for re-login, generates and deletes key pairs whose private halves
// never leave the token, stores certificates as token objects, and signs
// digests through a pool of sessions per token.
//
// PKCS#11 URIs and token selectors are parsed by package hsm/pkcs11uri,
// which is pure Go so that cgo-free code (signer/config) shares the
// parser; URI and TokenSelector here are its types under this package's
// names, and its errors come back wrapping ErrInvalidURI or
// ErrInvalidArgument.
//
// A kept PIN that the token refuses is zeroed and never presented again,
// and the token is then logged out (C_Logout), so that no session signs as
// logged in while the token is reported logged out. Logging out presents
// no PIN.
//
// Every PKCS#11 call goes through the small p11 interface, exactly the
// subset of github.com/miekg/pkcs11 the package uses, so that tests can put
// a fault-injecting wrapper in its place.
//
// Recovery follows the appliance's design: on a session error the session
// is dropped and the call retried once on a fresh, logged-in session; on a
// device or library error the module is finalized and initialised again
// (with backoff while it keeps failing), and callers get ErrUnavailable with
// the reason, never a wrong answer.
package hsm
