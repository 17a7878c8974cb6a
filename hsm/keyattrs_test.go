package hsm

import (
	"bytes"
	"crypto/ecdsa"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/miekg/pkcs11"
)

// rawSession opens a session straight on the library, beside the pool and
// around the fault wrapper: what another PKCS#11 application in the
// process would use. It shares the token's login (a login belongs to the
// application, not the session) and is closed when the test ends.
func (e *testEnv) rawSession(t testing.TB) (*pkcs11.Ctx, pkcs11.SessionHandle) {
	t.Helper()
	ctx, ok := e.fault.p11.(*pkcs11.Ctx)
	if !ok {
		t.Fatalf("the module's calls go to %T, not the library", e.fault.p11)
	}
	_, unlock, err := e.mod.rlock()
	if err != nil {
		t.Fatal(err)
	}
	slot, err := e.tok.findSlotLocked()
	unlock()
	if err != nil {
		t.Fatal(err)
	}
	h, err := ctx.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		t.Fatalf("C_OpenSession: %v", err)
	}
	t.Cleanup(func() { _ = ctx.CloseSession(h) })
	return ctx, h
}

// rawFind returns the one object of class with CKA_ID id.
func rawFind(t testing.TB, ctx *pkcs11.Ctx, h pkcs11.SessionHandle, class uint, id []byte) pkcs11.ObjectHandle {
	t.Helper()
	if err := ctx.FindObjectsInit(h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, class), pkcs11.NewAttribute(pkcs11.CKA_ID, id)}); err != nil {
		t.Fatalf("C_FindObjectsInit: %v", err)
	}
	hs, _, err := ctx.FindObjects(h, 2)
	_ = ctx.FindObjectsFinal(h)
	if err != nil || len(hs) != 1 {
		t.Fatalf("objects of class %d with id %x: %v, %v; want one", class, id, hs, err)
	}
	return hs[0]
}

// rawMechanisms decodes CKA_ALLOWED_MECHANISMS, an array of CK_ULONG in
// host byte order (the size miekg/pkcs11 gives a CK_ULONG).
func rawMechanisms(v []byte) []uint {
	n := len(pkcs11.NewAttribute(0, uint(0)).Value)
	var out []uint
	for ; len(v) >= n; v = v[n:] {
		var m uint
		for i := n - 1; i >= 0; i-- {
			m = m<<8 | uint(v[i])
		}
		out = append(out, m)
	}
	return out
}

// TestGeneratedKeyRefusesChanges shows that someone with the user PIN can
// neither change a generated key's attributes, nor copy it with other
// ones, nor use it with a mechanism the appliance does not sign with (a raw
// RSA private-key operation, decryption): finding 5 of the review, where
// C_SetAttributeValue(CKA_DECRYPT = true) succeeded on a signerd key and
// CKM_RSA_X_509 then worked.
func TestGeneratedKeyRefusesChanges(t *testing.T) {
	e := newEnv(t, nil)
	ctx, h := e.rawSession(t)
	for _, spec := range []KeySpec{RSA2048, ECP256} {
		t.Run(string(spec), func(t *testing.T) {
			k := e.genKey(t, spec, "locked-"+string(spec))
			priv := rawFind(t, ctx, h, pkcs11.CKO_PRIVATE_KEY, k.ID)
			pub := rawFind(t, ctx, h, pkcs11.CKO_PUBLIC_KEY, k.ID)
			// What the token answers when the key's attributes forbid the
			// call, as against an argument it cannot parse.
			prohibited := []uint{pkcs11.CKR_ACTION_PROHIBITED, pkcs11.CKR_ATTRIBUTE_READ_ONLY}
			notPermitted := []uint{pkcs11.CKR_MECHANISM_INVALID, pkcs11.CKR_KEY_FUNCTION_NOT_PERMITTED}
			type attempt struct {
				name string
				call func() error
				want []uint // the return values that mean "forbidden"
			}
			refused := []attempt{
				{"set CKA_DECRYPT", func() error {
					return ctx.SetAttributeValue(h, priv, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true)})
				}, prohibited},
				{"set CKA_SIGN_RECOVER", func() error {
					return ctx.SetAttributeValue(h, priv, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_SIGN_RECOVER, true)})
				}, prohibited},
				{"set CKA_LABEL", func() error {
					return ctx.SetAttributeValue(h, priv, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, "renamed")})
				}, prohibited},
				{"set the public key's CKA_ENCRYPT", func() error {
					return ctx.SetAttributeValue(h, pub, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true)})
				}, prohibited},
				{"copy with CKA_DECRYPT", func() error {
					_, err := ctx.CopyObject(h, priv, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true)})
					return err
				}, prohibited},
				{"copy as a session object", func() error {
					_, err := ctx.CopyObject(h, priv, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false)})
					return err
				}, prohibited},
			}
			if spec == RSA2048 {
				refused = append(refused,
					attempt{"raw RSA (CKM_RSA_X_509)", func() error {
						if err := ctx.SignInit(h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_X_509, nil)}, priv); err != nil {
							return err
						}
						_, err := ctx.Sign(h, make([]byte, 256))
						return err
					}, notPermitted},
					attempt{"decrypt (CKM_RSA_PKCS)", func() error {
						return ctx.DecryptInit(h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS, nil)}, priv)
					}, notPermitted},
					attempt{"hash-and-sign mechanism (CKM_SHA256_RSA_PKCS)", func() error {
						return ctx.SignInit(h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_SHA256_RSA_PKCS, nil)}, priv)
					}, notPermitted},
				)
			}
			for _, r := range refused {
				err := r.call()
				var rv pkcs11.Error
				switch {
				case err == nil:
					t.Errorf("%s: the token allowed it", r.name)
				case !errors.As(err, &rv) || !slices.Contains(r.want, uint(rv)):
					t.Errorf("%s: %v; want one of %#x (forbidden by the key's attributes)", r.name, err, r.want)
				}
			}
			got, err := ctx.GetAttributeValue(h, priv, []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, nil), pkcs11.NewAttribute(pkcs11.CKA_SIGN_RECOVER, nil), pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil)})
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got[0].Value, []byte{0}) || !bytes.Equal(got[1].Value, []byte{0}) || string(got[2].Value) != k.Label {
				t.Errorf("attributes changed: CKA_DECRYPT %x, CKA_SIGN_RECOVER %x, CKA_LABEL %q", got[0].Value, got[1].Value, got[2].Value)
			}
			signOK(t, e.tok, k, "still signs")
		})
	}
	if n := e.countObjects(t); n != 4 {
		t.Fatalf("%d key objects on the token, want the 4 of the two pairs (no copies)", n)
	}
}

