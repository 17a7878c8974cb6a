package hsm

import (
	"context"
	"crypto/ecdsa"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/pkcs11"
)

// fakeClock is a clock a test moves by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func faultyEnv(t *testing.T) (*testEnv, *faultyP11, *fakeClock) {
	clock := &fakeClock{now: time.Unix(1_800_000_000, 0)}
	e := newEnv(t, []ModuleOption{withClock(clock.Now), WithBackoff(time.Second, 8*time.Second)}, WithPoolSize(4))
	return e, e.fault, clock
}

// signOK signs and verifies with the Go verifier, failing the test on any
// error.
func signOK(t testing.TB, tok *Token, k Key, msg string) {
	t.Helper()
	alg := mustAlg(t, "SHA256withECDSA")
	if k.Type == KeyRSA {
		alg = mustAlg(t, "SHA256withRSA")
	}
	d := digestOf(msg)
	sig, err := tok.Sign(testContext(t), k.ID, alg, d)
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	if pub, ok := k.Public.(*ecdsa.PublicKey); ok && !ecdsa.VerifyASN1(pub, d, sig) {
		t.Fatal("ECDSA signature does not verify")
	}
}

func TestRecoverySessionHandleInvalidUnderLoad(t *testing.T) {
	e, f, _ := faultyEnv(t)
	k := e.genKey(t, ECP256, "load")
	const workers, perWorker = 4, 150
	var done atomic.Int64
	var once sync.Once
	invalidated := make(chan int, 1)
	f.onCall = func(name string) {
		if name == "Sign" && done.Load() >= 100 {
			once.Do(func() { invalidated <- f.invalidateOpenSessions() })
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, workers*perWorker)
	for w := range workers {
		wg.Go(func() {
			for i := range perWorker {
				d := digestOf(string(rune('a'+w)) + string(rune(i)))
				sig, err := e.tok.Sign(context.Background(), k.ID, mustAlg(t, "ES256"), d)
				if err != nil {
					errs <- err
					continue
				}
				if !ecdsa.VerifyASN1(k.Public.(*ecdsa.PublicKey), d, sig) {
					errs <- errors.New("bad signature")
				}
				done.Add(1)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("a sign failed although each session broke only once: %v", err)
	}
	select {
	case n := <-invalidated:
		if n == 0 {
			t.Fatal("no session was open when the fault was injected")
		}
	default:
		t.Fatal("the fault was never injected")
	}
	if got := done.Load(); got != workers*perWorker {
		t.Fatalf("%d signatures, want %d", got, workers*perWorker)
	}
	e.assertNoLeakedSessions(t)
}

func TestRecoveryDeviceRemovedAndBack(t *testing.T) {
	e, f, clock := faultyEnv(t)
	k := e.genKey(t, ECP256, "removable")
	signOK(t, e.tok, k, "before")
	genBefore := e.mod.Info().Generation

	f.setRemoved(true)
	_, err := e.tok.Sign(testContext(t), k.ID, mustAlg(t, "ES256"), digestOf("gone"))
	if !errors.Is(err, ErrUnavailable) || !isRV(err, pkcs11.CKR_DEVICE_REMOVED) {
		t.Fatalf("Sign with the device removed: %v; want ErrUnavailable naming DEVICE_REMOVED", err)
	}
	if e.mod.Info().Ready {
		t.Fatal("module reports ready while the device is gone")
	}
	// Within the backoff, calls fail at once without touching the library.
	calls := f.count("GetSlotList")
	if _, err := e.tok.Sign(testContext(t), k.ID, mustAlg(t, "ES256"), digestOf("still gone")); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Sign during backoff: %v; want ErrUnavailable", err)
	}
	if f.count("GetSlotList") != calls {
		t.Fatal("a call during the backoff tried the library again")
	}

	f.setRemoved(false)
	if _, err := e.tok.Sign(testContext(t), k.ID, mustAlg(t, "ES256"), digestOf("too early")); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Sign before the backoff ends: %v; want ErrUnavailable", err)
	}
	clock.Advance(2 * time.Second)
	signOK(t, e.tok, k, "back")
	if mi := e.mod.Info(); !mi.Ready || mi.Generation <= genBefore {
		t.Fatalf("module info %+v after recovery; want ready in a new generation", mi)
	}
	if e.tok.Stats().Logins == 0 {
		t.Fatal("no re-login with the kept PIN after the device came back")
	}
	e.assertNoLeakedSessions(t)
}

func TestRecoveryBackoffGrows(t *testing.T) {
	e, f, clock := faultyEnv(t)
	k := e.genKey(t, ECP256, "k")
	f.setRemoved(true)
	waits := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 8 * time.Second}
	if _, err := e.tok.Sign(testContext(t), k.ID, mustAlg(t, "ES256"), digestOf("x")); !errors.Is(err, ErrUnavailable) {
		t.Fatal(err)
	}
	for i, w := range waits {
		clock.Advance(w - time.Millisecond)
		before := f.count("Initialize")
		_, _ = e.tok.Sign(testContext(t), k.ID, mustAlg(t, "ES256"), digestOf("x"))
		if f.count("Initialize") != before {
			t.Fatalf("attempt %d: tried again before the %s backoff ended", i, w)
		}
		clock.Advance(time.Millisecond)
		_, _ = e.tok.Sign(testContext(t), k.ID, mustAlg(t, "ES256"), digestOf("x"))
		if f.count("Initialize") != before+1 {
			t.Fatalf("attempt %d: did not try again once the %s backoff ended", i, w)
		}
	}
}

func TestRecoveryUserNotLoggedInAfterTokenReset(t *testing.T) {
	e, f, _ := faultyEnv(t)
	k := e.genKey(t, ECP256, "k")
	signOK(t, e.tok, k, "before")
	// The token resets: its login is gone (a real C_Logout behind the
	// pool's back) and the next operation reports USER_NOT_LOGGED_IN.
	f.resetTokenAt("SignInit")
	logins := e.tok.Stats().Logins
	signOK(t, e.tok, k, "after reset")
	if e.tok.Stats().Logins != logins+1 {
		t.Fatalf("re-logins %d, want %d", e.tok.Stats().Logins, logins+1)
	}
	e.assertNoLeakedSessions(t)
}

func TestRecoveryNoKeptPINMeansNotLoggedIn(t *testing.T) {
	e, _, _ := faultyEnv(t)
	k := e.genKey(t, ECP256, "k")
	if err := e.tok.Logout(testContext(t)); err != nil {
		t.Fatal(err)
	}
	_, err := e.tok.Sign(testContext(t), k.ID, mustAlg(t, "ES256"), digestOf("x"))
	if !errors.Is(err, ErrNotLoggedIn) {
		t.Fatalf("Sign after Logout: %v; want ErrNotLoggedIn", err)
	}
	e.assertNoLeakedSessions(t)
}

func TestRecoveryAllSessionsClosedBehindThePool(t *testing.T) {
	e := newEnv(t, nil, WithPoolSize(3))
	k := e.genKey(t, RSA2048, "rsa")
	signOK(t, e.tok, k, "before")
	logins := e.tok.Stats().Logins
	// Another part of the process closes every session of the slot; the
	// token logs out with the last one.
	if err := e.mod.api.CloseAllSessions(e.tok.slot); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		signOK(t, e.tok, k, "after "+string(rune('0'+i)))
	}
	if e.tok.Stats().Logins <= logins {
		t.Fatal("signing resumed without logging in again: the test did not exercise recovery")
	}
	e.assertNoLeakedSessions(t)
}

