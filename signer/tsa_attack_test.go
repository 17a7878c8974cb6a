package signer

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/digitorus/timestamp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/audit"
	"github.com/hsmsigner/hsmsigner/signer/client"
	"github.com/hsmsigner/hsmsigner/signer/config"
	"github.com/hsmsigner/hsmsigner/softhsm-test/devca"
)

// postTSAStatus posts a DER TimeStampReq to POST /tsa and returns the answer's
// PKIStatus and the token it carries, if any.
func postTSAStatus(t *testing.T, hc *http.Client, req []byte) (int, *timestamp.Timestamp) {
	t.Helper()
	hr, err := hc.Post("http://signerd/tsa", "application/timestamp-query", bytes.NewReader(req))
	if err != nil {
		t.Fatal(err)
	}
	defer hr.Body.Close()
	body, _ := io.ReadAll(hr.Body)
	if hr.StatusCode != http.StatusOK {
		t.Fatalf("POST /tsa: %s %s", hr.Status, body)
	}
	var r struct {
		Status struct{ Status int }
		Token  asn1.RawValue `asn1:"optional"`
	}
	if _, err := asn1.Unmarshal(body, &r); err != nil {
		t.Fatalf("not a TimeStampResp: %v", err)
	}
	if len(r.Token.FullBytes) == 0 {
		return r.Status.Status, nil
	}
	ts, err := timestamp.Parse(r.Token.FullBytes)
	if err != nil {
		t.Fatalf("the token does not parse: %v", err)
	}
	return r.Status.Status, ts
}

func tsq(t *testing.T, digest []byte, nonce *big.Int) []byte {
	t.Helper()
	req, err := (&timestamp.Request{HashAlgorithm: crypto.SHA256, HashedMessage: digest, Nonce: nonce, Certificates: true}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// opFailingAudit is the daemon's audit log, except that lines of op fail.
type opFailingAudit struct {
	auditLog
	op string
}

func (f opFailingAudit) Append(ctx context.Context, r audit.Record) error {
	if r.Op == f.op {
		return errDiskGone
	}
	return f.auditLog.Append(ctx, r)
}

func (f opFailingAudit) Enqueue(r audit.Record) (audit.Ticket, error) {
	if r.Op == f.op {
		return audit.Ticket{}, errDiskGone
	}
	return f.auditLog.Enqueue(r)
}

// TestAttackTSATokenNeedsItsAuditLine: with the tsa.issue line failing
// (the token signed and its tsa.sign line written), no token leaves,
// over gRPC or POST /tsa, and none is counted issued.
func TestAttackTSATokenNeedsItsAuditLine(t *testing.T) {
	d, _, _ := tsaDaemon(t, func(p *daemonParams) { p.SwitchAudit = true })
	hc := d.serveHTTP(t)
	digest := sha256.Sum256([]byte("x"))
	d.audit.set(opFailingAudit{auditLog: d.audit.real, op: "tsa.issue"})
	r, err := d.client.Timestamp(testCtx(t), &signerv1.TimestampRequest{Digest: digest[:], Hash: "SHA256"})
	if err == nil || len(r.GetToken()) > 0 {
		t.Fatalf("gRPC: a token without its audit line (%v)", err)
	}
	if st, tok := postTSAStatus(t, hc, tsq(t, digest[:], big.NewInt(7))); tok != nil || st != int(timestamp.Rejection) {
		t.Fatalf("POST /tsa: status %d, token %v; want a rejection", st, tok)
	}
	d.audit.set(nil)
	signed := 0
	for _, rec := range d.auditLines(t) {
		if rec.Op == "tsa.sign" && rec.Result == "ok" {
			signed++
		}
	}
	st, err := d.client.GetTSAStatus(testCtx(t), &signerv1.GetTSAStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if signed != 2 || st.GetIssued() != 0 || st.GetRefused() != 2 {
		t.Fatalf("%d tokens signed, %d counted issued, %d refused; want 2 signed (the failure is after signing), 0 issued, 2 refused", signed, st.GetIssued(), st.GetRefused())
	}
}

// shortCA is a CA of the test's own that issues TSA certificates of any
// validity.
type shortCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newShortCA(t *testing.T) *shortCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Short CA"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &shortCA{cert: cert, key: key}
}

// tsaCert certifies pub for time-stamping (extendedKeyUsage timeStamping,
// critical) until notAfter.
func (ca *shortCA) tsaCert(t *testing.T, pub crypto.PublicKey, notAfter time.Time) *x509.Certificate {
	t.Helper()
	eku, _ := asn1.Marshal([]asn1.ObjectIdentifier{{1, 3, 6, 1, 5, 5, 7, 3, 8}})
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "Short TSA"}, NotBefore: time.Now().Add(-time.Minute), NotAfter: notAfter,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 37}, Critical: true, Value: eku}}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