// rawKeyPair makes a key pair directly through PKCS#11, outside signerd:
// RSA of rsaBits, or EC P-256 when rsaBits is 0. The private key is a token
// object, private, sensitive, not extractable, sign-only, not modifiable
// and not copyable, with no CKA_ALLOWED_MECHANISMS, except for the
// attributes set changes.
func rawKeyPair(t testing.TB, ctx *pkcs11.Ctx, h pkcs11.SessionHandle, id []byte, rsaBits int, set map[uint]bool) {
	t.Helper()
	keyType, mech := uint(pkcs11.CKK_EC), pkcs11.NewMechanism(pkcs11.CKM_EC_KEY_PAIR_GEN, nil)
	params := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07})}
	if rsaBits > 0 {
		keyType, mech = pkcs11.CKK_RSA, pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, nil)
		params = []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_MODULUS_BITS, rsaBits), pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, []byte{1, 0, 1})}
	}
	common := func(class uint) []*pkcs11.Attribute {
		return []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, class), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, keyType),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true), pkcs11.NewAttribute(pkcs11.CKA_ID, id), pkcs11.NewAttribute(pkcs11.CKA_LABEL, fmt.Sprintf("outside-%x", id))}
	}
	pub := append(append(common(pkcs11.CKO_PUBLIC_KEY), params...), pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true))
	flags := map[uint]bool{
		pkcs11.CKA_PRIVATE: true, pkcs11.CKA_SENSITIVE: true, pkcs11.CKA_EXTRACTABLE: false, pkcs11.CKA_SIGN: true,
		pkcs11.CKA_SIGN_RECOVER: false, pkcs11.CKA_DECRYPT: false, pkcs11.CKA_UNWRAP: false, pkcs11.CKA_DERIVE: false,
		pkcs11.CKA_MODIFIABLE: false, pkcs11.CKA_COPYABLE: false,
	}
	maps.Copy(flags, set)
	priv := common(pkcs11.CKO_PRIVATE_KEY)
	for _, typ := range slices.Sorted(maps.Keys(flags)) {
		priv = append(priv, pkcs11.NewAttribute(typ, flags[typ]))
	}
	if _, _, err := ctx.GenerateKeyPair(h, []*pkcs11.Mechanism{mech}, pub, priv); err != nil {
		t.Fatalf("C_GenerateKeyPair: %v", err)
	}
}

// rawCopy copies the key pair with id to newID through PKCS#11, the
// private key's copy with the attributes set; CKA_ALWAYS_SENSITIVE and
// CKA_NEVER_EXTRACTABLE go with the copy as they were.
func rawCopy(t testing.TB, ctx *pkcs11.Ctx, h pkcs11.SessionHandle, id, newID []byte, set []*pkcs11.Attribute) {
	t.Helper()
	for _, class := range []uint{pkcs11.CKO_PUBLIC_KEY, pkcs11.CKO_PRIVATE_KEY} {
		tmpl := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ID, newID)}
		if class == pkcs11.CKO_PRIVATE_KEY {
			tmpl = append(tmpl, set...)
		}
		if _, err := ctx.CopyObject(h, rawFind(t, ctx, h, class, id), tmpl); err != nil {
			t.Fatalf("C_CopyObject (class %d): %v", class, err)
		}
	}
}

// rawBools reads CK_BBOOL attributes of the private key with id through
// the raw session.
func rawBools(t testing.TB, ctx *pkcs11.Ctx, h pkcs11.SessionHandle, id []byte, types ...uint) map[uint]bool {
	t.Helper()
	got, err := ctx.GetAttributeValue(h, rawFind(t, ctx, h, pkcs11.CKO_PRIVATE_KEY, id), attrQuery(types...))
	if err != nil {
		t.Fatalf("C_GetAttributeValue: %v", err)
	}
	out := map[uint]bool{}
	for _, a := range got {
		out[a.Type] = bytes.Equal(a.Value, []byte{1})
	}
	return out
}