func TestRecoveryModuleFinalizedBehindThePool(t *testing.T) {
	e := newEnv(t, nil)
	k := e.genKey(t, ECP256, "ec")
	signOK(t, e.tok, k, "before")
	gen := e.mod.Info().Generation
	if err := e.mod.api.Finalize(); err != nil {
		t.Fatal(err)
	}
	signOK(t, e.tok, k, "after")
	if got := e.mod.Info().Generation; got != gen+1 {
		t.Fatalf("generation %d, want %d: the module was not initialised again", got, gen+1)
	}
	e.assertNoLeakedSessions(t)
}

// TestRecoveryDownReasonStaysBounded: a module that stays down is tried
// again and again; its reason names the latest failure and the first
// cause once, rather than nesting every earlier attempt's reason (which
// grew without end over a long outage, in every error and log line).
func TestRecoveryDownReasonStaysBounded(t *testing.T) {
	e, f, clock := faultyEnv(t)
	k := e.genKey(t, ECP256, "k")
	f.setRemoved(true)
	var lens []int
	for range 12 {
		_, err := e.tok.Sign(testContext(t), k.ID, mustAlg(t, "ES256"), digestOf("x"))
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("Sign while removed: %v; want ErrUnavailable", err)
		}
		lens = append(lens, len(e.mod.Info().Down))
		clock.Advance(8 * time.Second)
	}
	if first, last := lens[1], lens[len(lens)-1]; last > first {
		t.Fatalf("the down reason grew from %d to %d bytes over the attempts %v: %q", first, last, lens, e.mod.Info().Down)
	}
}

