package hsm

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/asn1"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/miekg/pkcs11"

	softhsmtest "github.com/hsmsigner/hsmsigner/softhsm-test"
)

// tokenObject is an object on the token as read back through PKCS#11.
type tokenObject struct {
	class uint
	id    string
	label string
}

// objects reads back every object on the token (class, CKA_ID, label),
// past the package's listing, so a test sees what a deletion left.
func (e *testEnv) objects(t *testing.T) []tokenObject {
	t.Helper()
	var out []tokenObject
	err := e.tok.withSession(testContext(t), func(s *session) error {
		out = out[:0]
		hs, err := e.tok.find(s, nil, 1<<16)
		if err != nil {
			return err
		}
		for _, h := range hs {
			attrs, err := e.tok.m.api.GetAttributeValue(s.h, h, attrQuery(pkcs11.CKA_CLASS, pkcs11.CKA_ID, pkcs11.CKA_LABEL))
			if err != nil {
				return err
			}
			out = append(out, tokenObject{ulong(attrs[0].Value), string(attrs[1].Value), string(attrs[2].Value)})
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(out, func(a, b tokenObject) int {
		return strings.Compare(a.label+"\x00"+a.id+string(rune(a.class)), b.label+"\x00"+b.id+string(rune(b.class)))
	})
	return out
}

// create makes a token object from tmpl (CKA_TOKEN is added).
func (e *testEnv) create(t *testing.T, tmpl ...*pkcs11.Attribute) {
	t.Helper()
	err := e.tok.withSession(testContext(t), func(s *session) error {
		_, err := e.tok.m.api.CreateObject(s.h, append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true)))
		return err
	})
	if err != nil {
		t.Fatalf("C_CreateObject: %v", err)
	}
}

// destroyClass destroys the objects of class with CKA_ID id.
func (e *testEnv) destroyClass(t *testing.T, class uint, id []byte) {
	t.Helper()
	err := e.tok.withSession(testContext(t), func(s *session) error {
		hs, err := e.tok.find(s, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, class),
			pkcs11.NewAttribute(pkcs11.CKA_ID, id),
		}, 8)
		if err != nil {
			return err
		}
		if len(hs) == 0 {
			t.Fatalf("no object of class %d with id %x", class, id)
		}
		for _, h := range hs {
			if err := e.tok.m.api.DestroyObject(s.h, h); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// ecPublicTemplate is a public key object template of pk.
func ecPublicTemplate(t *testing.T, pk *ecdsa.PublicKey) []*pkcs11.Attribute {
	t.Helper()
	params, err := asn1.Marshal(curveOID(pk.Curve))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := pk.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	point, err := asn1.Marshal(raw)
	if err != nil {
		t.Fatal(err)
	}
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
		pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, params),
		pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, point),
	}
}

// certTemplate is a certificate object template of a self-signed
// certificate.
func certTemplate(t *testing.T, cn string) []*pkcs11.Attribute {
	t.Helper()
	cert := softhsmtest.SelfSignedCert(t, cn)
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_CERTIFICATE),
		pkcs11.NewAttribute(pkcs11.CKA_CERTIFICATE_TYPE, pkcs11.CKC_X_509),
		pkcs11.NewAttribute(pkcs11.CKA_SUBJECT, cert.RawSubject),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE, cert.Raw),
	}
}

