package hsm

import (
	"bytes"
	"crypto/ecdsa"
	"errors"
	"fmt"
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
	if _, err := e.mod.rlock(); err != nil {
		t.Fatal(err)
	}
	slot, err := e.tok.findSlotLocked()
	e.mod.mu.RUnlock()
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

// rawSetBool sets a CK_BBOOL attribute of the private key with id through
// the raw session, as someone holding the user PIN can.
func rawSetBool(t testing.TB, ctx *pkcs11.Ctx, h pkcs11.SessionHandle, id []byte, attr uint, v bool) {
	t.Helper()
	priv := rawFind(t, ctx, h, pkcs11.CKO_PRIVATE_KEY, id)
	if err := ctx.SetAttributeValue(h, priv, []*pkcs11.Attribute{pkcs11.NewAttribute(attr, v)}); err != nil {
		t.Fatalf("C_SetAttributeValue(0x%x = %v): %v", attr, v, err)
	}
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

// makeOldStyleKey makes an EC P-256 key pair directly through PKCS#11,
// outside signerd, as signerd made them before the review: sign-only, but
// modifiable and copyable, with no CKA_ALLOWED_MECHANISMS.
func makeOldStyleKey(t testing.TB, ctx *pkcs11.Ctx, h pkcs11.SessionHandle, id []byte, label string) {
	t.Helper()
	params := []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07} // P-256
	pub := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true), pkcs11.NewAttribute(pkcs11.CKA_ID, id), pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, params), pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),
	}
	priv := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true), pkcs11.NewAttribute(pkcs11.CKA_ID, id), pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true), pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false), pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN_RECOVER, false), pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false), pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
	}
	if _, _, err := ctx.GenerateKeyPair(h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_EC_KEY_PAIR_GEN, nil)}, pub, priv); err != nil {
		t.Fatalf("C_GenerateKeyPair: %v", err)
	}
}

// TestKeyAttributesCheckedBeforeUse is finding 5's regression test for a
// key whose attributes change after the appliance looked at it: a
// modifiable key made outside signerd, usable at first, has CKA_DECRYPT
// set to true through PKCS#11. Signing with it is then refused with
// ErrKeyAttributes at the next read of its attributes: after
// KeyRecheckInterval, after a new login, and at once after KeyByID (what
// `key show` calls) read them. Setting it back makes it usable again.
func TestKeyAttributesCheckedBeforeUse(t *testing.T) {
	e, f, clock := faultyEnv(t)
	ctx, h := e.rawSession(t)
	id := []byte("old-style key 01")
	makeOldStyleKey(t, ctx, h, id, "old-style")
	got, err := ctx.GetAttributeValue(h, rawFind(t, ctx, h, pkcs11.CKO_PRIVATE_KEY, id), []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_MODIFIABLE, nil), pkcs11.NewAttribute(pkcs11.CKA_COPYABLE, nil), pkcs11.NewAttribute(pkcs11.CKA_ALLOWED_MECHANISMS, nil)})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[0].Value, []byte{1}) || !bytes.Equal(got[1].Value, []byte{1}) || len(got[2].Value) != 0 {
		t.Fatalf("old-style key: CKA_MODIFIABLE %x, CKA_COPYABLE %x, CKA_ALLOWED_MECHANISMS %x; want modifiable, copyable, none", got[0].Value, got[1].Value, got[2].Value)
	}
	k, err := e.tok.KeyByID(testContext(t), id)
	if err != nil {
		t.Fatal(err)
	}
	if !k.Attrs.Modifiable || !k.Attrs.Copyable || len(k.Attrs.AllowedMechanisms) != 0 {
		t.Errorf("KeyByID shows %+v; want modifiable, copyable, no allowed mechanisms", k.Attrs)
	}
	if err := k.AttributeProblem(); err != nil {
		t.Fatalf("a sign-only key that is merely modifiable is refused: %v", err)
	}
	signOK(t, e.tok, k, "before the change")

	refused := func(t *testing.T, when string) {
		t.Helper()
		inits := f.count("SignInit")
		sig, err := e.tok.Sign(testContext(t), id, mustAlg(t, "ES256"), digestOf("after "+when))
		if !errors.Is(err, ErrKeyAttributes) || sig != nil {
			t.Fatalf("%s: Sign = %x, %v; want ErrKeyAttributes", when, sig, err)
		}
		if !strings.Contains(err.Error(), "CKA_DECRYPT is true") {
			t.Errorf("%s: the refusal does not say why: %v", when, err)
		}
		if n := f.count("SignInit") - inits; n != 0 {
			t.Errorf("%s: %d C_SignInit calls with a refused key", when, n)
		}
	}

	t.Run("after the recheck interval", func(t *testing.T) {
		rawSetBool(t, ctx, h, id, pkcs11.CKA_DECRYPT, true)
		clock.Advance(KeyRecheckInterval)
		refused(t, "the interval")
		if _, err := e.tok.SignMany(testContext(t), id, mustAlg(t, "ES256"), batchDigests(3)); !errors.Is(err, ErrKeyAttributes) {
			t.Fatalf("SignMany: %v; want ErrKeyAttributes", err)
		}
		rawSetBool(t, ctx, h, id, pkcs11.CKA_DECRYPT, false)
		clock.Advance(KeyRecheckInterval)
		signOK(t, e.tok, k, "set back")
	})
	t.Run("after a new login", func(t *testing.T) {
		rawSetBool(t, ctx, h, id, pkcs11.CKA_DECRYPT, true)
		if err := e.tok.Logout(testContext(t)); err != nil {
			t.Fatal(err)
		}
		if err := e.tok.Login(testContext(t), e.soft.UserPIN); err != nil {
			t.Fatal(err)
		}
		refused(t, "a new login")
		rawSetBool(t, ctx, h, id, pkcs11.CKA_DECRYPT, false)
		clock.Advance(KeyRecheckInterval)
		signOK(t, e.tok, k, "set back")
	})
	t.Run("shown by KeyByID and ListKeys", func(t *testing.T) {
		rawSetBool(t, ctx, h, id, pkcs11.CKA_DECRYPT, true)
		shown, err := e.tok.KeyByID(testContext(t), id)
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
		refused(t, "KeyByID read the attributes") // no clock advance
	})
	e.assertNoLeakedSessions(t)
}

