package signer

import (
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	xocsp "golang.org/x/crypto/ocsp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/config"
	"github.com/hsmsigner/hsmsigner/softhsm-test/devca"
)

// rootResponder answers OCSP requests for the dev CA's intermediate,
// signed by the root's key, with the status it is set to.
type rootResponder struct {
	srv    *httptest.Server
	status atomic.Int64
}

func newRootResponder(t *testing.T, ca *devca.CA) *rootResponder {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(ca.Dir, "root.key"))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(b)
	if block == nil {
		t.Fatal("root.key holds no PEM")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	rr := &rootResponder{}
	rr.status.Store(int64(xocsp.Good))
	rr.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tu := time.Now().Add(-time.Minute).Truncate(time.Second)
		der, err := xocsp.CreateResponse(ca.Root, ca.Root, xocsp.Response{
			Status: int(rr.status.Load()), SerialNumber: ca.Intermediate.SerialNumber, ThisUpdate: tu, NextUpdate: tu.Add(time.Hour),
			RevokedAt: tu.Add(-time.Minute), RevocationReason: xocsp.KeyCompromise,
		}, k.(crypto.Signer))
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		_, _ = w.Write(der)
	}))
	t.Cleanup(rr.srv.Close)
	return rr
}

// TestOCSPRevokedIntermediateStopsSigning revokes the intermediate CA
// that issued an active sign certificate: GetSigningInfo stops offering
// the certificate, and every sign path refuses its key, by certificate
// hash and by key id, single and batch.
func TestOCSPRevokedIntermediateStopsSigning(t *testing.T) {
	ca := devca.New(t)
	ca.StartOCSPResponder(t, 60)
	rr := newRootResponder(t, ca)
	d := newDaemon(t, func(p *daemonParams) {
		p.OCSP = fmt.Sprintf("enabled = true\nresponders = [{issuer = %q, urls = [%q]}]", ca.RootPEM, rr.srv.URL)
	})
	k, _, sum := d.activeSignCert(t, ca, "agency", member)
	interSum := sha256.Sum256(ca.Intermediate.Raw)
	inter := hex.EncodeToString(interSum[:])
	if st := d.refreshOCSP(t, sum); !st.GetUsable() {
		t.Fatalf("leaf: %+v", st)
	}
	if st := d.refreshOCSP(t, inter); st.GetStatus() != "good" || st.GetRole() != "intermediate" {
		t.Fatalf("intermediate: %+v", st)
	}
	digest := sha256.Sum256([]byte("before the intermediate's revocation"))
	if _, err := d.client.Sign(testCtx(t), &signerv1.SignRequest{Key: &signerv1.SignRequest_CertHash{CertHash: sum}, Algorithm: "SHA256withECDSA", Digest: digest[:]}); err != nil {
		t.Fatalf("Sign before revocation: %v", err)
	}

	rr.status.Store(int64(xocsp.Revoked))
	if st := d.refreshOCSP(t, inter); st.GetStatus() != "revoked" {
		t.Fatalf("intermediate after revocation: %+v", st)
	}
	if _, err := d.client.GetSigningInfo(testCtx(t), &signerv1.GetSigningInfoRequest{Member: member}); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("GetSigningInfo under a revoked intermediate: %v", err)
	}
	cases := []struct {
		name string
		call func() error
	}{
		{"Sign by certificate hash", func() error {
			_, err := d.client.Sign(testCtx(t), &signerv1.SignRequest{Key: &signerv1.SignRequest_CertHash{CertHash: sum}, Algorithm: "SHA256withECDSA", Digest: digest[:]})
			return err
		}},
		{"Sign by key id", func() error {
			_, err := d.client.Sign(testCtx(t), &signerv1.SignRequest{Key: &signerv1.SignRequest_KeyId{KeyId: k.GetId()}, Algorithm: "SHA256withECDSA", Digest: digest[:]})
			return err
		}},
		{"SignBatch by key id", func() error {
			_, err := d.client.SignBatch(testCtx(t), &signerv1.SignBatchRequest{Key: &signerv1.SignBatchRequest_KeyId{KeyId: k.GetId()}, Algorithm: "SHA256withECDSA", Digests: [][]byte{digest[:]}, Mode: signerv1.BatchMode_BATCH_MODE_INDIVIDUAL})
			return err
		}},
		{"SignBatch by certificate hash", func() error {
			_, err := d.client.SignBatch(testCtx(t), &signerv1.SignBatchRequest{Key: &signerv1.SignBatchRequest_CertHash{CertHash: sum}, Algorithm: "SHA256withECDSA", Digests: [][]byte{digest[:]}, Mode: signerv1.BatchMode_BATCH_MODE_INDIVIDUAL})
			return err
		}},
	}
	for _, c := range cases {
		if err := c.call(); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "revoked") {
			t.Errorf("%s under a revoked intermediate: %v, want FailedPrecondition naming the revocation", c.name, err)
		}
	}
}

