package ocsp

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
	"time"

	xocsp "golang.org/x/crypto/ocsp"
)

// opensslFixture is a certificate, its issuer and responses made for it
// by a real `openssl ocsp` responder (testdata/openssl/gen.sh).
type opensslFixture struct {
	ca, leaf                 *x509.Certificate
	good, goodNonce, revoked []byte
	requestNonce             []byte
	thisUpdate               time.Time
}

func loadOpenSSLFixture(t testing.TB) opensslFixture {
	t.Helper()
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join("testdata", "openssl", name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	cert := func(name string) *x509.Certificate {
		b, _ := pem.Decode(read(name))
		if b == nil {
			t.Fatalf("%s: no PEM", name)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	fx := opensslFixture{ca: cert("ca.pem"), leaf: cert("leaf.pem"), good: read("good.der"), goodNonce: read("good-nonce.der"), revoked: read("revoked.der")}
	r, err := xocsp.ParseResponse(fx.good, nil)
	if err != nil {
		t.Fatal(err)
	}
	fx.thisUpdate = r.ThisUpdate
	fx.requestNonce = nonceOfRequest(t, read("reqn.der"))
	return fx
}

// nonceOfRequest reads the nonce openssl put in a request.
func nonceOfRequest(t testing.TB, req []byte) []byte {
	t.Helper()
	n := requestNonce(t, req)
	if n == nil {
		t.Fatal("the openssl request carries no nonce")
	}
	return n
}

// fuzzPolicy accepts the fixture's century-long responses.
var fuzzPolicy = Policy{Freshness: 200 * 365 * 24 * time.Hour}

// TestVerifyOpenSSLResponses checks Verify against responses a real
// openssl responder made: good, good with the request's nonce, revoked.
func TestVerifyOpenSSLResponses(t *testing.T) {
	fx := loadOpenSSLFixture(t)
	now := fx.thisUpdate.Add(time.Minute)
	for _, c := range []struct {
		name  string
		der   []byte
		nonce []byte
		want  Status
	}{
		{"good", fx.good, nil, StatusGood},
		{"good, nonce echoed", fx.goodNonce, fx.requestNonce, StatusGood},
		{"revoked", fx.revoked, nil, StatusRevoked},
	} {
		r, err := Verify(c.der, fx.leaf, fx.ca, fuzzPolicy, now, c.nonce)
		if err != nil || r.Status != c.want {
			t.Fatalf("%s: %v, status %v", c.name, err, r)
		}
	}
	if _, err := Verify(fx.goodNonce, fx.leaf, fx.ca, fuzzPolicy, now, bytes.Repeat([]byte{1}, 16)); CheckOf(err) != CheckNonce {
		t.Fatalf("another nonce: %v, want a nonce rejection", err)
	}
}

// FuzzVerify feeds Verify arbitrary responses for the openssl fixture's
// certificate: it must never panic, and whatever it accepts must be the
// bytes given, with a known status.
func FuzzVerify(f *testing.F) {
	fx := loadOpenSSLFixture(f)
	for _, s := range [][]byte{fx.good, fx.goodNonce, fx.revoked, xocsp.TryLaterErrorResponse} {
		f.Add(s)
	}
	now := fx.thisUpdate.Add(time.Minute)
	f.Fuzz(func(t *testing.T, der []byte) {
		r, err := Verify(der, fx.leaf, fx.ca, fuzzPolicy, now, nil)
		if err != nil {
			if CheckOf(err) == "" {
				t.Fatalf("refusal without a check: %v", err)
			}
			return
		}
		if !bytes.Equal(r.Raw, der) {
			t.Fatal("accepted response is not the bytes given")
		}
		switch r.Status {
		case StatusGood, StatusRevoked, StatusUnknown:
		default:
			t.Fatalf("status %v", r.Status)
		}
		if r.ThisUpdate.After(now.Add(fuzzPolicy.maxSkew())) {
			t.Fatalf("accepted a thisUpdate in the future: %v", r.ThisUpdate)
		}
	})
}
