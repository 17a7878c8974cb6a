package hsm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/pkcs11"
)

// mockToken is one token behind a mockP11, with the state the recovery
// logic looks at: which sessions are open, whether the user is logged in
// (once per application, as PKCS#11 keeps it), and the errors the next
// calls of a name answer. It records every call in order.
type mockToken struct {
	mu       sync.Mutex
	calls    []string
	last     pkcs11.SessionHandle
	open     map[pkcs11.SessionHandle]bool
	loggedIn bool
	pin      string
	next     map[string][]uint // call name → return values of its next calls
}

// answer records a call and returns the error queued for it, if any.
func (k *mockToken) answer(call string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.calls = append(k.calls, call)
	name, _, _ := strings.Cut(call, "(")
	if q := k.next[name]; len(q) > 0 {
		k.next[name] = q[1:]
		return pkcs11.Error(q[0])
	}
	return nil
}

// fail makes the next calls of name (C_ name, without arguments) answer
// rvs in order.
func (k *mockToken) fail(name string, rvs ...uint) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.next[name] = append(k.next[name], rvs...)
}

// takeCalls returns the calls recorded since the last takeCalls.
func (k *mockToken) takeCalls() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	c := k.calls
	k.calls = nil
	return c
}

// p11 returns the mockP11 that simulates the token: one slot (1), with an
// initialised token labelled "mock" whose user PIN is k.pin.
func (k *mockToken) p11() *mockP11 {
	sh := func(h pkcs11.SessionHandle) string { return fmt.Sprintf("s%d", h) }
	return &mockP11{
		InitializeFunc: func(...pkcs11.InitializeOption) error { return k.answer("C_Initialize") },
		FinalizeFunc: func() error {
			err := k.answer("C_Finalize")
			k.mu.Lock()
			clear(k.open)
			k.loggedIn = false
			k.mu.Unlock()
			return err
		},
		GetInfoFunc: func() (pkcs11.Info, error) { return pkcs11.Info{}, k.answer("C_GetInfo") },
		GetSlotListFunc: func(bool) ([]uint, error) {
			if err := k.answer("C_GetSlotList"); err != nil {
				return nil, err
			}
			return []uint{1}, nil
		},
		GetTokenInfoFunc: func(uint) (pkcs11.TokenInfo, error) {
			return pkcs11.TokenInfo{Label: "mock" + strings.Repeat(" ", 28), SerialNumber: "0001            ",
				Flags: pkcs11.CKF_TOKEN_INITIALIZED | pkcs11.CKF_LOGIN_REQUIRED}, k.answer("C_GetTokenInfo")
		},
		OpenSessionFunc: func(uint, uint) (pkcs11.SessionHandle, error) {
			if err := k.answer("C_OpenSession"); err != nil {
				return 0, err
			}
			k.mu.Lock()
			defer k.mu.Unlock()
			k.last++
			k.open[k.last] = true
			k.calls[len(k.calls)-1] += "→" + sh(k.last)
			return k.last, nil
		},
		CloseSessionFunc: func(h pkcs11.SessionHandle) error {
			err := k.answer("C_CloseSession(" + sh(h) + ")")
			k.mu.Lock()
			delete(k.open, h)
			k.mu.Unlock()
			return err
		},
		GetSessionInfoFunc: func(h pkcs11.SessionHandle) (pkcs11.SessionInfo, error) {
			if err := k.answer("C_GetSessionInfo(" + sh(h) + ")"); err != nil {
				return pkcs11.SessionInfo{}, err
			}
			k.mu.Lock()
			defer k.mu.Unlock()
			si := pkcs11.SessionInfo{SlotID: 1, State: pkcs11.CKS_RW_PUBLIC_SESSION}
			if k.loggedIn {
				si.State = pkcs11.CKS_RW_USER_FUNCTIONS
			}
			return si, nil
		},
		LoginFunc: func(h pkcs11.SessionHandle, _ uint, pin string) error {
			if err := k.answer("C_Login(" + sh(h) + ")"); err != nil {
				return err
			}
			k.mu.Lock()
			defer k.mu.Unlock()
			switch {
			case pin != k.pin:
				return pkcs11.Error(pkcs11.CKR_PIN_INCORRECT)
			case k.loggedIn:
				return pkcs11.Error(pkcs11.CKR_USER_ALREADY_LOGGED_IN)
			}
			k.loggedIn = true
			return nil
		},
		LogoutFunc: func(h pkcs11.SessionHandle) error {
			if err := k.answer("C_Logout(" + sh(h) + ")"); err != nil {
				return err
			}
			k.mu.Lock()
			defer k.mu.Unlock()
			if !k.loggedIn {
				return pkcs11.Error(pkcs11.CKR_USER_NOT_LOGGED_IN)
			}
			k.loggedIn = false
			return nil
		},
		// C_GenerateRandom stands for any operation run by withSession.
		GenerateRandomFunc: func(h pkcs11.SessionHandle, n int) ([]byte, error) {
			if err := k.answer("C_GenerateRandom(" + sh(h) + ")"); err != nil {
				return nil, err
			}
			return make([]byte, n), nil
		},
	}
}

