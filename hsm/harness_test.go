package hsm

import (
	"context"
	"crypto/sha256"
	"testing"
	"time"

	softhsmtest "github.com/hsmsigner/hsmsigner/softhsm-test"
)

// testEnv is one test's module and logged-in token on a fresh SoftHSM
// token.
type testEnv struct {
	soft  *softhsmtest.Token
	mod   *Module
	tok   *Token
	fault *faultyP11 // every call passes through it; it injects nothing unless told
}

// newEnv makes a fresh SoftHSM token, opens the module through a
// faultyP11 (which counts sessions and injects faults when told) and the
// token, and logs in. The module is closed when the test ends.
func newEnv(t testing.TB, mopts []ModuleOption, topts ...TokenOption) *testEnv {
	t.Helper()
	soft := softhsmtest.New(t)
	ctx := testContext(t)
	var f *faultyP11
	mopts = append([]ModuleOption{withWrapper(func(p p11) p11 { f = newFaulty(p); return f })}, mopts...)
	m, err := OpenModule(ctx, soft.ModulePath, mopts...)
	if err != nil {
		t.Fatalf("OpenModule: %v", err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("Module.Close: %v", err)
		}
	})
	tok, err := m.Token(ctx, TokenSelector{Label: soft.Label}, topts...)
	if err != nil {
		t.Fatalf("Token: %v", err)
	}
	if err := tok.Login(ctx, soft.UserPIN); err != nil {
		t.Fatalf("Login: %v", err)
	}
	return &testEnv{soft: soft, mod: m, tok: tok, fault: f}
}

// testContext returns a context that ends with the test, bounded so that a
// hung PKCS#11 call fails the test instead of the whole run.
func testContext(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// genKey generates a key or fails the test.
func (e *testEnv) genKey(t testing.TB, spec KeySpec, label string) Key {
	t.Helper()
	k, err := e.tok.GenerateKey(testContext(t), spec, label)
	if err != nil {
		t.Fatalf("GenerateKey(%s, %q): %v", spec, label, err)
	}
	return k
}

func digestOf(s string) []byte {
	d := sha256.Sum256([]byte(s))
	return d[:]
}

// assertNoLeakedSessions checks that the library has exactly as many open
// sessions as the pool holds, and that none is in use. (SoftHSM does not
// report a session count, so the count comes from the calls made.)
func (e *testEnv) assertNoLeakedSessions(t testing.TB) {
	t.Helper()
	st := e.tok.Stats()
	if st.Open != st.Idle {
		t.Errorf("pool: %d sessions open but only %d idle: a session was not given back", st.Open, st.Idle)
	}
	if n := e.fault.openSessions(); n != st.Open {
		t.Errorf("library has %d open sessions, pool holds %d: sessions leaked", n, st.Open)
	}
	if st.Open > st.Size {
		t.Errorf("pool holds %d sessions, more than its size %d", st.Open, st.Size)
	}
}
