package hsm

import (
	"maps"
	"slices"
	"sync"

	"github.com/miekg/pkcs11"
)

// faultyP11 wraps the real PKCS#11 calls and injects the faults SoftHSM
// cannot produce on demand: return values for chosen calls, session
// handles that turn invalid, a device that is removed and comes back.
type faultyP11 struct {
	p11

	mu      sync.Mutex
	next    map[string][]pkcs11.Error // call name → errors to return next
	after   map[string][]pkcs11.Error // call name → errors to return after the real call ran
	removed bool                      // every call fails with DEVICE_REMOVED
	invalid map[pkcs11.SessionHandle]bool
	open    map[pkcs11.SessionHandle]bool
	calls   map[string]int
	onCall  func(name string) // called before each checked call, unlocked
	resetAt string            // the next call of this name finds the token reset
	corrupt int               // signatures still to corrupt (one bit flipped) on their way out
	// genPriv, when set, rewrites the private key template of
	// C_GenerateKeyPair, as a module that does not make what it is asked.
	genPriv  func([]*pkcs11.Attribute) []*pkcs11.Attribute
	genPrivs [][]*pkcs11.Attribute // the private key templates C_GenerateKeyPair was given
	// unknown are attribute types the module does not know, as one
	// before PKCS#11 v2.40: C_GetAttributeValue asking for one answers
	// ATTRIBUTE_TYPE_INVALID, and C_GenerateKeyPair with one in the
	// private key template answers the return value mapped to it.
	unknown map[uint]uint
	// reported are values C_GetAttributeValue answers instead of the
	// token's, as an HSM whose attributes were changed outside PKCS#11
	// (its own administration tool) would answer.
	reported map[uint][]byte
	// uncarried are attribute types the module cannot hand over when
	// they hold a value: C_GetAttributeValue asking for one that is not
	// empty answers DEVICE_ERROR and the session stays sound, as p11-kit's
	// RPC 0.24 (Debian 12) does for CKA_ALLOWED_MECHANISMS.
	uncarried map[uint]bool
	// public is how many of the next C_GetSessionInfo calls report a
	// public session whatever the token's login state, as a module that
	// keeps logins per session would.
	public int
}

// forget makes the module not know attribute typ (see unknown);
// C_GenerateKeyPair with it in the private key template answers genRV.
func (f *faultyP11) forget(typ, genRV uint) {
	f.mu.Lock()
	f.unknown[typ] = genRV
	f.mu.Unlock()
}

// report makes C_GetAttributeValue answer v for typ, on any object; nil
// stops it.
func (f *faultyP11) report(typ uint, v []byte) {
	f.mu.Lock()
	if v == nil {
		delete(f.reported, typ)
	} else {
		f.reported[typ] = v
	}
	f.mu.Unlock()
}

// DestroyObject passes to the module unless failNext("DestroyObject")
// set an error for it. It injects no session faults: the recovery tests
// count on deletions that work.
func (f *faultyP11) DestroyObject(h pkcs11.SessionHandle, o pkcs11.ObjectHandle) error {
	f.mu.Lock()
	f.calls["DestroyObject"]++
	if q := f.next["DestroyObject"]; len(q) > 0 {
		f.next["DestroyObject"] = q[1:]
		f.mu.Unlock()
		return q[0]
	}
	f.mu.Unlock()
	return f.p11.DestroyObject(h, o)
}

// GetAttributeValue passes to the module, but for the attributes it
// does not know (forget) and the values it reports otherwise (report).
// It injects no session faults: the recovery tests count on reads that
// work.
func (f *faultyP11) GetAttributeValue(h pkcs11.SessionHandle, o pkcs11.ObjectHandle, a []*pkcs11.Attribute) ([]*pkcs11.Attribute, error) {
	f.mu.Lock()
	f.calls["GetAttributeValue"]++
	for _, x := range a {
		if _, ok := f.unknown[x.Type]; ok {
			f.mu.Unlock()
			return nil, pkcs11.Error(pkcs11.CKR_ATTRIBUTE_TYPE_INVALID)
		}
	}
	reported := maps.Clone(f.reported)
	f.mu.Unlock()
	uncarried := maps.Clone(f.uncarried)
	attrs, err := f.p11.GetAttributeValue(h, o, a)
	if err != nil {
		return nil, err
	}
	for _, x := range attrs {
		if uncarried[x.Type] && len(x.Value) > 0 {
			return nil, pkcs11.Error(pkcs11.CKR_DEVICE_ERROR)
		}
	}
	for i, x := range attrs {
		if v, ok := reported[x.Type]; ok {
			attrs[i] = &pkcs11.Attribute{Type: x.Type, Value: slices.Clone(v)}
		}
	}
	return attrs, nil
}

