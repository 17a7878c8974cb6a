package hsm

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/miekg/pkcs11"
)

// dropRecorder collects the PIN drops a token reports.
type dropRecorder struct {
	mu    sync.Mutex
	drops []PINDrop
}

func (r *dropRecorder) record(d PINDrop) {
	r.mu.Lock()
	r.drops = append(r.drops, d)
	r.mu.Unlock()
}

func (r *dropRecorder) list() []PINDrop {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]PINDrop(nil), r.drops...)
}

// pinEnv is a logged-in test token whose PIN drops are recorded.
func pinEnv(t *testing.T) (*testEnv, *dropRecorder) {
	t.Helper()
	rec := &dropRecorder{}
	e := newEnv(t, nil, WithPoolSize(4), WithPINDropHandler(rec.record))
	return e, rec
}

// keptPIN returns the token's kept PIN slice itself (not a copy), so that
// a test can see it zeroed.
func (e *testEnv) keptPIN() []byte {
	e.tok.loginMu.Lock()
	defer e.tok.loginMu.Unlock()
	return e.tok.pin
}

// changePINOutside changes the user PIN as another application would (a
// vendor tool, another node of a cluster): through the library but not
// through the Token, and without the call counting as one of the Token's.
func (e *testEnv) changePINOutside(t *testing.T, oldPIN, newPIN []byte) {
	t.Helper()
	api := e.fault.p11
	h, err := api.OpenSession(e.tok.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = api.CloseSession(h) }()
	if err := api.SetPIN(h, string(oldPIN), string(newPIN)); err != nil {
		t.Fatalf("changing the PIN outside the Token: %v", err)
	}
}

// closeAllSessionsOutside closes every session of the slot behind the
// pool's back; the token logs out with the last one.
func (e *testEnv) closeAllSessionsOutside(t *testing.T) {
	t.Helper()
	if err := e.fault.p11.CloseAllSessions(e.tok.slot); err != nil {
		t.Fatal(err)
	}
}