// TestAttackTSACertificateExpiresWhileCached: the TSA's certificate
// expires while its issuer is kept (no certificate change fires): from
// then on no token is issued, over gRPC (FAILED_PRECONDITION) or POST
// /tsa (a rejection), and GetTSAStatus reports the TSA not serving.
func TestAttackTSACertificateExpiresWhileCached(t *testing.T) {
	d := newDaemon(t, func(p *daemonParams) {
		p.ClientUsages = `"sign", "tsa"`
		p.TSA = tsaOn
	})
	hc := d.serveHTTP(t)
	ca := newShortCA(t)
	k := d.genKey(t, "tsa", "EC-P256", signerv1.KeyUsage_KEY_USAGE_TSA)
	csr := d.csrFor(t, k, "CN=Short TSA", "")
	notAfter := time.Now().Add(4 * time.Second).Truncate(time.Second)
	cert := ca.tsaCert(t, csr.PublicKey, notAfter)
	imp, err := d.client.ImportCert(testCtx(t), &signerv1.ImportCertRequest{Certificate: pemOf(cert, ca.cert)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.client.ActivateCert(testCtx(t), &signerv1.CertRef{Hash: imp.GetSha256()}); err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256([]byte("x"))
	if _, err := d.client.Timestamp(testCtx(t), &signerv1.TimestampRequest{Digest: digest[:], Hash: "SHA256"}); err != nil {
		t.Fatalf("while the certificate is valid: %v", err)
	}
	for time.Now().Before(notAfter.Add(1100 * time.Millisecond)) {
		time.Sleep(100 * time.Millisecond) // waiting for the certificate's end, a fixed time
	}
	r, err := d.client.Timestamp(testCtx(t), &signerv1.TimestampRequest{Digest: digest[:], Hash: "SHA256"})
	if status.Code(err) != codes.FailedPrecondition || len(r.GetToken()) > 0 {
		t.Fatalf("gRPC after the certificate expired: %v, want FAILED_PRECONDITION and no token", err)
	}
	if st, tok := postTSAStatus(t, hc, tsq(t, digest[:], nil)); tok != nil || st != int(timestamp.Rejection) {
		t.Fatalf("POST /tsa after the certificate expired: status %d, token at %v", st, tok)
	}
	st, err := d.client.GetTSAStatus(testCtx(t), &signerv1.GetTSAStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.GetServing() || !strings.Contains(st.GetReason(), "no active certificate fit") {
		t.Fatalf("status after expiry: serving %v, reason %q", st.GetServing(), st.GetReason())
	}
}

// TestAttackTimestampConcurrently issues tokens through the gRPC
// Timestamp call from eight goroutines at once: each verifies for its
// own digest and nonce, serials are distinct, and under -race no data
// race is found.
func TestAttackTimestampConcurrently(t *testing.T) {
	d, ca, _ := tsaDaemon(t)
	const goroutines, each = 8, 4
	var wg sync.WaitGroup
	errs := make(chan error, goroutines*each)
	serials := make(chan string, goroutines*each)
	for g := range goroutines {
		wg.Go(func() {
			for i := range each {
				digest := sha256.Sum256(fmt.Appendf(nil, "%d/%d", g, i))
				nonce := []byte{byte(g), byte(i), 0xff}
				r, err := d.client.Timestamp(testCtx(t), &signerv1.TimestampRequest{Digest: digest[:], Hash: "SHA256", Nonce: nonce, CertReq: true})
				if err != nil {
					errs <- err
					return
				}
				ts, err := client.VerifyTimestamp(r.GetToken(), crypto.SHA256, digest[:], nil, devTrust(ca))
				if err == nil && ts.Nonce.Cmp(new(big.Int).SetBytes(nonce)) != 0 {
					err = fmt.Errorf("nonce %x echoed as %x", nonce, ts.Nonce)
				}
				if err != nil {
					errs <- err
					return
				}
				serials <- r.GetSerial()
			}
		})
	}
	wg.Wait()
	close(errs)
	close(serials)
	for err := range errs {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for s := range serials {
		seen[s] = true
	}
	if len(seen) != goroutines*each {
		t.Fatalf("%d distinct serials for %d tokens", len(seen), goroutines*each)
	}
}

// TestAttackTSANonceAndSerial: the nonce is echoed exactly (as the
// INTEGER the request carries: leading zero octets, the top bit set, a
// negative or zero nonce over HTTP, 32 octets over gRPC), and serial
// numbers are positive, at most 160 bits, and distinct.
func TestAttackTSANonceAndSerial(t *testing.T) {
	d, _, _ := tsaDaemon(t)
	hc := d.serveHTTP(t)
	digest := sha256.Sum256([]byte("x"))
	serials := map[string]bool{}
	checkSerial := func(s *big.Int) {
		t.Helper()
		if s.Sign() <= 0 || s.BitLen() > 160 {
			t.Fatalf("serial %x: not positive or over 160 bits", s)
		}
		if serials[s.String()] {
			t.Fatalf("serial %x issued twice", s)
		}
		serials[s.String()] = true
	}
	for _, nonce := range [][]byte{
		{0x00, 0x00, 0x01},
		{0x80},
		bytes.Repeat([]byte{0xff}, 32),
		bytes.Repeat([]byte{0x00}, 32),
		append([]byte{0x00}, bytes.Repeat([]byte{0xab}, 31)...),
	} {
		r, err := d.client.Timestamp(testCtx(t), &signerv1.TimestampRequest{Digest: digest[:], Hash: "SHA256", Nonce: nonce})
		if err != nil {
			t.Fatalf("gRPC nonce %x: %v", nonce, err)
		}
		ts, err := timestamp.Parse(r.GetToken())
		if err != nil {
			t.Fatal(err)
		}
		if want := new(big.Int).SetBytes(nonce); ts.Nonce == nil || ts.Nonce.Cmp(want) != 0 {
			t.Fatalf("gRPC nonce %x echoed as %v", nonce, ts.Nonce)
		}
		checkSerial(ts.SerialNumber)
	}
	huge := new(big.Int).Lsh(big.NewInt(1), 255)
	for _, nonce := range []*big.Int{big.NewInt(0), big.NewInt(-1), new(big.Int).Neg(huge), huge, big.NewInt(1)} {
		st, ts := postTSAStatus(t, hc, tsq(t, digest[:], nonce))
		if st != int(timestamp.Granted) || ts == nil {
			t.Fatalf("HTTP nonce %v: status %d", nonce, st)
		}
		if ts.Nonce == nil || ts.Nonce.Cmp(nonce) != 0 {
			t.Fatalf("HTTP nonce %v echoed as %v", nonce, ts.Nonce)
		}
		checkSerial(ts.SerialNumber)
	}
	for range 40 {
		_, ts := postTSAStatus(t, hc, tsq(t, digest[:], nil))
		if ts.Nonce != nil {
			t.Fatalf("a nonce %v in a token for a request without one", ts.Nonce)
		}
		checkSerial(ts.SerialNumber)
	}
}

// TestAttackTSAKeyAdmission: the built-in TSA signs with a key of usage
// tsa only, and only for a caller granted that key. A key of usage sign
// with a timeStamping certificate is refused at import, and named in
// [tsa] key is never used; a
// caller granted usage tsa on another key only gets no token, over gRPC
// (PERMISSION_DENIED) or POST /tsa (a rejection).
func TestAttackTSAKeyAdmission(t *testing.T) {
	d, ca, tsaKey := tsaDaemon(t)
	// A member's sign key, certified for time-stamping by the same CA.
	signKey := d.genKey(t, "member-sign", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	cert := d.issue(t, ca, d.csrFor(t, signKey, "CN=Member TSA,O=Member,C=EE", ""), "tsa", devca.Current)
	// Refused at import: a sign key's certificate may not be a TSA's.
	if _, err := d.client.ImportCert(testCtx(t), &signerv1.ImportCertRequest{Certificate: pemOf(cert, ca.Intermediate, ca.Root)}); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "timeStamping") {
		t.Fatalf("a timeStamping certificate for a sign key: %v, want INVALID_ARGUMENT", err)
	}
	hc := d.serveHTTP(t)
	digest := sha256.Sum256([]byte("x"))
	noToken := func(name string, wantGRPC codes.Code) {
		t.Helper()
		r, err := d.client.Timestamp(testCtx(t), &signerv1.TimestampRequest{Digest: digest[:], Hash: "SHA256"})
		if status.Code(err) != wantGRPC || len(r.GetToken()) > 0 {
			t.Fatalf("%s: gRPC %v, want %s and no token", name, err, wantGRPC)
		}
		if st, tok := postTSAStatus(t, hc, tsq(t, digest[:], nil)); tok != nil || st != int(timestamp.Rejection) {
			t.Fatalf("%s: POST /tsa status %d, token %v", name, st, tok)
		}
	}

	// Granted usage tsa, but on the sign key only, not the TSA key.
	p, err := config.NewPolicy(config.Admins{UIDs: []uint32{uint32(os.Getuid())}}, []config.ClientRule{
		{Name: "tsa-on-another-key", UIDs: []uint32{uint32(os.Getuid())}, Keys: []string{signKey.GetId()}, Usages: []string{"sign", "tsa"}, Members: []string{"*"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	d.svc.SetPolicy(p)
	noToken("usage tsa on another key", codes.PermissionDenied)

	// [tsa] key names the sign key: the TSA does not serve, whoever asks.
	d.params.TSA = tsaOn + fmt.Sprintf("\nkey = %q", signKey.GetId())
	d.restart()
	hc = d.serveHTTP(t)
	noToken("[tsa] key a sign key", codes.FailedPrecondition)
	st, err := d.client.GetTSAStatus(testCtx(t), &signerv1.GetTSAStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.GetServing() || !strings.Contains(st.GetReason(), signKey.GetId()) {
		t.Fatalf("status with [tsa] key a sign key: serving %v, reason %q", st.GetServing(), st.GetReason())
	}
	for _, rec := range d.auditLines(t) {
		if rec.Op == "tsa.sign" && rec.Key == signKey.GetId() {
			t.Fatalf("the sign key signed for the TSA: %+v", rec)
		}
	}
	// The TSA key itself still serves once named.
	d.params.TSA = tsaOn + fmt.Sprintf("\nkey = %q", tsaKey.GetId())
	d.restart()
	if _, err := d.client.Timestamp(testCtx(t), &signerv1.TimestampRequest{Digest: digest[:], Hash: "SHA256"}); err != nil {
		t.Fatalf("[tsa] key the TSA key: %v", err)
	}
}

// TestAttackTSAPolicyChangeDuringSlowRequest: a caller whose grant of
// the TSA key is withdrawn while its request body is still to come on
// the HTTP socket gets no token: it is admitted under the policy in
// force once its request is read, not when its header arrived. (The
// server's "100 Continue" says that the handler has begun to read the
// body.)
func TestAttackTSAPolicyChangeDuringSlowRequest(t *testing.T) {
	d, _, _ := tsaDaemon(t)
	d.serveHTTP(t)
	digest := sha256.Sum256([]byte("x"))
	req := tsq(t, digest[:], big.NewInt(1))
	conn, err := net.Dial("unix", filepath.Join(d.dir, "run", "http.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	fmt.Fprintf(conn, "POST /tsa HTTP/1.1\r\nHost: signerd\r\nContent-Type: application/timestamp-query\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n", len(req))
	br := bufio.NewReader(conn)
	line, err := br.ReadString('\n')
	if err != nil || !strings.Contains(line, "100") {
		t.Fatalf("want 100 Continue: %q %v", line, err)
	}
	if _, err := br.ReadString('\n'); err != nil { // the blank line after it
		t.Fatal(err)
	}
	p, err := config.NewPolicy(config.Admins{UIDs: []uint32{uint32(os.Getuid())}}, []config.ClientRule{
		{Name: "signs-only", UIDs: []uint32{uint32(os.Getuid())}, Keys: []string{"*"}, Usages: []string{"sign"}, Members: []string{"*"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	d.svc.SetPolicy(p)
	if _, err := conn.Write(req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var r struct {
		Status struct{ Status int }
		Token  asn1.RawValue `asn1:"optional"`
	}
	if _, err := asn1.Unmarshal(body, &r); err != nil {
		t.Fatalf("%s: %q: %v", resp.Status, body, err)
	}
	if len(r.Token.FullBytes) > 0 || r.Status.Status != int(timestamp.Rejection) {
		t.Fatalf("grant withdrawn before the body came: status %d, a token of %d bytes; want a rejection", r.Status.Status, len(r.Token.FullBytes))
	}
}
