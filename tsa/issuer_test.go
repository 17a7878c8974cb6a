package tsa

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1" //nolint:gosec // a SHA-1 imprint, to be refused
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/digitorus/timestamp"
)

// testPolicy is the default policy of the test TSA.
var testPolicy = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999, 1}

// testTSA is a CA and a TSA certificate it issued, written as PEM files.
type testTSA struct {
	dir           string
	caPEM, tsaPEM string
	ca, cert      *x509.Certificate
	key           crypto.Signer
	caKey         crypto.Signer
}

func writePEM(t testing.TB, path string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// newTestTSA makes a CA and a TSA certificate for a key of kind "ecdsa"
// or "rsa", edited by edit before it is signed.
func newTestTSA(t testing.TB, kind string, edit func(*x509.Certificate)) *testTSA {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Test TSA CA"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	var key crypto.Signer
	if kind == "rsa" {
		key, _ = rsa.GenerateKey(rand.Reader, 2048)
	} else {
		key, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "Test TSA"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageTimeStamping}}
	if edit != nil {
		edit(tmpl)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	dir := t.TempDir()
	ts := &testTSA{dir: dir, caPEM: filepath.Join(dir, "ca.pem"), tsaPEM: filepath.Join(dir, "tsa.pem"), ca: ca, cert: cert, key: key, caKey: caKey}
	writePEM(t, ts.caPEM, caDER)
	writePEM(t, ts.tsaPEM, der)
	return ts
}

// syncedClock is a clock the kernel would call synchronised.
var syncedClock = ClockSourceFunc(func() (ClockState, error) { return ClockState{Synced: true, MaxError: 10 * time.Millisecond}, nil })

func (ts *testTSA) issuer(t testing.TB, clock ClockSource) *Issuer {
	t.Helper()
	is, err := NewIssuer(Config{Policy: testPolicy}, ts.key, ts.cert, []*x509.Certificate{ts.ca}, clock)
	if err != nil {
		t.Fatal(err)
	}
	return is
}

func openssl(t testing.TB, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command("openssl", args...).CombinedOutput()
	return string(out), err
}

// TestIssueVerifiedByOpenSSL has `openssl ts -query` make requests and
// `openssl ts -verify` check the tokens, for RSA and ECDSA keys, with and
// without nonce and certReq; a token checked against other data fails.
func TestIssueVerifiedByOpenSSL(t *testing.T) {
	for _, kind := range []string{"ecdsa", "rsa"} {
		// The EKU must be critical: Go marks it critical only when asked.
		ts := newCriticalEKUTSA(t, kind)
		is := ts.issuer(t, syncedClock)
		data := filepath.Join(ts.dir, "data.txt")
		other := filepath.Join(ts.dir, "other.txt")
		os.WriteFile(data, []byte("what was signed\n"), 0o600)
		os.WriteFile(other, []byte("something else\n"), 0o600)
		for _, flags := range [][]string{{}, {"-no_nonce"}, {"-cert"}, {"-cert", "-no_nonce"}} {
			name := kind + strings.Join(flags, "")
			q := filepath.Join(ts.dir, name+".tsq")
			r := filepath.Join(ts.dir, name+".tsr")
			if out, err := openssl(t, append([]string{"ts", "-query", "-data", data, "-sha256", "-out", q}, flags...)...); err != nil {
				t.Fatalf("%s: openssl ts -query: %v\n%s", name, err, out)
			}
			req, _ := os.ReadFile(q)
			resp, issued, err := is.Issue(context.Background(), req)
			if err != nil {
				t.Fatalf("%s: Issue: %v", name, err)
			}
			os.WriteFile(r, resp, 0o600)
			verify := []string{"ts", "-verify", "-in", r, "-queryfile", q, "-CAfile", ts.caPEM}
			if !strings.Contains(name, "-cert") {
				verify = append(verify, "-untrusted", ts.tsaPEM)
			}
			if out, err := openssl(t, verify...); err != nil || !strings.Contains(out, "Verification: OK") {
				t.Fatalf("%s: openssl ts -verify: %v\n%s", name, err, out)
			}
			if out, err := openssl(t, "ts", "-verify", "-in", r, "-data", other, "-CAfile", ts.caPEM, "-untrusted", ts.tsaPEM); err == nil && strings.Contains(out, "Verification: OK") {
				t.Fatalf("%s: a token verified against other data", name)
			}
			if issued.Serial.BitLen() < 100 || !issued.Policy.Equal(testPolicy) || issued.Hash != crypto.SHA256 {
				t.Fatalf("%s: issued %v", name, issued)
			}
			if (issued.Nonce == nil) != strings.Contains(name, "-no_nonce") {
				t.Fatalf("%s: nonce %v", name, issued.Nonce)
			}
		}
	}
}

// newCriticalEKUTSA makes a TSA whose extendedKeyUsage extension is
// timeStamping alone, critical, as RFC 3161 requires.
func newCriticalEKUTSA(t testing.TB, kind string) *testTSA {
	ekuDER, _ := asn1.Marshal([]asn1.ObjectIdentifier{oidTimeStamping})
	return newTestTSA(t, kind, func(c *x509.Certificate) {
		c.ExtKeyUsage = nil
		c.ExtraExtensions = []pkix.Extension{{Id: oidExtKeyUsage, Critical: true, Value: ekuDER}}
	})
}

// status reads the PKIStatus and failInfo of a DER TimeStampResp.
func status(t testing.TB, resp []byte) (int, asn1.BitString) {
	t.Helper()
	var r struct {
		Status struct {
			Status       int
			StatusString []asn1.RawValue `asn1:"optional"`
			FailInfo     asn1.BitString  `asn1:"optional"`
		}
		Token asn1.RawValue `asn1:"optional"`
	}
	if _, err := asn1.Unmarshal(resp, &r); err != nil {
		t.Fatalf("the answer is not a TimeStampResp: %v", err)
	}
	return r.Status.Status, r.Status.FailInfo
}

// TestRefusalsAreRFC3161Answers sends one bad request of each kind and
// checks that each is answered with a rejection and the right failInfo,
// and that openssl reads the answer.
func TestRefusalsAreRFC3161Answers(t *testing.T) {
	ts := newCriticalEKUTSA(t, "ecdsa")
	digest := sha256.Sum256([]byte("x"))
	good, err := (&timestamp.Request{HashAlgorithm: crypto.SHA256, HashedMessage: digest[:]}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	sha1Digest := sha1.Sum([]byte("x"))
	mustReq := func(r timestamp.Request) []byte {
		der, err := r.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	unsynced := ClockSourceFunc(func() (ClockState, error) { return ClockState{Synced: false, MaxError: 16 * time.Second}, nil })
	drifting := ClockSourceFunc(func() (ClockState, error) { return ClockState{Synced: true, MaxError: 3 * time.Second}, nil })
	broken := ClockSourceFunc(func() (ClockState, error) { return ClockState{}, errors.New("no adjtimex") })
	cases := []struct {
		name  string
		req   []byte
		clock ClockSource
		want  timestamp.FailureInfo
	}{
		{"garbage", []byte("not a request"), syncedClock, timestamp.BadDataFormat},
		{"truncated", good[:len(good)-3], syncedClock, timestamp.BadDataFormat},
		{"oversized", make([]byte, MaxRequestSize+1), syncedClock, timestamp.BadRequest},
		{"SHA-1 imprint", mustReq(timestamp.Request{HashAlgorithm: crypto.SHA1, HashedMessage: sha1Digest[:]}), syncedClock, timestamp.BadAlgorithm},
		{"digest length does not fit", mustReq(timestamp.Request{HashAlgorithm: crypto.SHA256, HashedMessage: sha1Digest[:]}), syncedClock, timestamp.BadDataFormat},
		{"unaccepted policy", mustReq(timestamp.Request{HashAlgorithm: crypto.SHA256, HashedMessage: digest[:], TSAPolicyOID: asn1.ObjectIdentifier{1, 2, 3}}), syncedClock, timestamp.UnacceptedPolicy},
		{"unknown critical extension", mustReq(timestamp.Request{HashAlgorithm: crypto.SHA256, HashedMessage: digest[:],
			ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{1, 2, 3, 4}, Critical: true, Value: []byte{5, 0}}}}), syncedClock, timestamp.UnacceptedExtension},
		{"clock unsynchronised", good, unsynced, timestamp.TimeNotAvailable},
		{"clock error beyond the accuracy", good, drifting, timestamp.TimeNotAvailable},
		{"clock state unreadable", good, broken, timestamp.TimeNotAvailable},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp, issued, err := ts.issuer(t, c.clock).Issue(context.Background(), c.req)
			var r *Refusal
			if !errors.As(err, &r) || r.FailInfo != c.want || issued != nil {
				t.Fatalf("Issue: %v, want a refusal with %s", err, c.want)
			}
			st, fi := status(t, resp)
			if st != int(timestamp.Rejection) || fi.At(int(c.want)) != 1 {
				t.Fatalf("answer status %d failInfo %v, want rejection with bit %d", st, fi, c.want)
			}
			p := filepath.Join(t.TempDir(), "r.tsr")
			os.WriteFile(p, resp, 0o600)
			if out, err := openssl(t, "ts", "-reply", "-in", p, "-text"); err != nil || !strings.Contains(out, "Status: Rejected") {
				t.Fatalf("openssl ts -reply: %v\n%s", err, out)
			}
		})
	}
	// A synchronised clock issues.
	if _, _, err := ts.issuer(t, syncedClock).Issue(context.Background(), good); err != nil {
		t.Fatalf("synchronised: %v", err)
	}
	// Turned off, the guard lets an unsynchronised clock issue.
	is, err := NewIssuer(Config{Policy: testPolicy, SkipClockCheck: true}, ts.key, ts.cert, nil, unsynced)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := is.Issue(context.Background(), good); err != nil {
		t.Fatalf("guard off: %v", err)
	}
}