// pinFlags reads the token's PIN flags through PKCS#11.
func (e *testEnv) pinFlags(t *testing.T) PINStatus {
	t.Helper()
	info, err := e.tok.Info(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	return info.PIN
}

// TestStaleKeptPINIsTriedOnce changes the user PIN outside the daemon and
// makes the token forget its login, in both ways the pool meets it: on a
// new session (every session was closed) and on a re-login (an operation
// reports USER_NOT_LOGGED_IN). Ten signatures follow; exactly one C_Login
// with the old PIN reaches the token, the kept PIN is zeroed and dropped,
// the token reports itself logged out with the reason, the drop is handed
// to the handler once, and an officer's login with the new PIN recovers.
func TestStaleKeptPINIsTriedOnce(t *testing.T) {
	tests := []struct {
		name   string
		forget func(t *testing.T, e *testEnv)
	}{
		{"new session after all sessions closed", func(t *testing.T, e *testEnv) { e.closeAllSessionsOutside(t) }},
		{"re-login after a token reset", func(t *testing.T, e *testEnv) { e.fault.resetTokenAt("SignInit") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, drops := pinEnv(t)
			ctx := testContext(t)
			k := e.genKey(t, ECP256, "k")
			signOK(t, e.tok, k, "before")
			kept := e.keptPIN()
			newPIN := []byte("changed-elsewhere")
			e.changePINOutside(t, e.soft.UserPIN, newPIN)
			tt.forget(t, e)

			logins := e.fault.count("Login")
			var errs []error
			for range 10 {
				_, err := e.tok.Sign(ctx, k.ID, mustAlg(t, "ES256"), digestOf("after"))
				errs = append(errs, err)
			}
			if n := e.fault.count("Login") - logins; n != 1 {
				t.Fatalf("%d C_Login attempts with the stale PIN for 10 signatures; want exactly 1", n)
			}
			for i, err := range errs {
				if !errors.Is(err, ErrNotLoggedIn) {
					t.Fatalf("sign %d after the PIN changed elsewhere: %v; want ErrNotLoggedIn", i, err)
				}
			}
			if !errors.Is(errs[0], ErrPINIncorrect) {
				t.Fatalf("first sign: %v; want the token's refusal (ErrPINIncorrect) too", errs[0])
			}
			if !bytes.Equal(kept, make([]byte, len(kept))) {
				t.Fatal("the dropped PIN's bytes are still in memory")
			}
			if e.tok.LoggedIn() {
				t.Fatal("LoggedIn() = true after the token refused the kept PIN")
			}
			if r := e.tok.LoggedOutReason(); !strings.Contains(r, "refused the kept PIN") || !strings.Contains(r, "PIN incorrect") {
				t.Fatalf("LoggedOutReason() = %q; want the refusal", r)
			}
			if !e.pinFlags(t).CountLow {
				t.Fatal("the token shows no wrong try; the test did not reach the token")
			}
			got := drops.list()
			if len(got) != 1 || !errors.Is(got[0].Err, ErrPINIncorrect) || got[0].Serial != e.soft.Serial || got[0].Reason != e.tok.LoggedOutReason() {
				t.Fatalf("PIN drops reported: %+v; want one, with the refusal", got)
			}
			if strings.Contains(got[0].Reason+got[0].Err.Error(), string(e.soft.UserPIN)) {
				t.Fatal("the drop report contains the PIN")
			}

			// An officer's login with the PIN the token now has recovers,
			// clears the reason, and resets the count.
			if err := e.tok.Login(ctx, newPIN); err != nil {
				t.Fatalf("Login with the new PIN: %v", err)
			}
			signOK(t, e.tok, k, "recovered")
			if r := e.tok.LoggedOutReason(); r != "" {
				t.Fatalf("LoggedOutReason() = %q after a login", r)
			}
			if e.pinFlags(t).CountLow {
				t.Fatal("count still low after a good login")
			}
			e.assertNoLeakedSessions(t)
		})
	}
}

// TestKeptPINRefusalsDrop checks every refusal of the kept PIN the token
// can give (SoftHSM gives only CKR_PIN_INCORRECT, so the others come from
// the fault layer): one C_Login, then none, and the sentinel that says
// which refusal it was.
func TestKeptPINRefusalsDrop(t *testing.T) {
	tests := []struct {
		name     string
		rv       uint
		sentinel error
	}{
		{"incorrect", pkcs11.CKR_PIN_INCORRECT, ErrPINIncorrect},
		{"locked", pkcs11.CKR_PIN_LOCKED, ErrPINLocked},
		{"expired", pkcs11.CKR_PIN_EXPIRED, ErrPINExpired},
		{"length out of range", pkcs11.CKR_PIN_LEN_RANGE, ErrPINInvalid},
		{"invalid", pkcs11.CKR_PIN_INVALID, ErrPINInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, drops := pinEnv(t)
			ctx := testContext(t)
			k := e.genKey(t, ECP256, "k")
			e.closeAllSessionsOutside(t)
			e.fault.failNext("Login", tt.rv, 1)
			logins := e.fault.count("Login")
			_, err := e.tok.Sign(ctx, k.ID, mustAlg(t, "ES256"), digestOf("x"))
			if !errors.Is(err, ErrNotLoggedIn) || !errors.Is(err, tt.sentinel) {
				t.Fatalf("sign: %v; want ErrNotLoggedIn and %v", err, tt.sentinel)
			}
			for range 3 {
				if _, err := e.tok.Sign(ctx, k.ID, mustAlg(t, "ES256"), digestOf("x")); !errors.Is(err, ErrNotLoggedIn) {
					t.Fatalf("sign after the drop: %v; want ErrNotLoggedIn", err)
				}
			}
			if n := e.fault.count("Login") - logins; n != 1 {
				t.Fatalf("%d C_Login attempts; want 1", n)
			}
			if d := drops.list(); len(d) != 1 || !errors.Is(d[0].Err, tt.sentinel) {
				t.Fatalf("drops %+v; want one wrapping %v", d, tt.sentinel)
			}
			if e.tok.LoggedIn() || e.tok.LoggedOutReason() == "" {
				t.Fatal("the token is not reported logged out with a reason")
			}
		})
	}
}