// TestListKeysShowsStrayObjects: a public key object and a certificate
// object without CKA_ID, and the public key and certificate objects of a
// key whose private key object is gone, are listed as damaged (the
// id-less ones with no id, the orphans under their id) and removed:
// the id-less ones by DeleteKeysWithoutID, the orphans by DeleteDamaged
// with their id. The whole key pair beside them, with its certificate,
// is neither listed as damaged nor touched, as read back through
// PKCS#11. Before the fix none of them was listed, and neither call
// removed them.
func TestListKeysShowsStrayObjects(t *testing.T) {
	e := newEnv(t, nil)
	ctx := testContext(t)
	whole := e.genKey(t, ECP256, "whole")
	e.create(t, append(certTemplate(t, "whole"), pkcs11.NewAttribute(pkcs11.CKA_ID, whole.ID), pkcs11.NewAttribute(pkcs11.CKA_LABEL, "whole"))...)
	orphan := e.genKey(t, ECP256, "orphan")
	e.create(t, append(certTemplate(t, "orphan"), pkcs11.NewAttribute(pkcs11.CKA_ID, orphan.ID), pkcs11.NewAttribute(pkcs11.CKA_LABEL, "orphan"))...)
	e.destroyClass(t, pkcs11.CKO_PRIVATE_KEY, orphan.ID)
	pk, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	e.create(t, append(ecPublicTemplate(t, &pk.PublicKey), pkcs11.NewAttribute(pkcs11.CKA_LABEL, "idless-public"))...)
	e.create(t, append(certTemplate(t, "idless"), pkcs11.NewAttribute(pkcs11.CKA_LABEL, "idless-cert"))...)
	e.tok.forgetKeys()

	keys, err := e.tok.ListKeys(ctx)
	if err != nil {
		t.Fatalf("ListKeys: %v", err)
	}
	byLabel := map[string]Key{}
	for _, k := range keys {
		byLabel[k.Label] = k
	}
	tests := []struct {
		label  string
		id     []byte
		damage string // in Key.Damage; empty: whole
	}{
		{"whole", whole.ID, ""},
		{"orphan", orphan.ID, "no private key object"},
		{"idless-public", nil, "public key object without CKA_ID"},
		{"idless-cert", nil, "certificate object without CKA_ID"},
	}
	if len(keys) != len(tests) {
		t.Errorf("listed %d keys (%v), want %d", len(keys), byLabel, len(tests))
	}
	for _, tc := range tests {
		k, ok := byLabel[tc.label]
		switch {
		case !ok:
			t.Errorf("%s is not listed", tc.label)
		case !bytes.Equal(k.ID, tc.id):
			t.Errorf("%s: id %x, want %x", tc.label, k.ID, tc.id)
		case tc.damage == "" && k.Damage != "":
			t.Errorf("%s: damage %q, want none", tc.label, k.Damage)
		case tc.damage != "" && (!strings.Contains(k.Damage, tc.damage) || k.Public != nil || k.AttributeProblem() == nil):
			t.Errorf("%s: damage %q, public %v, problem %v; want damage with %q, no public key, a problem", tc.label, k.Damage, k.Public != nil, k.AttributeProblem(), tc.damage)
		}
	}

	// A whole key pair is never deleted as damaged.
	if _, err := e.tok.DeleteDamaged(ctx, whole.ID); !errors.Is(err, ErrKeyExists) {
		t.Errorf("DeleteDamaged of the whole key: %v, want ErrKeyExists", err)
	}
	gone, err := e.tok.DeleteKeysWithoutID(ctx)
	if err != nil {
		t.Fatalf("DeleteKeysWithoutID: %v", err)
	}
	if got := objectLabels(gone); !slices.Equal(got, []string{"idless-cert", "idless-public"}) {
		t.Errorf("DeleteKeysWithoutID destroyed %v, want idless-cert and idless-public", gone)
	}
	gone, err = e.tok.DeleteDamaged(ctx, orphan.ID)
	if err != nil {
		t.Fatalf("DeleteDamaged of the orphan: %v", err)
	}
	if len(gone) != 2 {
		t.Errorf("DeleteDamaged of the orphan destroyed %v, want its public key and certificate", gone)
	}
	if _, err := e.tok.DeleteDamaged(ctx, orphan.ID); !errors.Is(err, ErrKeyNotFound) {
		t.Errorf("DeleteDamaged of the orphan again: %v, want ErrKeyNotFound", err)
	}
	want := []tokenObject{
		{pkcs11.CKO_CERTIFICATE, string(whole.ID), "whole"},
		{pkcs11.CKO_PUBLIC_KEY, string(whole.ID), "whole"},
		{pkcs11.CKO_PRIVATE_KEY, string(whole.ID), "whole"},
	}
	if got := e.objects(t); !slices.EqualFunc(got, want, func(a, b tokenObject) bool { return a == b }) || len(got) != 3 {
		t.Errorf("objects left: %+v, want the whole key pair and its certificate", got)
	}
	keys, err = e.tok.ListKeys(ctx)
	if err != nil || len(keys) != 1 || keys[0].Damage != "" {
		t.Errorf("after the deletions: %v, %v; want only the whole key", keys, err)
	}
	signOK(t, e.tok, whole, "the whole key still signs")
}

