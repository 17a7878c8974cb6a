package hsm

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/miekg/pkcs11"
)

// PINDrop reports that the package dropped the PIN it kept for a token and
// now reports the token logged out: the token refused the kept PIN (changed
// elsewhere, locked, expired, no longer acceptable), or a PIN change ended
// without an answer, so that the token may hold either PIN. The dropped PIN
// is never tried again. PINDrop never holds a PIN.
type PINDrop struct {
	Token  string // the token's label
	Serial string // the token's serial number
	// Reason says what happened, for an officer; Token.LoggedOutReason
	// returns it until the next login.
	Reason string
	// Err is the token's answer: a *PINError wrapping ErrPINIncorrect,
	// ErrPINLocked, ErrPINExpired or ErrPINInvalid, or the PKCS#11 error
	// that interrupted a PIN change.
	Err error
}

// WithPINDropHandler sets a function called once for each PINDrop, so that
// the caller can audit it. It is called with no lock of the package held,
// before the call that met the refusal returns, one drop at a time. It must
// not use the token's sessions (sign, list keys, log in or out).
func WithPINDropHandler(fn func(PINDrop)) TokenOption {
	return func(o *tokenOptions) { o.onPINDrop = fn }
}

// ensureLogin logs the token in on s when a PIN is kept and the session
// shows no logged-in user.
func (t *Token) ensureLogin(s *session) error {
	t.loginMu.Lock()
	defer t.loginMu.Unlock()
	if t.pin == nil {
		return nil
	}
	return t.loginKeptLocked(s)
}

// relogin logs in again with the kept PIN after the token reported
// USER_NOT_LOGGED_IN.
func (t *Token) relogin(s *session) error {
	t.loginMu.Lock()
	defer t.loginMu.Unlock()
	if t.pin == nil {
		return t.notLoggedInLocked()
	}
	return t.loginKeptLocked(s)
}

// notLoggedInLocked is the error for a call that needs a login when no
// PIN is kept; it carries the reason when the package dropped the PIN.
// The caller holds loginMu.
func (t *Token) notLoggedInLocked() error {
	if t.loggedOutReason != "" {
		return fmt.Errorf("%w: token %q: %s", ErrNotLoggedIn, t.label, t.loggedOutReason)
	}
	return fmt.Errorf("%w: token %q (log in first)", ErrNotLoggedIn, t.label)
}

// loginKeptLocked logs the token in on s with the kept PIN unless s shows
// a logged-in user. A kept PIN that the token refuses is dropped at once
// (see dropKeptPINLocked) and the error wraps ErrNotLoggedIn and the
// *PINError. The caller holds loginMu and a kept PIN.
func (t *Token) loginKeptLocked(s *session) error {
	si, err := t.m.api.GetSessionInfo(s.h)
	if err != nil {
		return p11err("C_GetSessionInfo", err)
	}
	if si.State == pkcs11.CKS_RO_USER_FUNCTIONS || si.State == pkcs11.CKS_RW_USER_FUNCTIONS {
		return nil
	}
	err = t.userLogin(s, t.pin)
	if err != nil && !isRV(err, pkcs11.CKR_USER_ALREADY_LOGGED_IN) {
		err = p11err("C_Login with the kept PIN", err)
		if !keptPINRefused(err) {
			return err
		}
		perr := t.pinError(err)
		t.dropKeptPINLocked(s, fmt.Sprintf("the token refused the kept PIN when logging in again at %s (%s); the daemon dropped it and will not try it again: an officer must log in",
			t.m.opts.now().UTC().Format(time.RFC3339), pinErrorSummary(perr)), perr)
		return fmt.Errorf("%w: token %q: the kept PIN was refused and dropped; an officer must log in: %w", ErrNotLoggedIn, t.label, perr)
	}
	t.logins.Add(1)
	t.forgetKeys() // handles of private objects change across logins
	t.m.log.Info("token logged in again", "token", t.label)
	return nil
}

