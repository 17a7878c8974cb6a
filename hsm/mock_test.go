package hsm

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/miekg/pkcs11"
)

// mockP11 is a p11 whose methods are function fields, as boulder's
// pkcs11helpers.MockCtx is: each method calls the field named after it
// (InitializeFunc for Initialize, and so on) when it is set, and
// otherwise fails with an error wrapping errNotImplemented that names the
// call. It lets the recovery logic be tested call by call without a
// PKCS#11 library; SoftHSM stays the test bed for everything else.
type mockP11 struct {
	InitializeFunc        func(opts ...pkcs11.InitializeOption) error
	FinalizeFunc          func() error
	GetInfoFunc           func() (pkcs11.Info, error)
	GetSlotListFunc       func(tokenPresent bool) ([]uint, error)
	GetSlotInfoFunc       func(slotID uint) (pkcs11.SlotInfo, error)
	GetTokenInfoFunc      func(slotID uint) (pkcs11.TokenInfo, error)
	InitTokenFunc         func(slotID uint, pin string, label string) error
	InitPINFunc           func(sh pkcs11.SessionHandle, pin string) error
	SetPINFunc            func(sh pkcs11.SessionHandle, oldpin string, newpin string) error
	OpenSessionFunc       func(slotID uint, flags uint) (pkcs11.SessionHandle, error)
	CloseSessionFunc      func(sh pkcs11.SessionHandle) error
	CloseAllSessionsFunc  func(slotID uint) error
	GetSessionInfoFunc    func(sh pkcs11.SessionHandle) (pkcs11.SessionInfo, error)
	LoginFunc             func(sh pkcs11.SessionHandle, userType uint, pin string) error
	LogoutFunc            func(sh pkcs11.SessionHandle) error
	CreateObjectFunc      func(sh pkcs11.SessionHandle, temp []*pkcs11.Attribute) (pkcs11.ObjectHandle, error)
	DestroyObjectFunc     func(sh pkcs11.SessionHandle, oh pkcs11.ObjectHandle) error
	GetAttributeValueFunc func(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, a []*pkcs11.Attribute) ([]*pkcs11.Attribute, error)
	SetAttributeValueFunc func(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, a []*pkcs11.Attribute) error
	FindObjectsInitFunc   func(sh pkcs11.SessionHandle, temp []*pkcs11.Attribute) error
	FindObjectsFunc       func(sh pkcs11.SessionHandle, max int) ([]pkcs11.ObjectHandle, bool, error)
	FindObjectsFinalFunc  func(sh pkcs11.SessionHandle) error
	SignInitFunc          func(sh pkcs11.SessionHandle, mech []*pkcs11.Mechanism, o pkcs11.ObjectHandle) error
	SignFunc              func(sh pkcs11.SessionHandle, message []byte) ([]byte, error)
	GenerateKeyPairFunc   func(sh pkcs11.SessionHandle, mech []*pkcs11.Mechanism, public, private []*pkcs11.Attribute) (pkcs11.ObjectHandle, pkcs11.ObjectHandle, error)
	GenerateRandomFunc    func(sh pkcs11.SessionHandle, length int) ([]byte, error)
	DestroyFunc           func()
}

// errNotImplemented is what a mockP11 method whose field is unset
// answers.
var errNotImplemented = errors.New("mockP11: not implemented")

// notImplemented is the error of a mockP11 method whose field is unset.
func notImplemented(call string) error {
	return fmt.Errorf("%w: C_%s (set %sFunc)", errNotImplemented, call, call)
}

var _ p11 = (*mockP11)(nil)

// Destroy calls DestroyFunc when it is set; it has no error to answer.
func (m *mockP11) Destroy() {
	if m.DestroyFunc != nil {
		m.DestroyFunc()
	}
}

// Initialize calls InitializeFunc, or fails as not implemented.
func (m *mockP11) Initialize(opts ...pkcs11.InitializeOption) error {
	if m.InitializeFunc == nil {
		return notImplemented("Initialize")
	}
	return m.InitializeFunc(opts...)
}

// Finalize calls FinalizeFunc, or fails as not implemented.
func (m *mockP11) Finalize() error {
	if m.FinalizeFunc == nil {
		return notImplemented("Finalize")
	}
	return m.FinalizeFunc()
}

// GetInfo calls GetInfoFunc, or fails as not implemented.
func (m *mockP11) GetInfo() (pkcs11.Info, error) {
	if m.GetInfoFunc == nil {
		return pkcs11.Info{}, notImplemented("GetInfo")
	}
	return m.GetInfoFunc()
}