// refusedToSign checks that signing with id fails with ErrKeyAttributes
// naming each of wants, without a C_SignInit.
func refusedToSign(t *testing.T, e *testEnv, id []byte, alg string, wants ...string) {
	t.Helper()
	inits := e.fault.count("SignInit")
	a := mustAlg(t, alg)
	sig, err := e.tok.Sign(testContext(t), id, a, make([]byte, a.Hash.Size()))
	if !errors.Is(err, ErrKeyAttributes) || sig != nil {
		t.Fatalf("Sign = %x, %v; want ErrKeyAttributes", sig, err)
	}
	for _, w := range wants {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("the refusal does not say %q: %v", w, err)
		}
	}
	if n := e.fault.count("SignInit") - inits; n != 0 {
		t.Errorf("%d C_SignInit calls with a refused key", n)
	}
}

// TestOutsideKeyAttributesRefused: a key made outside signerd is usable
// only when it is private, was never readable or extractable, cannot be
// changed or copied, and is RSA of at least 2048 bits or EC. Each key is
// made through PKCS#11 and its attributes read back the same way before
// the appliance is asked (the review of finding 5's fix).
func TestOutsideKeyAttributesRefused(t *testing.T) {
	e := newEnv(t, nil)
	ctx, h := e.rawSession(t)
	tests := []struct {
		name    string
		rsaBits int
		set     map[uint]bool
		copyTo  []*pkcs11.Attribute // when set, the key used is a copy made with these
		token   map[uint]bool       // what PKCS#11 reads on the key used
		wants   []string            // in the refusal; none: usable
	}{
		{name: "sign-only and locked (EC)", token: map[uint]bool{pkcs11.CKA_MODIFIABLE: false, pkcs11.CKA_COPYABLE: false, pkcs11.CKA_ALWAYS_SENSITIVE: true, pkcs11.CKA_NEVER_EXTRACTABLE: true}},
		{name: "sign-only and locked (RSA 2048)", rsaBits: 2048, token: map[uint]bool{pkcs11.CKA_PRIVATE: true}},
		{name: "as earlier releases made them", set: map[uint]bool{pkcs11.CKA_MODIFIABLE: true, pkcs11.CKA_COPYABLE: true, pkcs11.CKA_SIGN_RECOVER: true},
			token: map[uint]bool{pkcs11.CKA_MODIFIABLE: true, pkcs11.CKA_COPYABLE: true, pkcs11.CKA_SIGN_RECOVER: true},
			wants: []string{"CKA_MODIFIABLE is true", "CKA_COPYABLE is true", "CKA_SIGN_RECOVER is true"}},
		{name: "modifiable", set: map[uint]bool{pkcs11.CKA_MODIFIABLE: true}, token: map[uint]bool{pkcs11.CKA_MODIFIABLE: true, pkcs11.CKA_COPYABLE: false},
			wants: []string{"CKA_MODIFIABLE is true"}},
		{name: "copyable", set: map[uint]bool{pkcs11.CKA_COPYABLE: true}, token: map[uint]bool{pkcs11.CKA_COPYABLE: true, pkcs11.CKA_MODIFIABLE: false},
			wants: []string{"CKA_COPYABLE is true"}},
		{name: "not private", set: map[uint]bool{pkcs11.CKA_PRIVATE: false}, token: map[uint]bool{pkcs11.CKA_PRIVATE: false},
			wants: []string{"CKA_PRIVATE is false"}},
		{name: "RSA 1024", rsaBits: 1024, token: map[uint]bool{pkcs11.CKA_MODIFIABLE: false}, wants: []string{"the RSA modulus has 1024 bits (at least 2048"}},
		// SoftHSM refuses CKA_COPYABLE in C_CopyObject's template, so a
		// copy stays copyable.
		{name: "once readable, copied as sensitive", set: map[uint]bool{pkcs11.CKA_SENSITIVE: false, pkcs11.CKA_MODIFIABLE: true, pkcs11.CKA_COPYABLE: true},
			copyTo: []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true), pkcs11.NewAttribute(pkcs11.CKA_MODIFIABLE, false)},
			token:  map[uint]bool{pkcs11.CKA_SENSITIVE: true, pkcs11.CKA_ALWAYS_SENSITIVE: false, pkcs11.CKA_NEVER_EXTRACTABLE: true, pkcs11.CKA_MODIFIABLE: false},
			wants:  []string{"CKA_ALWAYS_SENSITIVE is false"}},
		{name: "once extractable, copied as not extractable", set: map[uint]bool{pkcs11.CKA_EXTRACTABLE: true, pkcs11.CKA_MODIFIABLE: true, pkcs11.CKA_COPYABLE: true},
			copyTo: []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false), pkcs11.NewAttribute(pkcs11.CKA_MODIFIABLE, false)},
			token:  map[uint]bool{pkcs11.CKA_EXTRACTABLE: false, pkcs11.CKA_NEVER_EXTRACTABLE: false, pkcs11.CKA_ALWAYS_SENSITIVE: true, pkcs11.CKA_MODIFIABLE: false},
			wants:  []string{"CKA_NEVER_EXTRACTABLE is false"}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := []byte(fmt.Sprintf("outside key %04d", i))
			rawKeyPair(t, ctx, h, id, tt.rsaBits, tt.set)
			if tt.copyTo != nil {
				src := id
				id = []byte(fmt.Sprintf("copied key %04d", i))
				rawCopy(t, ctx, h, src, id, tt.copyTo)
			}
			types := slices.Sorted(maps.Keys(tt.token))
			if got := rawBools(t, ctx, h, id, types...); !maps.Equal(got, tt.token) {
				t.Fatalf("PKCS#11 reads %v on the key; the case needs %v", got, tt.token)
			}
			k, err := e.tok.KeyByID(testContext(t), id)
			if err != nil {
				t.Fatal(err)
			}
			alg := "ES256"
			if tt.rsaBits > 0 {
				alg = "PS256"
			}
			if len(tt.wants) == 0 {
				if err := k.AttributeProblem(); err != nil {
					t.Fatalf("a sign-only, locked key is refused: %v", err)
				}
				signOK(t, e.tok, k, tt.name)
				return
			}
			problem := k.AttributeProblem()
			for _, w := range tt.wants {
				if !errors.Is(problem, ErrKeyAttributes) || !strings.Contains(problem.Error(), w) {
					t.Errorf("KeyByID's problem %v; want one saying %q", problem, w)
				}
			}
			refusedToSign(t, e, id, alg, tt.wants...)
		})
	}
	e.assertNoLeakedSessions(t)
}