// TestGenerateKeyWithoutAllowedMechanisms: a module that refuses
// CKA_ALLOWED_MECHANISMS in the template (ATTRIBUTE_TYPE_INVALID) gets the
// key without it, and the key shows no allowed mechanisms.
func TestGenerateKeyWithoutAllowedMechanisms(t *testing.T) {
	e := newEnv(t, nil)
	e.fault.failNext("GenerateKeyPair", pkcs11.CKR_ATTRIBUTE_TYPE_INVALID, 1)
	k := e.genKey(t, RSA2048, "no-allowed-mechanisms")
	if len(k.Attrs.AllowedMechanisms) != 0 || k.AttributeProblem() != nil {
		t.Fatalf("attributes %+v, problem %v; want no allowed mechanisms and no problem", k.Attrs, k.AttributeProblem())
	}
	e.fault.mu.Lock()
	templates := e.fault.genPrivs
	e.fault.mu.Unlock()
	has := func(tmpl []*pkcs11.Attribute) bool {
		for _, a := range tmpl {
			if a.Type == pkcs11.CKA_ALLOWED_MECHANISMS {
				return true
			}
		}
		return false
	}
	if len(templates) != 2 || !has(templates[0]) || has(templates[1]) {
		t.Fatalf("%d C_GenerateKeyPair calls; want one with CKA_ALLOWED_MECHANISMS, then one without", len(templates))
	}
	ctx, h := e.rawSession(t)
	got, err := ctx.GetAttributeValue(h, rawFind(t, ctx, h, pkcs11.CKO_PRIVATE_KEY, k.ID),
		[]*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ALLOWED_MECHANISMS, nil), pkcs11.NewAttribute(pkcs11.CKA_MODIFIABLE, nil)})
	if err != nil {
		t.Fatal(err)
	}
	if len(got[0].Value) != 0 || !bytes.Equal(got[1].Value, []byte{0}) {
		t.Fatalf("CKA_ALLOWED_MECHANISMS %x, CKA_MODIFIABLE %x; want none, and not modifiable", got[0].Value, got[1].Value)
	}
	signOK(t, e.tok, k, "signs without allowed mechanisms")
}

