package signer

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1" //nolint:gosec // certificates are named by SHA-1 too
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	xocsp "golang.org/x/crypto/ocsp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/softhsm-test/devca"
)

// ocspOn is the [ocsp] table of the OCSP tests: on, with the defaults.
const ocspOn = "enabled = true"

// activeSignCert makes a sign key for m, has the dev CA certify it,
// imports it with its chain, registers and activates it.
func (d *testDaemon) activeSignCert(t testing.TB, ca *devca.CA, label, m string) (*signerv1.Key, *x509.Certificate, string) {
	t.Helper()
	k := d.genKey(t, label, "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	cert := d.issue(t, ca, d.csrFor(t, k, "CN="+label+",O=Agency,C=EE", m), "sign", devca.Current)
	imp, err := d.client.ImportCert(testCtx(t), &signerv1.ImportCertRequest{Certificate: pemOf(append([]*x509.Certificate{cert}, ca.Chain()...)...)})
	if err != nil {
		t.Fatalf("ImportCert: %v", err)
	}
	if _, err := d.client.SetCertStatus(testCtx(t), &signerv1.SetCertStatusRequest{Hash: imp.GetSha256(), Status: signerv1.CertStatus_CERT_STATUS_REGISTERED}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.client.ActivateCert(testCtx(t), &signerv1.CertRef{Hash: imp.GetSha256()}); err != nil {
		t.Fatal(err)
	}
	return k, cert, imp.GetSha256()
}

// refreshOCSP asks for a fetch now and returns the certificate's status.
func (d *testDaemon) refreshOCSP(t testing.TB, sum string) *signerv1.OCSPCertStatus {
	t.Helper()
	var st *signerv1.GetOCSPStatusResponse
	var err error
	// The watcher learns of an activation through Resync; until it has,
	// the certificate is not watched yet.
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err = d.client.RefreshOCSP(testCtx(t), &signerv1.RefreshOCSPRequest{CertHash: sum})
		if status.Code(err) != codes.NotFound || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil || len(st.GetCertificates()) != 1 {
		t.Fatalf("RefreshOCSP: %v, %v", st, err)
	}
	return st.GetCertificates()[0]
}

// serveHTTP serves the daemon's HTTP handler on its Unix socket and
// returns a client that reaches it.
func (d *testDaemon) serveHTTP(t testing.TB) *http.Client {
	t.Helper()
	sock := filepath.Join(d.dir, "run", "http.sock")
	_ = os.Remove(sock)
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := d.svc.HTTPServer()
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
}

// opensslOCSPStatus has `openssl ocsp -respin` verify a response for cert
// against the dev CA and returns what it says of the certificate.
func opensslOCSPStatus(t *testing.T, ca *devca.CA, cert *x509.Certificate, resp []byte) string {
	t.Helper()
	dir := t.TempDir()
	rp, cp := filepath.Join(dir, "resp.der"), filepath.Join(dir, "cert.pem")
	if err := os.WriteFile(rp, resp, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cp, pemOf(cert), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("openssl", "ocsp", "-respin", rp, "-issuer", ca.IntermediatePEM, "-cert", cp, "-CAfile", ca.RootPEM, "-no_nonce").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Response verify OK") {
		t.Fatalf("openssl ocsp -respin: %v\n%s", err, out)
	}
	return string(out)
}

// TestOCSPWithOpenSSLResponder runs OCSP end to end against the dev CA's
// responder (openssl ocsp answering from the CA's index): a good
// certificate gets a verified response, stapled in GetSigningInfo, served
// at /ocsp/{sha256} with RFC 5019 headers and verified there by openssl;
// after the CA revokes it, a refresh sees "revoked", GetSigningInfo stops
// offering it, and signing by its hash or its key is refused and audited.
func TestOCSPWithOpenSSLResponder(t *testing.T) {
	d := newDaemon(t, func(p *daemonParams) { p.OCSP = ocspOn })
	ca := devca.New(t)
	resp := ca.StartOCSPResponder(t, 60)
	k, cert, sum := d.activeSignCert(t, ca, "agency", member)

	st := d.refreshOCSP(t, sum)
	if st.GetStatus() != "good" || !st.GetUsable() || st.GetResponder() != resp.URL || st.GetRole() != "sign" {
		t.Fatalf("after refresh: %+v", st)
	}
	if st.GetStaleBeforeRefresh() || !st.GetNextRefresh().AsTime().Before(st.GetStaleAt().AsTime()) {
		t.Fatalf("next refresh %v not before stale %v", st.GetNextRefresh().AsTime(), st.GetStaleAt().AsTime())
	}
	info, err := d.client.GetSigningInfo(testCtx(t), &signerv1.GetSigningInfoRequest{Member: member})
	if err != nil || len(info.GetOcspResponse()) == 0 {
		t.Fatalf("GetSigningInfo: %v, %d bytes of OCSP", err, len(info.GetOcspResponse()))
	}
	if out := opensslOCSPStatus(t, ca, cert, info.GetOcspResponse()); !strings.Contains(out, ": good") {
		t.Fatalf("stapled response: %s", out)
	}

	// The HTTP socket serves it with RFC 5019's caching headers.
	hc := d.serveHTTP(t)
	hr, err := hc.Get("http://signerd/ocsp/" + sum)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(hr.Body)
	hr.Body.Close()
	if hr.StatusCode != http.StatusOK || hr.Header.Get("Content-Type") != "application/ocsp-response" ||
		!strings.Contains(hr.Header.Get("Cache-Control"), "max-age=") || hr.Header.Get("ETag") == "" ||
		hr.Header.Get("Last-Modified") == "" || hr.Header.Get("Expires") == "" {
		t.Fatalf("GET /ocsp/: %s %v", hr.Status, hr.Header)
	}
	if out := opensslOCSPStatus(t, ca, cert, body); !strings.Contains(out, ": good") {
		t.Fatalf("served response: %s", out)
	}
	for path, want := range map[string]int{"/ocsp/" + strings.Repeat("ab", 32): http.StatusNotFound, "/ocsp/zz": http.StatusBadRequest} {
		hr, err := hc.Get("http://signerd" + path)
		if err != nil {
			t.Fatal(err)
		}
		hr.Body.Close()
		if hr.StatusCode != want {
			t.Fatalf("GET %s: %s, want %d", path, hr.Status, want)
		}
	}

	// GetOCSPResponses by SHA-256 and SHA-1, and an unknown one.
	s1 := sha1.Sum(cert.Raw)
	got, err := d.client.GetOCSPResponses(testCtx(t), &signerv1.GetOCSPResponsesRequest{CertHashes: []string{sum, strings.ToUpper(hex.EncodeToString(s1[:])), strings.Repeat("0", 64)}})
	if err != nil || len(got.GetResponses()) != 3 {
		t.Fatalf("GetOCSPResponses: %v, %v", got, err)
	}
	if r := got.GetResponses(); len(r[0].GetResponse()) == 0 || len(r[1].GetResponse()) == 0 || r[1].GetCertSha256() != sum || r[2].GetError() == "" {
		t.Fatalf("GetOCSPResponses: %v", r)
	}

	// The CA revokes it.
	if err := ca.Revoke(testCtx(t), cert, "keyCompromise"); err != nil {
		t.Fatal(err)
	}
	if st := d.refreshOCSP(t, sum); st.GetStatus() != "revoked" || st.GetUsable() || !strings.Contains(st.GetReason(), "revoked") {
		t.Fatalf("after revocation: %+v", st)
	}
	if _, err := d.client.GetSigningInfo(testCtx(t), &signerv1.GetSigningInfoRequest{Member: member}); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("GetSigningInfo of a revoked certificate: %v", err)
	}
	digest := sha256.Sum256([]byte("after revocation"))
	for _, req := range []*signerv1.SignRequest{
		{Key: &signerv1.SignRequest_CertHash{CertHash: sum}, Algorithm: "SHA256withECDSA", Digest: digest[:]},
		{Key: &signerv1.SignRequest_KeyId{KeyId: k.GetId()}, Algorithm: "SHA256withECDSA", Digest: digest[:]},
	} {
		if _, err := d.client.Sign(testCtx(t), req); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "revoked") {
			t.Fatalf("Sign %v after revocation: %v", req, err)
		}
	}
	refused := 0
	for _, r := range d.auditLines(t) {
		if r.Op == "sign" && r.Key == k.GetId() && strings.Contains(r.Result, "revoked") {
			refused++
		}
	}
	if refused != 2 {
		t.Fatalf("%d audited sign refusals naming the revocation, want 2", refused)
	}
}

