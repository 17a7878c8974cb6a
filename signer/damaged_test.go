package signer

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"path/filepath"
	"strings"
	"testing"

	"github.com/miekg/pkcs11"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/softhsm-test/devca"
)

// session opens a read-write session of the outside application; the
// daemon's login covers it (the library is shared).
func (o *outsideApp) session(t *testing.T) pkcs11.SessionHandle {
	t.Helper()
	h, err := o.ctx.OpenSession(o.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = o.ctx.CloseSession(h) })
	return h
}

// createIDLessPair puts an EC key pair labelled label on the token whose
// objects have no CKA_ID, as SoftHSM shows a key generation a crash cut
// short before the objects' attributes were written, with a public half
// that parses: pairing the two by their empty id would give the private
// key a public key. It returns the private key.
func (o *outsideApp) createIDLessPair(t *testing.T, label string) *ecdsa.PrivateKey {
	t.Helper()
	pk, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	params, err := asn1.Marshal(asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := pk.PublicKey.ECDH()
	if err != nil {
		t.Fatal(err)
	}
	point, err := asn1.Marshal(raw.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	h := o.session(t)
	if _, err := o.ctx.CreateObject(h, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, params),
		pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, point),
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := o.ctx.CreateObject(h, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, params),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE, pk.D.FillBytes(make([]byte, 32))),
	}); err != nil {
		t.Fatal(err)
	}
	return pk
}

// destroyPublic destroys the public key object of key idHex: what a
// deletion cut short between the pair's two objects leaves.
func (o *outsideApp) destroyPublic(t *testing.T, idHex string) {
	t.Helper()
	id, err := hex.DecodeString(idHex)
	if err != nil {
		t.Fatal(err)
	}
	h := o.session(t)
	if err := o.ctx.FindObjectsInit(h, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
	}); err != nil {
		t.Fatal(err)
	}
	hs, _, err := o.ctx.FindObjects(h, 2)
	if ferr := o.ctx.FindObjectsFinal(h); err == nil {
		err = ferr
	}
	if err != nil || len(hs) != 1 {
		t.Fatalf("the public key object of %s: %d found, %v", idHex, len(hs), err)
	}
	if err := o.ctx.DestroyObject(h, hs[0]); err != nil {
		t.Fatal(err)
	}
}