// objectLabels returns the sorted labels of objs.
func objectLabels(objs []Object) []string {
	var out []string
	for _, o := range objs {
		out = append(out, o.Label)
	}
	slices.Sort(out)
	return out
}

// TestMismatchedPublicKeyIsDamage: a private key whose public key object
// with its id is of another type, of another curve, or another RSA
// modulus is listed as damaged (not with the public key of the other
// object, which would take a certificate that is not its own), never
// fails the listing, is not found for signing, and is deleted by
// DeleteDamaged; a second private key object sharing a whole key's id
// makes both damaged. Before the fix a public object of another type
// failed every listing with ATTRIBUTE_TYPE_INVALID, and one of another
// curve or modulus was listed as the key's own.
func TestMismatchedPublicKeyIsDamage(t *testing.T) {
	rsaOther, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		spec   KeySpec
		public func(t *testing.T) []*pkcs11.Attribute
		damage string
	}{
		{"EC private, RSA public", ECP256, func(t *testing.T) []*pkcs11.Attribute {
			return []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
				pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA),
				pkcs11.NewAttribute(pkcs11.CKA_MODULUS, rsaOther.N.Bytes()),
				pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, []byte{1, 0, 1}),
			}
		}, "not an EC key"},
		{"P-256 private, P-384 public", ECP256, func(t *testing.T) []*pkcs11.Attribute {
			return ecPublicTemplate(t, &p384.PublicKey)
		}, "curve"},
		{"RSA private, other modulus", RSA2048, func(t *testing.T) []*pkcs11.Attribute {
			return []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
				pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA),
				pkcs11.NewAttribute(pkcs11.CKA_MODULUS, rsaOther.N.Bytes()),
				pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, []byte{1, 0, 1}),
			}
		}, "modulus"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, nil)
			ctx := testContext(t)
			whole := e.genKey(t, ECP256, "whole")
			bad := e.genKey(t, tc.spec, "bad")
			e.destroyClass(t, pkcs11.CKO_PUBLIC_KEY, bad.ID)
			e.create(t, append(tc.public(t), pkcs11.NewAttribute(pkcs11.CKA_ID, bad.ID), pkcs11.NewAttribute(pkcs11.CKA_LABEL, "bad"))...)
			e.tok.forgetKeys()
			keys, err := e.tok.ListKeys(ctx)
			if err != nil {
				t.Fatalf("ListKeys: %v", err)
			}
			if len(keys) != 2 {
				t.Fatalf("listed %v, want whole and bad", keys)
			}
			for _, k := range keys {
				switch k.Label {
				case "whole":
					if k.Damage != "" {
						t.Errorf("whole: damage %q", k.Damage)
					}
				case "bad":
					if !strings.Contains(k.Damage, tc.damage) || k.Public != nil {
						t.Errorf("bad: damage %q, public %v; want damage with %q, no public key", k.Damage, k.Public != nil, tc.damage)
					}
				}
			}
			if _, err := e.tok.KeyByID(ctx, bad.ID); !errors.Is(err, ErrKeyNotFound) {
				t.Errorf("KeyByID of the damaged key: %v, want ErrKeyNotFound", err)
			}
			gone, err := e.tok.DeleteDamaged(ctx, bad.ID)
			if err != nil || len(gone) != 2 {
				t.Fatalf("DeleteDamaged: %v, %v; want its two objects", gone, err)
			}
			if got := e.objects(t); len(got) != 2 || got[0].id != string(whole.ID) || got[1].id != string(whole.ID) {
				t.Errorf("objects left: %+v, want the whole key pair", got)
			}
			signOK(t, e.tok, whole, "the whole key still signs")
		})
	}
}

