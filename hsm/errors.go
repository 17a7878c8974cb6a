package hsm

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/miekg/pkcs11"
)

// Errors that callers test with errors.Is. Every error this package returns
// for one of these conditions wraps the matching value; where a PKCS#11
// return value caused it, the pkcs11.Error is wrapped too.
var (
	// ErrModuleLoad means the PKCS#11 library could not be loaded or
	// initialised.
	ErrModuleLoad = errors.New("hsm: PKCS#11 module cannot be loaded")
	// ErrTokenNotFound means no present token matches the selector.
	ErrTokenNotFound = errors.New("hsm: token not found")
	// ErrAmbiguousToken means more than one present token matches.
	ErrAmbiguousToken = errors.New("hsm: more than one token matches")
	// ErrPINIncorrect means the token refused the PIN.
	ErrPINIncorrect = errors.New("hsm: PIN incorrect")
	// ErrPINLocked means the token has locked the PIN after too many
	// failures; only the security officer can unlock it.
	ErrPINLocked = errors.New("hsm: PIN locked")
	// ErrPINInvalid means the PIN does not meet the token's rules (length,
	// characters).
	ErrPINInvalid = errors.New("hsm: PIN not acceptable to the token")
	// ErrPINExpired means the token says the user PIN has expired or must
	// be changed before the token can be used (CKR_PIN_EXPIRED).
	ErrPINExpired = errors.New("hsm: PIN expired; it must be changed")
	// ErrAlreadyLoggedIn means a login or PIN change was refused without
	// trying the PIN on the token, because the token is logged in with
	// another PIN (or by another part of the process): log out first.
	ErrAlreadyLoggedIn = errors.New("hsm: token already logged in")
	// ErrNotLoggedIn means the operation needs a logged-in user and the
	// token has none and no PIN is kept to log in again.
	ErrNotLoggedIn = errors.New("hsm: token not logged in")
	// ErrKeyNotFound means no private key matches the id, label or URI.
	ErrKeyNotFound = errors.New("hsm: key not found")
	// ErrKeyExists means a key with that label already exists on the token.
	ErrKeyExists = errors.New("hsm: key label already in use")
	// ErrCertNotFound means no certificate object matches.
	ErrCertNotFound = errors.New("hsm: certificate not found")
	// ErrDigestLength means the digest length does not fit the algorithm's
	// hash.
	ErrDigestLength = errors.New("hsm: digest length does not match the algorithm")
	// ErrAlgorithm means the algorithm is unknown or does not fit the key.
	ErrAlgorithm = errors.New("hsm: algorithm not usable")
	// ErrKeyAttributes means a private key's attributes, as read from the
	// token, do not make it a key that signs and does nothing else (see
	// Key.AttributeProblem): it is neither registered nor used to sign.
	ErrKeyAttributes = errors.New("hsm: key attributes do not allow its use")
	// ErrBadSignature means a signature made by the token did not verify
	// with the key's public key and was withheld.
	ErrBadSignature = errors.New("hsm: signature made by the token failed verification")
	// ErrSessionWait means no session became free before the context's
	// deadline or the pool's maximum wait.
	ErrSessionWait = errors.New("hsm: no free session")
	// ErrUnavailable means the module or token is gone or being recovered;
	// the call can be tried again later.
	ErrUnavailable = errors.New("hsm: unavailable")
	// ErrClosed means the module or token was closed.
	ErrClosed = errors.New("hsm: closed")
	// ErrInvalidURI means a PKCS#11 URI could not be parsed.
	ErrInvalidURI = errors.New("hsm: invalid PKCS#11 URI")
	// ErrInvalidArgument means a caller-supplied value is unacceptable.
	ErrInvalidArgument = errors.New("hsm: invalid argument")
)

// errorClass says how the pool reacts to a PKCS#11 return value.
type errorClass int

const (
	// classNone: the error is the answer; no recovery.
	classNone errorClass = iota
	// classSession: drop the session, retry once on a new one.
	classSession
	// classLogin: log in again with the kept PIN, retry once.
	classLogin
	// classHandle: a cached object handle is stale; look it up again.
	classHandle
	// classModule: finalize and initialise the module again, retry once.
	classModule
)

