package hsm

import (
	"bytes"
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/pkcs11"
)

// TokenInfo is what an officer needs to know about a token.
type TokenInfo struct {
	Label           string
	Serial          string
	Manufacturer    string
	Model           string
	Initialized     bool
	LoginRequired   bool
	PIN             PINStatus
	SessionCount    uint // sessions open on the token, by all applications
	MaxSessionCount uint // 0: no limit the module reports
	FreeSessions    uint // MaxSessionCount - SessionCount when both are known
	MinPINLen       uint
	MaxPINLen       uint
}

// unavailableInfo is CK_UNAVAILABLE_INFORMATION as it comes back from
// miekg/pkcs11 on a 64-bit platform.
const unavailableInfo = ^uint(0)

func tokenInfoFrom(ti pkcs11.TokenInfo) TokenInfo {
	info := TokenInfo{
		Label:         strings.TrimRight(ti.Label, " \x00"),
		Serial:        strings.TrimRight(ti.SerialNumber, " \x00"),
		Manufacturer:  strings.TrimRight(ti.ManufacturerID, " \x00"),
		Model:         strings.TrimRight(ti.Model, " \x00"),
		Initialized:   ti.Flags&pkcs11.CKF_TOKEN_INITIALIZED != 0,
		LoginRequired: ti.Flags&pkcs11.CKF_LOGIN_REQUIRED != 0,
		PIN:           pinStatusFromFlags(ti.Flags),
		MinPINLen:     ti.MinPinLen,
		MaxPINLen:     ti.MaxPinLen,
	}
	if ti.SessionCount != unavailableInfo {
		info.SessionCount = ti.SessionCount
	}
	if ti.MaxSessionCount != unavailableInfo && ti.MaxSessionCount != 0 {
		info.MaxSessionCount = ti.MaxSessionCount
		if ti.SessionCount != unavailableInfo && ti.SessionCount <= ti.MaxSessionCount {
			info.FreeSessions = ti.MaxSessionCount - ti.SessionCount
		}
	}
	return info
}

// findToken returns the slot holding the one initialised token that sel
// matches. The caller holds the module lock.
func findToken(api p11, sel TokenSelector) (uint, pkcs11.TokenInfo, error) {
	slots, err := api.GetSlotList(true)
	if err != nil {
		return 0, pkcs11.TokenInfo{}, p11err("C_GetSlotList", err)
	}
	var (
		found  []uint
		infos  []pkcs11.TokenInfo
		serial []string
	)
	for _, s := range slots {
		ti, err := api.GetTokenInfo(s)
		if err != nil || ti.Flags&pkcs11.CKF_TOKEN_INITIALIZED == 0 || !sel.Matches(ti.Label, ti.SerialNumber) {
			continue
		}
		found = append(found, s)
		infos = append(infos, ti)
		serial = append(serial, strings.TrimSpace(ti.SerialNumber))
	}
	switch len(found) {
	case 0:
		return 0, pkcs11.TokenInfo{}, fmt.Errorf("%w: %s", ErrTokenNotFound, sel)
	case 1:
		return found[0], infos[0], nil
	}
	return 0, pkcs11.TokenInfo{}, fmt.Errorf("%w: %s matches serials %s; name the serial", ErrAmbiguousToken, sel, strings.Join(serial, ", "))
}

// TokenOption configures a Token.
type TokenOption func(*tokenOptions)

type tokenOptions struct {
	poolSize  int
	maxWait   time.Duration
	verifySig bool
	onPINDrop func(PINDrop)
}

// WithPoolSize sets how many sessions the token's pool may open. The
// default is four per CPU, capped by the token's maximum: a PKCS#11 call
// may block (SoftHSM locks its object files; a network HSM waits on the
// network), and a spare session keeps a CPU busy meanwhile.
func WithPoolSize(n int) TokenOption {
	return func(o *tokenOptions) { o.poolSize = n }
}

// WithMaxWait bounds how long a call waits for a free session when its
// context has no earlier deadline. Default 10 s.
func WithMaxWait(d time.Duration) TokenOption {
	return func(o *tokenOptions) { o.maxWait = d }
}

