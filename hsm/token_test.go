package hsm

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/miekg/pkcs11"

	softhsmtest "github.com/hsmsigner/hsmsigner/softhsm-test"
)

func TestOpenModuleErrors(t *testing.T) {
	dir := t.TempDir()
	notLib := filepath.Join(dir, "not-a-library.so")
	if err := os.WriteFile(notLib, []byte("not ELF"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, path string
	}{
		{"missing file", filepath.Join(dir, "nope.so")},
		{"directory", dir},
		{"not a library", notLib},
		{"empty path", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := OpenModule(testContext(t), tt.path)
			if !errors.Is(err, ErrModuleLoad) {
				t.Fatalf("OpenModule(%q) = %v, %v; want ErrModuleLoad", tt.path, m, err)
			}
		})
	}
}

func TestOpenModuleTwiceInOneProcess(t *testing.T) {
	e := newEnv(t, nil)
	_, err := OpenModule(testContext(t), e.soft.ModulePath)
	if !errors.Is(err, ErrModuleLoad) || !isRV(err, pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
		t.Fatalf("second OpenModule: %v; want ErrModuleLoad wrapping CKR_CRYPTOKI_ALREADY_INITIALIZED", err)
	}
	// The first module still works.
	if _, err := e.tok.Info(testContext(t)); err != nil {
		t.Fatalf("first module broken after the refused second open: %v", err)
	}
}

func TestFindToken(t *testing.T) {
	e := newEnv(t, nil)
	ctx := testContext(t)
	tests := []struct {
		name    string
		sel     string
		wantErr error
	}{
		{"by label", e.soft.Label, nil},
		{"by label prefix", "label:" + e.soft.Label, nil},
		{"by serial", "serial:" + e.soft.Serial, nil},
		{"by URI", "pkcs11:token=" + e.soft.Label + ";serial=" + e.soft.Serial, nil},
		{"unknown label", "no-such-token", ErrTokenNotFound},
		{"label and wrong serial", "pkcs11:token=" + e.soft.Label + ";serial=0000", ErrTokenNotFound},
		{"URI without token", "pkcs11:object=x", ErrInvalidURI},
		{"empty", "", ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sel, err := ParseTokenSelector(tt.sel)
			if err == nil {
				var tok *Token
				tok, err = e.mod.Token(ctx, sel)
				if err == nil && tok != e.tok {
					t.Fatalf("Token(%q) returned a second *Token for the same token", tt.sel)
				}
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Token(%q) error = %v, want %v", tt.sel, err, tt.wantErr)
			}
		})
	}
}