// keptPINRefused reports whether err is the token's refusal of the PIN
// itself: wrong, locked, expired, or no longer acceptable. Such a PIN must
// never be presented again.
func keptPINRefused(err error) bool {
	for _, rv := range []uint{pkcs11.CKR_PIN_INCORRECT, pkcs11.CKR_PIN_LOCKED, pkcs11.CKR_PIN_EXPIRED,
		pkcs11.CKR_PIN_LEN_RANGE, pkcs11.CKR_PIN_INVALID} {
		if isRV(err, rv) {
			return true
		}
	}
	return false
}

// pinErrorSummary is the sentinel and PIN status of a *PINError, or the
// error's text for any other error.
func pinErrorSummary(err error) string {
	var pe *PINError
	if !errors.As(err, &pe) {
		return err.Error()
	}
	for _, sentinel := range []error{ErrPINLocked, ErrPINExpired, ErrPINInvalid, ErrPINIncorrect} {
		if errors.Is(err, sentinel) {
			return strings.TrimPrefix(sentinel.Error(), "hsm: ") + "; " + pe.Status.String()
		}
	}
	return err.Error()
}

// dropKeptPINLocked zeroes and forgets the kept PIN, records why, forgets
// the cached key handles, logs the token out (with C_Logout on s, or on a
// session opened for it when s fails) and queues a PINDrop for the
// handler. PKCS#11 keeps one login per application and token, so sessions
// logged in before would otherwise go on signing while the token is
// reported logged out; and no session of the pool from before the drop is
// handed out again (see acquire), for modules that keep logins per session.
// The caller holds loginMu and the module read lock.
func (t *Token) dropKeptPINLocked(s *session, reason string, cause error) {
	forgetPIN(t.pin)
	t.pin = nil
	t.loggedOutReason = reason
	t.forgetKeys()
	t.pool.epoch.Add(1)
	if err := t.logoutAnyLocked(s); err != nil {
		t.m.log.Warn("could not log the token out after dropping its PIN", "token", t.label, "error", err.Error())
	}
	t.m.log.Warn("kept PIN dropped; the token is logged out until an officer logs in", "token", t.label, "reason", reason)
	if t.opts.onPINDrop == nil {
		return
	}
	t.dropsMu.Lock()
	t.pendingDrops = append(t.pendingDrops, PINDrop{Token: t.label, Serial: t.serial, Reason: reason, Err: cause})
	t.dropsMu.Unlock()
	t.dropsPending.Add(1)
}

// deliverPINDrops hands the queued PIN drops to the handler. It is called,
// with no lock held, before every call that can drop a PIN returns; when
// it returns, every drop queued before it was called has been delivered.
func (t *Token) deliverPINDrops() {
	if t.dropsPending.Load() == 0 {
		return
	}
	t.deliverMu.Lock()
	defer t.deliverMu.Unlock()
	t.dropsMu.Lock()
	drops := t.pendingDrops
	t.pendingDrops = nil
	t.dropsMu.Unlock()
	for _, d := range drops {
		t.opts.onPINDrop(d)
	}
	t.dropsPending.Add(-int64(len(drops)))
}

// userLogin makes one C_Login as the user with pin, counted, marking the
// login state as changing meanwhile. The caller holds loginMu.
func (t *Token) userLogin(s *session, pin []byte) error {
	t.loginAttempts.Add(1)
	t.loginSeq.Add(1)
	defer t.loginSeq.Add(1)
	return t.m.api.Login(s.h, pkcs11.CKU_USER, pinString(pin))
}

// userLogout makes one C_Logout, marking the login state as changing
// meanwhile. It presents no PIN. The caller holds loginMu.
func (t *Token) userLogout(s *session) error {
	t.loginSeq.Add(1)
	defer t.loginSeq.Add(1)
	return t.m.api.Logout(s.h)
}