// WithVerify turns the check of every signature (RSA and ECDSA) against
// the public key before it is returned on or off (default on; it guards
// against RSA-CRT faults and any other fault of the device that yields a
// bad signature).
func WithVerify(on bool) TokenOption {
	return func(o *tokenOptions) { o.verifySig = on }
}

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

// Token is one token of a module, with its session pool, its kept PIN and
// its cache of key handles. It is safe for concurrent use.
type Token struct {
	m    *Module
	sel  TokenSelector
	opts tokenOptions

	label, serial string

	slotMu  sync.Mutex
	slot    uint
	slotGen uint64

	pool pool

	loginMu sync.Mutex
	pin     []byte // kept for re-login; guarded by loginMu
	// loggedOutReason says why the package dropped the kept PIN, until
	// the next login; guarded by loginMu.
	loggedOutReason string
	// loginSeq grows by one when a change of the token's login state made
	// by this package starts (C_Login, C_Logout) and by one when it ends:
	// it is odd while one is under way. A key search compares it before
	// and after to tell "no such key" from "searched while the login
	// changed".
	loginSeq atomic.Uint64

	// PIN drops waiting to be handed to opts.onPINDrop: pendingDrops is
	// guarded by dropsMu, dropsPending counts those not yet delivered,
	// deliverMu serialises deliveries.
	dropsMu      sync.Mutex
	pendingDrops []PINDrop
	dropsPending atomic.Int64
	deliverMu    sync.Mutex

	keysMu sync.RWMutex
	keys   map[string]*keyEntry

	// adminMu serialises key generation and deletion on this token, so
	// that two officers cannot create the same label at once.
	adminMu sync.Mutex

	logins        atomic.Int64 // re-logins done, for tests and metrics
	loginAttempts atomic.Int64 // C_Login calls made as the user, with any PIN
}

// Token finds the token sel names and returns it, opening no session yet.
// Asking twice for the same token returns the same *Token, with the options
// of the first call: the later call's options are not applied.
func (m *Module) Token(ctx context.Context, sel TokenSelector, opts ...TokenOption) (*Token, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if sel.Label == "" && sel.Serial == "" {
		return nil, fmt.Errorf("%w: a token needs a label or serial", ErrInvalidArgument)
	}
	o := tokenOptions{maxWait: 10 * time.Second, verifySig: true}
	for _, opt := range opts {
		opt(&o)
	}
	gen, err := m.rlock()
	if err != nil {
		return nil, err
	}
	slot, ti, err := findToken(m.api, sel)
	m.mu.RUnlock()
	if err != nil {
		return nil, err
	}
	info := tokenInfoFrom(ti)
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, t := range m.tokens {
		if t.serial == info.Serial && t.label == info.Label {
			return t, nil
		}
	}
	size := o.poolSize
	if size <= 0 {
		size = 4 * runtime.NumCPU()
	}
	if info.MaxSessionCount > 0 && uint(size) > info.MaxSessionCount {
		size = int(info.MaxSessionCount)
	}
	t := &Token{
		m: m, sel: TokenSelector{Label: info.Label, Serial: info.Serial}, opts: o,
		label: info.Label, serial: info.Serial,
		slot: slot, slotGen: gen,
		keys: map[string]*keyEntry{},
	}
	t.pool.init(size)
	m.tokens = append(m.tokens, t)
	return t, nil
}

// Label returns the token label.
func (t *Token) Label() string { return t.label }

// Serial returns the token serial number.
func (t *Token) Serial() string { return t.serial }

// PoolSize returns how many sessions the pool may open.
func (t *Token) PoolSize() int { return t.pool.size }

// findSlotLocked returns the token's slot in the current generation,
// looking it up again by label and serial after re-initialisation. The
// caller holds the module lock (read or write).
func (t *Token) findSlotLocked() (uint, error) {
	t.slotMu.Lock()
	defer t.slotMu.Unlock()
	if t.slotGen == t.m.gen {
		return t.slot, nil
	}
	slot, _, err := findToken(t.m.api, t.sel)
	if err != nil {
		return 0, err
	}
	t.slot, t.slotGen = slot, t.m.gen
	return slot, nil
}

// dropAllSessionsLocked forgets every pooled session and cached handle
// after the library was finalized. The caller holds the module write lock,
// so no session is in use.
func (t *Token) dropAllSessionsLocked() {
	t.pool.forgetAll()
	t.forgetKeys()
}