func TestTokenInfo(t *testing.T) {
	e := newEnv(t, nil)
	info, err := e.tok.Info(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	if info.Label != e.soft.Label || info.Serial != e.soft.Serial {
		t.Errorf("info names %q/%q, want %q/%q", info.Label, info.Serial, e.soft.Label, e.soft.Serial)
	}
	if !info.Initialized || !info.LoginRequired {
		t.Errorf("info = %+v; want initialised and login required", info)
	}
	if info.PIN != (PINStatus{}) {
		t.Errorf("PIN status %+v after a good login; want nothing reduced", info.PIN)
	}
	if !e.tok.LoggedIn() {
		t.Error("LoggedIn() = false after Login")
	}
	slots, err := e.mod.Slots(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, s := range slots {
		found = found || s.Token.Serial == e.soft.Serial
	}
	if !found {
		t.Errorf("Slots() = %+v; the token is missing", slots)
	}
	if mi := e.mod.Info(); !mi.Ready || mi.Manufacturer == "" {
		t.Errorf("module info %+v; want ready with a manufacturer", mi)
	}
}

func TestLoginWrongPIN(t *testing.T) {
	e := newEnv(t, nil)
	ctx := testContext(t)
	if err := e.tok.Logout(ctx); err != nil {
		t.Fatal(err)
	}
	err := e.tok.Login(ctx, []byte("wrong-pin"))
	if !errors.Is(err, ErrPINIncorrect) {
		t.Fatalf("Login with a wrong PIN: %v; want ErrPINIncorrect", err)
	}
	var pe *PINError
	if !errors.As(err, &pe) || !pe.Status.CountLow {
		t.Fatalf("error %v: want a *PINError reporting the count low", err)
	}
	if bytes.Contains([]byte(err.Error()), []byte("wrong-pin")) {
		t.Fatal("the error message contains the PIN")
	}
	if e.tok.LoggedIn() {
		t.Fatal("LoggedIn() after a refused PIN")
	}
	// Logged out, the keys are invisible and signing says why.
	if _, err := e.tok.Sign(ctx, []byte{1}, mustAlg(t, "ES256"), digestOf("x")); !errors.Is(err, ErrNotLoggedIn) {
		t.Fatalf("Sign after a failed login: %v; want ErrNotLoggedIn", err)
	}
	if err := e.tok.Login(ctx, e.soft.UserPIN); err != nil {
		t.Fatalf("Login with the right PIN after a wrong one: %v", err)
	}
	info, err := e.tok.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.PIN.CountLow {
		t.Error("count still low after a good login")
	}
}

func TestLoginLockedPIN(t *testing.T) {
	// SoftHSM never locks a PIN, so the lock comes from the fault layer.
	e := newEnv(t, nil)
	f := e.fault
	ctx := testContext(t)
	if err := e.tok.Logout(ctx); err != nil {
		t.Fatal(err)
	}
	f.failNext("Login", pkcs11.CKR_PIN_LOCKED, 1)
	err := e.tok.Login(ctx, e.soft.UserPIN)
	if !errors.Is(err, ErrPINLocked) || errors.Is(err, ErrPINIncorrect) {
		t.Fatalf("Login on a locked token: %v; want ErrPINLocked only", err)
	}
	var pe *PINError
	if !errors.As(err, &pe) || !pe.Status.Locked {
		t.Fatalf("error %v: want a *PINError with Locked", err)
	}
	e.assertNoLeakedSessions(t)
}

func TestLoginEmptyPIN(t *testing.T) {
	e := newEnv(t, nil)
	if err := e.tok.Login(testContext(t), nil); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("Login(nil): %v; want ErrInvalidArgument", err)
	}
}

func TestLogoutZeroesKeptPIN(t *testing.T) {
	e := newEnv(t, nil)
	ctx := testContext(t)
	e.tok.loginMu.Lock()
	kept := e.tok.pin
	e.tok.loginMu.Unlock()
	if !bytes.Equal(kept, e.soft.UserPIN) {
		t.Fatal("the kept PIN is not the PIN logged in with")
	}
	if err := e.tok.Logout(ctx); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(kept, make([]byte, len(kept))) {
		t.Fatal("Logout left the kept PIN's bytes in memory")
	}
	if e.tok.LoggedIn() {
		t.Fatal("LoggedIn() after Logout")
	}
}

func TestChangePIN(t *testing.T) {
	e := newEnv(t, nil)
	ctx := testContext(t)
	newPIN := []byte("987654")
	// Logged in, an old PIN that is not the kept one is refused without
	// being tried.
	if err := e.tok.ChangePIN(ctx, []byte("bad-old"), newPIN); !errors.Is(err, ErrAlreadyLoggedIn) {
		t.Fatalf("ChangePIN with a wrong old PIN while logged in: %v; want ErrAlreadyLoggedIn", err)
	}
	if e.fault.count("SetPIN") != 0 {
		t.Fatal("the wrong old PIN was tried on the token")
	}
	if err := e.tok.ChangePIN(ctx, e.soft.UserPIN, newPIN); err != nil {
		t.Fatalf("ChangePIN: %v", err)
	}
	if !e.tok.LoggedIn() || !bytes.Equal(e.keptPIN(), newPIN) {
		t.Fatal("the kept PIN is not the new PIN after the change")
	}
	if err := e.tok.Logout(ctx); err != nil {
		t.Fatal(err)
	}
	// Logged out, the token judges the old PIN.
	if err := e.tok.ChangePIN(ctx, []byte("bad-old"), []byte("whatever")); !errors.Is(err, ErrPINIncorrect) {
		t.Fatalf("ChangePIN with a wrong old PIN while logged out: %v; want ErrPINIncorrect", err)
	}
	if err := e.tok.Login(ctx, e.soft.UserPIN); !errors.Is(err, ErrPINIncorrect) {
		t.Fatalf("Login with the old PIN after the change: %v; want ErrPINIncorrect", err)
	}
	if err := e.tok.Login(ctx, newPIN); err != nil {
		t.Fatalf("Login with the new PIN: %v", err)
	}
}

func TestInitToken(t *testing.T) {
	e := newEnv(t, nil)
	ctx := testContext(t)
	so, user := []byte("so-secret-1"), []byte("user-secret-1")
	info, err := e.mod.InitToken(ctx, "second-token", so, user)
	if err != nil {
		t.Fatalf("InitToken: %v", err)
	}
	if info.Label != "second-token" || info.Serial == "" || !info.Initialized {
		t.Fatalf("InitToken info = %+v", info)
	}
	tok, err := e.mod.Token(ctx, TokenSelector{Serial: info.Serial})
	if err != nil {
		t.Fatalf("finding the new token by serial: %v", err)
	}
	if err := tok.Login(ctx, user); err != nil {
		t.Fatalf("Login on the new token: %v", err)
	}
	if _, err := tok.GenerateKey(ctx, ECP256, "on-second"); err != nil {
		t.Fatalf("GenerateKey on the new token: %v", err)
	}
	if _, err := e.mod.InitToken(ctx, "", so, user); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("InitToken with no label: %v", err)
	}
}

func TestTwoTokensWithOneLabelAreAmbiguous(t *testing.T) {
	e := newEnv(t, nil)
	ctx := testContext(t)
	if _, err := e.mod.InitToken(ctx, e.soft.Label, []byte("so-1234"), []byte("user-1234")); err != nil {
		t.Fatal(err)
	}
	_, err := e.mod.Token(ctx, TokenSelector{Label: e.soft.Label + "-fresh-lookup"})
	if !errors.Is(err, ErrTokenNotFound) {
		t.Fatalf("unrelated label: %v", err)
	}
	// A fresh selector by label alone matches both.
	_, _, err = findToken(e.mod.api, TokenSelector{Label: e.soft.Label})
	if !errors.Is(err, ErrAmbiguousToken) {
		t.Fatalf("label shared by two tokens: %v; want ErrAmbiguousToken", err)
	}
}

func TestCloseLogsOutAndZeroesPIN(t *testing.T) {
	soft := softhsmtest.New(t)
	ctx := testContext(t)
	m, err := OpenModule(ctx, soft.ModulePath)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := m.Token(ctx, TokenSelector{Label: soft.Label})
	if err != nil {
		t.Fatal(err)
	}
	if err := tok.Login(ctx, soft.UserPIN); err != nil {
		t.Fatal(err)
	}
	tok.loginMu.Lock()
	kept := tok.pin
	tok.loginMu.Unlock()
	if err := m.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if !bytes.Equal(kept, make([]byte, len(kept))) {
		t.Fatal("Close left the kept PIN in memory")
	}
	if tok.LoggedIn() {
		t.Fatal("LoggedIn() after Close")
	}
	if _, err := tok.Info(ctx); !errors.Is(err, ErrClosed) {
		t.Fatalf("Info after Close: %v; want ErrClosed", err)
	}
	if err := m.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}