// sameAsKeptLocked compares pin with the kept PIN in constant time. The
// caller holds loginMu and a kept PIN.
func (t *Token) sameAsKeptLocked(pin []byte) bool {
	return subtle.ConstantTimeCompare(t.pin, pin) == 1
}

// Login logs the user in with pin and keeps a copy of it for re-login
// after an HSM restart. The caller may zero pin afterwards. A wrong PIN
// returns a *PINError wrapping ErrPINIncorrect; a locked one wraps
// ErrPINLocked; an expired one ErrPINExpired.
//
// Login never logs the token out to test a PIN. While a PIN is kept, a
// pin equal to it (compared in constant time) succeeds without touching
// the token, and any other is refused with ErrAlreadyLoggedIn without
// being tried; a token that reports a user logged in while no PIN is kept
// is refused likewise. C_Login is made at most once per call.
func (t *Token) Login(ctx context.Context, pin []byte) error {
	if len(pin) == 0 {
		return fmt.Errorf("%w: empty PIN", ErrInvalidArgument)
	}
	t.loginMu.Lock()
	if t.pin != nil {
		err := t.checkKeptLocked(pin)
		t.loginMu.Unlock()
		return err
	}
	t.loginMu.Unlock()
	return t.pinOp(ctx, false, func(s *session) (error, error) {
		t.loginMu.Lock()
		defer t.loginMu.Unlock()
		if t.pin != nil {
			return t.checkKeptLocked(pin), nil
		}
		err := t.userLogin(s, pin)
		switch {
		case isRV(err, pkcs11.CKR_USER_ALREADY_LOGGED_IN):
			return fmt.Errorf("%w: token %q reports a user logged in but this daemon keeps no PIN for it; log out first (the PIN was not tried)", ErrAlreadyLoggedIn, t.label), nil
		case keptPINRefused(err):
			perr := t.pinError(p11err("C_Login", err))
			if errors.Is(perr, ErrPINExpired) {
				// Some tokens leave the user logged in for C_SetPIN only:
				// leave nothing logged in that no PIN is kept for.
				_ = t.userLogout(s)
			}
			return perr, err
		case classify(err) == classSession || classify(err) == classModule:
			return fmt.Errorf("%w: token %q: %w (the login was not retried; try again)", ErrUnavailable, t.label, p11err("C_Login", err)), err
		case err != nil:
			return p11err("C_Login", err), err
		}
		forgetPIN(t.pin)
		t.pin = keepPIN(pin)
		t.loggedOutReason = ""
		t.forgetKeys() // handles of private objects change across logins
		return nil, nil
	})
}

// checkKeptLocked answers a login while a PIN is kept, without touching
// the token. The caller holds loginMu and a kept PIN.
func (t *Token) checkKeptLocked(pin []byte) error {
	if t.sameAsKeptLocked(pin) {
		return nil
	}
	return fmt.Errorf("%w: token %q is logged in with another PIN; log out first (the PIN was not tried)", ErrAlreadyLoggedIn, t.label)
}

// pinError turns a login failure into a *PINError with the PIN status the
// token reports now, or returns err unchanged when it is not about the PIN.
func (t *Token) pinError(err error) error {
	var sentinel error
	switch {
	case isRV(err, pkcs11.CKR_PIN_INCORRECT):
		sentinel = ErrPINIncorrect
	case isRV(err, pkcs11.CKR_PIN_LOCKED):
		sentinel = ErrPINLocked
	case isRV(err, pkcs11.CKR_PIN_EXPIRED):
		sentinel = ErrPINExpired
	case isRV(err, pkcs11.CKR_PIN_LEN_RANGE), isRV(err, pkcs11.CKR_PIN_INVALID), isRV(err, pkcs11.CKR_PIN_TOO_WEAK):
		sentinel = ErrPINInvalid
	default:
		return err
	}
	pe := &PINError{Token: t.label, kind: sentinel, cause: err}
	t.slotMu.Lock()
	slot := t.slot
	t.slotMu.Unlock()
	if ti, ierr := t.m.api.GetTokenInfo(slot); ierr == nil {
		pe.Status = pinStatusFromFlags(ti.Flags)
	}
	switch sentinel {
	case ErrPINLocked:
		pe.Status.Locked = true
	case ErrPINExpired:
		pe.Status.ToBeChanged = true
	}
	return pe
}