// TestOCSPOtherMembersCertificateLooksUnwatched checks that a client of
// member A who names member B's certificate in GetOCSPResponses or
// SetOCSPResponses learns nothing of it: the answer is the one for a
// certificate signerd does not watch, without B's name or the fact that
// the certificate is active here; the refusal is audited with B.
func TestOCSPOtherMembersCertificateLooksUnwatched(t *testing.T) {
	ca := devca.New(t)
	ca.StartOCSPResponder(t, 60)
	d := newDaemon(t, func(p *daemonParams) { p.OCSP = ocspOn })
	_, _, sumB := d.activeSignCert(t, ca, "agency-b", memberB)
	if st := d.refreshOCSP(t, sumB); !st.GetUsable() {
		t.Fatalf("B's certificate: %+v", st)
	}
	asAdmin, err := d.client.GetOCSPResponses(testCtx(t), &signerv1.GetOCSPResponsesRequest{CertHashes: []string{sumB}})
	if err != nil || len(asAdmin.GetResponses()) != 1 || len(asAdmin.GetResponses()[0].GetResponse()) == 0 {
		t.Fatalf("GetOCSPResponses as admin: %v, %v", asAdmin, err)
	}
	der := asAdmin.GetResponses()[0].GetResponse()
	me := uint32(os.Getuid())
	p, err := config.NewPolicy(config.Admins{UIDs: []uint32{me + 1}}, []config.ClientRule{
		{Name: "member-a", UIDs: []uint32{me}, Keys: []string{"*"}, Usages: []string{"sign"}, Members: []string{memberA}},
	})
	if err != nil {
		t.Fatal(err)
	}
	d.svc.SetPolicy(p)
	unknown := strings.Repeat("ab", 32)
	norm := func(e, h string) string { return strings.ReplaceAll(e, h, "HASH") }

	got, err := d.client.GetOCSPResponses(testCtx(t), &signerv1.GetOCSPResponsesRequest{CertHashes: []string{sumB, unknown}})
	if err != nil || len(got.GetResponses()) != 2 {
		t.Fatalf("GetOCSPResponses: %v, %v", got, err)
	}
	b, u := got.GetResponses()[0], got.GetResponses()[1]
	if len(b.GetResponse()) != 0 || b.GetError() == "" {
		t.Fatalf("member A's client got B's response: %+v", b)
	}
	if strings.Contains(b.GetError(), memberB) || b.GetCertSha256() != "" || norm(b.GetError(), sumB) != norm(u.GetError(), unknown) {
		t.Errorf("GetOCSPResponses tells B's certificate from an unknown one: %q (sha256 %q) vs %q", b.GetError(), b.GetCertSha256(), u.GetError())
	}

	set, err := d.client.SetOCSPResponses(testCtx(t), &signerv1.SetOCSPResponsesRequest{Responses: []*signerv1.SetOCSPResponsesRequest_Item{
		{CertHash: sumB, Response: der}, {CertHash: unknown, Response: der},
	}})
	if err != nil || len(set.GetResults()) != 2 {
		t.Fatalf("SetOCSPResponses: %v, %v", set, err)
	}
	b, u = set.GetResults()[0], set.GetResults()[1]
	if b.GetError() == "" || strings.Contains(b.GetError(), memberB) || b.GetCertSha256() != "" || norm(b.GetError(), sumB) != norm(u.GetError(), unknown) {
		t.Errorf("SetOCSPResponses tells B's certificate from an unknown one: %q (sha256 %q) vs %q", b.GetError(), b.GetCertSha256(), u.GetError())
	}
	denied := 0
	for _, r := range d.auditLines(t) {
		if r.Op == "denied" && strings.Contains(r.Detail, memberB) {
			denied++
		}
	}
	if denied != 2 {
		t.Errorf("%d refusals of B's certificate to A's client audited as denied with B, want 2 (get and set)", denied)
	}
}