// TestModuleBeforeV240: a module that does not know CKA_COPYABLE
// (PKCS#11 before v2.40) copies any key with any attributes: its keys are
// refused, with the reason, and it cannot generate one. A module that
// does not know CKA_ALLOWED_MECHANISMS only is still used.
func TestModuleBeforeV240(t *testing.T) {
	tests := []struct {
		name    string
		unknown uint
		want    string // in the refusal; empty: usable
	}{
		{"no CKA_COPYABLE: refused", pkcs11.CKA_COPYABLE, "does not know CKA_COPYABLE (PKCS#11 before v2.40"},
		{"no CKA_ALLOWED_MECHANISMS: supported", pkcs11.CKA_ALLOWED_MECHANISMS, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, nil)
			made := e.genKey(t, ECP256, "made-before") // while the module knew the attribute
			e.fault.forget(tt.unknown, pkcs11.CKR_ATTRIBUTE_TYPE_INVALID)
			k, err := e.tok.KeyByID(testContext(t), made.ID)
			if err != nil {
				t.Fatal(err)
			}
			gen, genErr := e.tok.GenerateKey(testContext(t), ECP256, "made-after")
			if tt.want == "" {
				if k.AttributeProblem() != nil || len(k.Attrs.AllowedMechanisms) != 0 {
					t.Fatalf("attributes %+v, problem %v; want no allowed mechanisms and no problem", k.Attrs, k.AttributeProblem())
				}
				signOK(t, e.tok, k, "no CKA_ALLOWED_MECHANISMS")
				if genErr != nil {
					t.Fatalf("GenerateKey: %v", genErr)
				}
				signOK(t, e.tok, gen, "made without CKA_ALLOWED_MECHANISMS")
				return
			}
			if !k.Attrs.CopyableUnknown || !strings.Contains(fmt.Sprint(k.AttributeProblem()), tt.want) {
				t.Fatalf("attributes %+v, problem %v; want CKA_COPYABLE unknown and a problem saying %q", k.Attrs, k.AttributeProblem(), tt.want)
			}
			refusedToSign(t, e, made.ID, "ES256", tt.want)
			if genErr == nil {
				t.Fatalf("GenerateKey on a module without CKA_COPYABLE made %x", gen.ID)
			}
			if n := e.countObjects(t); n != 2 {
				t.Fatalf("%d objects on the token; want the first pair only", n)
			}
		})
	}
}

// TestKeyAttributesCheckedBeforeUse: a key whose attributes, as the module
// reports them, stop holding (an HSM's own tool can change a key outside
// PKCS#11's rules; the wrapper answers CKA_DECRYPT true for it, the token
// is unchanged) is refused with ErrKeyAttributes at the next read of its
// attributes: after KeyRecheckInterval, after a new login, and at once
// after KeyByID (what `key show` calls) read them. When the module reports
// the key as it is again, it signs again.
func TestKeyAttributesCheckedBeforeUse(t *testing.T) {
	e, f, clock := faultyEnv(t)
	k := e.genKey(t, ECP256, "checked")
	signOK(t, e.tok, k, "before the change")
	changed := func(yes bool) {
		if yes {
			f.report(pkcs11.CKA_DECRYPT, []byte{1})
		} else {
			f.report(pkcs11.CKA_DECRYPT, nil)
		}
	}
	refused := func(t *testing.T) {
		t.Helper()
		refusedToSign(t, e, k.ID, "ES256", "CKA_DECRYPT is true")
	}
	t.Run("after the recheck interval", func(t *testing.T) {
		changed(true)
		signOK(t, e.tok, k, "within the interval the cached attributes hold")
		clock.Advance(KeyRecheckInterval)
		refused(t)
		if _, err := e.tok.SignMany(testContext(t), k.ID, mustAlg(t, "ES256"), batchDigests(3)); !errors.Is(err, ErrKeyAttributes) {
			t.Fatalf("SignMany: %v; want ErrKeyAttributes", err)
		}
		changed(false)
		clock.Advance(KeyRecheckInterval)
		signOK(t, e.tok, k, "set back")
	})
	t.Run("after a new login", func(t *testing.T) {
		changed(true)
		if err := e.tok.Logout(testContext(t)); err != nil {
			t.Fatal(err)
		}
		if err := e.tok.Login(testContext(t), e.soft.UserPIN); err != nil {
			t.Fatal(err)
		}
		refused(t)
		changed(false)
		clock.Advance(KeyRecheckInterval)
		signOK(t, e.tok, k, "set back")
	})
	t.Run("shown by KeyByID and ListKeys", func(t *testing.T) {
		changed(true)
		shown, err := e.tok.KeyByID(testContext(t), k.ID)
		if err != nil {
			t.Fatal(err)
		}
		if !shown.Attrs.Decrypt || !errors.Is(shown.AttributeProblem(), ErrKeyAttributes) {
			t.Fatalf("KeyByID shows %+v, problem %v; want CKA_DECRYPT true and a problem", shown.Attrs, shown.AttributeProblem())
		}
		keys, err := e.tok.ListKeys(testContext(t))
		if err != nil || len(keys) != 1 || !keys[0].Attrs.Decrypt {
			t.Fatalf("ListKeys = %+v, %v; want the key with CKA_DECRYPT true", keys, err)
		}
		refused(t) // no clock advance
		changed(false)
	})
	e.assertNoLeakedSessions(t)
}