// GetSlotList calls GetSlotListFunc, or fails as not implemented.
func (m *mockP11) GetSlotList(tokenPresent bool) ([]uint, error) {
	if m.GetSlotListFunc == nil {
		return nil, notImplemented("GetSlotList")
	}
	return m.GetSlotListFunc(tokenPresent)
}

// GetSlotInfo calls GetSlotInfoFunc, or fails as not implemented.
func (m *mockP11) GetSlotInfo(slotID uint) (pkcs11.SlotInfo, error) {
	if m.GetSlotInfoFunc == nil {
		return pkcs11.SlotInfo{}, notImplemented("GetSlotInfo")
	}
	return m.GetSlotInfoFunc(slotID)
}

// GetTokenInfo calls GetTokenInfoFunc, or fails as not implemented.
func (m *mockP11) GetTokenInfo(slotID uint) (pkcs11.TokenInfo, error) {
	if m.GetTokenInfoFunc == nil {
		return pkcs11.TokenInfo{}, notImplemented("GetTokenInfo")
	}
	return m.GetTokenInfoFunc(slotID)
}

// InitToken calls InitTokenFunc, or fails as not implemented.
func (m *mockP11) InitToken(slotID uint, pin string, label string) error {
	if m.InitTokenFunc == nil {
		return notImplemented("InitToken")
	}
	return m.InitTokenFunc(slotID, pin, label)
}

// InitPIN calls InitPINFunc, or fails as not implemented.
func (m *mockP11) InitPIN(sh pkcs11.SessionHandle, pin string) error {
	if m.InitPINFunc == nil {
		return notImplemented("InitPIN")
	}
	return m.InitPINFunc(sh, pin)
}

// SetPIN calls SetPINFunc, or fails as not implemented.
func (m *mockP11) SetPIN(sh pkcs11.SessionHandle, oldpin string, newpin string) error {
	if m.SetPINFunc == nil {
		return notImplemented("SetPIN")
	}
	return m.SetPINFunc(sh, oldpin, newpin)
}

// OpenSession calls OpenSessionFunc, or fails as not implemented.
func (m *mockP11) OpenSession(slotID uint, flags uint) (pkcs11.SessionHandle, error) {
	if m.OpenSessionFunc == nil {
		return 0, notImplemented("OpenSession")
	}
	return m.OpenSessionFunc(slotID, flags)
}

// CloseSession calls CloseSessionFunc, or fails as not implemented.
func (m *mockP11) CloseSession(sh pkcs11.SessionHandle) error {
	if m.CloseSessionFunc == nil {
		return notImplemented("CloseSession")
	}
	return m.CloseSessionFunc(sh)
}

// CloseAllSessions calls CloseAllSessionsFunc, or fails as not implemented.
func (m *mockP11) CloseAllSessions(slotID uint) error {
	if m.CloseAllSessionsFunc == nil {
		return notImplemented("CloseAllSessions")
	}
	return m.CloseAllSessionsFunc(slotID)
}

// GetSessionInfo calls GetSessionInfoFunc, or fails as not implemented.
func (m *mockP11) GetSessionInfo(sh pkcs11.SessionHandle) (pkcs11.SessionInfo, error) {
	if m.GetSessionInfoFunc == nil {
		return pkcs11.SessionInfo{}, notImplemented("GetSessionInfo")
	}
	return m.GetSessionInfoFunc(sh)
}

// Login calls LoginFunc, or fails as not implemented.
func (m *mockP11) Login(sh pkcs11.SessionHandle, userType uint, pin string) error {
	if m.LoginFunc == nil {
		return notImplemented("Login")
	}
	return m.LoginFunc(sh, userType, pin)
}

// Logout calls LogoutFunc, or fails as not implemented.
func (m *mockP11) Logout(sh pkcs11.SessionHandle) error {
	if m.LogoutFunc == nil {
		return notImplemented("Logout")
	}
	return m.LogoutFunc(sh)
}

// CreateObject calls CreateObjectFunc, or fails as not implemented.
func (m *mockP11) CreateObject(sh pkcs11.SessionHandle, temp []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	if m.CreateObjectFunc == nil {
		return 0, notImplemented("CreateObject")
	}
	return m.CreateObjectFunc(sh, temp)
}