// TestSharedIDIsDamage: a second private key object with a whole key's
// CKA_ID makes the id ambiguous: both are listed as damaged, neither
// signs (not even through a handle cached before), and DeleteKey of the
// id removes every object with it, nothing else.
func TestSharedIDIsDamage(t *testing.T) {
	e := newEnv(t, nil)
	ctx := testContext(t)
	whole := e.genKey(t, ECP256, "whole")
	shared := e.genKey(t, ECP256, "shared")
	signOK(t, e.tok, shared, "before the copy")
	pk, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	params, err := asn1.Marshal(curveOID(elliptic.P256()))
	if err != nil {
		t.Fatal(err)
	}
	e.create(t,
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
		pkcs11.NewAttribute(pkcs11.CKA_ID, shared.ID),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, "intruder"),
		pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, params),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE, pk.D.FillBytes(make([]byte, 32))),
	)
	keys, err := e.tok.ListKeys(ctx)
	if err != nil {
		t.Fatalf("ListKeys: %v", err)
	}
	damaged := 0
	for _, k := range keys {
		if bytes.Equal(k.ID, shared.ID) {
			if !strings.Contains(k.Damage, "share") || k.Public != nil {
				t.Errorf("%s: damage %q, public %v; want a shared-id damage and no public key", k.Label, k.Damage, k.Public != nil)
			}
			damaged++
		}
	}
	if damaged != 2 {
		t.Errorf("listed %d keys with the shared id, want 2: %v", damaged, keys)
	}
	if _, err := e.tok.Sign(ctx, shared.ID, mustAlg(t, "ES256"), digestOf("shared")); err == nil {
		t.Error("a key whose id two private keys share signed")
	}
	if err := e.tok.DeleteKey(ctx, shared.ID); err != nil {
		t.Fatalf("DeleteKey of the shared id: %v", err)
	}
	if got := e.objects(t); len(got) != 2 || got[0].id != string(whole.ID) || got[1].id != string(whole.ID) {
		t.Errorf("objects left: %+v, want the whole key pair", got)
	}
	signOK(t, e.tok, whole, "the other key still signs")
}

// TestListKeysDuringDeletions: listings running while key pairs are
// deleted by the same process never fail and never show a key half
// deleted as damaged: an object destroyed while it is read (SoftHSM
// answers OBJECT_HANDLE_INVALID) is looked at again, and damage seen is
// confirmed with no deletion under way. Before the fix a listing showed
// a key being deleted as damaged ("no public key object"), which
// reconciliation would report, or failed with OBJECT_HANDLE_INVALID from
// its public key object (the token then skipped as unavailable: a
// certificate import found no key). (Keys are not generated during the
// listings: SoftHSM 2.6 fails C_GenerateKeyPair with GENERAL_ERROR when
// another session reads the token meanwhile, leaving a public key object
// without CKA_ID.)
func TestListKeysDuringDeletions(t *testing.T) {
	e := newEnv(t, nil, WithPoolSize(4))
	ctx := testContext(t)
	stable := e.genKey(t, ECP256, "stable")
	const rounds = 30
	var churn []Key
	for i := range rounds {
		churn = append(churn, e.genKey(t, ECP256, fmt.Sprintf("churn-%d", i)))
	}
	done := make(chan struct{})
	errs := make(chan error, 3)
	for range 3 {
		go func() {
			for {
				select {
				case <-done:
					errs <- nil
					return
				default:
				}
				e.tok.forgetKeys() // every public key object read again
				keys, err := e.tok.ListKeys(ctx)
				if err != nil {
					errs <- fmt.Errorf("ListKeys: %w", err)
					return
				}
				for _, k := range keys {
					if k.Damage != "" {
						errs <- fmt.Errorf("ListKeys shows %q (%x) as damaged: %s", k.Label, k.ID, k.Damage)
						return
					}
				}
			}
		}()
	}
	for i, k := range churn {
		if err := e.tok.DeleteKey(ctx, k.ID); err != nil {
			close(done)
			t.Fatalf("round %d: %v", i, err)
		}
	}
	close(done)
	for range 3 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if got := e.objects(t); len(got) != 2 {
		t.Errorf("objects left: %+v, want the stable key pair", got)
	}
	signOK(t, e.tok, stable, "the stable key after the churn")
}