// TestSignManyRechecksKeyAttributes: a batch reads its key's attributes
// again once KeyRecheckInterval has passed since the last read, as single
// signatures do, and a key that no longer holds stops the batch before its
// next signature, returning none (the review of finding 5's fix: a batch
// kept signing with a key whose attributes had changed).
func TestSignManyRechecksKeyAttributes(t *testing.T) {
	e, f, clock := faultyEnv(t)
	k := e.genKey(t, ECP256, "batch-recheck")
	alg := mustAlg(t, "ES256")
	const n, at = 10, 4 // digests in the batch; the C_Sign after which time passes
	tests := []struct {
		name   string
		change bool
	}{
		{"unchanged: read again, and the batch goes on", false},
		{"changed: the batch stops", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			signOK(t, e.tok, k, "the entry is fresh") // within the interval
			signs := 0
			f.mu.Lock()
			f.onCall = func(name string) {
				if name != "Sign" {
					return
				}
				if signs++; signs == at {
					clock.Advance(KeyRecheckInterval)
					if tt.change {
						f.report(pkcs11.CKA_DECRYPT, []byte{1})
					}
				}
			}
			f.mu.Unlock()
			t.Cleanup(func() {
				f.mu.Lock()
				f.onCall = nil
				f.mu.Unlock()
				f.report(pkcs11.CKA_DECRYPT, nil)
				clock.Advance(KeyRecheckInterval)
			})
			reads := f.count("GetAttributeValue")
			sigs, err := e.tok.SignMany(testContext(t), k.ID, alg, batchDigests(n))
			if f.count("GetAttributeValue") == reads {
				t.Errorf("the batch did not read the key's attributes again after %s", KeyRecheckInterval)
			}
			if !tt.change {
				if err != nil || len(sigs) != n {
					t.Fatalf("SignMany = %d signatures, %v; want %d", len(sigs), err, n)
				}
				for i, d := range batchDigests(n) {
					if !ecdsa.VerifyASN1(k.Public.(*ecdsa.PublicKey), d, sigs[i]) {
						t.Fatalf("signature %d does not verify", i)
					}
				}
				return
			}
			if !errors.Is(err, ErrKeyAttributes) || sigs != nil || !strings.Contains(err.Error(), "CKA_DECRYPT is true") {
				t.Fatalf("SignMany = %d signatures, %v; want none, and ErrKeyAttributes naming CKA_DECRYPT", len(sigs), err)
			}
			if signs != at {
				t.Fatalf("%d C_Sign calls; want %d, none after the attributes stopped holding", signs, at)
			}
		})
	}
	e.assertNoLeakedSessions(t)
}

// templateWithout returns tmpl without the attributes of type typ.
func templateWithout(tmpl []*pkcs11.Attribute, typ uint) []*pkcs11.Attribute {
	return slices.DeleteFunc(slices.Clone(tmpl), func(a *pkcs11.Attribute) bool { return a.Type == typ })
}

// sameTemplate reports whether a and b hold the same attributes in the same
// order.
func sameTemplate(a, b []*pkcs11.Attribute) bool {
	return slices.EqualFunc(a, b, func(x, y *pkcs11.Attribute) bool { return x.Type == y.Type && bytes.Equal(x.Value, y.Value) })
}