// explainPINExpired wraps ErrPINExpired around an operation's
// CKR_PIN_EXPIRED, which some tokens answer to every call until the PIN
// is changed.
func (t *Token) explainPINExpired(err error) error {
	if !isRV(err, pkcs11.CKR_PIN_EXPIRED) || errors.Is(err, ErrPINExpired) {
		return err
	}
	return fmt.Errorf("%w: token %q: change the user PIN (signerctl token change-pin): %w", ErrPINExpired, t.label, err)
}

// Logout logs the user out, zeroes the kept PIN and forgets cached key
// handles. Signing then fails with ErrNotLoggedIn until the next Login.
//
// Logout never presents a PIN: the session it logs out on is taken from
// the pool or opened without a login (a new session would otherwise be
// logged in with the kept PIN first, which costs a try when the PIN was
// changed elsewhere). When C_Logout fails on that session, it is made on
// a session opened for the purpose.
func (t *Token) Logout(ctx context.Context) error {
	return t.pinOp(ctx, false, func(s *session) (error, error) {
		t.loginMu.Lock()
		defer t.loginMu.Unlock()
		forgetPIN(t.pin)
		t.pin = nil
		t.forgetKeys()
		err := t.userLogout(s)
		if err == nil || isRV(err, pkcs11.CKR_USER_NOT_LOGGED_IN) {
			return nil, nil
		}
		if ferr := t.logoutFreshLocked(); ferr != nil {
			return errors.Join(p11err("C_Logout", err), ferr), err
		}
		return nil, err // s failed: let pinOp drop it
	})
}

// LoggedIn reports whether a PIN is kept for this token, that is whether
// an officer logged it in and has not logged it out, and the package has
// not dropped the PIN.
func (t *Token) LoggedIn() bool {
	t.loginMu.Lock()
	defer t.loginMu.Unlock()
	return t.pin != nil
}

// LoggedOutReason says why the package dropped the kept PIN and reports
// the token logged out (see PINDrop), or is empty. The next successful
// Login clears it.
func (t *Token) LoggedOutReason() string {
	t.loginMu.Lock()
	defer t.loginMu.Unlock()
	return t.loggedOutReason
}

