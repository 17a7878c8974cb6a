package hsm

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/asn1"
	"errors"
	"slices"
	"testing"

	"github.com/miekg/pkcs11"
)

// createIDLessPair puts an EC key pair on the token whose two objects have
// no CKA_ID, through C_CreateObject: what SoftHSM shows of a key
// generation a crash cut short before the objects' attributes were
// written, with a public half that parses (the worst case: pairing the
// two by their empty id would give the private key a public key).
func (e *testEnv) createIDLessPair(t *testing.T, label string) *ecdsa.PrivateKey {
	t.Helper()
	pk, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	params, err := asn1.Marshal(curveOID(elliptic.P256()))
	if err != nil {
		t.Fatal(err)
	}
	point, err := asn1.Marshal(elliptic.Marshal(elliptic.P256(), pk.X, pk.Y)) //nolint:staticcheck // the DER of CKA_EC_POINT
	if err != nil {
		t.Fatal(err)
	}
	err = e.tok.withSession(testContext(t), func(s *session) error {
		if _, err := e.tok.m.api.CreateObject(s.h, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
			pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, params),
			pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, point),
		}); err != nil {
			return err
		}
		_, err := e.tok.m.api.CreateObject(s.h, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
			pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
			pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, params),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE, pk.D.FillBytes(make([]byte, 32))),
		})
		return err
	})
	if err != nil {
		t.Fatalf("creating an id-less key pair: %v", err)
	}
	return pk
}

// destroyPublic destroys the public key object of key id: what a deletion
// cut short between its two objects leaves.
func (e *testEnv) destroyPublic(t *testing.T, id []byte) {
	t.Helper()
	err := e.tok.withSession(testContext(t), func(s *session) error {
		hs, err := e.tok.find(s, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_ID, id),
		}, 2)
		if err != nil {
			return err
		}
		if len(hs) != 1 {
			t.Fatalf("%d public key objects with id %x", len(hs), id)
		}
		return e.tok.m.api.DestroyObject(s.h, hs[0])
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestListKeysShowsDamagedKeys: a private key object without CKA_ID, and
// one whose public key object is gone, are listed with their damage and no
// public key, never paired with a public key by an empty id, and never
// make the listing fail; the whole keys are listed as before. Neither
// signs. DeleteKey removes the one with an id, DeleteKeysWithoutID the one
// without, and nothing else.
func TestListKeysShowsDamagedKeys(t *testing.T) {
	e := newEnv(t, nil)
	ctx := testContext(t)
	whole, err := e.tok.GenerateKey(ctx, ECP256, "whole")
	if err != nil {
		t.Fatal(err)
	}
	halfDeleted, err := e.tok.GenerateKey(ctx, ECP256, "half-deleted")
	if err != nil {
		t.Fatal(err)
	}
	e.destroyPublic(t, halfDeleted.ID)
	e.createIDLessPair(t, "interrupted")
	// As after the restart that follows a crash: nothing cached (a
	// cached key's public half is taken from the cache).
	e.tok.forgetKeys()

	keys, err := e.tok.ListKeys(ctx)
	if err != nil {
		t.Fatalf("ListKeys with damaged keys on the token: %v", err)
	}
	byLabel := map[string]Key{}
	for _, k := range keys {
		byLabel[k.Label+"/"+k.Object] = k
	}
	if len(keys) != 4 || len(byLabel) != 4 {
		t.Fatalf("listed %d keys (%v), want whole, half-deleted and interrupted's two objects", len(keys), byLabel)
	}
	tests := []struct {
		label      string
		id         []byte
		damage     string
		wantPublic bool
	}{
		{"whole/", whole.ID, "", true},
		{"half-deleted/", halfDeleted.ID, damageNoPublic, false},
		{"interrupted/", nil, damageNoID, false},
		{"interrupted/" + ObjectPublicKey, nil, damagePublicNoID, false},
	}
	for _, tc := range tests {
		k := byLabel[tc.label]
		if string(k.ID) != string(tc.id) || k.Damage != tc.damage || (k.Public != nil) != tc.wantPublic {
			t.Errorf("%s: id %x, damage %q, public %v; want id %x, damage %q, public %v", tc.label, k.ID, k.Damage, k.Public != nil, tc.id, tc.damage, tc.wantPublic)
		}
		if p := k.AttributeProblem(); (p != nil) != (tc.damage != "") || (p != nil && !errors.Is(p, ErrKeyAttributes)) {
			t.Errorf("%s: AttributeProblem %v", tc.label, p)
		}
	}
	if _, err := e.tok.KeyByLabel(ctx, "interrupted"); !errors.Is(err, ErrKeyNotFound) {
		t.Errorf("KeyByLabel of the id-less key: %v, want ErrKeyNotFound", err)
	}
	if _, err := e.tok.KeyByID(ctx, halfDeleted.ID); !errors.Is(err, ErrKeyNotFound) {
		t.Errorf("KeyByID of the half-deleted key: %v, want ErrKeyNotFound", err)
	}

	gone, err := e.tok.DeleteKeysWithoutID(ctx)
	want := []Object{{Kind: ObjectPublicKey, Label: "interrupted"}, {Kind: ObjectPrivateKey, Label: "interrupted"}}
	if err != nil || !slices.EqualFunc(gone, want, func(a, b Object) bool { return a.String() == b.String() }) {
		t.Fatalf("DeleteKeysWithoutID: %v, %v; want %v", gone, err, want)
	}
	if _, err := e.tok.DeleteKeysWithoutID(ctx); !errors.Is(err, ErrKeyNotFound) {
		t.Errorf("DeleteKeysWithoutID again: %v, want ErrKeyNotFound", err)
	}
	if err := e.tok.DeleteKey(ctx, halfDeleted.ID); err != nil {
		t.Fatalf("DeleteKey of the half-deleted key: %v", err)
	}
	keys, err = e.tok.ListKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || string(keys[0].ID) != string(whole.ID) || keys[0].Damage != "" {
		t.Fatalf("after the deletions: %v, want only the whole key", keys)
	}
}