func newFaulty(p p11) *faultyP11 {
	return &faultyP11{p11: p, next: map[string][]pkcs11.Error{}, after: map[string][]pkcs11.Error{}, invalid: map[pkcs11.SessionHandle]bool{},
		open: map[pkcs11.SessionHandle]bool{}, calls: map[string]int{}, unknown: map[uint]uint{}, reported: map[uint][]byte{}, uncarried: map[uint]bool{}}
}

// failNext makes the next n calls of name return rv.
func (f *faultyP11) failNext(name string, rv uint, n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for range n {
		f.next[name] = append(f.next[name], pkcs11.Error(rv))
	}
}

// failAfter makes the next call of name run for real and then return rv,
// as a device that did the work and lost the answer.
func (f *faultyP11) failAfter(name string, rv uint) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.after[name] = append(f.after[name], pkcs11.Error(rv))
}

// checkAfter returns the error failAfter set for a call of name that ran.
func (f *faultyP11) checkAfter(name string, err error) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.after[name]) == 0 {
		return err
	}
	inj := f.after[name][0]
	f.after[name] = f.after[name][1:]
	return inj
}

// setRemoved makes the device disappear (every call but Finalize and
// Initialize fails with DEVICE_REMOVED) or come back.
func (f *faultyP11) setRemoved(removed bool) {
	f.mu.Lock()
	f.removed = removed
	f.mu.Unlock()
}

// invalidateOpenSessions makes every session open now invalid, as after a
// device reset, while the library keeps running.
func (f *faultyP11) invalidateOpenSessions() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	for h := range f.open {
		f.invalid[h] = true
	}
	return len(f.open)
}

func (f *faultyP11) count(name string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[name]
}

// check returns the injected error for a call of name on session h, if any.
func (f *faultyP11) check(name string, h pkcs11.SessionHandle, hasSession bool) error {
	f.mu.Lock()
	f.calls[name]++
	hook := f.onCall
	var err error
	switch {
	case f.removed:
		err = pkcs11.Error(pkcs11.CKR_DEVICE_REMOVED)
	case len(f.next[name]) > 0:
		err = f.next[name][0]
		f.next[name] = f.next[name][1:]
	case hasSession && f.invalid[h]:
		err = pkcs11.Error(pkcs11.CKR_SESSION_HANDLE_INVALID)
	case name == f.resetAt:
		// The token was reset: its login is gone (a real C_Logout of the
		// application) and this call says so.
		f.resetAt = ""
		f.mu.Unlock()
		_ = f.p11.Logout(h)
		f.mu.Lock()
		err = pkcs11.Error(pkcs11.CKR_USER_NOT_LOGGED_IN)
	}
	f.mu.Unlock()
	if hook != nil {
		hook(name)
	}
	return err
}

func (f *faultyP11) GetSlotList(present bool) ([]uint, error) {
	if err := f.check("GetSlotList", 0, false); err != nil {
		return nil, err
	}
	return f.p11.GetSlotList(present)
}

func (f *faultyP11) OpenSession(slot uint, flags uint) (pkcs11.SessionHandle, error) {
	if err := f.check("OpenSession", 0, false); err != nil {
		return 0, err
	}
	h, err := f.p11.OpenSession(slot, flags)
	if err == nil {
		f.mu.Lock()
		f.open[h] = true
		f.mu.Unlock()
	}
	return h, err
}

func (f *faultyP11) CloseSession(h pkcs11.SessionHandle) error {
	f.mu.Lock()
	delete(f.open, h)
	wasInvalid := f.invalid[h]
	delete(f.invalid, h)
	f.mu.Unlock()
	err := f.p11.CloseSession(h)
	if wasInvalid && err == nil {
		return pkcs11.Error(pkcs11.CKR_SESSION_HANDLE_INVALID)
	}
	return err
}

// resetTokenAt makes the next call of name find the token reset.
func (f *faultyP11) resetTokenAt(name string) {
	f.mu.Lock()
	f.resetAt = name
	f.mu.Unlock()
}

// openSessions counts the sessions open in the library.
func (f *faultyP11) openSessions() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.open)
}

func (f *faultyP11) Initialize(opts ...pkcs11.InitializeOption) error {
	f.mu.Lock()
	f.calls["Initialize"]++
	f.mu.Unlock()
	return f.p11.Initialize(opts...)
}

