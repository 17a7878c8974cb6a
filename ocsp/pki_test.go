package ocsp

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/cryptobyte"
	casn1 "golang.org/x/crypto/cryptobyte/asn1"
	xocsp "golang.org/x/crypto/ocsp"
)

// testCA is a certificate and its key.
type testCA struct {
	cert *x509.Certificate
	key  crypto.Signer
}

var serialCounter atomic.Int64

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// issue makes a certificate from tmpl, signed by parent (self-signed when
// parent is nil).
func issue(t testing.TB, tmpl *x509.Certificate, parent *testCA) *testCA {
	t.Helper()
	k := newKey(t)
	tmpl.SerialNumber = big.NewInt(1000 + serialCounter.Add(1))
	if tmpl.NotBefore.IsZero() {
		tmpl.NotBefore = time.Now().Add(-time.Hour)
		tmpl.NotAfter = time.Now().Add(24 * time.Hour)
	}
	pc, pk := tmpl, crypto.Signer(k)
	if parent != nil {
		pc, pk = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, pc, k.Public(), pk)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: c, key: k}
}

func newRoot(t testing.TB, cn string) *testCA {
	return issue(t, &x509.Certificate{
		Subject: pkix.Name{CommonName: cn}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}, nil)
}

func newIntermediate(t testing.TB, cn string, root *testCA) *testCA {
	return issue(t, &x509.Certificate{
		Subject: pkix.Name{CommonName: cn}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}, root)
}

func newLeaf(t testing.TB, cn string, ca *testCA, ocspURLs ...string) *x509.Certificate {
	return issue(t, &x509.Certificate{
		Subject: pkix.Name{CommonName: cn}, OCSPServer: ocspURLs,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment,
	}, ca).cert
}

func newDelegate(t testing.TB, ca *testCA, eku bool, notBefore, notAfter time.Time) *testCA {
	tmpl := &x509.Certificate{Subject: pkix.Name{CommonName: "OCSP responder"}, KeyUsage: x509.KeyUsageDigitalSignature, NotBefore: notBefore, NotAfter: notAfter}
	if eku {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageOCSPSigning}
	}
	return issue(t, tmpl, ca)
}

// answer is how a test responder answers for one certificate.
type answer struct {
	status     int
	thisUpdate time.Time // zero: now - 1 min
	nextUpdate time.Time // zero: thisUpdate + 1 h; use noNext for none
	noNext     bool
	signer     *testCA // nil: the issuer
	embed      bool    // embed the signer's certificate
	issuer     *testCA // for the CertID; nil: the real issuer
	nonce      []byte  // echoed as the nonce extension if not nil
	echoNonce  bool    // echo the request's nonce
	serial     *big.Int
	hold       bool // revoked with reason certificateHold, not keyCompromise
}