// newMockToken returns a module and token over a mockToken, the token
// logged in with its PIN when login is true, with the calls made so far
// taken.
func newMockToken(t *testing.T, login bool) (*mockToken, *Module, *Token) {
	t.Helper()
	ctx := testContext(t)
	k := &mockToken{open: map[pkcs11.SessionHandle]bool{}, next: map[string][]uint{}, pin: "1234"}
	m := &Module{
		path: "mock.so", log: slog.New(slog.DiscardHandler), api: k.p11(),
		opts: moduleOptions{minBackoff: time.Second, maxBackoff: time.Minute, now: time.Now},
	}
	if err := m.initialize(); err != nil {
		t.Fatalf("initialize: %v", err)
	}
	tok, err := m.Token(ctx, TokenSelector{Label: "mock"}, WithPoolSize(1)) // one session: which one serves a call is certain
	if err != nil {
		t.Fatalf("Token: %v", err)
	}
	if login {
		if err := tok.Login(ctx, []byte(k.pin)); err != nil {
			t.Fatalf("Login: %v", err)
		}
	}
	k.takeCalls()
	return k, m, tok
}

// operation runs one C_GenerateRandom through withSession.
func operation(ctx context.Context, tok *Token) error {
	return tok.withSession(ctx, func(s *session) error {
		_, err := tok.m.api.GenerateRandom(s.h, 8)
		return p11err("C_GenerateRandom", err)
	})
}

