package ocsp

import (
	"bytes"
	"crypto/x509"
	"errors"
	"math/big"
	"testing"
	"time"

	xocsp "golang.org/x/crypto/ocsp"
)

// TestVerify checks each rule of Verify on responses made for the case:
// accepted ones give the status the responder said, refused ones the
// check that failed.
func TestVerify(t *testing.T) {
	root := newRoot(t, "Root")
	ca := newIntermediate(t, "Issuing CA", root)
	other := newIntermediate(t, "Other CA", root)
	cert := newLeaf(t, "member", ca)
	now := time.Now()
	goodDelegate := newDelegate(t, ca, true, now.Add(-time.Hour), now.Add(time.Hour))
	noEKU := newDelegate(t, ca, false, now.Add(-time.Hour), now.Add(time.Hour))
	expired := newDelegate(t, ca, true, now.Add(-3*time.Hour), now.Add(-time.Hour))
	foreign := newDelegate(t, other, true, now.Add(-time.Hour), now.Add(time.Hour))
	trusted := newDelegate(t, other, true, now.Add(-time.Hour), now.Add(time.Hour))
	nonce := bytes.Repeat([]byte{7}, NonceSize)

	cases := []struct {
		name     string
		a        answer
		der      []byte // instead of a response made from a
		nonce    []byte
		policy   Policy
		want     Check
		status   Status
		signedBy string
	}{
		{name: "good, signed by the issuer", a: answer{status: xocsp.Good}, status: StatusGood, signedBy: "issuer"},
		{name: "good, issuer embeds its own certificate", a: answer{status: xocsp.Good, embed: true}, status: StatusGood, signedBy: "issuer"},
		{name: "revoked is a verified status", a: answer{status: xocsp.Revoked}, status: StatusRevoked},
		{name: "unknown is a verified status", a: answer{status: xocsp.Unknown}, status: StatusUnknown},
		{name: "delegated responder with OCSPSigning", a: answer{status: xocsp.Good, signer: goodDelegate, embed: true}, status: StatusGood, signedBy: "delegated responder CN=OCSP responder"},
		{name: "configured trusted responder", a: answer{status: xocsp.Good, signer: trusted}, policy: Policy{TrustedResponders: []*x509.Certificate{trusted.cert}}, status: StatusGood, signedBy: "trusted responder CN=OCSP responder"},
		{name: "no nextUpdate", a: answer{status: xocsp.Good, noNext: true}, status: StatusGood},
		{name: "nonce echoed", a: answer{status: xocsp.Good, nonce: nonce}, nonce: nonce, status: StatusGood},

		{name: "garbage", der: []byte("<html>not found</html>"), want: CheckParse},
		{name: "tryLater", der: xocsp.TryLaterErrorResponse, want: CheckParse},
		{name: "serial of another certificate", a: answer{status: xocsp.Good, serial: big.NewInt(4242)}, want: CheckParse},
		{name: "same serial, another issuer in the CertID", a: answer{status: xocsp.Good, issuer: other, signer: ca}, want: CheckCertID},
		{name: "signed by an unauthorised key, not embedded", a: answer{status: xocsp.Good, signer: foreign}, want: CheckSignature},
		{name: "signed by a responder of another CA", a: answer{status: xocsp.Good, signer: foreign, embed: true}, want: CheckResponder},
		{name: "delegated responder without OCSPSigning", a: answer{status: xocsp.Good, signer: noEKU, embed: true}, want: CheckResponder},
		{name: "delegated responder expired", a: answer{status: xocsp.Good, signer: expired, embed: true}, want: CheckResponder},
		{name: "thisUpdate too old", a: answer{status: xocsp.Good, thisUpdate: now.Add(-2 * time.Hour), nextUpdate: now.Add(time.Hour)}, want: CheckTooOld},
		{name: "thisUpdate in the future", a: answer{status: xocsp.Good, thisUpdate: now.Add(10 * time.Minute)}, want: CheckThisUpdateFuture},
		{name: "thisUpdate slightly ahead, within skew", a: answer{status: xocsp.Good, thisUpdate: now.Add(time.Minute)}, status: StatusGood},
		{name: "nextUpdate passed", a: answer{status: xocsp.Good, thisUpdate: now.Add(-30 * time.Minute), nextUpdate: now.Add(-time.Minute)}, want: CheckNextUpdate},
		{name: "nonce sent, none returned", a: answer{status: xocsp.Good}, nonce: nonce, want: CheckNonce},
		{name: "nonce mismatch", a: answer{status: xocsp.Good, nonce: []byte("another nonce...")}, nonce: nonce, want: CheckNonce},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			der := c.der
			if der == nil {
				der = respond(t, cert, ca, c.a, nil)
			}
			r, err := Verify(der, cert, ca.cert, c.policy, now, c.nonce)
			if c.want != "" {
				var re *RejectError
				if !errors.As(err, &re) || re.Check != c.want {
					t.Fatalf("Verify: %v, want a rejection by check %q", err, c.want)
				}
				if re.Reason == "" {
					t.Fatal("rejection without a reason")
				}
				return
			}
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if r.Status != c.status {
				t.Fatalf("status %s, want %s", r.Status, c.status)
			}
			if c.signedBy != "" && r.SignedBy != c.signedBy {
				t.Fatalf("signed by %q, want %q", r.SignedBy, c.signedBy)
			}
			if !bytes.Equal(r.Raw, der) {
				t.Fatal("Raw is not the response given")
			}
		})
	}
}

