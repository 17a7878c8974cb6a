package signer

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/miekg/pkcs11"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hsmsigner/hsmsigner/hsm"
	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/audit"
	softhsmtest "github.com/hsmsigner/hsmsigner/softhsm-test"
)

// outsideApp is the SoftHSM library the daemon has loaded, reached the
// way another component of the process (or a vendor tool sharing the
// library) would: not through the daemon's hsm.Module. SoftHSM keeps its
// PINs in memory once initialised, so a change made by another process
// would not be seen; this one is.
type outsideApp struct {
	ctx  *pkcs11.Ctx
	slot uint
}

func newOutsideApp(t *testing.T, soft *softhsmtest.Token) *outsideApp {
	t.Helper()
	ctx := pkcs11.New(soft.ModulePath)
	if ctx == nil {
		t.Fatal("cannot load the SoftHSM library")
	}
	// The daemon initialised it already; the library is shared. It is
	// neither finalized nor unloaded here: the daemon still uses it.
	if err := ctx.Initialize(); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
		t.Fatal(err)
	}
	slots, err := ctx.GetSlotList(true)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range slots {
		if ti, err := ctx.GetTokenInfo(s); err == nil && strings.TrimSpace(ti.SerialNumber) == soft.Serial {
			return &outsideApp{ctx: ctx, slot: s}
		}
	}
	t.Fatalf("token %s not found", soft.Serial)
	return nil
}

// changePIN changes the user PIN and closes every session of the slot, so
// that the daemon's next session must log in again, as after an HSM
// restart.
func (o *outsideApp) changePIN(t *testing.T, oldPIN, newPIN []byte) {
	t.Helper()
	o.setPIN(t, oldPIN, newPIN)
	if err := o.ctx.CloseAllSessions(o.slot); err != nil {
		t.Fatal(err)
	}
}

// setPIN changes the user PIN and leaves the daemon's sessions as they
// are: the token stays logged in.
func (o *outsideApp) setPIN(t *testing.T, oldPIN, newPIN []byte) {
	t.Helper()
	h, err := o.ctx.OpenSession(o.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = o.ctx.CloseSession(h) }()
	if err := o.ctx.SetPIN(h, string(oldPIN), string(newPIN)); err != nil {
		t.Fatalf("changing the PIN outside the daemon: %v", err)
	}
}

// loggedIn reports whether the application's login state on the token,
// which the daemon's sessions share, is a user's (C_GetSessionInfo on a
// session opened for the purpose).
func (o *outsideApp) loggedIn(t *testing.T) bool {
	t.Helper()
	h, err := o.ctx.OpenSession(o.slot, pkcs11.CKF_SERIAL_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = o.ctx.CloseSession(h) }()
	si, err := o.ctx.GetSessionInfo(h)
	if err != nil {
		t.Fatal(err)
	}
	return si.State == pkcs11.CKS_RO_USER_FUNCTIONS || si.State == pkcs11.CKS_RW_USER_FUNCTIONS
}

