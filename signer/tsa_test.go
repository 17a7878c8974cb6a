package signer

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/digitorus/timestamp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/client"
	"github.com/hsmsigner/hsmsigner/signer/config"
	"github.com/hsmsigner/hsmsigner/softhsm-test/devca"
	"github.com/hsmsigner/hsmsigner/tsa"
)

// tsaOn is the [tsa] table of the TSA tests. The clock guard is off: the
// machines this runs on may have no NTP (the tsa package's tests drive
// the guard with an injected clock state).
const tsaOn = "enabled = true\npolicy = \"1.3.6.1.4.1.99999.1\"\nrequire_synced_clock = false"

// TestTSAOverHTTPSocket issues time-stamps with a TSA key in SoftHSM
// through POST /tsa on the HTTP socket: `openssl ts -query` makes the
// request and `openssl ts -verify` checks the token against the dev CA;
// every token is audited with its serial; before the key has a
// certificate the answer is an RFC 3161 rejection, and a wrong content
// type is refused.
func TestTSAOverHTTPSocket(t *testing.T) {
	d := newDaemon(t, func(p *daemonParams) {
		p.ClientUsages = `"sign", "tsa"`
		p.TSA = tsaOn
	})
	hc := d.serveHTTP(t)
	dir := t.TempDir()
	data := filepath.Join(dir, "data.txt")
	os.WriteFile(data, []byte("records of the day\n"), 0o600)
	query := func(name string, flags ...string) []byte {
		q := filepath.Join(dir, name+".tsq")
		if out, err := exec.Command("openssl", append([]string{"ts", "-query", "-data", data, "-sha256", "-out", q}, flags...)...).CombinedOutput(); err != nil {
			t.Fatalf("openssl ts -query: %v\n%s", err, out)
		}
		b, _ := os.ReadFile(q)
		return b
	}
	post := func(req []byte, ctype string) (*http.Response, []byte) {
		hr, err := hc.Post("http://signerd/tsa", ctype, bytes.NewReader(req))
		if err != nil {
			t.Fatal(err)
		}
		defer hr.Body.Close()
		b, _ := io.ReadAll(hr.Body)
		return hr, b
	}
	// No TSA certificate yet: a rejection, not a token.
	hr, body := post(query("early"), "application/timestamp-query")
	rp := filepath.Join(dir, "early.tsr")
	os.WriteFile(rp, body, 0o600)
	if out, err := exec.Command("openssl", "ts", "-reply", "-in", rp, "-text").CombinedOutput(); hr.StatusCode != 200 || err != nil || !strings.Contains(string(out), "Status: Rejected") {
		t.Fatalf("before a certificate: %s %v\n%s", hr.Status, err, out)
	}

	ca := devca.New(t)
	k := d.genKey(t, "tsa", "EC-P256", signerv1.KeyUsage_KEY_USAGE_TSA)
	cert := d.issue(t, ca, d.csrFor(t, k, "CN=Agency TSA,O=Agency,C=EE", ""), "tsa", devca.Current)
	imp, err := d.client.ImportCert(testCtx(t), &signerv1.ImportCertRequest{Certificate: pemOf(cert, ca.Intermediate, ca.Root)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.client.ActivateCert(testCtx(t), &signerv1.CertRef{Hash: imp.GetSha256()}); err != nil {
		t.Fatal(err)
	}
	// The token logged out: a rejection; logged in again: the TSA serves
	// at once (a refusal is not remembered).
	rejected := func(name string) bool {
		_, body := post(query(name), "application/timestamp-query")
		rp := filepath.Join(dir, name+".tsr")
		os.WriteFile(rp, body, 0o600)
		out, _ := exec.Command("openssl", "ts", "-reply", "-in", rp, "-text").CombinedOutput()
		return strings.Contains(string(out), "Status: Rejected")
	}
	if _, err := d.client.LogoutToken(testCtx(t), &signerv1.LogoutTokenRequest{Token: "t1"}); err != nil {
		t.Fatal(err)
	}
	if !rejected("loggedout") {
		t.Fatal("a time-stamp was issued with the TSA key's token logged out")
	}
	if _, err := d.client.LoginToken(testCtx(t), &signerv1.LoginTokenRequest{Token: "t1", Pin: d.soft.UserPIN}); err != nil {
		t.Fatal(err)
	}
	if rejected("loggedin") {
		t.Fatal("still refused after the token was logged in again")
	}
	untrusted := filepath.Join(dir, "chain.pem")
	os.WriteFile(untrusted, pemOf(cert, ca.Intermediate), 0o600)
	for _, flags := range [][]string{{}, {"-cert"}, {"-no_nonce"}} {
		name := "q" + strings.Join(flags, "")
		req := query(name, flags...)
		hr, body := post(req, "application/timestamp-query")
		if hr.StatusCode != 200 || hr.Header.Get("Content-Type") != "application/timestamp-reply" {
			t.Fatalf("%s: %s %q", name, hr.Status, hr.Header.Get("Content-Type"))
		}
		rp := filepath.Join(dir, name+".tsr")
		os.WriteFile(rp, body, 0o600)
		out, err := exec.Command("openssl", "ts", "-verify", "-in", rp, "-queryfile", filepath.Join(dir, name+".tsq"),
			"-CAfile", ca.RootPEM, "-untrusted", untrusted).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "Verification: OK") {
			t.Fatalf("%s: openssl ts -verify: %v\n%s", name, err, out)
		}
	}
	if hr, _ := post(query("ctype"), "text/plain"); hr.StatusCode != http.StatusUnsupportedMediaType {
		t.Fatalf("wrong content type: %s", hr.Status)
	}
	issued, signed := 0, 0
	for _, r := range d.auditLines(t) {
		switch {
		case r.Op == "tsa.issue" && r.Result == "ok" && strings.Contains(r.Detail, "serial=") && strings.Contains(r.Detail, "policy=1.3.6.1.4.1.99999.1"):
			issued++
		case r.Op == "tsa.sign" && r.Key == k.GetId():
			signed++
		}
	}
	if issued != 4 || signed != 4 {
		t.Fatalf("%d tsa.issue and %d tsa.sign audit lines, want 4 each", issued, signed)
	}
}

// tsaDaemon starts a daemon whose test user may use tsa keys, with an
// EC P-256 TSA key certified by a new dev CA, active.
func tsaDaemon(t *testing.T, edit ...func(*daemonParams)) (*testDaemon, *devca.CA, *signerv1.Key) {
	t.Helper()
	return tsaDaemonOf(t, devca.New(t), edit...)
}

// tsaDaemonOf is tsaDaemon with the TSA certificate from ca.
func tsaDaemonOf(t *testing.T, ca *devca.CA, edit ...func(*daemonParams)) (*testDaemon, *devca.CA, *signerv1.Key) {
	t.Helper()
	d := newDaemon(t, append([]func(*daemonParams){func(p *daemonParams) {
		p.ClientUsages = `"sign", "tsa"`
		p.TSA = tsaOn
	}}, edit...)...)
	k := d.genKey(t, "tsa", "EC-P256", signerv1.KeyUsage_KEY_USAGE_TSA)
	cert := d.issue(t, ca, d.csrFor(t, k, "CN=Agency TSA,O=Agency,C=EE", ""), "tsa", devca.Current)
	imp, err := d.client.ImportCert(testCtx(t), &signerv1.ImportCertRequest{Certificate: pemOf(cert, ca.Intermediate, ca.Root)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.client.ActivateCert(testCtx(t), &signerv1.CertRef{Hash: imp.GetSha256()}); err != nil {
		t.Fatal(err)
	}
	return d, ca, k
}

// devTrust is what tokens of the dev CA's TSAs chain to.
func devTrust(ca *devca.CA) tsa.Trust {
	return tsa.Trust{Roots: ca.Pool(), Certificates: ca.Chain()}
}

// TestTimestampRPC issues tokens through the gRPC Timestamp call: the
// token verifies with `openssl ts -verify` and with the client's
// VerifyTimestamp, echoes the nonce, and is audited under the caller's
// uid; a token checked against another digest fails both; bad requests
// get INVALID_ARGUMENT naming the RFC 3161 failInfo where there is one.
func TestTimestampRPC(t *testing.T) {
	d, ca, k := tsaDaemon(t)
	ctx := testCtx(t)
	dir := t.TempDir()
	digest := sha256.Sum256([]byte("the day's records\n"))
	nonce := []byte{0x01, 0x23, 0x45, 0x67, 0x89}
	r, err := d.client.Timestamp(ctx, &signerv1.TimestampRequest{Digest: digest[:], Hash: "SHA256", Nonce: nonce, CertReq: true})
	if err != nil {
		t.Fatal(err)
	}
	ts, err := client.VerifyTimestamp(r.GetToken(), crypto.SHA256, digest[:], nil, tsa.Trust{Roots: ca.Pool()})
	if err != nil {
		t.Fatalf("VerifyTimestamp: %v", err)
	}
	if ts.Nonce == nil || ts.Nonce.Cmp(new(big.Int).SetBytes(nonce)) != 0 || ts.SerialNumber.Text(16) != r.GetSerial() || !ts.Time.Equal(r.GetGenTime().AsTime()) {
		t.Fatalf("token nonce %v serial %s time %v; answer serial %s time %v", ts.Nonce, ts.SerialNumber.Text(16), ts.Time, r.GetSerial(), r.GetGenTime().AsTime())
	}
	resp, err := client.ResponseOf(r.GetToken())
	if err != nil {
		t.Fatal(err)
	}
	rp := filepath.Join(dir, "rpc.tsr")
	os.WriteFile(rp, resp, 0o600)
	verify := func(d []byte) (string, error) {
		out, err := exec.Command("openssl", "ts", "-verify", "-in", rp, "-digest", hex.EncodeToString(d), "-CAfile", ca.RootPEM).CombinedOutput()
		return string(out), err
	}
	if out, err := verify(digest[:]); err != nil || !strings.Contains(out, "Verification: OK") {
		t.Fatalf("openssl ts -verify: %v\n%s", err, out)
	}
	other := sha256.Sum256([]byte("other records\n"))
	if out, err := verify(other[:]); err == nil {
		t.Fatalf("openssl verified the token for another digest:\n%s", out)
	}
	if _, err := client.VerifyTimestamp(r.GetToken(), crypto.SHA256, other[:], nil, tsa.Trust{Roots: ca.Pool()}); !errors.Is(err, client.ErrTimestamp) {
		t.Fatalf("VerifyTimestamp for another digest: %v", err)
	}
	line := false
	for _, rec := range d.auditLines(t) {
		if rec.Op == "tsa.issue" && rec.Result == "ok" && rec.UID == int64(os.Getuid()) && rec.Key == k.GetId() && strings.Contains(rec.Detail, "serial="+r.GetSerial()) {
			line = true
		}
	}
	if !line {
		t.Fatal("no tsa.issue line naming the caller, the key and the serial")
	}

	d384 := sha512.Sum384([]byte("x"))
	cases := []struct {
		name string
		req  *signerv1.TimestampRequest
		code codes.Code
		want string
	}{
		{"SHA-1", &signerv1.TimestampRequest{Digest: digest[:20], Hash: "SHA1"}, codes.InvalidArgument, "SHA256, SHA384 or SHA512"},
		{"short digest", &signerv1.TimestampRequest{Digest: digest[:31], Hash: "SHA256"}, codes.InvalidArgument, "32"},
		{"digest of another hash", &signerv1.TimestampRequest{Digest: d384[:], Hash: "SHA256"}, codes.InvalidArgument, "48"},
		{"long nonce", &signerv1.TimestampRequest{Digest: digest[:], Hash: "SHA256", Nonce: make([]byte, 33)}, codes.InvalidArgument, "nonce"},
		{"unaccepted policy", &signerv1.TimestampRequest{Digest: digest[:], Hash: "SHA256", Policy: "1.2.3.4"}, codes.InvalidArgument, "unacceptedPolicy"},
		{"not an OID", &signerv1.TimestampRequest{Digest: digest[:], Hash: "SHA256", Policy: "policy"}, codes.InvalidArgument, "OID"},
		{"no upstream", &signerv1.TimestampRequest{Digest: digest[:], Hash: "SHA256", Upstream: true}, codes.FailedPrecondition, "[tsa.upstream]"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := d.client.Timestamp(ctx, c.req)
			if status.Code(err) != c.code || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want %s with %q", err, c.code, c.want)
			}
		})
	}
}

// TestTimestampNeedsTheTSAKey checks that a caller the policy does not
// let use the TSA key gets no token: PERMISSION_DENIED over gRPC, an
// RFC 3161 rejection on the HTTP socket, each audited.
func TestTimestampNeedsTheTSAKey(t *testing.T) {
	d, _, _ := tsaDaemon(t)
	p, err := config.NewPolicy(config.Admins{UIDs: []uint32{uint32(os.Getuid())}}, []config.ClientRule{
		{Name: "signs-only", UIDs: []uint32{uint32(os.Getuid())}, Keys: []string{"*"}, Usages: []string{"sign"}, Members: []string{"*"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	d.svc.SetPolicy(p)
	digest := sha256.Sum256([]byte("x"))
	if _, err := d.client.Timestamp(testCtx(t), &signerv1.TimestampRequest{Digest: digest[:], Hash: "SHA256"}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("gRPC without usage tsa: %v", err)
	}
	hc := d.serveHTTP(t)
	req, _ := (&timestamp.Request{HashAlgorithm: crypto.SHA256, HashedMessage: digest[:]}).Marshal()
	hr, err := hc.Post("http://signerd/tsa", "application/timestamp-query", bytes.NewReader(req))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(hr.Body)
	hr.Body.Close()
	if _, err := timestamp.ParseResponse(body); err == nil || hr.StatusCode != http.StatusOK {
		t.Fatalf("HTTP without usage tsa: %s, a token was issued (%v)", hr.Status, err)
	}
	denied := 0
	for _, rec := range d.auditLines(t) {
		if rec.Op == "tsa.issue" && strings.HasPrefix(rec.Result, "PermissionDenied") {
			denied++
		}
	}
	if denied != 2 {
		t.Fatalf("%d tsa.issue refusals audited, want 2", denied)
	}
}

// TestTSAClockGuardInDaemon drives the daemon's clock guard with an
// injected clock state: unsynchronised, Timestamp is refused (failInfo
// timeNotAvailable), GetTSAStatus and the metrics say why; synchronised,
// a token is issued and the TSA reports serving.
func TestTSAClockGuardInDaemon(t *testing.T) {
	var synced atomic.Bool
	clock := tsa.ClockSourceFunc(func() (tsa.ClockState, error) {
		return tsa.ClockState{Synced: synced.Load(), MaxError: 16 * time.Second}, nil
	})
	d, _, k := tsaDaemon(t, func(p *daemonParams) {
		p.TSA = "enabled = true\npolicy = \"1.3.6.1.4.1.99999.1\"\naccuracy = \"1m\"\nrequire_synced_clock = true"
		p.TSAClock = clock
	})
	ctx := testCtx(t)
	digest := sha256.Sum256([]byte("x"))
	req := &signerv1.TimestampRequest{Digest: digest[:], Hash: "SHA256"}
	if _, err := d.client.Timestamp(ctx, req); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "timeNotAvailable") {
		t.Fatalf("unsynchronised clock: %v", err)
	}
	st, err := d.client.GetTSAStatus(ctx, &signerv1.GetTSAStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.GetServing() || !strings.Contains(st.GetReason(), "STA_UNSYNC") || !strings.Contains(st.GetClockProblem(), "STA_UNSYNC") || st.GetClockGuardOff() || st.GetKeyId() != k.GetId() || st.GetRefused() != 1 {
		t.Fatalf("status while unsynchronised: %v", st)
	}
	if v := d.tsaMetric(t, "signerd_tsa_clock_refusing"); v != 1 {
		t.Fatalf("signerd_tsa_clock_refusing = %v", v)
	}
	if v := d.tsaMetric(t, "signerd_tsa_serving"); v != 0 {
		t.Fatalf("signerd_tsa_serving = %v", v)
	}
	synced.Store(true)
	if _, err := d.client.Timestamp(ctx, req); err != nil {
		t.Fatalf("synchronised clock: %v", err)
	}
	st, err = d.client.GetTSAStatus(ctx, &signerv1.GetTSAStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if !st.GetServing() || st.GetReason() != "" || st.GetClockProblem() != "" || st.GetIssued() != 1 || st.GetCertSha256() == "" {
		t.Fatalf("status while synchronised: %v", st)
	}
	if v := d.tsaMetric(t, "signerd_tsa_serving"); v != 1 {
		t.Fatalf("signerd_tsa_serving = %v", v)
	}
}

// tsaMetric returns the value of an unlabelled metric, or -1.
func (d *testDaemon) tsaMetric(t *testing.T, name string) float64 {
	t.Helper()
	mfs, err := d.svc.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			m := mf.GetMetric()[0]
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return -1
}

// serveTSATCP serves the daemon's TSA server on a loopback listener and
// returns its URL.
func (d *testDaemon) serveTSATCP(t *testing.T, l net.Listener) string {
	t.Helper()
	srv := d.svc.TSAServer()
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return "http://" + l.Addr().String() + "/tsa"
}

// TestTSAOverTCP has `openssl ts -query` requests answered over the
// loopback TCP listener and `openssl ts -verify` check them; the audit
// line names the remote address in place of a uid.
func TestTSAOverTCP(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d, ca, _ := tsaDaemon(t, func(p *daemonParams) { p.TSA = tsaOn + "\nlisten = \"" + l.Addr().String() + "\"" })
	url := d.serveTSATCP(t, l)
	dir := t.TempDir()
	data := filepath.Join(dir, "data.txt")
	os.WriteFile(data, []byte("over TCP\n"), 0o600)
	q, rp := filepath.Join(dir, "q.tsq"), filepath.Join(dir, "q.tsr")
	if out, err := exec.Command("openssl", "ts", "-query", "-data", data, "-sha384", "-cert", "-out", q).CombinedOutput(); err != nil {
		t.Fatalf("openssl ts -query: %v\n%s", err, out)
	}
	req, _ := os.ReadFile(q)
	hr, err := http.Post(url, "application/timestamp-query", bytes.NewReader(req))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(hr.Body)
	hr.Body.Close()
	os.WriteFile(rp, body, 0o600)
	if out, err := exec.Command("openssl", "ts", "-verify", "-in", rp, "-queryfile", q, "-CAfile", ca.RootPEM).CombinedOutput(); err != nil || !strings.Contains(string(out), "Verification: OK") {
		t.Fatalf("openssl ts -verify: %v\n%s", err, out)
	}
	if hr, err := http.Post(url, "text/plain", bytes.NewReader(req)); err != nil || hr.StatusCode != http.StatusUnsupportedMediaType {
		t.Fatalf("wrong content type over TCP: %v %v", hr, err)
	}
	if hr, err := http.Get(url); err != nil || hr.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("GET over TCP: %v %v", hr, err)
	}
	st, err := d.client.GetTSAStatus(testCtx(t), &signerv1.GetTSAStatusRequest{})
	if err != nil || st.GetListen() != l.Addr().String() {
		t.Fatalf("status listen %q, %v", st.GetListen(), err)
	}
	for _, rec := range d.auditLines(t) {
		if rec.Op == "tsa.issue" && rec.Result == "ok" && rec.UID == -1 && rec.PID == -1 && strings.Contains(rec.Detail, "remote=tcp:127.0.0.1:") {
			return
		}
	}
	t.Fatal("no tsa.issue line naming the TCP caller's address")
}

// TestTSAUpstreamMode makes the daemon the client of external TSAs (a
// dead one first, then its own built-in TSA over TCP, whose tokens chain
// to the dev CA): 60 concurrent upstream stamps become a few upstream
// calls, every caller's token and inclusion proof verify, the status
// reports the batches, and a caller the policy grants no usage tsa is
// refused.
func TestTSAUpstreamMode(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadURL := "http://" + dead.Addr().String() + "/tsa"
	dead.Close()
	ca := devca.New(t)
	d, _, _ := tsaDaemonOf(t, ca, func(p *daemonParams) {
		p.TSA = tsaOn + fmt.Sprintf("\n[tsa.upstream]\nurls = [%q, %q]\ntrust_anchors = [%q]\nbatch_window = \"300ms\"\ntimeout = \"5s\"",
			deadURL, "http://"+l.Addr().String()+"/tsa", ca.RootPEM)
	})
	d.serveTSATCP(t, l)
	ctx := testCtx(t)
	const n = 60
	digests := make([][]byte, n)
	answers := make([]*signerv1.TimestampResponse, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		sum := sha256.Sum256([]byte(fmt.Sprintf("record %d", i)))
		digests[i] = sum[:]
		wg.Add(1)
		go func() {
			defer wg.Done()
			answers[i], errs[i] = d.client.Timestamp(ctx, &signerv1.TimestampRequest{Digest: digests[i], Hash: "SHA256", Upstream: true})
		}()
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("stamp %d: %v", i, errs[i])
		}
		proof := client.ProofOf(answers[i])
		if proof == nil {
			t.Fatalf("stamp %d came without its inclusion proof (batch of %d)", i, answers[i].GetBatchSize())
		}
		if _, err := client.VerifyTimestamp(answers[i].GetToken(), crypto.SHA256, digests[i], proof, devTrust(ca)); err != nil {
			t.Fatalf("stamp %d: %v", i, err)
		}
		// The proof of another digest does not verify this one.
		if _, err := client.VerifyTimestamp(answers[i].GetToken(), crypto.SHA256, digests[(i+1)%n], proof, devTrust(ca)); !errors.Is(err, client.ErrTimestamp) {
			t.Fatalf("stamp %d verified for another digest: %v", i, err)
		}
	}
	st, err := d.client.GetTSAStatus(ctx, &signerv1.GetTSAStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	u := st.GetUpstream()
	sum := 0
	for _, b := range u.GetBatchSizes() {
		sum += int(b)
	}
	if sum != n || len(u.GetBatchSizes()) > 6 || u.GetStamps() != n || !u.GetHealthy() || !strings.Contains(u.GetLastError(), dead.Addr().String()) {
		t.Fatalf("upstream status after %d stamps: %v", n, u)
	}
	lines := 0
	for _, rec := range d.auditLines(t) {
		if rec.Op == "tsa.upstream" && rec.Result == "ok" && strings.Contains(rec.Detail, "batch=") {
			lines++
		}
	}
	if lines != n {
		t.Fatalf("%d tsa.upstream lines, want %d", lines, n)
	}
	// A caller granted no usage tsa gets no upstream stamp.
	p, err := config.NewPolicy(config.Admins{UIDs: []uint32{uint32(os.Getuid())}}, []config.ClientRule{
		{Name: "signs-only", UIDs: []uint32{uint32(os.Getuid())}, Keys: []string{"*"}, Usages: []string{"sign"}, Members: []string{"*"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	d.svc.SetPolicy(p)
	if _, err := d.client.Timestamp(ctx, &signerv1.TimestampRequest{Digest: digests[0], Hash: "SHA256", Upstream: true}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("upstream stamp without usage tsa: %v", err)
	}
}

// TestTSASocketRefusals sends bad requests to POST /tsa on the HTTP
// socket: each parsable-or-not body gets an RFC 3161 rejection with the
// failInfo that says why (never a token, never a crash), and the refusals
// are counted.
func TestTSASocketRefusals(t *testing.T) {
	d, _, _ := tsaDaemon(t)
	hc := d.serveHTTP(t)
	digest := sha256.Sum256([]byte("x"))
	mustReq := func(r timestamp.Request) []byte {
		der, err := r.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	good := mustReq(timestamp.Request{HashAlgorithm: crypto.SHA256, HashedMessage: digest[:]})
	cases := []struct {
		name string
		body []byte
		want string // openssl's words for the failInfo
	}{
		{"garbage", []byte("not a request"), "wrong format"},                                                                                                               // badDataFormat
		{"truncated", good[:len(good)-3], "wrong format"},                                                                                                                  // badDataFormat
		{"short digest", mustReq(timestamp.Request{HashAlgorithm: crypto.SHA256, HashedMessage: digest[:20]}), "wrong format"},                                             // badDataFormat
		{"unaccepted policy", mustReq(timestamp.Request{HashAlgorithm: crypto.SHA256, HashedMessage: digest[:], TSAPolicyOID: []int{1, 2, 3}}), "policy is not supported"}, // unacceptedPolicy
		{"oversized", bytes.Repeat([]byte{0x30}, tsa.MaxRequestSize+100), "transaction not permitted"},                                                                     // badRequest
	}
	dir := t.TempDir()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			hr, err := hc.Post("http://signerd/tsa", "application/timestamp-query", bytes.NewReader(c.body))
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(hr.Body)
			hr.Body.Close()
			p := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "-")+".tsr")
			os.WriteFile(p, body, 0o600)
			out, err := exec.Command("openssl", "ts", "-reply", "-in", p, "-text").CombinedOutput()
			if hr.StatusCode != http.StatusOK || err != nil || !strings.Contains(string(out), "Status: Rejected") || !strings.Contains(strings.ToLower(string(out)), c.want) {
				t.Fatalf("%s %v\n%s", hr.Status, err, out)
			}
		})
	}
	st, err := d.client.GetTSAStatus(testCtx(t), &signerv1.GetTSAStatusRequest{})
	if err != nil || st.GetRefused() != uint64(len(cases)) || st.GetIssued() != 0 {
		t.Fatalf("status after %d refusals: %v %v", len(cases), st, err)
	}
}