// ChangePIN changes the user PIN with one C_SetPIN, never retried: the
// token may have counted the old PIN. While a PIN is kept, oldPIN must be
// that PIN (compared in constant time; otherwise ErrAlreadyLoggedIn,
// without touching the token), and the kept PIN becomes newPIN.
//
// When the token refuses the kept PIN as the old one, the kept PIN is
// dropped (see PINDrop). When C_SetPIN ends in any other way than success
// or a refusal (a session or device error), nobody knows which PIN the
// token holds: the kept PIN is dropped, the token logged out, and the
// error wraps ErrNotLoggedIn.
func (t *Token) ChangePIN(ctx context.Context, oldPIN, newPIN []byte) error {
	if len(oldPIN) == 0 || len(newPIN) == 0 {
		return fmt.Errorf("%w: empty PIN", ErrInvalidArgument)
	}
	notKept := func() error {
		return fmt.Errorf("%w: token %q is logged in with another PIN than the old PIN given; log out first to change the PIN with it (the PIN was not tried)", ErrAlreadyLoggedIn, t.label)
	}
	t.loginMu.Lock()
	if t.pin != nil && !t.sameAsKeptLocked(oldPIN) {
		t.loginMu.Unlock()
		return notKept()
	}
	t.loginMu.Unlock()
	return t.pinOp(ctx, true, func(s *session) (error, error) {
		t.loginMu.Lock()
		defer t.loginMu.Unlock()
		kept := t.pin != nil
		if kept && !t.sameAsKeptLocked(oldPIN) {
			return notKept(), nil
		}
		err := t.m.api.SetPIN(s.h, pinString(oldPIN), pinString(newPIN))
		switch {
		case err == nil:
			if kept {
				forgetPIN(t.pin)
				t.pin = keepPIN(newPIN)
			}
			return nil, nil
		case setPINRefused(err):
			perr := t.pinError(p11err("C_SetPIN", err))
			if kept && (isRV(err, pkcs11.CKR_PIN_INCORRECT) || isRV(err, pkcs11.CKR_PIN_LOCKED)) {
				t.dropKeptPINLocked(s, fmt.Sprintf("the token refused the kept PIN as the old PIN of a PIN change at %s (%s); the daemon dropped it and will not try it again: an officer must log in",
					t.m.opts.now().UTC().Format(time.RFC3339), pinErrorSummary(perr)), perr)
			}
			return perr, err
		}
		// No answer about the PINs: the change may or may not have been
		// made. Trust neither PIN.
		reason := fmt.Sprintf("a PIN change ended without an answer at %s (%v): the token may hold the old or the new PIN; the daemon dropped the kept PIN and logged the token out: an officer must log in (try the new PIN first)",
			t.m.opts.now().UTC().Format(time.RFC3339), p11err("C_SetPIN", err))
		cause := p11err("C_SetPIN", err)
		if kept {
			t.dropKeptPINLocked(s, reason, cause)
		} else {
			t.loggedOutReason = reason
			_ = t.logoutAnyLocked(s) // a token that cannot be reached keeps no login either
		}
		return fmt.Errorf("%w: token %q: %s", ErrNotLoggedIn, t.label, reason), err
	})
}

// setPINRefused reports whether C_SetPIN's error is the token's refusal,
// after which the PIN is certainly unchanged.
func setPINRefused(err error) bool {
	for _, rv := range []uint{pkcs11.CKR_PIN_INCORRECT, pkcs11.CKR_PIN_LOCKED, pkcs11.CKR_PIN_EXPIRED,
		pkcs11.CKR_PIN_INVALID, pkcs11.CKR_PIN_LEN_RANGE, pkcs11.CKR_PIN_TOO_WEAK,
		pkcs11.CKR_SESSION_READ_ONLY, pkcs11.CKR_TOKEN_WRITE_PROTECTED, pkcs11.CKR_USER_PIN_NOT_INITIALIZED,
		pkcs11.CKR_FUNCTION_NOT_SUPPORTED, pkcs11.CKR_ARGUMENTS_BAD} {
		if isRV(err, rv) {
			return true
		}
	}
	return false
}

// logoutAnyLocked logs the token out, on s or, when s fails, on a new
// session opened for the purpose; a token that was not logged in is no
// failure. It presents no PIN. The caller holds loginMu and the module
// read lock.
func (t *Token) logoutAnyLocked(s *session) error {
	err := t.userLogout(s)
	if err == nil || isRV(err, pkcs11.CKR_USER_NOT_LOGGED_IN) {
		return nil
	}
	if ferr := t.logoutFreshLocked(); ferr != nil {
		return errors.Join(p11err("C_Logout", err), ferr)
	}
	return nil
}

// logoutFreshLocked makes C_Logout on a session opened for the purpose,
// outside the pool and never logged in, and closes it. The caller holds
// loginMu and the module read lock.
func (t *Token) logoutFreshLocked() error {
	slot, err := t.findSlotLocked()
	if err != nil {
		return err
	}
	h, err := t.m.api.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION)
	if err != nil {
		return p11err("C_OpenSession", err)
	}
	defer func() { _ = t.m.api.CloseSession(h) }()
	if err := t.userLogout(&session{h: h}); err != nil && !isRV(err, pkcs11.CKR_USER_NOT_LOGGED_IN) {
		return p11err("C_Logout", err)
	}
	return nil
}