// TestOCSPCachedResponseServedAfterRestart checks that a restart serves
// the stored response at once, before any fetch, with the responder
// unreachable.
func TestOCSPCachedResponseServedAfterRestart(t *testing.T) {
	d := newDaemon(t, func(p *daemonParams) { p.OCSP = ocspOn })
	ca := devca.New(t)
	ca.StartOCSPResponder(t, 60)
	_, _, sum := d.activeSignCert(t, ca, "agency", member)
	if st := d.refreshOCSP(t, sum); !st.GetUsable() {
		t.Fatalf("before restart: %+v", st)
	}
	// After the restart the only responder is a closed port.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + l.Addr().String()
	l.Close()
	d.params.OCSP = fmt.Sprintf("enabled = true\n[[ocsp.responders]]\nissuer = %q\nurls = [%q]\n", ca.IntermediatePEM, dead)
	d.restart()
	info, err := d.client.GetSigningInfo(testCtx(t), &signerv1.GetSigningInfoRequest{Member: member})
	if err != nil || len(info.GetOcspResponse()) == 0 {
		t.Fatalf("GetSigningInfo right after restart: %v", err)
	}
	st, err := d.client.GetOCSPStatus(testCtx(t), &signerv1.GetOCSPStatusRequest{CertHash: sum})
	if err != nil || len(st.GetCertificates()) != 1 || st.GetCertificates()[0].GetResponder() != "store" {
		t.Fatalf("status after restart: %v, %v", st, err)
	}
}