// auditOps returns the audit lines with operation op.
func (d *testDaemon) auditOps(t *testing.T, op string) []audit.Record {
	t.Helper()
	f, err := os.Open(d.cfg.Server.AuditFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []audit.Record
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var r audit.Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("audit line %q: %v", sc.Text(), err)
		}
		if r.Op == op {
			out = append(out, r)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// metricValue returns the value of the counter or gauge name with label
// token="t1", or -1 when there is none.
func (d *testDaemon) metricValue(t *testing.T, name string) float64 {
	t.Helper()
	mfs, err := d.svc.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "token" && l.GetValue() == "t1" {
					if c := m.GetCounter(); c != nil {
						return c.GetValue()
					}
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	return -1
}

func (d *testDaemon) hsmToken() *hsm.Token { return d.svc.tokens[0].tok }

// TestStaleKeptPINDroppedAndReported: the user PIN changes outside the
// daemon and the token forgets its login. Ten signatures make exactly one
// C_Login with the old PIN; the token is reported logged out with the
// reason, in the API, the metrics and one audit line; an officer's login
// with the new PIN brings signing back.
func TestStaleKeptPINDroppedAndReported(t *testing.T) {
	d := newDaemon(t)
	k := d.genKey(t, "k", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	sign := func() error {
		_, err := d.client.Sign(testCtx(t), &signerv1.SignRequest{Key: &signerv1.SignRequest_KeyId{KeyId: k.GetId()}, Algorithm: "ES256", Digest: sha("x")})
		return err
	}
	if err := sign(); err != nil {
		t.Fatal(err)
	}
	newPIN := []byte("changed-elsewhere")
	newOutsideApp(t, d.soft).changePIN(t, d.soft.UserPIN, newPIN)

	attempts := d.hsmToken().Stats().LoginAttempts
	var errs []error
	for range 10 {
		errs = append(errs, sign())
	}
	if n := d.hsmToken().Stats().LoginAttempts - attempts; n != 1 {
		t.Fatalf("%d C_Login attempts with the stale PIN for 10 signatures; want exactly 1", n)
	}
	for _, err := range errs {
		wantCode(t, err, codes.FailedPrecondition, "not logged in")
		// The refusal names the token as signerd.toml does and says what to do.
		wantCode(t, err, codes.FailedPrecondition, "signerctl token login t1")
	}
	tok, err := d.client.GetToken(testCtx(t), &signerv1.GetTokenRequest{Token: "t1"})
	if err != nil {
		t.Fatal(err)
	}
	if tok.GetLoggedIn() || !strings.Contains(tok.GetLoggedOutReason(), "refused the kept PIN") || !tok.GetPin().GetCountLow() {
		t.Fatalf("token after the drop: logged in %v, reason %q, count low %v; want logged out with the reason, count low",
			tok.GetLoggedIn(), tok.GetLoggedOutReason(), tok.GetPin().GetCountLow())
	}
	if v := d.metricValue(t, "signerd_token_pin_drops_total"); v != 1 {
		t.Fatalf("signerd_token_pin_drops_total = %v; want 1", v)
	}
	drops := d.auditOps(t, "token.pin_dropped")
	if len(drops) != 1 || drops[0].Token != "t1" || drops[0].UID != -1 || !strings.Contains(drops[0].Detail, "refused the kept PIN") {
		t.Fatalf("audit lines token.pin_dropped: %+v; want one for t1, by the daemon, with the reason", drops)
	}
	if _, err := audit.VerifyFile(d.cfg.Server.AuditFile); err != nil {
		t.Fatal(err)
	}

	tok, err = d.client.LoginToken(testCtx(t), &signerv1.LoginTokenRequest{Token: "t1", Pin: newPIN})
	if err != nil || !tok.GetLoggedIn() || tok.GetLoggedOutReason() != "" {
		t.Fatalf("login with the new PIN: %v, %v", tok, err)
	}
	if err := sign(); err != nil {
		t.Fatalf("sign after the officer's login: %v", err)
	}
}

// TestConfiguredPINRefusedAtStart: a PIN file the token refuses is tried
// once; the daemon starts with the token logged out (so that no service
// manager restarts it into one more wrong try after another), reports why
// and audits it; an officer's login then clears the reason.
func TestConfiguredPINRefusedAtStart(t *testing.T) {
	d := newDaemon(t, func(p *daemonParams) {
		if err := os.WriteFile(p.PINFile, []byte("not-the-pin"), 0o600); err != nil {
			t.Fatal(err)
		}
	})
	if n := d.hsmToken().Stats().LoginAttempts; n != 1 {
		t.Fatalf("%d C_Login attempts at start-up; want 1", n)
	}
	tok, err := d.client.GetToken(testCtx(t), &signerv1.GetTokenRequest{Token: "t1"})
	if err != nil {
		t.Fatal(err)
	}
	if tok.GetLoggedIn() || !strings.Contains(tok.GetLoggedOutReason(), "configured PIN") || !strings.Contains(tok.GetLoggedOutReason(), "PIN incorrect") {
		t.Fatalf("token after a refused start-up PIN: logged in %v, reason %q", tok.GetLoggedIn(), tok.GetLoggedOutReason())
	}
	if strings.Contains(tok.GetLoggedOutReason(), "not-the-pin") {
		t.Fatal("the reason contains the PIN")
	}
	if drops := d.auditOps(t, "token.pin_dropped"); len(drops) != 1 {
		t.Fatalf("audit lines token.pin_dropped: %+v; want one", drops)
	}
	if v := d.metricValue(t, "signerd_token_pin_drops_total"); v != 1 {
		t.Fatalf("signerd_token_pin_drops_total = %v; want 1", v)
	}
	tok, err = d.client.LoginToken(testCtx(t), &signerv1.LoginTokenRequest{Token: "t1", Pin: d.soft.UserPIN})
	if err != nil || !tok.GetLoggedIn() || tok.GetLoggedOutReason() != "" {
		t.Fatalf("officer's login: %v, %v", tok, err)
	}
}

// TestWrongLoginsWhileSigning: while eight clients sign, an officer logs
// in twenty times with wrong PINs. Each login is refused with "log out
// first" and no C_Login reaches the token; no signature fails, none is
// answered NOT_FOUND, the module is never initialised again, and the token
// stays logged in with its tries untouched.
func TestWrongLoginsWhileSigning(t *testing.T) {
	// Enough login attempts for the test's 20 that the per-uid limit,
	// tested on its own, does not answer them first.
	d := newDaemon(t, func(p *daemonParams) { p.Limits = "login_attempts_per_minute = 100" })
	k := d.genKey(t, "k", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	st, err := d.client.GetStatus(testCtx(t), &signerv1.GetStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	gen := st.GetModules()[0].GetGeneration()
	attempts := d.hsmToken().Stats().LoginAttempts

	var (
		stop   atomic.Bool
		signed atomic.Int64
		wg     sync.WaitGroup
		mu     sync.Mutex
		fails  = map[codes.Code]int{}
		sample = map[codes.Code]string{}
	)
	for i := range 8 {
		wg.Go(func() {
			for n := 0; !stop.Load() || n < 5; n++ {
				_, err := d.client.Sign(testCtx(t), &signerv1.SignRequest{Key: &signerv1.SignRequest_KeyId{KeyId: k.GetId()}, Algorithm: "ES256", Digest: sha(fmt.Sprint(i, n))})
				if err == nil {
					signed.Add(1)
					continue
				}
				mu.Lock()
				fails[status.Code(err)]++
				sample[status.Code(err)] = err.Error()
				mu.Unlock()
			}
		})
	}
	var loginErrs []error
	for i := range 20 {
		_, err := d.client.LoginToken(testCtx(t), &signerv1.LoginTokenRequest{Token: "t1", Pin: []byte(fmt.Sprintf("guess-%04d", i))})
		loginErrs = append(loginErrs, err)
	}
	stop.Store(true)
	wg.Wait()
	if n := d.hsmToken().Stats().LoginAttempts - attempts; n != 0 {
		t.Errorf("%d C_Login attempts for 20 logins while logged in; want none", n)
	}
	if len(fails) != 0 {
		t.Errorf("signatures failed while wrong logins came in: %v (e.g. %v)", fails, sample)
	}
	if signed.Load() < 40 {
		t.Errorf("only %d signatures", signed.Load())
	}
	st, err = d.client.GetStatus(testCtx(t), &signerv1.GetStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if g := st.GetModules()[0].GetGeneration(); g != gen {
		t.Errorf("module generation %d, was %d: the module was initialised again", g, gen)
	}
	tok := st.GetTokens()[0]
	if !tok.GetLoggedIn() || tok.GetPin().GetCountLow() {
		t.Errorf("token after the wrong logins: logged in %v, count low %v; want logged in, tries untouched", tok.GetLoggedIn(), tok.GetPin().GetCountLow())
	}
	for _, err := range loginErrs {
		wantCode(t, err, codes.FailedPrecondition, "log out first")
	}
	// The right PIN is accepted without a C_Login either.
	if _, err := d.client.LoginToken(testCtx(t), &signerv1.LoginTokenRequest{Token: "t1", Pin: d.soft.UserPIN}); err != nil {
		t.Fatalf("login with the kept PIN: %v", err)
	}
	if n := d.hsmToken().Stats().LoginAttempts - attempts; n != 0 {
		t.Fatalf("%d C_Login attempts; want none", n)
	}
}

// TestPINStateCodes: PIN states are FAILED_PRECONDITION with a message
// that says what to do, never INTERNAL.
func TestPINStateCodes(t *testing.T) {
	tests := []struct {
		name string
		err  error
	}{
		{"PIN expired", fmt.Errorf("token %q: %w", "t", hsm.ErrPINExpired)},
		{"already logged in", fmt.Errorf("token %q: %w", "t", hsm.ErrAlreadyLoggedIn)},
		{"PIN incorrect", hsm.ErrPINIncorrect},
		{"PIN locked", hsm.ErrPINLocked},
		{"not logged in", hsm.ErrNotLoggedIn},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if c := codeOf(tt.err); c != codes.FailedPrecondition {
				t.Fatalf("codeOf(%v) = %v; want FailedPrecondition", tt.err, c)
			}
		})
	}
	if msg := hsm.ErrPINExpired.Error(); !strings.Contains(msg, "must be changed") {
		t.Fatalf("ErrPINExpired says %q; want it to say the PIN must be changed", msg)
	}
}

// TestDroppedPINLogsOutTheToken: the PIN is changed behind the daemon's
// back while its sessions stay logged in; an officer's PIN change with the
// kept (old) PIN is refused, and the daemon drops the kept PIN. The token
// is then really logged out: signing is refused as not logged in, the
// token's login state (C_GetSessionInfo) is not a user's, and the
// officer's login with the new PIN succeeds at once.
func TestDroppedPINLogsOutTheToken(t *testing.T) {
	d := newDaemon(t)
	k := d.genKey(t, "k", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	sign := func() error {
		_, err := d.client.Sign(testCtx(t), &signerv1.SignRequest{Key: &signerv1.SignRequest_KeyId{KeyId: k.GetId()}, Algorithm: "ES256", Digest: sha("x")})
		return err
	}
	if err := sign(); err != nil {
		t.Fatal(err)
	}
	out := newOutsideApp(t, d.soft)
	newPIN := []byte("changed-elsewhere")
	out.setPIN(t, d.soft.UserPIN, newPIN)
	if !out.loggedIn(t) {
		t.Fatal("the token is not logged in before the drop")
	}
	_, err := d.client.ChangePin(testCtx(t), &signerv1.ChangePinRequest{Token: "t1", OldPin: d.soft.UserPIN, NewPin: []byte("another-pin")})
	wantCode(t, err, codes.FailedPrecondition, "PIN incorrect")
	if drops := d.auditOps(t, "token.pin_dropped"); len(drops) != 1 {
		t.Fatalf("audit lines token.pin_dropped: %+v; want one", drops)
	}
	for range 3 {
		wantCode(t, sign(), codes.FailedPrecondition, "not logged in")
	}
	if out.loggedIn(t) {
		t.Fatal("the token's login state is a user's after the daemon dropped its PIN")
	}
	tok, err := d.client.GetToken(testCtx(t), &signerv1.GetTokenRequest{Token: "t1"})
	if err != nil {
		t.Fatal(err)
	}
	if tok.GetLoggedIn() || !strings.Contains(tok.GetLoggedOutReason(), "refused the kept PIN") {
		t.Fatalf("token: logged in %v, reason %q; want logged out with the reason", tok.GetLoggedIn(), tok.GetLoggedOutReason())
	}
	if tok, err = d.client.LoginToken(testCtx(t), &signerv1.LoginTokenRequest{Token: "t1", Pin: newPIN}); err != nil || !tok.GetLoggedIn() {
		t.Fatalf("officer's login with the new PIN: %v, %v", tok, err)
	}
	if err := sign(); err != nil {
		t.Fatalf("sign after the officer's login: %v", err)
	}
}

// TestLogoutTokenPresentsNoPIN: the PIN is changed behind the daemon's
// back and the library is restarted under it (another component of the
// process finalizes it), so that the pool is empty when an officer logs
// the token out. LogoutToken makes no C_Login: the token counts no wrong
// try.
func TestLogoutTokenPresentsNoPIN(t *testing.T) {
	d := newDaemon(t)
	out := newOutsideApp(t, d.soft)
	out.setPIN(t, d.soft.UserPIN, []byte("changed-elsewhere"))
	if err := out.ctx.Finalize(); err != nil {
		t.Fatal(err)
	}
	// A status poll meets the finalized library: the module is
	// initialised again, with no session and no login.
	if _, err := d.client.GetToken(testCtx(t), &signerv1.GetTokenRequest{Token: "t1"}); err != nil {
		t.Fatal(err)
	}
	if st := d.hsmToken().Stats(); st.Open != 0 {
		t.Fatalf("%d sessions open after the library restart; want 0", st.Open)
	}
	attempts := d.hsmToken().Stats().LoginAttempts
	tok, err := d.client.LogoutToken(testCtx(t), &signerv1.LogoutTokenRequest{Token: "t1"})
	if err != nil {
		t.Fatalf("LogoutToken: %v", err)
	}
	if n := d.hsmToken().Stats().LoginAttempts - attempts; n != 0 {
		t.Fatalf("LogoutToken made %d C_Login; want none", n)
	}
	if tok.GetLoggedIn() || tok.GetPin().GetCountLow() {
		t.Fatalf("token after LogoutToken: logged in %v, count low %v; want logged out, no wrong try", tok.GetLoggedIn(), tok.GetPin().GetCountLow())
	}
	if out.loggedIn(t) {
		t.Fatal("the token is still logged in after LogoutToken")
	}
}