// TestGenerateKeyWithoutAllowedMechanisms: a module that refuses the
// template with CKA_ALLOWED_MECHANISMS (ATTRIBUTE_TYPE_INVALID,
// ATTRIBUTE_VALUE_INVALID or TEMPLATE_INCONSISTENT) is asked once more with
// the same template less that one attribute, and makes a key that is
// otherwise as asked, as PKCS#11 reads it back. A module that refuses that
// too gets no third try, and nothing is left.
func TestGenerateKeyWithoutAllowedMechanisms(t *testing.T) {
	e := newEnv(t, nil)
	ctx, h := e.rawSession(t)
	tests := []struct {
		name    string
		rv      uint
		refusal int // C_GenerateKeyPair calls refused
	}{
		{"ATTRIBUTE_TYPE_INVALID", pkcs11.CKR_ATTRIBUTE_TYPE_INVALID, 1},
		{"ATTRIBUTE_VALUE_INVALID", pkcs11.CKR_ATTRIBUTE_VALUE_INVALID, 1},
		{"TEMPLATE_INCONSISTENT", pkcs11.CKR_TEMPLATE_INCONSISTENT, 1},
		{"refused without it too", pkcs11.CKR_TEMPLATE_INCONSISTENT, 2},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e.fault.mu.Lock()
			before := len(e.fault.genPrivs)
			e.fault.mu.Unlock()
			e.fault.failNext("GenerateKeyPair", tt.rv, tt.refusal)
			k, err := e.tok.GenerateKey(testContext(t), RSA2048, fmt.Sprintf("no-allowed-mechanisms-%d", i))
			e.fault.mu.Lock()
			templates := slices.Clone(e.fault.genPrivs[before:])
			e.fault.mu.Unlock()
			if len(templates) != 2 || !sameTemplate(templateWithout(templates[0], pkcs11.CKA_ALLOWED_MECHANISMS), templates[1]) ||
				sameTemplate(templates[0], templates[1]) {
				t.Fatalf("%d C_GenerateKeyPair calls; want two, the second the first less CKA_ALLOWED_MECHANISMS", len(templates))
			}
			if tt.refusal == 2 {
				if err == nil || !isRV(err, tt.rv) {
					t.Fatalf("GenerateKey refused twice: %v; want the module's refusal", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("GenerateKey: %v", err)
			}
			if len(k.Attrs.AllowedMechanisms) != 0 || k.AttributeProblem() != nil {
				t.Fatalf("attributes %+v, problem %v; want no allowed mechanisms and no problem", k.Attrs, k.AttributeProblem())
			}
			got, err := ctx.GetAttributeValue(h, rawFind(t, ctx, h, pkcs11.CKO_PRIVATE_KEY, k.ID), []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ALLOWED_MECHANISMS, nil)})
			if err != nil || len(got[0].Value) != 0 {
				t.Fatalf("CKA_ALLOWED_MECHANISMS %v, %v; want none", got, err)
			}
			want := map[uint]bool{pkcs11.CKA_MODIFIABLE: false, pkcs11.CKA_COPYABLE: false, pkcs11.CKA_SIGN_RECOVER: false, pkcs11.CKA_PRIVATE: true,
				pkcs11.CKA_SENSITIVE: true, pkcs11.CKA_EXTRACTABLE: false, pkcs11.CKA_DECRYPT: false, pkcs11.CKA_SIGN: true}
			if got := rawBools(t, ctx, h, k.ID, slices.Sorted(maps.Keys(want))...); !maps.Equal(got, want) {
				t.Fatalf("PKCS#11 reads %v; want %v", got, want)
			}
			signOK(t, e.tok, k, "signs without allowed mechanisms")
		})
	}
	if n := e.countObjects(t); n != 6 {
		t.Fatalf("%d objects on the token; want the 3 pairs made", n)
	}
	e.assertNoLeakedSessions(t)
}

// TestGenerateKeyRemovesWhatTheModuleMadeWrong: a module that makes the
// pair otherwise than asked (the wrapper changes one attribute of the
// private key template, or drops CKA_ALLOWED_MECHANISMS after taking it)
// leaves nothing behind, and the generation fails with ErrKeyAttributes
// saying what is wrong.
func TestGenerateKeyRemovesWhatTheModuleMadeWrong(t *testing.T) {
	e := newEnv(t, nil)
	set := func(typ uint, v any) func([]*pkcs11.Attribute) []*pkcs11.Attribute {
		return func(priv []*pkcs11.Attribute) []*pkcs11.Attribute {
			out := templateWithout(priv, typ)
			if v != nil {
				out = append(out, pkcs11.NewAttribute(typ, v))
			}
			return out
		}
	}
	tests := []struct {
		name    string
		rewrite func([]*pkcs11.Attribute) []*pkcs11.Attribute
		want    string
	}{
		{"may decrypt", set(pkcs11.CKA_DECRYPT, true), "CKA_DECRYPT is true"},
		{"modifiable", set(pkcs11.CKA_MODIFIABLE, true), "CKA_MODIFIABLE is true"},
		{"copyable", set(pkcs11.CKA_COPYABLE, true), "CKA_COPYABLE is true"},
		{"not private", set(pkcs11.CKA_PRIVATE, false), "CKA_PRIVATE is false"},
		{"not sensitive", set(pkcs11.CKA_SENSITIVE, false), "CKA_SENSITIVE is false"},
		{"extractable", set(pkcs11.CKA_EXTRACTABLE, true), "CKA_EXTRACTABLE is true"},
		{"signs with recovery", set(pkcs11.CKA_SIGN_RECOVER, true), "CKA_SIGN_RECOVER is true"},
		{"allowed mechanisms dropped", set(pkcs11.CKA_ALLOWED_MECHANISMS, nil), "CKA_ALLOWED_MECHANISMS was given but the key has []"},
		{"raw RSA allowed too", set(pkcs11.CKA_ALLOWED_MECHANISMS, ulongArray([]uint{pkcs11.CKM_RSA_PKCS, pkcs11.CKM_RSA_PKCS_PSS, pkcs11.CKM_RSA_X_509})), "allows CKM_RSA_X_509"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e.fault.mu.Lock()
			e.fault.genPriv = tt.rewrite
			e.fault.mu.Unlock()
			k, err := e.tok.GenerateKey(testContext(t), RSA2048, "made-wrong")
			if !errors.Is(err, ErrKeyAttributes) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("GenerateKey on a module that makes it wrong = %x, %v; want ErrKeyAttributes saying %q", k.ID, err, tt.want)
			}
			if n := e.countObjects(t); n != 0 {
				t.Fatalf("%d objects left after the refused generation", n)
			}
		})
	}
	e.assertNoLeakedSessions(t)
}