// TestSetOCSPResponsesVerifies checks that a response handed over is
// verified against the issuer signerd knows: one for another certificate
// or from a signer the issuer did not authorise is refused, a good one
// is accepted, and the call is audited with both counts.
func TestSetOCSPResponsesVerifies(t *testing.T) {
	d := newDaemon(t, func(p *daemonParams) { p.OCSP = ocspOn })
	ca := devca.New(t)
	ca.StartOCSPResponder(t, 60)
	_, cert, sum := d.activeSignCert(t, ca, "agency", member)
	_, other, _ := d.activeSignCert(t, ca, "other", member)
	answer := func(c *x509.Certificate) []byte {
		req, err := xocsp.CreateRequest(c, ca.Intermediate, nil)
		if err != nil {
			t.Fatal(err)
		}
		r, err := ca.OCSPAnswer(testCtx(t), req, 60)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	// A response signed by a key the issuer never certified.
	rogue, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rogueTmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "rogue responder"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageOCSPSigning}}
	rogueDER, _ := x509.CreateCertificate(rand.Reader, rogueTmpl, rogueTmpl, rogue.Public(), rogue)
	rogueCert, _ := x509.ParseCertificate(rogueDER)
	forged, err := xocsp.CreateResponse(ca.Intermediate, rogueCert, xocsp.Response{Status: xocsp.Good, SerialNumber: cert.SerialNumber, ThisUpdate: time.Now().Add(-time.Minute), NextUpdate: time.Now().Add(time.Hour), Certificate: rogueCert}, crypto.Signer(rogue))
	if err != nil {
		t.Fatal(err)
	}
	// Wait until the certificate is watched.
	d.refreshOCSP(t, sum)
	got, err := d.client.SetOCSPResponses(testCtx(t), &signerv1.SetOCSPResponsesRequest{Responses: []*signerv1.SetOCSPResponsesRequest_Item{
		{CertHash: sum, Response: answer(other)},
		{CertHash: sum, Response: forged},
		{CertHash: sum, Response: answer(cert)},
	}})
	if err != nil || len(got.GetResults()) != 3 {
		t.Fatalf("SetOCSPResponses: %v, %v", got, err)
	}
	r := got.GetResults()
	if !strings.Contains(r[0].GetError(), "OCSP response rejected") || !strings.Contains(r[1].GetError(), "responder") || r[2].GetError() != "" {
		t.Fatalf("results: %v", r)
	}
	var line string
	for _, a := range d.auditLines(t) {
		if a.Op == "ocsp.set" {
			line = a.Detail
		}
	}
	if !strings.HasPrefix(line, "accepted=1 refused=2") {
		t.Fatalf("audit line of SetOCSPResponses: %q", line)
	}
}