// TestChangePINSessionErrorAfterTheChange: the device makes the change and
// the answer is lost. C_SetPIN is made once, never again with the old PIN;
// the daemon trusts neither PIN: it drops the kept one, logs the token out
// and says so; an officer's login with the new PIN recovers.
func TestChangePINSessionErrorAfterTheChange(t *testing.T) {
	for _, rv := range []uint{pkcs11.CKR_SESSION_HANDLE_INVALID, pkcs11.CKR_DEVICE_ERROR, pkcs11.CKR_GENERAL_ERROR} {
		t.Run(pkcs11.Error(rv).Error(), func(t *testing.T) {
			e, drops := pinEnv(t)
			ctx := testContext(t)
			k := e.genKey(t, ECP256, "k")
			kept := e.keptPIN()
			newPIN := []byte("new-pin-1234")
			e.fault.failAfter("SetPIN", rv)
			logins := e.fault.count("Login")
			err := e.tok.ChangePIN(ctx, e.soft.UserPIN, newPIN)
			if !errors.Is(err, ErrNotLoggedIn) || !strings.Contains(err.Error(), "old or the new PIN") {
				t.Fatalf("ChangePIN with the answer lost: %v; want ErrNotLoggedIn saying either PIN may hold", err)
			}
			if n := e.fault.count("SetPIN"); n != 1 {
				t.Fatalf("C_SetPIN made %d times; want once", n)
			}
			if n := e.fault.count("Login") - logins; n != 0 {
				t.Fatalf("%d C_Login attempts after the interrupted change; want none", n)
			}
			if e.tok.LoggedIn() || !strings.Contains(e.tok.LoggedOutReason(), "PIN change") {
				t.Fatalf("LoggedIn %v, reason %q: want logged out with the reason", e.tok.LoggedIn(), e.tok.LoggedOutReason())
			}
			if !bytes.Equal(kept, make([]byte, len(kept))) {
				t.Fatal("the dropped PIN's bytes are still in memory")
			}
			if len(drops.list()) != 1 {
				t.Fatalf("drops %+v; want one", drops.list())
			}
			if _, err := e.tok.Sign(ctx, k.ID, mustAlg(t, "ES256"), digestOf("x")); !errors.Is(err, ErrNotLoggedIn) {
				t.Fatalf("sign after the interrupted change: %v; want ErrNotLoggedIn (the token was logged out)", err)
			}
			if n := e.fault.count("Login") - logins; n != 0 {
				t.Fatalf("%d C_Login attempts by the sign; want none", n)
			}
			if e.pinFlags(t).CountLow {
				t.Fatal("a wrong PIN reached the token")
			}
			if err := e.tok.Login(ctx, newPIN); err != nil {
				t.Fatalf("Login with the new PIN (the device made the change): %v", err)
			}
			signOK(t, e.tok, k, "after")
			e.assertNoLeakedSessions(t)
		})
	}
}

// TestChangePINWithStaleKeptPIN: the PIN was changed elsewhere while the
// token stayed logged in; a change with the kept (old) PIN is refused by
// the token once, and the kept PIN is dropped.
func TestChangePINWithStaleKeptPIN(t *testing.T) {
	e, drops := pinEnv(t)
	ctx := testContext(t)
	e.changePINOutside(t, e.soft.UserPIN, []byte("changed-elsewhere"))
	err := e.tok.ChangePIN(ctx, e.soft.UserPIN, []byte("another-pin"))
	if !errors.Is(err, ErrPINIncorrect) {
		t.Fatalf("ChangePIN with the stale kept PIN: %v; want ErrPINIncorrect", err)
	}
	if e.fault.count("SetPIN") != 1 || e.tok.LoggedIn() || len(drops.list()) != 1 {
		t.Fatalf("SetPIN calls %d, LoggedIn %v, drops %d; want 1, false, 1", e.fault.count("SetPIN"), e.tok.LoggedIn(), len(drops.list()))
	}
}