// TestRecoveryCallByCall checks the retry and classification logic of
// withSession and of the PIN operations against a mock token, call by
// call: a session error is retried once on a fresh session; a device
// error finalizes and initialises the module again and retries once;
// GENERAL_ERROR is a session failure, not a module failure; a lost login
// is logged in again with the kept PIN; a refused PIN is never presented
// again.
func TestRecoveryCallByCall(t *testing.T) {
	tests := []struct {
		name  string
		login bool                                        // the token is logged in (a PIN kept) first
		setup func(k *mockToken)                          // queues answers
		run   func(ctx context.Context, tok *Token) error // the call under test
		calls []string                                    // the PKCS#11 calls it makes, in order
		want  []error                                     // errors.Is each of these; none: success
		// loggedIn is whether a PIN is kept afterwards.
		loggedIn bool
		gen      uint64 // the module's generation afterwards
	}{
		{
			name: "no fault: one call on the idle session", login: true,
			run:      operation,
			calls:    []string{"C_GenerateRandom(s1)"},
			loggedIn: true, gen: 1,
		},
		{
			name: "session error: retried once on a fresh session", login: true,
			setup: func(k *mockToken) { k.fail("C_GenerateRandom", pkcs11.CKR_SESSION_HANDLE_INVALID) },
			run:   operation,
			calls: []string{"C_GenerateRandom(s1)", "C_CloseSession(s1)",
				"C_OpenSession→s2", "C_GetSessionInfo(s2)", "C_GenerateRandom(s2)"},
			loggedIn: true, gen: 1,
		},
		{
			name: "session error twice: unavailable, not tried a third time", login: true,
			setup: func(k *mockToken) {
				k.fail("C_GenerateRandom", pkcs11.CKR_SESSION_CLOSED, pkcs11.CKR_SESSION_HANDLE_INVALID)
			},
			run: operation,
			calls: []string{"C_GenerateRandom(s1)", "C_CloseSession(s1)",
				"C_OpenSession→s2", "C_GetSessionInfo(s2)", "C_GenerateRandom(s2)", "C_CloseSession(s2)"},
			want:     []error{ErrUnavailable, pkcs11.Error(pkcs11.CKR_SESSION_HANDLE_INVALID)},
			loggedIn: true, gen: 1,
		},
		{
			name: "GENERAL_ERROR: a session failure, the module is not finalized", login: true,
			setup: func(k *mockToken) { k.fail("C_GenerateRandom", pkcs11.CKR_GENERAL_ERROR) },
			run:   operation,
			calls: []string{"C_GenerateRandom(s1)", "C_CloseSession(s1)",
				"C_OpenSession→s2", "C_GetSessionInfo(s2)", "C_GenerateRandom(s2)"},
			loggedIn: true, gen: 1,
		},
		{
			name: "device error: module initialised again, logged in again, retried once", login: true,
			setup: func(k *mockToken) { k.fail("C_GenerateRandom", pkcs11.CKR_DEVICE_ERROR) },
			run:   operation,
			calls: []string{"C_GenerateRandom(s1)", "C_CloseSession(s1)",
				"C_Finalize", "C_Initialize", "C_GetInfo", "C_GetSlotList", "C_GetTokenInfo",
				"C_OpenSession→s2", "C_GetSessionInfo(s2)", "C_Login(s2)", "C_GenerateRandom(s2)"},
			loggedIn: true, gen: 2,
		},
		{
			name: "device error twice: unavailable after one recovery", login: true,
			setup: func(k *mockToken) {
				k.fail("C_GenerateRandom", pkcs11.CKR_DEVICE_REMOVED, pkcs11.CKR_DEVICE_REMOVED)
			},
			run: operation,
			calls: []string{"C_GenerateRandom(s1)", "C_CloseSession(s1)",
				"C_Finalize", "C_Initialize", "C_GetInfo", "C_GetSlotList", "C_GetTokenInfo",
				"C_OpenSession→s2", "C_GetSessionInfo(s2)", "C_Login(s2)", "C_GenerateRandom(s2)", "C_CloseSession(s2)"},
			want:     []error{ErrUnavailable, pkcs11.Error(pkcs11.CKR_DEVICE_REMOVED)},
			loggedIn: true, gen: 2,
		},
		{
			name: "stale handle: handles forgotten, retried on the same session", login: true,
			setup:    func(k *mockToken) { k.fail("C_GenerateRandom", pkcs11.CKR_OBJECT_HANDLE_INVALID) },
			run:      operation,
			calls:    []string{"C_GenerateRandom(s1)", "C_GenerateRandom(s1)"},
			loggedIn: true, gen: 1,
		},
		{
			name: "login lost: logged in again with the kept PIN on the session", login: true,
			setup: func(k *mockToken) {
				k.loggedIn = false // the token was reset
				k.fail("C_GenerateRandom", pkcs11.CKR_USER_NOT_LOGGED_IN)
			},
			run:      operation,
			calls:    []string{"C_GenerateRandom(s1)", "C_GetSessionInfo(s1)", "C_Login(s1)", "C_GenerateRandom(s1)"},
			loggedIn: true, gen: 1,
		},
		{
			name: "kept PIN refused at re-login: dropped, logged out, not presented again", login: true,
			setup: func(k *mockToken) {
				k.loggedIn = false
				k.pin = "changed elsewhere"
				k.fail("C_GenerateRandom", pkcs11.CKR_USER_NOT_LOGGED_IN)
			},
			run:   operation,
			calls: []string{"C_GenerateRandom(s1)", "C_GetSessionInfo(s1)", "C_Login(s1)", "C_GetTokenInfo", "C_Logout(s1)"},
			want:  []error{ErrNotLoggedIn, ErrPINIncorrect},
			gen:   1,
		},
		{
			name: "PIN expired answered by an operation: explained, not retried", login: true,
			setup: func(k *mockToken) { k.fail("C_GenerateRandom", pkcs11.CKR_PIN_EXPIRED) },
			run:   operation,
			calls: []string{"C_GenerateRandom(s1)"},
			want:  []error{ErrPINExpired, pkcs11.Error(pkcs11.CKR_PIN_EXPIRED)},
			// The token still holds the login: the PIN stays kept.
			loggedIn: true, gen: 1,
		},
		{
			name:  "officer's wrong PIN: one C_Login, not retried",
			run:   func(ctx context.Context, tok *Token) error { return tok.Login(ctx, []byte("4321")) },
			calls: []string{"C_OpenSession→s1", "C_GetSessionInfo(s1)", "C_Login(s1)", "C_GetTokenInfo"},
			want:  []error{ErrPINIncorrect, pkcs11.Error(pkcs11.CKR_PIN_INCORRECT)},
			gen:   1,
		},
		{
			name:  "officer's PIN locked: one C_Login, not retried",
			setup: func(k *mockToken) { k.fail("C_Login", pkcs11.CKR_PIN_LOCKED) },
			run:   func(ctx context.Context, tok *Token) error { return tok.Login(ctx, []byte("1234")) },
			calls: []string{"C_OpenSession→s1", "C_GetSessionInfo(s1)", "C_Login(s1)", "C_GetTokenInfo"},
			want:  []error{ErrPINLocked},
			gen:   1,
		},
		{
			name:  "session error on C_Login: the PIN is not presented again",
			setup: func(k *mockToken) { k.fail("C_Login", pkcs11.CKR_SESSION_HANDLE_INVALID) },
			run:   func(ctx context.Context, tok *Token) error { return tok.Login(ctx, []byte("1234")) },
			calls: []string{"C_OpenSession→s1", "C_GetSessionInfo(s1)", "C_Login(s1)", "C_CloseSession(s1)"},
			want:  []error{ErrUnavailable},
			gen:   1,
		},
		{
			name:  "session error before C_Login: the check is retried once, the login made once",
			setup: func(k *mockToken) { k.fail("C_GetSessionInfo", pkcs11.CKR_SESSION_CLOSED) },
			run:   func(ctx context.Context, tok *Token) error { return tok.Login(ctx, []byte("1234")) },
			calls: []string{"C_OpenSession→s1", "C_GetSessionInfo(s1)", "C_CloseSession(s1)",
				"C_OpenSession→s2", "C_GetSessionInfo(s2)", "C_Login(s2)"},
			loggedIn: true, gen: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, m, tok := newMockToken(t, tt.login)
			if tt.setup != nil {
				tt.setup(k) // no call is under way
			}
			err := tt.run(testContext(t), tok)
			if calls := k.takeCalls(); !slices.Equal(calls, tt.calls) {
				t.Errorf("calls:\n  %s\nwant:\n  %s", strings.Join(calls, "\n  "), strings.Join(tt.calls, "\n  "))
			}
			if len(tt.want) == 0 && err != nil {
				t.Errorf("error %v; want none", err)
			}
			for _, w := range tt.want {
				if !errors.Is(err, w) {
					t.Errorf("error %v; want it to wrap %v", err, w)
				}
			}
			if got := tok.LoggedIn(); got != tt.loggedIn {
				t.Errorf("LoggedIn() = %v, want %v", got, tt.loggedIn)
			}
			if got := m.Info().Generation; got != tt.gen {
				t.Errorf("module generation %d, want %d", got, tt.gen)
			}
			if st := tok.Stats(); st.Open != st.Idle || st.Open != len(k.open) {
				t.Errorf("pool holds %d sessions (%d idle), the token has %d open: a session leaked", st.Open, st.Idle, len(k.open))
			}
		})
	}
}