// TestDamagedKeysAreShownAndCleared: what a crash leaves of a key
// generation (a private key object without CKA_ID, here with an id-less
// public key object beside it) and of a key deletion (a recorded key's
// private key object without its public one) is listed with its damage,
// reported once by a reconcile.damaged_key line after the restart, takes
// no certificate, and is cleared by the officer with key delete (the
// id-less one by NoIDKeyRef); the whole key beside them is untouched.
// Before the fix the id-less private key was paired with the id-less
// public key by their empty id, and importing a certificate of that
// public key failed with "state: invalid input: empty key id"; a key
// without its public key object failed every key listing.
func TestDamagedKeysAreShownAndCleared(t *testing.T) {
	d := newDaemon(t)
	ctx := testCtx(t)
	whole := d.genKey(t, "whole", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	half := d.genKey(t, "half-deleted", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	o := newOutsideApp(t, d.soft)
	o.destroyPublic(t, half.GetId())
	pk := o.createIDLessPair(t, "interrupted")
	d.restart() // as after the crash: nothing cached

	// A certificate of the id-less pair's public key matches no key.
	ca := devca.New(t)
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "Agency", Organization: []string{"Agency"}, Country: []string{"EE"}, SerialNumber: member}}, pk)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.Sign(ctx, csrDER, "sign", devca.Current)
	if err != nil {
		t.Fatal(err)
	}
	_, err = d.client.ImportCert(ctx, &signerv1.ImportCertRequest{Certificate: pemOf(cert), Member: member})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "matches no key") {
		t.Fatalf("importing a certificate of the id-less key pair: %v; want FailedPrecondition, matches no key", err)
	}

	list, err := d.client.ListKeys(ctx, &signerv1.ListKeysRequest{})
	if err != nil {
		t.Fatalf("ListKeys with damaged keys on the token: %v", err)
	}
	byID := map[string]*signerv1.Key{}
	for _, k := range list.GetKeys() {
		// The id-less pair is listed twice under NoIDKeyRef: its private
		// key object first, then its public key object.
		if byID[k.GetId()] == nil {
			byID[k.GetId()] = k
		}
	}
	if n := len(list.GetKeys()); n != 4 {
		t.Errorf("listed %d entries, want 4 (the id-less pair's two objects)", n)
	}
	tests := []struct {
		id, label string
		known     bool
		problem   string // in AttributeProblem; empty: none
	}{
		{whole.GetId(), "whole", true, ""},
		{half.GetId(), "half-deleted", true, "no public key object"},
		{NoIDKeyRef, "interrupted", false, "no CKA_ID"},
	}
	if len(byID) != len(tests) {
		t.Errorf("listed %d keys, want %d", len(byID), len(tests))
	}
	for _, tc := range tests {
		k := byID[tc.id]
		switch {
		case k == nil:
			t.Errorf("key %s (%s) is not listed", tc.id, tc.label)
		case k.GetLabel() != tc.label || k.GetKnown() != tc.known:
			t.Errorf("key %s: label %q known %v; want %q, %v", tc.id, k.GetLabel(), k.GetKnown(), tc.label, tc.known)
		case tc.problem == "" && k.GetAttributeProblem() != "",
			tc.problem != "" && !strings.Contains(k.GetAttributeProblem(), "damaged object: "+tc.problem):
			t.Errorf("key %s: attribute problem %q; want one with %q", tc.id, k.GetAttributeProblem(), tc.problem)
		case tc.problem != "" && (len(k.GetAlgorithms()) != 0 || len(k.GetPublicKey()) != 0):
			t.Errorf("key %s, damaged: algorithms %v, public key of %d bytes; want none", tc.id, k.GetAlgorithms(), len(k.GetPublicKey()))
		}
	}

	reported := map[string]int{}
	for _, r := range readAudit(t, filepath.Join(d.dir, "audit.jsonl")) {
		if r.Op == OpDamagedKey {
			reported[r.Key]++
		}
	}
	if reported[half.GetId()] != 1 || reported[NoIDKeyRef] != 1 || len(reported) != 2 {
		t.Errorf("%s lines by key: %v; want one for %s and one for %s", OpDamagedKey, reported, half.GetId(), NoIDKeyRef)
	}

	// The half-deleted key cannot sign.
	_, err = d.client.Sign(ctx, &signerv1.SignRequest{Key: &signerv1.SignRequest_KeyId{KeyId: half.GetId()}, Algorithm: "ES256", Digest: make([]byte, 32)})
	if err == nil {
		t.Error("the key without its public key object signed")
	}

	for _, id := range []string{half.GetId(), NoIDKeyRef} {
		if _, err := d.client.DeleteKey(ctx, &signerv1.DeleteKeyRequest{KeyId: id}); err != nil {
			t.Fatalf("the officer deletes %s: %v", id, err)
		}
	}
	if _, err := d.client.DeleteKey(ctx, &signerv1.DeleteKeyRequest{KeyId: NoIDKeyRef}); status.Code(err) != codes.NotFound {
		t.Errorf("deleting %s again: %v; want NotFound", NoIDKeyRef, err)
	}
	list, err = d.client.ListKeys(ctx, &signerv1.ListKeysRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.GetKeys()) != 1 || list.GetKeys()[0].GetId() != whole.GetId() || list.GetKeys()[0].GetAttributeProblem() != "" {
		t.Fatalf("after the deletions: %v; want only the whole key", list.GetKeys())
	}
	if _, err := d.svc.store.GetKey(ctx, d.soft.Serial, half.GetId()); err == nil {
		t.Error("the half-deleted key's record stays")
	}
}