// TestLoginWhileLoggedInNeverTouchesTheToken: an officer's second login
// with a wrong PIN is refused without a C_Login or C_Logout; signing goes
// on undisturbed meanwhile; the right PIN succeeds without a C_Login.
func TestLoginWhileLoggedInNeverTouchesTheToken(t *testing.T) {
	e, _ := pinEnv(t)
	ctx := testContext(t)
	k := e.genKey(t, ECP256, "k")
	logins, logouts := e.fault.count("Login"), e.fault.count("Logout")
	for range 5 {
		err := e.tok.Login(ctx, []byte("not-the-pin"))
		if !errors.Is(err, ErrAlreadyLoggedIn) || errors.Is(err, ErrPINIncorrect) {
			t.Fatalf("Login with another PIN while logged in: %v; want ErrAlreadyLoggedIn", err)
		}
		if !strings.Contains(err.Error(), "log out first") || strings.Contains(err.Error(), "not-the-pin") {
			t.Fatalf("error %q: want it to say to log out first, and never the PIN", err)
		}
		signOK(t, e.tok, k, "between logins")
	}
	if err := e.tok.Login(ctx, e.soft.UserPIN); err != nil {
		t.Fatalf("Login with the kept PIN: %v", err)
	}
	if n, m := e.fault.count("Login")-logins, e.fault.count("Logout")-logouts; n != 0 || m != 0 {
		t.Fatalf("%d C_Login and %d C_Logout while logged in; want none", n, m)
	}
	if e.pinFlags(t).CountLow || !e.tok.LoggedIn() {
		t.Fatal("the token shows a wrong try, or is logged out")
	}
}

// TestLoginWhileLoggedInByOthers: the token reports a user logged in but
// the Token keeps no PIN (another part of the process logged it in). A
// login is refused; the token is not logged out to test the PIN.
func TestLoginWhileLoggedInByOthers(t *testing.T) {
	e, _ := pinEnv(t)
	ctx := testContext(t)
	if err := e.tok.Logout(ctx); err != nil {
		t.Fatal(err)
	}
	api := e.fault.p11
	h, err := api.OpenSession(e.tok.slot, pkcs11.CKF_SERIAL_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = api.CloseSession(h) }()
	if err := api.Login(h, pkcs11.CKU_USER, string(e.soft.UserPIN)); err != nil {
		t.Fatal(err)
	}
	logouts := e.fault.count("Logout")
	err = e.tok.Login(ctx, []byte("not-the-pin"))
	if !errors.Is(err, ErrAlreadyLoggedIn) {
		t.Fatalf("Login while another logged the token in: %v; want ErrAlreadyLoggedIn", err)
	}
	if e.fault.count("Logout") != logouts {
		t.Fatal("the Token logged the token out to test a PIN")
	}
	si, err := api.GetSessionInfo(h)
	if err != nil || si.State != pkcs11.CKS_RO_USER_FUNCTIONS {
		t.Fatalf("the other login is gone: state %v, %v", si.State, err)
	}
	if e.pinFlags(t).CountLow {
		t.Fatal("a wrong PIN reached the token")
	}
}