// TestRequestCarriesNonce checks that a request made with a nonce parses
// and carries it in the nonce extension, and one without has none.
func TestRequestCarriesNonce(t *testing.T) {
	ca := newRoot(t, "CA")
	cert := newLeaf(t, "member", ca)
	nonce := []byte("0123456789abcdef")
	for _, n := range [][]byte{nil, nonce} {
		der, err := Request(cert, ca.cert, n)
		if err != nil {
			t.Fatal(err)
		}
		r, err := xocsp.ParseRequest(der)
		if err != nil {
			t.Fatalf("request with nonce %q does not parse: %v", n, err)
		}
		if r.SerialNumber.Cmp(cert.SerialNumber) != 0 {
			t.Fatal("request for the wrong serial")
		}
		if got := requestNonce(t, der); !bytes.Equal(got, n) {
			t.Fatalf("nonce %q in the request, want %q", got, n)
		}
	}
	if _, err := Request(cert, ca.cert, make([]byte, 33)); err == nil {
		t.Fatal("a 33-byte nonce was accepted")
	}
}

// TestStaleAt checks when a response stops being usable: thisUpdate plus
// the freshness window, or nextUpdate when that is earlier.
func TestStaleAt(t *testing.T) {
	tu := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		next time.Time
		want time.Time
	}{
		{time.Time{}, tu.Add(time.Hour)},
		{tu.Add(30 * time.Minute), tu.Add(30 * time.Minute)},
		{tu.Add(3 * time.Hour), tu.Add(time.Hour)},
	} {
		r := &Response{ThisUpdate: tu, NextUpdate: c.next}
		if got := r.StaleAt(Policy{}); !got.Equal(c.want) {
			t.Errorf("nextUpdate %v: stale at %v, want %v", c.next, got, c.want)
		}
	}
}

// TestVerifySeveralSingleResponses checks responses that answer for
// several certificates: the single response for the certificate is found
// wherever it is, and a response that answers twice for the certificate
// (good and revoked, or by two issuers) is refused rather than read by
// its first answer.
func TestVerifySeveralSingleResponses(t *testing.T) {
	root := newRoot(t, "Root")
	ca := newIntermediate(t, "Issuing CA", root)
	cert := newLeaf(t, "member", ca)
	neighbour := newLeaf(t, "neighbour", ca)
	now := time.Now()
	good := respond(t, cert, ca, answer{status: xocsp.Good}, nil)
	revoked := respond(t, cert, ca, answer{status: xocsp.Revoked}, nil)
	neighbourGood := respond(t, neighbour, ca, answer{status: xocsp.Good}, nil)
	cases := []struct {
		name   string
		der    []byte
		want   Check
		status Status
	}{
		{"ours second, after a neighbour's", mergeResponses(t, ca, neighbourGood, good), "", StatusGood},
		{"ours revoked second, after a neighbour's", mergeResponses(t, ca, neighbourGood, revoked), "", StatusRevoked},
		{"ours twice: good then revoked", mergeResponses(t, ca, good, revoked), CheckCertID, 0},
		{"ours twice: revoked then good", mergeResponses(t, ca, revoked, good), CheckCertID, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r, err := Verify(c.der, cert, ca.cert, Policy{}, now, nil)
			if c.want != "" {
				if CheckOf(err) != c.want {
					t.Fatalf("Verify: %v, want a rejection by check %q", err, c.want)
				}
				return
			}
			if err != nil || r.Status != c.status {
				t.Fatalf("Verify: %v, %v; want status %s", r, err, c.status)
			}
		})
	}
}

// TestVerifyNextUpdateBeforeThisUpdate checks that a response whose
// nextUpdate comes before its thisUpdate (thisUpdate slightly ahead,
// within the skew) is refused, not served until nextUpdate.
func TestVerifyNextUpdateBeforeThisUpdate(t *testing.T) {
	ca := newRoot(t, "CA")
	cert := newLeaf(t, "member", ca)
	now := time.Now()
	der := respond(t, cert, ca, answer{status: xocsp.Good, thisUpdate: now.Add(3 * time.Minute).Truncate(time.Second), nextUpdate: now.Add(time.Minute).Truncate(time.Second)}, nil)
	if _, err := Verify(der, cert, ca.cert, Policy{}, now, nil); CheckOf(err) != CheckNextUpdate {
		t.Fatalf("Verify: %v, want a rejection by check %q", err, CheckNextUpdate)
	}
}