// TestCheckRecoversWithoutCalls: once the device is back and the backoff
// has passed, Check (a readiness probe) initialises the module again by
// itself; no signing call is needed for the daemon to report ready.
func TestCheckRecoversWithoutCalls(t *testing.T) {
	e, f, clock := faultyEnv(t)
	k := e.genKey(t, ECP256, "k")
	f.setRemoved(true)
	if _, err := e.tok.Sign(testContext(t), k.ID, mustAlg(t, "ES256"), digestOf("x")); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Sign while removed: %v; want ErrUnavailable", err)
	}
	if err := e.mod.Check(); !errors.Is(err, ErrUnavailable) || e.mod.Info().Ready {
		t.Fatalf("Check while removed: %v, ready %v; want ErrUnavailable", err, e.mod.Info().Ready)
	}
	f.setRemoved(false)
	if err := e.mod.Check(); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Check within the backoff: %v; want ErrUnavailable without trying", err)
	}
	clock.Advance(time.Minute)
	if err := e.mod.Check(); err != nil {
		t.Fatalf("Check once the device is back: %v", err)
	}
	if mi := e.mod.Info(); !mi.Ready || mi.Down != "" {
		t.Fatalf("after Check: %+v; want ready", mi)
	}
	signOK(t, e.tok, k, "after")
}

// TestCallsDoNotQueueBehindAStuckRecovery: a call blocks inside the
// library (as p11-kit's client can when its server dies under several
// threads) while another call meets a device error. The recovery must
// wait for the blocked call before it finalizes the library; meanwhile
// other calls and Info answer at once, UNAVAILABLE and not ready, instead
// of queueing behind it. When the blocked call returns, the module
// recovers and signs.
func TestCallsDoNotQueueBehindAStuckRecovery(t *testing.T) {
	e, f, _ := faultyEnv(t)
	k := e.genKey(t, ECP256, "k")
	signOK(t, e.tok, k, "before")
	alg := mustAlg(t, "ES256")

	release, entered := make(chan struct{}), make(chan struct{})
	var blocked atomic.Bool
	f.mu.Lock()
	f.onCall = func(name string) {
		if name == "Sign" && blocked.CompareAndSwap(false, true) {
			close(entered)
			<-release
		}
	}
	f.mu.Unlock()
	released := false
	defer func() {
		if !released {
			close(release)
		}
	}()
	stuck := make(chan error, 1)
	go func() {
		_, err := e.tok.Sign(testContext(t), k.ID, alg, digestOf("stuck"))
		stuck <- err
	}()
	<-entered

	f.failNext("SignInit", pkcs11.CKR_DEVICE_ERROR, 1)
	failing := make(chan error, 1)
	go func() {
		_, err := e.tok.Sign(testContext(t), k.ID, alg, digestOf("device error"))
		failing <- err
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !e.mod.recovering.Load() {
		if time.Now().After(deadline) {
			t.Fatal("the device error set off no recovery")
		}
		time.Sleep(time.Millisecond)
	}

	answered := make(chan error, 1)
	go func() {
		_, err := e.tok.Sign(testContext(t), k.ID, alg, digestOf("meanwhile"))
		answered <- err
	}()
	select {
	case err := <-answered:
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("Sign during the recovery: %v; want ErrUnavailable", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Sign during the recovery queued behind it instead of answering")
	}
	info := make(chan ModuleInfo, 1)
	go func() { info <- e.mod.Info() }()
	select {
	case mi := <-info:
		if mi.Ready || mi.Down == "" {
			t.Fatalf("Info during the recovery: %+v; want not ready, with a reason", mi)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Info during the recovery queued behind it instead of answering")
	}

	released = true
	close(release)
	<-stuck
	<-failing
	signOK(t, e.tok, k, "after")
	e.assertNoLeakedSessions(t)
}
