package devca_test

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"io"
	"net/http"
	"net/url"
	"testing"

	xocsp "golang.org/x/crypto/ocsp"

	"github.com/hsmsigner/hsmsigner/softhsm-test/devca"
)

// TestOCSPResponderGoodThenRevoked checks the dev CA's OCSP responder end
// to end: a certificate signed after StartOCSPResponder names it in its
// AIA; asked by POST and by GET it answers good, signed by the delegated
// responder certificate; after Revoke it answers revoked at once; `openssl
// ocsp` made both responses.
func TestOCSPResponderGoodThenRevoked(t *testing.T) {
	ca := devca.New(t)
	r := ca.StartOCSPResponder(t, 30)
	if !bytes.Equal(r.Cert.RawIssuer, ca.Intermediate.RawSubject) || len(r.Cert.ExtKeyUsage) != 1 || r.Cert.ExtKeyUsage[0] != x509.ExtKeyUsageOCSPSigning {
		t.Fatalf("responder certificate: issuer %s, EKU %v", r.Cert.Issuer, r.Cert.ExtKeyUsage)
	}
	cert, err := ca.Sign(t.Context(), makeCSR(t, key(t, "ecdsa"), sanTemplate()), devca.UsageSign, devca.Current)
	if err != nil {
		t.Fatal(err)
	}
	if len(cert.OCSPServer) != 1 || cert.OCSPServer[0] != r.URL {
		t.Fatalf("AIA OCSP %v, want [%s]", cert.OCSPServer, r.URL)
	}
	req, err := xocsp.CreateRequest(cert, ca.Intermediate, nil)
	if err != nil {
		t.Fatal(err)
	}
	ask := func(method string) *xocsp.Response {
		t.Helper()
		var hr *http.Response
		if method == http.MethodPost {
			hr, err = http.Post(r.URL, "application/ocsp-request", bytes.NewReader(req))
		} else {
			hr, err = http.Get(r.URL + "/" + url.PathEscape(base64.StdEncoding.EncodeToString(req)))
		}
		if err != nil {
			t.Fatal(err)
		}
		defer hr.Body.Close()
		body, _ := io.ReadAll(hr.Body)
		if hr.StatusCode != http.StatusOK || hr.Header.Get("Content-Type") != "application/ocsp-response" {
			t.Fatalf("%s: %s %q: %s", method, hr.Status, hr.Header.Get("Content-Type"), body)
		}
		resp, err := xocsp.ParseResponseForCert(body, cert, ca.Intermediate)
		if err != nil {
			t.Fatalf("%s: response does not verify: %v", method, err)
		}
		if resp.Certificate == nil || !resp.Certificate.Equal(r.Cert) {
			t.Fatalf("%s: response not signed by the delegated responder", method)
		}
		if got := resp.NextUpdate.Sub(resp.ThisUpdate).Minutes(); got != 30 {
			t.Fatalf("%s: validity %v minutes, want 30", method, got)
		}
		return resp
	}
	for _, m := range []string{http.MethodPost, http.MethodGet} {
		if s := ask(m).Status; s != xocsp.Good {
			t.Fatalf("%s before revocation: status %d, want good", m, s)
		}
	}
	if err := ca.Revoke(t.Context(), cert, "keyCompromise"); err != nil {
		t.Fatal(err)
	}
	resp := ask(http.MethodPost)
	if resp.Status != xocsp.Revoked || resp.RevocationReason != xocsp.KeyCompromise {
		t.Fatalf("after revocation: status %d reason %d, want revoked for keyCompromise", resp.Status, resp.RevocationReason)
	}
	if err := ca.Revoke(t.Context(), cert, ""); err == nil {
		t.Fatal("revoking a revoked certificate again succeeded")
	}
}