func (f *faultyP11) Finalize() error {
	f.mu.Lock()
	clear(f.open)
	clear(f.invalid)
	f.mu.Unlock()
	return f.p11.Finalize()
}

func (f *faultyP11) Login(h pkcs11.SessionHandle, userType uint, pin string) error {
	if err := f.check("Login", h, true); err != nil {
		return err
	}
	return f.p11.Login(h, userType, pin)
}

func (f *faultyP11) GetSessionInfo(h pkcs11.SessionHandle) (pkcs11.SessionInfo, error) {
	if err := f.check("GetSessionInfo", h, true); err != nil {
		return pkcs11.SessionInfo{}, err
	}
	si, err := f.p11.GetSessionInfo(h)
	f.mu.Lock()
	defer f.mu.Unlock()
	if err == nil && f.public > 0 {
		f.public--
		si.State = pkcs11.CKS_RW_PUBLIC_SESSION
	}
	return si, err
}

// reportPublic makes the next n C_GetSessionInfo calls report a public
// session, whatever the token's login state.
func (f *faultyP11) reportPublic(n int) {
	f.mu.Lock()
	f.public += n
	f.mu.Unlock()
}

// GetTokenInfo fails only as failNext says: a removed device does not
// make it fail, so that tests of removal keep finding the token.
func (f *faultyP11) GetTokenInfo(slot uint) (pkcs11.TokenInfo, error) {
	f.mu.Lock()
	var err error
	if q := f.next["GetTokenInfo"]; len(q) > 0 {
		err, f.next["GetTokenInfo"] = q[0], q[1:]
	}
	f.mu.Unlock()
	if err != nil {
		return pkcs11.TokenInfo{}, err
	}
	return f.p11.GetTokenInfo(slot)
}

func (f *faultyP11) FindObjectsInit(h pkcs11.SessionHandle, temp []*pkcs11.Attribute) error {
	if err := f.check("FindObjectsInit", h, true); err != nil {
		return err
	}
	return f.p11.FindObjectsInit(h, temp)
}

func (f *faultyP11) SignInit(h pkcs11.SessionHandle, m []*pkcs11.Mechanism, o pkcs11.ObjectHandle) error {
	if err := f.check("SignInit", h, true); err != nil {
		return err
	}
	return f.p11.SignInit(h, m, o)
}

func (f *faultyP11) Sign(h pkcs11.SessionHandle, msg []byte) ([]byte, error) {
	if err := f.check("Sign", h, true); err != nil {
		// A C_Sign that fails ends the signing operation (PKCS#11 v2.40
		// 5.2): end it, so that the session is as a module leaves it.
		_, _ = f.p11.Sign(h, msg)
		return nil, err
	}
	sig, err := f.p11.Sign(h, msg)
	f.mu.Lock()
	defer f.mu.Unlock()
	if err == nil && f.corrupt > 0 && len(sig) > 0 {
		f.corrupt--
		sig[len(sig)/4] ^= 0x01 // in r for ECDSA, mid-way for RSA
	}
	return sig, err
}

// corruptSigns makes the next n signatures the module returns wrong, as a
// faulty device's would be.
func (f *faultyP11) corruptSigns(n int) {
	f.mu.Lock()
	f.corrupt += n
	f.mu.Unlock()
}

func (f *faultyP11) GenerateKeyPair(h pkcs11.SessionHandle, m []*pkcs11.Mechanism, pub, priv []*pkcs11.Attribute) (pkcs11.ObjectHandle, pkcs11.ObjectHandle, error) {
	f.mu.Lock()
	f.genPrivs = append(f.genPrivs, priv)
	rewrite := f.genPriv
	var refuse uint
	for _, a := range priv {
		if rv, ok := f.unknown[a.Type]; ok {
			refuse = rv
		}
	}
	f.mu.Unlock()
	if err := f.check("GenerateKeyPair", h, true); err != nil {
		return 0, 0, err
	}
	if refuse != 0 {
		return 0, 0, pkcs11.Error(refuse)
	}
	if rewrite != nil {
		priv = rewrite(priv)
	}
	return f.p11.GenerateKeyPair(h, m, pub, priv)
}

func (f *faultyP11) Logout(h pkcs11.SessionHandle) error {
	if err := f.check("Logout", h, true); err != nil {
		return err
	}
	return f.p11.Logout(h)
}

func (f *faultyP11) SetPIN(h pkcs11.SessionHandle, oldPIN, newPIN string) error {
	if err := f.check("SetPIN", h, true); err != nil {
		return err
	}
	return f.checkAfter("SetPIN", f.p11.SetPIN(h, oldPIN, newPIN))
}