// closeLocked closes the pool, logs out and zeroes the PIN. The caller
// holds the module write lock.
func (t *Token) closeLocked() error {
	var errs []error
	t.loginMu.Lock()
	hadPIN := t.pin != nil
	zero(t.pin)
	t.pin = nil
	t.loginMu.Unlock()
	if t.m.ready {
		for s := range t.pool.drain() {
			if hadPIN {
				_ = t.m.api.Logout(s.h) // once is enough; the rest say not logged in
				hadPIN = false
			}
			if err := t.m.api.CloseSession(s.h); err != nil && !isRV(err, pkcs11.CKR_SESSION_HANDLE_INVALID) {
				errs = append(errs, p11err("C_CloseSession", err))
			}
		}
	} else {
		t.pool.forgetAll()
	}
	t.forgetKeys()
	return errors.Join(errs...)
}

// withSession runs fn on a session from the pool, under the module's read
// lock, and recovers from session, login, handle and device errors: each
// kind of failure is recovered from once per call, and fn is run again.
// fn must be safe to run more than once.
func (t *Token) withSession(ctx context.Context, fn func(s *session) error) error {
	defer t.deliverPINDrops()
	var (
		recovered [classModule + 1]bool
		lastErr   error
	)
	for {
		gen, err := t.m.rlock()
		if err != nil {
			return err
		}
		s, err := t.acquire(ctx, gen, true)
		if err == nil {
			err = fn(s)
		}
		class := classify(err)
		if class == classLogin && s != nil && !recovered[classLogin] {
			// The token forgot the login (reset, or all sessions closed
			// elsewhere): log in again with the kept PIN on this session.
			recovered[classLogin] = true
			if lerr := t.relogin(s); lerr != nil {
				err, class = lerr, classNone
			} else {
				err = fn(s)
				class = classify(err)
			}
		}
		if s != nil {
			if class == classSession || class == classModule {
				// A broken session usually means the device reset: every
				// session opened before now is suspect.
				t.pool.epoch.Add(1)
				t.pool.drop(t.m.api, s)
			} else {
				t.pool.release(s)
			}
		}
		t.m.mu.RUnlock()
		if class == classNone {
			return t.explainPINExpired(err)
		}
		if recovered[class] {
			lastErr = err
			if class == classHandle || class == classLogin {
				// Handles that turn invalid twice, or a login lost
				// twice: an officer logged the token out meanwhile.
				t.loginMu.Lock()
				var nerr error
				if t.pin == nil {
					nerr = t.notLoggedInLocked()
				}
				t.loginMu.Unlock()
				if nerr != nil {
					return fmt.Errorf("%w (%w)", nerr, lastErr)
				}
			}
			break
		}
		recovered[class] = true
		lastErr = err
		switch class {
		case classLogin:
			return fmt.Errorf("%w: token %q: %w", ErrNotLoggedIn, t.label, err)
		case classHandle:
			t.forgetKeys()
		case classModule:
			if rerr := t.m.failed(gen, err); !errors.Is(rerr, errRetry) {
				return rerr
			}
		}
	}
	return fmt.Errorf("%w: token %q: %w", ErrUnavailable, t.label, lastErr)
}

// acquire returns a session for generation gen: an idle one, or a new one
// while the pool is below its size, or the first one released before the
// context's deadline or the pool's maximum wait. Idle sessions from before
// the last session failure or PIN drop are closed, not reused. A new
// session is logged in with the kept PIN when login is true; with login
// false no PIN is presented. The caller holds the module read lock.
func (t *Token) acquire(ctx context.Context, gen uint64, login bool) (*session, error) {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		var s *session
		select {
		case s = <-t.pool.idle:
		case t.pool.sem <- struct{}{}:
			return t.open(gen, login)
		default:
			if timer == nil {
				t.pool.waits.Add(1)
				timer = time.NewTimer(t.opts.maxWait)
			}
			select {
			case s = <-t.pool.idle:
			case t.pool.sem <- struct{}{}:
				return t.open(gen, login)
			case <-ctx.Done():
				return nil, fmt.Errorf("%w on token %q (%d in use): %w", ErrSessionWait, t.label, t.pool.size, ctx.Err())
			case <-timer.C:
				return nil, fmt.Errorf("%w on token %q: all %d sessions stayed busy for %s", ErrSessionWait, t.label, t.pool.size, t.opts.maxWait)
			}
		}
		if s.gen == gen && s.epoch == t.pool.epoch.Load() {
			return s, nil
		}
		t.pool.drop(t.m.api, s)
	}
}