// TestGenerateKeyReportsWhatItCouldNotRemove: when the pair the module
// made otherwise than asked cannot be destroyed, the generation still
// fails with ErrKeyAttributes, and the error says that objects with the
// key's id may be left, and why.
func TestGenerateKeyReportsWhatItCouldNotRemove(t *testing.T) {
	e := newEnv(t, nil)
	e.fault.mu.Lock()
	e.fault.genPriv = func(priv []*pkcs11.Attribute) []*pkcs11.Attribute {
		return append(templateWithout(priv, pkcs11.CKA_MODIFIABLE), pkcs11.NewAttribute(pkcs11.CKA_MODIFIABLE, true))
	}
	e.fault.mu.Unlock()
	e.fault.failNext("DestroyObject", pkcs11.CKR_ACTION_PROHIBITED, 2)
	_, err := e.tok.GenerateKey(testContext(t), ECP256, "left-behind")
	if !errors.Is(err, ErrKeyAttributes) || !isRV(err, pkcs11.CKR_ACTION_PROHIBITED) ||
		!strings.Contains(err.Error(), "CKA_MODIFIABLE is true") || !strings.Contains(err.Error(), "may be left on the token") {
		t.Fatalf("GenerateKey = %v; want ErrKeyAttributes naming CKA_MODIFIABLE and the failed removal", err)
	}
	if n := e.countObjects(t); n != 2 {
		t.Fatalf("%d objects on the token; want the pair that could not be removed", n)
	}
	e.assertNoLeakedSessions(t)
}

// TestAttributeProblem checks what is required of a key and what is only
// reported.
func TestAttributeProblem(t *testing.T) {
	good := KeyAttributes{Private: true, Sensitive: true, Sign: true, AlwaysSensitive: true, NeverExtractable: true,
		AllowedMechanisms: []uint{pkcs11.CKM_RSA_PKCS, pkcs11.CKM_RSA_PKCS_PSS}}
	tests := []struct {
		name  string
		typ   KeyType
		bits  int
		edit  func(*KeyAttributes)
		wants string // in the problem; empty: no problem
	}{
		{"generated RSA", KeyRSA, 2048, func(*KeyAttributes) {}, ""},
		{"no allowed mechanisms: reported only", KeyRSA, 4096, func(a *KeyAttributes) { a.AllowedMechanisms = nil }, ""},
		{"PSS only", KeyRSA, 3072, func(a *KeyAttributes) { a.AllowedMechanisms = []uint{pkcs11.CKM_RSA_PKCS_PSS} }, ""},
		{"EC", KeyEC, 256, func(a *KeyAttributes) { a.AllowedMechanisms = []uint{pkcs11.CKM_ECDSA} }, ""},
		{"no sign", KeyRSA, 2048, func(a *KeyAttributes) { a.Sign = false }, "CKA_SIGN is false"},
		{"not private", KeyRSA, 2048, func(a *KeyAttributes) { a.Private = false }, "CKA_PRIVATE is false"},
		{"not sensitive", KeyRSA, 2048, func(a *KeyAttributes) { a.Sensitive, a.AlwaysSensitive = false, false }, "CKA_SENSITIVE is false"},
		{"once not sensitive", KeyRSA, 2048, func(a *KeyAttributes) { a.AlwaysSensitive = false }, "CKA_ALWAYS_SENSITIVE is false"},
		{"extractable", KeyRSA, 2048, func(a *KeyAttributes) { a.Extractable, a.NeverExtractable = true, false }, "CKA_EXTRACTABLE is true"},
		{"once extractable", KeyRSA, 2048, func(a *KeyAttributes) { a.NeverExtractable = false }, "CKA_NEVER_EXTRACTABLE is false"},
		{"decrypt", KeyRSA, 2048, func(a *KeyAttributes) { a.Decrypt = true }, "CKA_DECRYPT is true"},
		{"unwrap", KeyRSA, 2048, func(a *KeyAttributes) { a.Unwrap = true }, "CKA_UNWRAP is true"},
		{"sign recover", KeyRSA, 2048, func(a *KeyAttributes) { a.SignRecover = true }, "CKA_SIGN_RECOVER is true"},
		{"derive", KeyEC, 256, func(a *KeyAttributes) { a.Derive, a.AllowedMechanisms = true, nil }, "CKA_DERIVE is true"},
		{"modifiable", KeyEC, 256, func(a *KeyAttributes) { a.Modifiable, a.AllowedMechanisms = true, nil }, "CKA_MODIFIABLE is true"},
		{"copyable", KeyEC, 256, func(a *KeyAttributes) { a.Copyable, a.AllowedMechanisms = true, nil }, "CKA_COPYABLE is true"},
		{"copyable unknown", KeyEC, 256, func(a *KeyAttributes) { a.Copyable, a.CopyableUnknown, a.AllowedMechanisms = true, true, nil }, "does not know CKA_COPYABLE (PKCS#11 before v2.40"},
		{"RSA 1024", KeyRSA, 1024, func(*KeyAttributes) {}, "the RSA modulus has 1024 bits (at least 2048 are required)"},
		{"RSA 2047", KeyRSA, 2047, func(*KeyAttributes) {}, "has 2047 bits"},
		{"raw RSA allowed", KeyRSA, 2048, func(a *KeyAttributes) { a.AllowedMechanisms = append(a.AllowedMechanisms, pkcs11.CKM_RSA_X_509) }, "allows CKM_RSA_X_509"},
		{"RSA mechanism on an EC key", KeyEC, 256, func(a *KeyAttributes) {}, "allows CKM_RSA_PKCS, CKM_RSA_PKCS_PSS"},
		{"several", KeyRSA, 2048, func(a *KeyAttributes) { a.Decrypt, a.Unwrap = true, true }, "CKA_DECRYPT is true (it can decrypt); CKA_UNWRAP is true"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := good
			a.AllowedMechanisms = append([]uint(nil), good.AllowedMechanisms...)
			tt.edit(&a)
			err := Key{Type: tt.typ, Bits: tt.bits, Attrs: a}.AttributeProblem()
			switch {
			case tt.wants == "" && err != nil:
				t.Fatalf("problem %v; want none", err)
			case tt.wants != "" && (!errors.Is(err, ErrKeyAttributes) || !strings.Contains(err.Error(), tt.wants)):
				t.Fatalf("problem %v; want ErrKeyAttributes saying %q", err, tt.wants)
			}
		})
	}
}

