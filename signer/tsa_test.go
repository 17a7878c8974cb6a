package signer

import (
	"bytes"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/softhsm-test/devca"
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