// TestKeyNeverNotFoundWhileLoginChanges signs with a key that exists while
// an officer logs the token out and in again and again. Each signature
// succeeds, or says that the token is not logged in or, when the login
// changed under both of its tries, unavailable; none says that the key
// does not exist, and the module is never initialised again.
func TestKeyNeverNotFoundWhileLoginChanges(t *testing.T) {
	e, _ := pinEnv(t)
	ctx := testContext(t)
	k := e.genKey(t, ECP256, "k")
	gen := e.mod.Info().Generation
	var (
		stop              atomic.Bool
		ok, notIn, failed atomic.Int64
		wg                sync.WaitGroup
	)
	errs := make(chan error, 16)
	for range 4 {
		wg.Go(func() {
			for !stop.Load() {
				_, err := e.tok.Sign(context.Background(), k.ID, mustAlg(t, "ES256"), digestOf("x"))
				switch {
				case err == nil:
					ok.Add(1)
				case errors.Is(err, ErrNotLoggedIn), errors.Is(err, ErrUnavailable) && !errors.Is(err, ErrKeyNotFound):
					notIn.Add(1)
				default:
					if failed.Add(1) <= 16 {
						errs <- err
					}
				}
			}
		})
	}
	for range 150 {
		if err := e.tok.Logout(ctx); err != nil {
			t.Error(err)
			break
		}
		if err := e.tok.Login(ctx, e.soft.UserPIN); err != nil {
			t.Error(err)
			break
		}
	}
	stop.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("sign while the login changed: %v", err)
	}
	if ok.Load() == 0 || notIn.Load() == 0 {
		t.Fatalf("%d signed, %d not logged in: the test did not overlap signing with logins", ok.Load(), notIn.Load())
	}
	if e.mod.Info().Generation != gen {
		t.Fatal("the module was initialised again")
	}
	e.assertNoLeakedSessions(t)
}

// TestGeneralErrorIsSessionLevel: CKR_GENERAL_ERROR from one call drops the
// session and retries once; the module is not finalized.
func TestGeneralErrorIsSessionLevel(t *testing.T) {
	e, _ := pinEnv(t)
	k := e.genKey(t, ECP256, "k")
	gen, inits := e.mod.Info().Generation, e.fault.count("Initialize")
	e.fault.failNext("Sign", pkcs11.CKR_GENERAL_ERROR, 1)
	signOK(t, e.tok, k, "x")
	if e.mod.Info().Generation != gen || e.fault.count("Initialize") != inits {
		t.Fatal("CKR_GENERAL_ERROR from one call initialised the module again")
	}
	e.assertNoLeakedSessions(t)
}

// TestPINExpired: the token's CKR_PIN_EXPIRED, to an officer's login or
// to an operation, wraps ErrPINExpired and asks for a PIN change.
func TestPINExpired(t *testing.T) {
	e, _ := pinEnv(t)
	ctx := testContext(t)
	k := e.genKey(t, ECP256, "k")
	e.fault.failNext("SignInit", pkcs11.CKR_PIN_EXPIRED, 1)
	_, err := e.tok.Sign(ctx, k.ID, mustAlg(t, "ES256"), digestOf("x"))
	if !errors.Is(err, ErrPINExpired) || !strings.Contains(err.Error(), "change") {
		t.Fatalf("sign answered CKR_PIN_EXPIRED: %v; want ErrPINExpired asking for a change", err)
	}
	if err := e.tok.Logout(ctx); err != nil {
		t.Fatal(err)
	}
	e.fault.failNext("Login", pkcs11.CKR_PIN_EXPIRED, 1)
	err = e.tok.Login(ctx, e.soft.UserPIN)
	var pe *PINError
	if !errors.Is(err, ErrPINExpired) || !errors.As(err, &pe) || !pe.Status.ToBeChanged || !strings.Contains(err.Error(), "changed") {
		t.Fatalf("Login answered CKR_PIN_EXPIRED: %v; want a *PINError wrapping ErrPINExpired", err)
	}
	if e.tok.LoggedIn() {
		t.Fatal("an expired PIN was kept")
	}
}

// TestLoginNotRetried: a session error answered to C_Login is not retried
// with the same PIN.
func TestLoginNotRetried(t *testing.T) {
	e, _ := pinEnv(t)
	ctx := testContext(t)
	if err := e.tok.Logout(ctx); err != nil {
		t.Fatal(err)
	}
	logins := e.fault.count("Login")
	e.fault.failNext("Login", pkcs11.CKR_SESSION_HANDLE_INVALID, 1)
	if err := e.tok.Login(ctx, e.soft.UserPIN); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Login answered a session error: %v; want ErrUnavailable", err)
	}
	if n := e.fault.count("Login") - logins; n != 1 {
		t.Fatalf("%d C_Login calls; want 1", n)
	}
	if err := e.tok.Login(ctx, e.soft.UserPIN); err != nil {
		t.Fatalf("Login again: %v", err)
	}
	e.assertNoLeakedSessions(t)
}