// TestSignWithholdsBadSignature: a signature the device got wrong (one bit
// flipped by the fault wrapper) is verified with the public key and
// withheld with ErrBadSignature, for ECDSA as for RSA (finding 8); a batch
// with one bad signature returns none. With WithVerify(false) it goes out.
func TestSignWithholdsBadSignature(t *testing.T) {
	e := newEnv(t, nil)
	keys := map[KeySpec]Key{}
	for _, spec := range []KeySpec{ECP256, ECP384, RSA2048} {
		keys[spec] = e.genKey(t, spec, "verified-"+string(spec))
	}
	tests := []struct {
		name    string
		spec    KeySpec
		alg     string
		n       int // digests in the call
		corrupt int // signatures the device gets wrong
	}{
		{"ECDSA P-256", ECP256, "ES256", 1, 1},
		{"ECDSA P-384", ECP384, "SHA384withECDSA", 1, 1},
		{"ECDSA batch", ECP256, "SHA256withECDSA", 3, 1},
		{"RSA PKCS#1 v1.5", RSA2048, "RS256", 1, 1},
		{"RSA-PSS", RSA2048, "PS256", 1, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := keys[tt.spec]
			alg := mustAlg(t, tt.alg)
			ds := make([][]byte, tt.n)
			for i := range ds {
				h := alg.Hash.New()
				fmt.Fprint(h, "digest ", i)
				ds[i] = h.Sum(nil)
			}
			e.fault.corruptSigns(tt.corrupt)
			sigs, err := e.tok.SignMany(testContext(t), k.ID, alg, ds)
			if !errors.Is(err, ErrBadSignature) || sigs != nil {
				t.Fatalf("SignMany with a faulty device = %x, %v; want ErrBadSignature", sigs, err)
			}
			signOK(t, e.tok, k, "the next signature is good")
		})
	}
	e.assertNoLeakedSessions(t)
}

// TestSignVerifyOff: a token opened WithVerify(false) returns what the
// device made, checked or not (the switch is real, and covers ECDSA).
func TestSignVerifyOff(t *testing.T) {
	e := newEnv(t, nil, WithVerify(false))
	k := e.genKey(t, ECP256, "unverified")
	e.fault.corruptSigns(1)
	d := digestOf("unverified")
	sig, err := e.tok.Sign(testContext(t), k.ID, mustAlg(t, "ES256"), d)
	if err != nil {
		t.Fatalf("Sign with verification off: %v", err)
	}
	if ecdsa.VerifyASN1(k.Public.(*ecdsa.PublicKey), d, sig) {
		t.Fatal("the corrupted signature verifies: the fault was not injected")
	}
}

// TestSignJOSENameBindsCurve: ES256, ES384 and ES512 name their curve
// (RFC 7518) and are refused with ErrAlgorithm on a key of another curve
// (finding 8); the X-Road names do not bind a curve and are accepted on
// any, as X-Road uses them.
func TestSignJOSENameBindsCurve(t *testing.T) {
	e := newEnv(t, nil)
	p256 := e.genKey(t, ECP256, "p256")
	p384 := e.genKey(t, ECP384, "p384")
	tests := []struct {
		key     Key
		alg     string
		wantErr error
	}{
		{p256, "ES256", nil},
		{p256, "es384", ErrAlgorithm},
		{p256, "ES512", ErrAlgorithm},
		{p384, "ES384", nil},
		{p384, "ES256", ErrAlgorithm},
		{p384, "ES512", ErrAlgorithm},
		{p256, "SHA384withECDSA", nil},
		{p256, "SHA512withECDSA", nil},
		{p384, "SHA256withECDSA", nil},
	}
	for _, tt := range tests {
		t.Run(tt.key.Curve+" "+tt.alg, func(t *testing.T) {
			alg := mustAlg(t, tt.alg)
			d := make([]byte, alg.Hash.Size())
			sig, err := e.tok.Sign(testContext(t), tt.key.ID, alg, d)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Sign = %v; want %v", err, tt.wantErr)
			}
			if tt.wantErr != nil {
				if sig != nil || !strings.Contains(err.Error(), "needs a P-") {
					t.Fatalf("refusal %x, %v: does not say which curve is needed", sig, err)
				}
				return
			}
			if !ecdsa.VerifyASN1(tt.key.Public.(*ecdsa.PublicKey), d, sig) {
				t.Fatal("signature does not verify")
			}
		})
	}
}