// TestClockStepRefuses checks the step guard: a step beyond the accuracy
// refuses from then on, a smaller one does not.
func TestClockStepRefuses(t *testing.T) {
	d := newStepDetector(time.Now())
	if err := d.observe(300*time.Millisecond, time.Second); err != nil {
		t.Fatalf("a step within the accuracy: %v", err)
	}
	if err := d.observe(-2*time.Second, time.Second); err == nil || !strings.Contains(err.Error(), "stepped by 2s") {
		t.Fatalf("a 2 s step back: %v", err)
	}
	if err := d.observe(0, time.Second); err == nil {
		t.Fatal("a step was forgotten")
	}
	if err := newStepDetector(time.Now()).check(time.Now(), time.Second); err != nil {
		t.Fatalf("no step: %v", err)
	}
}

// TestGuardOutlivesIssuers checks that a step of the clock seen through a
// shared Guard refuses tokens of an Issuer made after it (a new
// certificate), and that the guard's state names the step.
func TestGuardOutlivesIssuers(t *testing.T) {
	ts := newCriticalEKUTSA(t, "ecdsa")
	cfg := Config{Policy: testPolicy}
	g := NewGuard(syncedClock, cfg)
	if err := g.Ready(); err != nil {
		t.Fatalf("fresh guard: %v", err)
	}
	if err := g.steps.observe(5*time.Second, time.Second); err == nil {
		t.Fatal("a 5 s step passed")
	}
	is, err := NewIssuerGuarded(cfg, ts.key, ts.cert, nil, g)
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256([]byte("x"))
	req, err := (&timestamp.Request{HashAlgorithm: crypto.SHA256, HashedMessage: digest[:]}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	resp, _, err := is.Issue(context.Background(), req)
	var r *Refusal
	if !errors.As(err, &r) || r.FailInfo != timestamp.TimeNotAvailable || resp == nil {
		t.Fatalf("issuer made after the step: %v", err)
	}
	if st := g.State(); st.Stepped != 5*time.Second || !strings.Contains(st.Problem, "stepped") || st.Off {
		t.Fatalf("state %+v", st)
	}
	if _, err := NewIssuerGuarded(cfg, ts.key, ts.cert, nil, nil); err == nil {
		t.Fatal("an issuer without a guard was made")
	}
}

// TestNewIssuerRefusesUnfitCertificates checks the certificate rules: the
// key's own, valid now, extendedKeyUsage timeStamping alone and critical.
func TestNewIssuerRefusesUnfitCertificates(t *testing.T) {
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	for _, c := range []struct {
		name string
		ts   *testTSA
		key  crypto.Signer
		want string
	}{
		{"EKU not critical", newTestTSA(t, "ecdsa", nil), nil, "critical"},
		{"no EKU", newTestTSA(t, "ecdsa", func(c *x509.Certificate) { c.ExtKeyUsage = nil }), nil, "timeStamping"},
		{"expired", newTestTSA(t, "ecdsa", func(c *x509.Certificate) { c.NotAfter = time.Now().Add(-time.Minute) }), nil, "valid only"},
		{"another key", newCriticalEKUTSA(t, "ecdsa"), other, "not the TSA key's"},
	} {
		key := c.key
		if key == nil {
			key = c.ts.key
		}
		if _, err := NewIssuer(Config{Policy: testPolicy}, key, c.ts.cert, nil, syncedClock); !errors.Is(err, ErrCertificate) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want ErrCertificate with %q", c.name, err, c.want)
		}
	}
}