// respond makes a DER response for cert under a.
func respond(t testing.TB, cert *x509.Certificate, issuer *testCA, a answer, reqNonce []byte) []byte {
	t.Helper()
	tu := a.thisUpdate
	if tu.IsZero() {
		tu = time.Now().Add(-time.Minute).Truncate(time.Second)
	}
	nu := a.nextUpdate
	if nu.IsZero() && !a.noNext {
		nu = tu.Add(time.Hour)
	}
	serial := cert.SerialNumber
	if a.serial != nil {
		serial = a.serial
	}
	tmpl := xocsp.Response{Status: a.status, SerialNumber: serial, ThisUpdate: tu, NextUpdate: nu, RevokedAt: tu.Add(-time.Hour), RevocationReason: xocsp.KeyCompromise}
	if a.hold {
		tmpl.RevocationReason = xocsp.CertificateHold
	}
	switch {
	case a.nonce != nil:
		tmpl.ExtraExtensions = append(tmpl.ExtraExtensions, pkix.Extension{Id: oidNonce, Value: nonceValue(a.nonce)})
	case a.echoNonce && reqNonce != nil:
		tmpl.ExtraExtensions = append(tmpl.ExtraExtensions, pkix.Extension{Id: oidNonce, Value: nonceValue(reqNonce)})
	}
	signer := issuer
	if a.signer != nil {
		signer = a.signer
	}
	if a.embed {
		tmpl.Certificate = signer.cert
	}
	certIssuer := issuer
	if a.issuer != nil {
		certIssuer = a.issuer
	}
	der, err := xocsp.CreateResponse(certIssuer.cert, signer.cert, tmpl, signer.key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// requestNonce returns the nonce of a DER request, or nil.
func requestNonce(t testing.TB, req []byte) []byte {
	t.Helper()
	in := cryptobyte.String(req)
	var r, tbs cryptobyte.String
	if !in.ReadASN1(&r, casn1.SEQUENCE) || !r.ReadASN1(&tbs, casn1.SEQUENCE) {
		t.Errorf("responder got a request it cannot parse")
		return nil
	}
	tbs.SkipOptionalASN1(casn1.Tag(0).Constructed().ContextSpecific())
	tbs.SkipOptionalASN1(casn1.Tag(1).Constructed().ContextSpecific())
	tbs.SkipASN1(casn1.SEQUENCE)
	var exts, list cryptobyte.String
	if !tbs.ReadOptionalASN1(&exts, nil, casn1.Tag(2).Constructed().ContextSpecific()) || !exts.ReadASN1(&list, casn1.SEQUENCE) {
		return nil
	}
	for !list.Empty() {
		var ext, val cryptobyte.String
		var oid asn1.ObjectIdentifier
		if !list.ReadASN1(&ext, casn1.SEQUENCE) || !ext.ReadASN1ObjectIdentifier(&oid) {
			t.Errorf("malformed request extension")
			return nil
		}
		ext.SkipOptionalASN1(casn1.BOOLEAN)
		if !ext.ReadASN1(&val, casn1.OCTET_STRING) {
			t.Errorf("malformed request extension value")
			return nil
		}
		if oid.Equal(oidNonce) {
			var n cryptobyte.String
			if !val.ReadASN1(&n, casn1.OCTET_STRING) {
				return val
			}
			return n
		}
	}
	return nil
}

// responder is a test OCSP responder whose behaviour a test changes at
// will; it counts requests and requests in flight.
type responder struct {
	t      testing.TB
	srv    *httptest.Server
	issuer *testCA

	mu       sync.Mutex
	answers  map[string]answer                                        // by certificate serial
	handler  func(w http.ResponseWriter, r *http.Request, req []byte) // replaces the OCSP answer when set
	requests atomic.Int64
	inFlight atomic.Int64
	maxSeen  atomic.Int64
	certs    map[string]*x509.Certificate
	lastReq  []byte
	delay    time.Duration
}

func newResponder(t testing.TB, issuer *testCA) *responder {
	r := &responder{t: t, issuer: issuer, answers: map[string]answer{}, certs: map[string]*x509.Certificate{}}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *responder) URL() string { return r.srv.URL }

func (r *responder) set(cert *x509.Certificate, a answer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.answers[cert.SerialNumber.String()] = a
	r.certs[cert.SerialNumber.String()] = cert
}

func (r *responder) lastRequest() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lastReq
}

func (r *responder) setDelay(d time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.delay = d
}

func (r *responder) setHandler(h func(w http.ResponseWriter, req *http.Request, body []byte)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.handler = h
}

func (r *responder) serve(w http.ResponseWriter, hr *http.Request) {
	n := r.inFlight.Add(1)
	defer r.inFlight.Add(-1)
	for {
		m := r.maxSeen.Load()
		if n <= m || r.maxSeen.CompareAndSwap(m, n) {
			break
		}
	}
	r.requests.Add(1)
	var req []byte
	var err error
	if hr.Method == http.MethodPost {
		req, err = io.ReadAll(hr.Body)
	} else {
		req, err = decodeGET(hr.URL.EscapedPath())
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	r.mu.Lock()
	h, delay := r.handler, r.delay
	r.lastReq = req
	r.mu.Unlock()
	if delay > 0 {
		time.Sleep(delay) // the responder's own pace, not a test's wait
	}
	if h != nil {
		h(w, hr, req)
		return
	}
	parsed, err := xocsp.ParseRequest(req)
	if err != nil {
		w.Write(xocsp.MalformedRequestErrorResponse)
		return
	}
	r.mu.Lock()
	a, ok := r.answers[parsed.SerialNumber.String()]
	cert := r.certs[parsed.SerialNumber.String()]
	r.mu.Unlock()
	if !ok {
		w.Write(xocsp.UnauthorizedErrorResponse)
		return
	}
	w.Header().Set("Content-Type", "application/ocsp-response")
	w.Write(respond(r.t, cert, r.issuer, a, requestNonce(r.t, req)))
}

// decodeGET reads an RFC 5019 GET request from the escaped URL path.
func decodeGET(escapedPath string) ([]byte, error) {
	p, err := url.PathUnescape(strings.TrimPrefix(escapedPath, "/"))
	if err != nil {
		return nil, err
	}
	return base64.StdEncoding.DecodeString(p)
}

// mergeResponses returns one response, signed by signer, whose
// SingleResponses are those of ders in order (each made by respond), as a
// responder answering for several certificates at once would send. The
// responderID and producedAt are those of the first.
func mergeResponses(t testing.TB, signer *testCA, ders ...[]byte) []byte {
	t.Helper()
	var singles [][]byte
	var head []byte
	for i, der := range ders {
		in := cryptobyte.String(der)
		var resp, rb, rbSeq, basicOct, basic, tbs cryptobyte.String
		if !in.ReadASN1(&resp, casn1.SEQUENCE) || !resp.SkipASN1(casn1.ENUM) ||
			!resp.ReadASN1(&rb, casn1.Tag(0).Constructed().ContextSpecific()) ||
			!rb.ReadASN1(&rbSeq, casn1.SEQUENCE) || !rbSeq.SkipASN1(casn1.OBJECT_IDENTIFIER) ||
			!rbSeq.ReadASN1(&basicOct, casn1.OCTET_STRING) ||
			!basicOct.ReadASN1(&basic, casn1.SEQUENCE) || !basic.ReadASN1(&tbs, casn1.SEQUENCE) {
			t.Fatal("mergeResponses: cannot read a response")
		}
		whole := tbs
		var rid cryptobyte.String
		var tag casn1.Tag
		if !tbs.SkipOptionalASN1(casn1.Tag(0).Constructed().ContextSpecific()) ||
			!tbs.ReadAnyASN1Element(&rid, &tag) || !tbs.SkipASN1(casn1.GeneralizedTime) {
			t.Fatal("mergeResponses: cannot read ResponseData")
		}
		if i == 0 {
			head = bytes.Clone(whole[:len(whole)-len(tbs)])
		}
		var responses cryptobyte.String
		if !tbs.ReadASN1(&responses, casn1.SEQUENCE) {
			t.Fatal("mergeResponses: cannot read the responses")
		}
		for !responses.Empty() {
			var single cryptobyte.String
			if !responses.ReadASN1Element(&single, casn1.SEQUENCE) {
				t.Fatal("mergeResponses: cannot read a SingleResponse")
			}
			singles = append(singles, bytes.Clone(single))
		}
	}
	var tb cryptobyte.Builder
	tb.AddASN1(casn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddBytes(head)
		b.AddASN1(casn1.SEQUENCE, func(b *cryptobyte.Builder) {
			for _, s := range singles {
				b.AddBytes(s)
			}
		})
	})
	tbs := tb.BytesOrPanic()
	digest := sha256.Sum256(tbs)
	sig, err := ecdsa.SignASN1(rand.Reader, signer.key.(*ecdsa.PrivateKey), digest[:])
	if err != nil {
		t.Fatal(err)
	}
	var b cryptobyte.Builder
	b.AddASN1(casn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1Enum(0)
		b.AddASN1(casn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
			b.AddASN1(casn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddASN1ObjectIdentifier(asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 48, 1, 1})
				b.AddASN1(casn1.OCTET_STRING, func(b *cryptobyte.Builder) {
					b.AddASN1(casn1.SEQUENCE, func(b *cryptobyte.Builder) {
						b.AddBytes(tbs)
						b.AddASN1(casn1.SEQUENCE, func(b *cryptobyte.Builder) {
							b.AddASN1ObjectIdentifier(asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2})
						})
						b.AddASN1BitString(sig)
					})
				})
			})
		})
	})
	return b.BytesOrPanic()
}