// TestGenerateKeyRemovesWhatTheModuleMadeWrong: a module that makes the
// pair with other attributes than asked (here CKA_DECRYPT true) leaves
// nothing behind, and the generation fails with ErrKeyAttributes.
func TestGenerateKeyRemovesWhatTheModuleMadeWrong(t *testing.T) {
	e := newEnv(t, nil)
	e.fault.mu.Lock()
	e.fault.genPriv = func(priv []*pkcs11.Attribute) []*pkcs11.Attribute {
		var out []*pkcs11.Attribute
		for _, a := range priv {
			if a.Type == pkcs11.CKA_DECRYPT {
				a = pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true)
			}
			out = append(out, a)
		}
		return out
	}
	e.fault.mu.Unlock()
	if _, err := e.tok.GenerateKey(testContext(t), RSA2048, "made-wrong"); !errors.Is(err, ErrKeyAttributes) {
		t.Fatalf("GenerateKey on a module that ignores CKA_DECRYPT: %v; want ErrKeyAttributes", err)
	}
	if n := e.countObjects(t); n != 0 {
		t.Fatalf("%d objects left after the refused generation", n)
	}
	e.assertNoLeakedSessions(t)
}

// TestAttributeProblem checks what is required of a key and what is only
// reported.
func TestAttributeProblem(t *testing.T) {
	good := KeyAttributes{Sensitive: true, Sign: true, AlwaysSensitive: true, NeverExtractable: true,
		AllowedMechanisms: []uint{pkcs11.CKM_RSA_PKCS, pkcs11.CKM_RSA_PKCS_PSS}}
	tests := []struct {
		name  string
		typ   KeyType
		edit  func(*KeyAttributes)
		wants string // in the problem; empty: no problem
	}{
		{"generated RSA", KeyRSA, func(*KeyAttributes) {}, ""},
		{"modifiable, copyable, once extractable, no mechanisms: reported only", KeyRSA, func(a *KeyAttributes) {
			a.Modifiable, a.Copyable, a.AlwaysSensitive, a.NeverExtractable, a.AllowedMechanisms = true, true, false, false, nil
		}, ""},
		{"PSS only", KeyRSA, func(a *KeyAttributes) { a.AllowedMechanisms = []uint{pkcs11.CKM_RSA_PKCS_PSS} }, ""},
		{"EC", KeyEC, func(a *KeyAttributes) { a.AllowedMechanisms = []uint{pkcs11.CKM_ECDSA} }, ""},
		{"no sign", KeyRSA, func(a *KeyAttributes) { a.Sign = false }, "CKA_SIGN is false"},
		{"not sensitive", KeyRSA, func(a *KeyAttributes) { a.Sensitive = false }, "CKA_SENSITIVE is false"},
		{"extractable", KeyRSA, func(a *KeyAttributes) { a.Extractable = true }, "CKA_EXTRACTABLE is true"},
		{"decrypt", KeyRSA, func(a *KeyAttributes) { a.Decrypt = true }, "CKA_DECRYPT is true"},
		{"unwrap", KeyRSA, func(a *KeyAttributes) { a.Unwrap = true }, "CKA_UNWRAP is true"},
		{"sign recover", KeyRSA, func(a *KeyAttributes) { a.SignRecover = true }, "CKA_SIGN_RECOVER is true"},
		{"derive", KeyEC, func(a *KeyAttributes) { a.Derive, a.AllowedMechanisms = true, nil }, "CKA_DERIVE is true"},
		{"raw RSA allowed", KeyRSA, func(a *KeyAttributes) { a.AllowedMechanisms = append(a.AllowedMechanisms, pkcs11.CKM_RSA_X_509) }, "allows CKM_RSA_X_509"},
		{"RSA mechanism on an EC key", KeyEC, func(a *KeyAttributes) {}, "allows CKM_RSA_PKCS, CKM_RSA_PKCS_PSS"},
		{"several", KeyRSA, func(a *KeyAttributes) { a.Decrypt, a.Unwrap = true, true }, "CKA_DECRYPT is true (it can decrypt); CKA_UNWRAP is true"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := good
			a.AllowedMechanisms = append([]uint(nil), good.AllowedMechanisms...)
			tt.edit(&a)
			err := Key{Type: tt.typ, Attrs: a}.AttributeProblem()
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
