package signer

import (
	"crypto/ecdsa"
	"crypto/x509"
	"slices"
	"testing"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
)

// TestListingAtScale lists a token of a dozen keys with certificates
// through the daemon's socket and checks every key's and certificate's
// fields, then that each change an officer makes (a key generated,
// renamed, deleted; a certificate imported) is seen by the very next
// listing and signing-info call, as the caches behind them must.
func TestListingAtScale(t *testing.T) {
	const n = 12
	f := newScaleFixture(t)
	f.grow(t, n)
	f.start(t)
	ctx := testCtx(t)
	c := f.d.client

	keys, err := f.listKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys.GetKeys()) != n {
		t.Fatalf("ListKeys: %d keys, want %d", len(keys.GetKeys()), n)
	}
	byID := map[string]*signerv1.Key{}
	for _, k := range keys.GetKeys() {
		byID[k.GetId()] = k
	}
	for i, id := range f.keyIDs {
		k := byID[id]
		if k == nil {
			t.Fatalf("key %s missing from ListKeys", id)
		}
		pub, err := x509.ParsePKIXPublicKey(k.GetPublicKey())
		if _, ok := pub.(*ecdsa.PublicKey); err != nil || !ok {
			t.Errorf("key %s: public key %T, %v", id, pub, err)
		}
		if k.GetToken() != "t1" || k.GetLabel() != "member-"+itoa(i) || k.GetType() != "EC" || k.GetBits() != 256 || k.GetCurve() != "P-256" ||
			!k.GetKnown() || k.GetUsage() != signerv1.KeyUsage_KEY_USAGE_SIGN || k.GetBoundMember() != memberOf(i) ||
			!k.GetSensitive() || k.GetExtractable() || k.GetAttributeProblem() != "" || !slices.Equal(k.GetAllowedMechanisms(), []string{"CKM_ECDSA"}) {
			t.Errorf("key %d: %v", i, k)
		}
	}
	certs, err := c.ListCerts(ctx, &signerv1.ListCertsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(certs.GetCertificates()) != n {
		t.Fatalf("ListCerts: %d certificates, want %d", len(certs.GetCertificates()), n)
	}
	for _, cr := range certs.GetCertificates() {
		i := slices.Index(f.keyIDs, cr.GetKeyId())
		if i < 0 || cr.GetMember() != memberOf(i) || cr.GetUsage() != signerv1.KeyUsage_KEY_USAGE_SIGN || cr.GetToken() != "t1" ||
			cr.GetStatus() != signerv1.CertStatus_CERT_STATUS_REGISTERED || !cr.GetActive() || cr.GetSubject() == "" || len(cr.GetChain()) != 1 {
			t.Errorf("certificate %s: %v", cr.GetSha256(), cr)
		}
	}
	for i := range n {
		si, err := c.GetSigningInfo(ctx, &signerv1.GetSigningInfoRequest{Member: memberOf(i)})
		if err != nil || si.GetKeyId() != f.keyIDs[i] {
			t.Fatalf("GetSigningInfo %s: %v, %v", memberOf(i), si, err)
		}
	}

	// A key generated is listed at once.
	nk := f.d.genKey(t, "new-key", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	if k := findListed(t, f, nk.GetId()); k == nil || k.GetLabel() != "new-key" {
		t.Fatalf("a generated key is not listed: %v", k)
	}
	// Renamed: the next listing has the name.
	if _, err := c.RenameKey(ctx, &signerv1.RenameKeyRequest{KeyId: nk.GetId(), Name: "renamed"}); err != nil {
		t.Fatal(err)
	}
	if k := findListed(t, f, nk.GetId()); k == nil || k.GetName() != "renamed" {
		t.Fatalf("the listing after a rename: %v", k)
	}
	// A certificate imported for it: listed, and signing info finds it.
	pub, err := x509.ParsePKIXPublicKey(nk.GetPublicKey())
	if err != nil {
		t.Fatal(err)
	}
	const member = "EE/GOV/NEW"
	cert := f.issue(t, pub.(*ecdsa.PublicKey), member, 1<<40)
	imp, err := c.ImportCert(ctx, &signerv1.ImportCertRequest{Certificate: pemOf(cert, f.caCert), Member: member})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.SetCertStatus(ctx, &signerv1.SetCertStatusRequest{Hash: imp.GetSha256(), Status: signerv1.CertStatus_CERT_STATUS_REGISTERED}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ActivateCert(ctx, &signerv1.CertRef{Hash: imp.GetSha256()}); err != nil {
		t.Fatal(err)
	}
	if si, err := c.GetSigningInfo(ctx, &signerv1.GetSigningInfoRequest{Member: member}); err != nil || si.GetKeyId() != nk.GetId() {
		t.Fatalf("GetSigningInfo after the import: %v, %v", si, err)
	}
	certs, err = c.ListCerts(ctx, &signerv1.ListCertsRequest{Member: member})
	if err != nil || len(certs.GetCertificates()) != 1 || certs.GetCertificates()[0].GetKeyId() != nk.GetId() {
		t.Fatalf("ListCerts of the new member after the import: %v, %v", certs, err)
	}
	// Deleted with its certificate: gone from both listings.
	if _, err := c.DeleteKey(ctx, &signerv1.DeleteKeyRequest{KeyId: nk.GetId(), Force: true}); err != nil {
		t.Fatal(err)
	}
	if k := findListed(t, f, nk.GetId()); k != nil {
		t.Fatalf("a deleted key is still listed: %v", k)
	}
	certs, err = c.ListCerts(ctx, &signerv1.ListCertsRequest{Member: member})
	if err != nil || len(certs.GetCertificates()) != 0 {
		t.Fatalf("ListCerts of the new member after the deletion: %v, %v", certs, err)
	}
	if _, err := c.GetSigningInfo(ctx, &signerv1.GetSigningInfoRequest{Member: member}); err == nil {
		t.Fatal("GetSigningInfo answers for a member whose key and certificate were deleted")
	}
}

// findListed lists the keys through the socket and returns the one with
// id, or nil.
func findListed(t *testing.T, f *scaleFixture, id string) *signerv1.Key {
	t.Helper()
	resp, err := f.listKeys(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range resp.GetKeys() {
		if k.GetId() == id {
			return k
		}
	}
	return nil
}

func itoa(i int) string { return string(rune('0'+i/10)) + string(rune('0'+i%10)) }