// outsideLoginState opens a session on the token as another part of the
// application would and returns its state: PKCS#11 keeps one login state
// per application and token, so it is the state of every session of the
// pool too. The session is closed before it returns.
func (e *testEnv) outsideLoginState(t *testing.T) uint {
	t.Helper()
	api := e.fault.p11
	e.tok.slotMu.Lock()
	slot := e.tok.slot
	e.tok.slotMu.Unlock()
	h, err := api.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = api.CloseSession(h) }()
	si, err := api.GetSessionInfo(h)
	if err != nil {
		t.Fatal(err)
	}
	return si.State
}

// isUserState reports whether a session state is one of a logged-in user.
func isUserState(state uint) bool {
	return state == pkcs11.CKS_RO_USER_FUNCTIONS || state == pkcs11.CKS_RW_USER_FUNCTIONS
}

// TestDroppedPINLogsTheTokenOut: when the kept PIN is dropped while the
// token is logged in (the PIN was changed elsewhere and a PIN change with
// the kept one is refused; or the token refuses the kept PIN on a session
// it reports public, as a module with per-session logins does), the token
// is really logged out: no signature is made afterwards, the token's
// login state is not a user's, and an officer's login with the token's
// PIN works at once instead of meeting a login no PIN is kept for.
func TestDroppedPINLogsTheTokenOut(t *testing.T) {
	changed := []byte("changed-elsewhere")
	reloginRefused := func(rv uint) func(t *testing.T, e *testEnv) ([]byte, error) {
		return func(t *testing.T, e *testEnv) ([]byte, error) {
			// An operation says the user is not logged in; the session
			// looks public; the token refuses the kept PIN.
			k, err := e.tok.KeyByLabel(testContext(t), "k")
			if err != nil {
				t.Fatal(err)
			}
			e.fault.failNext("SignInit", pkcs11.CKR_USER_NOT_LOGGED_IN, 1)
			e.fault.reportPublic(1)
			e.fault.failNext("Login", rv, 1)
			_, err = e.tok.Sign(testContext(t), k.ID, mustAlg(t, "ES256"), digestOf("drop"))
			return e.soft.UserPIN, err
		}
	}
	tests := []struct {
		name     string
		drop     func(t *testing.T, e *testEnv) (tokenPIN []byte, err error)
		sentinel error
	}{
		{"change-pin with the kept PIN after a change elsewhere", func(t *testing.T, e *testEnv) ([]byte, error) {
			e.changePINOutside(t, e.soft.UserPIN, changed)
			return changed, e.tok.ChangePIN(testContext(t), e.soft.UserPIN, []byte("another-pin"))
		}, ErrPINIncorrect},
		{"re-login refused: incorrect", reloginRefused(pkcs11.CKR_PIN_INCORRECT), ErrPINIncorrect},
		{"re-login refused: locked", reloginRefused(pkcs11.CKR_PIN_LOCKED), ErrPINLocked},
		{"re-login refused: expired", reloginRefused(pkcs11.CKR_PIN_EXPIRED), ErrPINExpired},
		{"re-login refused: length out of range", reloginRefused(pkcs11.CKR_PIN_LEN_RANGE), ErrPINInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, drops := pinEnv(t)
			ctx := testContext(t)
			k := e.genKey(t, ECP256, "k")
			signOK(t, e.tok, k, "before")
			if !isUserState(e.outsideLoginState(t)) {
				t.Fatal("the token is not logged in before the test")
			}
			tokenPIN, err := tt.drop(t, e)
			if !errors.Is(err, tt.sentinel) {
				t.Fatalf("the call that met the refusal: %v; want %v", err, tt.sentinel)
			}
			if len(drops.list()) != 1 || e.tok.LoggedIn() {
				t.Fatalf("drops %d, LoggedIn %v; want the kept PIN dropped once", len(drops.list()), e.tok.LoggedIn())
			}
			logins := e.fault.count("Login")
			for i := range 3 {
				if _, err := e.tok.Sign(ctx, k.ID, mustAlg(t, "ES256"), digestOf("after")); !errors.Is(err, ErrNotLoggedIn) {
					t.Fatalf("sign %d after the drop: %v; want ErrNotLoggedIn (the token must be logged out)", i, err)
				}
			}
			if st := e.outsideLoginState(t); isUserState(st) {
				t.Fatalf("session state %d after the drop: the token is still logged in", st)
			}
			if n := e.fault.count("Login") - logins; n != 0 {
				t.Fatalf("%d C_Login after the drop; want none", n)
			}
			if err := e.tok.Login(ctx, tokenPIN); err != nil {
				t.Fatalf("officer's login with the token's PIN after the drop: %v", err)
			}
			signOK(t, e.tok, k, "recovered")
			e.assertNoLeakedSessions(t)
		})
	}
}