// classify maps an error from a PKCS#11 call to its recovery class.
func classify(err error) errorClass {
	var pe pkcs11.Error
	if !errors.As(err, &pe) {
		return classNone
	}
	switch pe {
	case pkcs11.CKR_SESSION_HANDLE_INVALID, pkcs11.CKR_SESSION_CLOSED,
		pkcs11.CKR_OPERATION_ACTIVE, pkcs11.CKR_GENERAL_ERROR:
		// CKR_GENERAL_ERROR is the answer of one call, not proof that the
		// library is gone: a new session and one retry recover from it,
		// while finalizing the module would fail every other call.
		return classSession
	case pkcs11.CKR_USER_NOT_LOGGED_IN:
		return classLogin
	case pkcs11.CKR_KEY_HANDLE_INVALID, pkcs11.CKR_OBJECT_HANDLE_INVALID:
		return classHandle
	case pkcs11.CKR_DEVICE_ERROR, pkcs11.CKR_DEVICE_REMOVED, pkcs11.CKR_DEVICE_MEMORY,
		pkcs11.CKR_TOKEN_NOT_PRESENT, pkcs11.CKR_TOKEN_NOT_RECOGNIZED,
		pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED, pkcs11.CKR_SLOT_ID_INVALID:
		return classModule
	}
	return classNone
}

// isRV reports whether err wraps one of the PKCS#11 return values rvs.
func isRV(err error, rvs ...uint) bool {
	var pe pkcs11.Error
	return errors.As(err, &pe) && slices.Contains(rvs, uint(pe))
}

// p11err wraps a PKCS#11 error with the call that returned it.
func p11err(call string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", call, err)
}

// PINStatus is what the token reports about its user PIN.
type PINStatus struct {
	CountLow    bool // at least one wrong PIN since the last good login
	FinalTry    bool // one more wrong PIN locks it
	Locked      bool // locked; the security officer must reset it
	ToBeChanged bool // the token asks for the PIN to be changed
}

// String describes the status in words an officer understands.
func (s PINStatus) String() string {
	switch {
	case s.Locked:
		return "PIN locked"
	case s.FinalTry:
		return "final try: one more wrong PIN locks the token"
	case s.ToBeChanged:
		return "the token asks for the PIN to be changed"
	case s.CountLow:
		return "tries left are low: a wrong PIN was entered since the last login"
	default:
		return "no wrong PIN since the last login"
	}
}

func pinStatusFromFlags(flags uint) PINStatus {
	return PINStatus{
		CountLow:    flags&pkcs11.CKF_USER_PIN_COUNT_LOW != 0,
		FinalTry:    flags&pkcs11.CKF_USER_PIN_FINAL_TRY != 0,
		Locked:      flags&pkcs11.CKF_USER_PIN_LOCKED != 0,
		ToBeChanged: flags&pkcs11.CKF_USER_PIN_TO_BE_CHANGED != 0,
	}
}

// PINError is returned when the token refuses a PIN. It wraps
// ErrPINIncorrect, ErrPINLocked, ErrPINInvalid or ErrPINExpired, and the
// PKCS#11 error, and carries the PIN status the token reported after the
// attempt. It never holds the PIN.
type PINError struct {
	Token  string
	Status PINStatus
	kind   error // one of the ErrPIN* sentinels
	cause  error // the PKCS#11 call's error
}

// Error implements error: what the token refused, what it reports now
// (PKCS#11 gives flags, never a count of tries left), then the PKCS#11
// call and code for the HSM's own documentation.
func (e *PINError) Error() string {
	what := strings.TrimPrefix(e.kind.Error(), "hsm: ")
	return fmt.Sprintf("token %q: %s; the token reports %s (PKCS#11 tokens report only whether tries are low, final or used up, never how many are left) [%v]", e.Token, what, e.Status, e.cause)
}

// Unwrap returns the sentinel and the PKCS#11 error.
func (e *PINError) Unwrap() []error { return []error{e.kind, e.cause} }