// open opens a new session; the caller holds a place in the pool, which
// open gives back on failure. When login is true, a new session is logged
// in with the kept PIN when the token is not logged in.
func (t *Token) open(gen uint64, login bool) (*session, error) {
	slot, err := t.findSlotLocked()
	if err != nil {
		<-t.pool.sem
		if errors.Is(err, ErrTokenNotFound) {
			return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		return nil, err
	}
	h, err := t.m.api.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		<-t.pool.sem
		return nil, p11err("C_OpenSession", err)
	}
	s := &session{h: h, gen: gen, epoch: t.pool.epoch.Load()}
	if !login {
		return s, nil
	}
	if err := t.ensureLogin(s); err != nil {
		t.pool.drop(t.m.api, s)
		return nil, err
	}
	return s, nil
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
	zero(t.pin)
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

// pinOp runs op, which presents a PIN to the token (C_Login, C_SetPIN) or
// must present none (C_Logout), exactly once. The session it runs on is first checked with
// C_GetSessionInfo, and a session or module failure of that check is
// recovered from once, as withSession does; but op itself is never run
// again, because the token may have counted the PIN it was given. op
// returns the error for the caller and the PKCS#11 call's own error, which
// decides whether the session is kept. A session opened for op is logged
// in with the kept PIN first only when login is true (ChangePIN, whose old
// PIN is the kept one, so that C_SetPIN runs in the user's session as
// before); Login and Logout present no kept PIN.
func (t *Token) pinOp(ctx context.Context, login bool, op func(s *session) (err, callErr error)) error {
	defer t.deliverPINDrops()
	for attempt := 0; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		gen, err := t.m.rlock()
		if err != nil {
			return err
		}
		s, err := t.acquire(ctx, gen, login)
		if err == nil {
			if _, serr := t.m.api.GetSessionInfo(s.h); serr != nil {
				err = p11err("C_GetSessionInfo", serr)
			} else {
				opErr, callErr := op(s)
				class := classify(callErr)
				t.settle(s, class)
				t.m.mu.RUnlock()
				if class == classModule {
					// Let the module recover for the calls that follow;
					// op is not run again.
					_ = t.m.failed(gen, callErr)
				}
				return opErr
			}
		}
		class := classify(err)
		if s != nil {
			t.settle(s, class)
		}
		t.m.mu.RUnlock()
		if class != classSession && class != classModule {
			return err
		}
		if attempt > 0 {
			return fmt.Errorf("%w: token %q: %w", ErrUnavailable, t.label, err)
		}
		if class == classModule {
			if rerr := t.m.failed(gen, err); !errors.Is(rerr, errRetry) {
				return rerr
			}
		}
	}
}