// TestLogoutNeverPresentsThePIN: Logout makes no C_Login, whatever the
// pool holds when it is called: no session at all (the module was
// initialised again), sessions the token closed, a session that fails the
// C_Logout. With a kept PIN that the token no longer accepts, a C_Login
// would cost a try; the token's "count low" flag must stay clear.
func TestLogoutNeverPresentsThePIN(t *testing.T) {
	emptyPool := func(t *testing.T, e *testEnv) {
		// A status poll meets a device error: the module is initialised
		// again, its sessions and login are gone, the pool is empty.
		e.fault.failNext("GetTokenInfo", pkcs11.CKR_DEVICE_ERROR, 1)
		if _, err := e.tok.Info(testContext(t)); err == nil {
			t.Fatal("Info succeeded; the fault was not met")
		}
		if st := e.tok.Stats(); st.Open != 0 {
			t.Fatalf("%d sessions open after the module restart; want 0", st.Open)
		}
	}
	tests := []struct {
		name      string
		changePIN bool
		prepare   func(t *testing.T, e *testEnv)
	}{
		{"empty pool, PIN changed elsewhere", true, emptyPool},
		{"empty pool, PIN unchanged", false, emptyPool},
		{"sessions closed elsewhere, PIN changed elsewhere", true, func(t *testing.T, e *testEnv) { e.closeAllSessionsOutside(t) }},
		{"C_Logout fails on its session, PIN changed elsewhere", true, func(t *testing.T, e *testEnv) {
			e.fault.failNext("Logout", pkcs11.CKR_SESSION_HANDLE_INVALID, 1)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, drops := pinEnv(t)
			ctx := testContext(t)
			k := e.genKey(t, ECP256, "k")
			signOK(t, e.tok, k, "before")
			if tt.changePIN {
				e.changePINOutside(t, e.soft.UserPIN, []byte("changed-elsewhere"))
			}
			tt.prepare(t, e)
			logins := e.fault.count("Login")
			if err := e.tok.Logout(ctx); err != nil {
				t.Fatalf("Logout: %v", err)
			}
			if n := e.fault.count("Login") - logins; n != 0 {
				t.Fatalf("Logout made %d C_Login; want none", n)
			}
			if e.pinFlags(t).CountLow {
				t.Fatal("the token counts a wrong try: Logout presented the kept PIN")
			}
			if e.tok.LoggedIn() || len(drops.list()) != 0 {
				t.Fatalf("LoggedIn %v, drops %d after Logout; want logged out, no drop", e.tok.LoggedIn(), len(drops.list()))
			}
			if st := e.outsideLoginState(t); isUserState(st) {
				t.Fatalf("session state %d after Logout: still logged in", st)
			}
			if _, err := e.tok.Sign(ctx, k.ID, mustAlg(t, "ES256"), digestOf("after")); !errors.Is(err, ErrNotLoggedIn) {
				t.Fatalf("sign after Logout: %v; want ErrNotLoggedIn", err)
			}
			e.assertNoLeakedSessions(t)
		})
	}
}