// DestroyObject calls DestroyObjectFunc, or fails as not implemented.
func (m *mockP11) DestroyObject(sh pkcs11.SessionHandle, oh pkcs11.ObjectHandle) error {
	if m.DestroyObjectFunc == nil {
		return notImplemented("DestroyObject")
	}
	return m.DestroyObjectFunc(sh, oh)
}

// GetAttributeValue calls GetAttributeValueFunc, or fails as not implemented.
func (m *mockP11) GetAttributeValue(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, a []*pkcs11.Attribute) ([]*pkcs11.Attribute, error) {
	if m.GetAttributeValueFunc == nil {
		return nil, notImplemented("GetAttributeValue")
	}
	return m.GetAttributeValueFunc(sh, o, a)
}

// SetAttributeValue calls SetAttributeValueFunc, or fails as not implemented.
func (m *mockP11) SetAttributeValue(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, a []*pkcs11.Attribute) error {
	if m.SetAttributeValueFunc == nil {
		return notImplemented("SetAttributeValue")
	}
	return m.SetAttributeValueFunc(sh, o, a)
}

// FindObjectsInit calls FindObjectsInitFunc, or fails as not implemented.
func (m *mockP11) FindObjectsInit(sh pkcs11.SessionHandle, temp []*pkcs11.Attribute) error {
	if m.FindObjectsInitFunc == nil {
		return notImplemented("FindObjectsInit")
	}
	return m.FindObjectsInitFunc(sh, temp)
}

// FindObjects calls FindObjectsFunc, or fails as not implemented.
func (m *mockP11) FindObjects(sh pkcs11.SessionHandle, max int) ([]pkcs11.ObjectHandle, bool, error) {
	if m.FindObjectsFunc == nil {
		return nil, false, notImplemented("FindObjects")
	}
	return m.FindObjectsFunc(sh, max)
}

// FindObjectsFinal calls FindObjectsFinalFunc, or fails as not implemented.
func (m *mockP11) FindObjectsFinal(sh pkcs11.SessionHandle) error {
	if m.FindObjectsFinalFunc == nil {
		return notImplemented("FindObjectsFinal")
	}
	return m.FindObjectsFinalFunc(sh)
}

// SignInit calls SignInitFunc, or fails as not implemented.
func (m *mockP11) SignInit(sh pkcs11.SessionHandle, mech []*pkcs11.Mechanism, o pkcs11.ObjectHandle) error {
	if m.SignInitFunc == nil {
		return notImplemented("SignInit")
	}
	return m.SignInitFunc(sh, mech, o)
}

// Sign calls SignFunc, or fails as not implemented.
func (m *mockP11) Sign(sh pkcs11.SessionHandle, message []byte) ([]byte, error) {
	if m.SignFunc == nil {
		return nil, notImplemented("Sign")
	}
	return m.SignFunc(sh, message)
}

// GenerateKeyPair calls GenerateKeyPairFunc, or fails as not implemented.
func (m *mockP11) GenerateKeyPair(sh pkcs11.SessionHandle, mech []*pkcs11.Mechanism, public, private []*pkcs11.Attribute) (pkcs11.ObjectHandle, pkcs11.ObjectHandle, error) {
	if m.GenerateKeyPairFunc == nil {
		return 0, 0, notImplemented("GenerateKeyPair")
	}
	return m.GenerateKeyPairFunc(sh, mech, public, private)
}

// GenerateRandom calls GenerateRandomFunc, or fails as not implemented.
func (m *mockP11) GenerateRandom(sh pkcs11.SessionHandle, length int) ([]byte, error) {
	if m.GenerateRandomFunc == nil {
		return nil, notImplemented("GenerateRandom")
	}
	return m.GenerateRandomFunc(sh, length)
}

// TestMockP11NotImplemented checks that a method whose field is unset
// fails with errNotImplemented naming the call, and that a set field is
// called.
func TestMockP11NotImplemented(t *testing.T) {
	var m mockP11
	_, err := m.Sign(1, []byte("x"))
	if !errors.Is(err, errNotImplemented) || !strings.Contains(err.Error(), "C_Sign (set SignFunc)") {
		t.Fatalf("Sign with SignFunc unset: %v; want errNotImplemented naming C_Sign", err)
	}
	m.SignFunc = func(pkcs11.SessionHandle, []byte) ([]byte, error) { return []byte("sig"), nil }
	if sig, err := m.Sign(1, []byte("x")); err != nil || string(sig) != "sig" {
		t.Fatalf("Sign with SignFunc set = %q, %v; want its answer", sig, err)
	}
	m.Destroy() // unset: does nothing, and does not panic
}