// settle gives s back to the pool, or closes it when class says it is
// broken. The caller holds the module read lock.
func (t *Token) settle(s *session, class errorClass) {
	if class == classSession || class == classModule {
		t.pool.epoch.Add(1)
		t.pool.drop(t.m.api, s)
		return
	}
	t.pool.release(s)
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
		t.pin = bytes.Clone(pin)
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
	pe := &PINError{Token: t.label, err: fmt.Errorf("%w: %w", sentinel, err)}
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
		zero(t.pin)
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
				zero(t.pin)
				t.pin = bytes.Clone(newPIN)
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

// Info returns the token's information as the module reports it now.
func (t *Token) Info(ctx context.Context) (TokenInfo, error) {
	if err := ctx.Err(); err != nil {
		return TokenInfo{}, err
	}
	gen, err := t.m.rlock()
	if err != nil {
		return TokenInfo{}, err
	}
	slot, err := t.findSlotLocked()
	if err != nil {
		t.m.mu.RUnlock()
		return TokenInfo{}, err
	}
	ti, err := t.m.api.GetTokenInfo(slot)
	t.m.mu.RUnlock()
	if err != nil {
		return TokenInfo{}, t.m.failed(gen, p11err("C_GetTokenInfo", err))
	}
	return tokenInfoFrom(ti), nil
}

// PoolStats describes a token's session pool.
type PoolStats struct {
	Size   int   // most sessions the pool opens
	Open   int   // sessions open now
	Idle   int   // open sessions not in use
	Waits  int64 // calls that had to wait for a session
	Logins int64 // re-logins done with the kept PIN
	// LoginAttempts counts every C_Login made as the user, with the kept
	// PIN or an officer's, whatever the token answered.
	LoginAttempts int64
}

// Stats returns the pool's figures.
func (t *Token) Stats() PoolStats {
	return PoolStats{
		Size: t.pool.size, Open: len(t.pool.sem), Idle: len(t.pool.idle),
		Waits: t.pool.waits.Load(), Logins: t.logins.Load(), LoginAttempts: t.loginAttempts.Load(),
	}
}

// InitToken initialises the first uninitialised token of the module with
// label, sets its SO PIN and user PIN, and returns its information. It is
// meant for SoftHSM and development; a hardware HSM is initialised with
// its vendor's tools.
func (m *Module) InitToken(ctx context.Context, label string, soPIN, userPIN []byte) (TokenInfo, error) {
	if err := ctx.Err(); err != nil {
		return TokenInfo{}, err
	}
	if label == "" || len(label) > 32 {
		return TokenInfo{}, fmt.Errorf("%w: a token label has 1 to 32 bytes", ErrInvalidArgument)
	}
	if len(soPIN) == 0 || len(userPIN) == 0 {
		return TokenInfo{}, fmt.Errorf("%w: empty PIN", ErrInvalidArgument)
	}
	if _, err := m.rlock(); err != nil {
		return TokenInfo{}, err
	}
	defer m.mu.RUnlock()
	slots, err := m.api.GetSlotList(true)
	if err != nil {
		return TokenInfo{}, p11err("C_GetSlotList", err)
	}
	free, found := uint(0), false
	known := map[string]bool{}
	for _, s := range slots {
		ti, err := m.api.GetTokenInfo(s)
		if err != nil {
			continue
		}
		if ti.Flags&pkcs11.CKF_TOKEN_INITIALIZED == 0 {
			if !found {
				free, found = s, true
			}
			continue
		}
		known[strings.TrimSpace(ti.SerialNumber)] = true
	}
	if !found {
		return TokenInfo{}, fmt.Errorf("%w: no uninitialised token in module %s", ErrTokenNotFound, m.path)
	}
	if err := m.api.InitToken(free, pinString(soPIN), label); err != nil {
		return TokenInfo{}, p11err("C_InitToken", err)
	}
	// SoftHSM moves a token to a new slot once it is initialised: find it
	// again by label among serials not seen before.
	slots, err = m.api.GetSlotList(true)
	if err != nil {
		return TokenInfo{}, p11err("C_GetSlotList", err)
	}
	for _, s := range slots {
		ti, err := m.api.GetTokenInfo(s)
		if err != nil || ti.Flags&pkcs11.CKF_TOKEN_INITIALIZED == 0 || known[strings.TrimSpace(ti.SerialNumber)] ||
			strings.TrimRight(ti.Label, " \x00") != label {
			continue
		}
		h, err := m.api.OpenSession(s, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
		if err != nil {
			return TokenInfo{}, p11err("C_OpenSession", err)
		}
		defer func() { _ = m.api.CloseSession(h) }()
		if err := m.api.Login(h, pkcs11.CKU_SO, pinString(soPIN)); err != nil {
			return TokenInfo{}, p11err("C_Login as SO", err)
		}
		defer func() { _ = m.api.Logout(h) }()
		if err := m.api.InitPIN(h, pinString(userPIN)); err != nil {
			return TokenInfo{}, p11err("C_InitPIN", err)
		}
		ti, err = m.api.GetTokenInfo(s)
		if err != nil {
			return TokenInfo{}, p11err("C_GetTokenInfo", err)
		}
		return tokenInfoFrom(ti), nil
	}
	return TokenInfo{}, fmt.Errorf("%w: token %q vanished after C_InitToken", ErrTokenNotFound, label)
}
