package tsa

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/digitorus/pkcs7"
	"github.com/digitorus/timestamp"
)

// craftedUpstream is a TSA over HTTP whose answer a test makes from the
// request as sent.
func craftedUpstream(t *testing.T, answer func(w http.ResponseWriter, r *timestamp.Request)) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, hr *http.Request) {
		var buf bytes.Buffer
		if _, err := buf.ReadFrom(hr.Body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r, err := timestamp.ParseRequest(buf.Bytes())
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		answer(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// tokenFor makes a granted TimeStampResp for r signed by ts, edited by
// edit before it is signed; it echoes the nonce and carries the chain.
func tokenFor(t *testing.T, ts *testTSA, r *timestamp.Request, edit func(*timestamp.Timestamp)) []byte {
	t.Helper()
	tok := &timestamp.Timestamp{HashAlgorithm: r.HashAlgorithm, HashedMessage: r.HashedMessage, Time: time.Now().UTC().Truncate(time.Second),
		Policy: testPolicy, Nonce: r.Nonce, AddTSACertificate: true, Certificates: []*x509.Certificate{ts.ca}}
	if edit != nil {
		edit(tok)
	}
	resp, err := tok.CreateResponseWithOpts(ts.cert, ts.key, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func writeDER(w http.ResponseWriter, b []byte) {
	w.Header().Set("Content-Type", "application/timestamp-reply")
	_, _ = w.Write(b)
}

// TestAttackUpstreamRejectsBadTokens: each answer of a malicious or
// broken upstream TSA is refused with ErrToken, and a good answer from
// the same kind of TSA is accepted.
func TestAttackUpstreamRejectsBadTokens(t *testing.T) {
	good := newCriticalEKUTSA(t, "ecdsa")
	ekuOnlyCritical := func(c *x509.Certificate) {
		der, _ := asn1.Marshal([]asn1.ObjectIdentifier{oidTimeStamping})
		c.ExtKeyUsage = nil
		c.ExtraExtensions = []pkix.Extension{{Id: oidExtKeyUsage, Critical: true, Value: der}}
	}
	// TSA certificates unfit for time-stamping (RFC 3161 2.3; OpenSSL's
	// timestampsign purpose), each under its own CA.
	nonCritical := newTestTSA(t, "ecdsa", nil) // Go marks EKU non-critical
	withServerAuth := newTestTSA(t, "ecdsa", func(c *x509.Certificate) {
		der, _ := asn1.Marshal([]asn1.ObjectIdentifier{oidTimeStamping, {1, 3, 6, 1, 5, 5, 7, 3, 1}})
		c.ExtKeyUsage = nil
		c.ExtraExtensions = []pkix.Extension{{Id: oidExtKeyUsage, Critical: true, Value: der}}
	})
	certSignOnly := newTestTSA(t, "ecdsa", func(c *x509.Certificate) {
		ekuOnlyCritical(c)
		c.KeyUsage = x509.KeyUsageCertSign
	})
	keyAgreement := newTestTSA(t, "ecdsa", func(c *x509.Certificate) {
		ekuOnlyCritical(c)
		c.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment
	})
	// An anchor expired: the TSA certificate valid, its CA not.
	expiredCA := newCriticalEKUTSA(t, "ecdsa")
	{
		tmpl := *expiredCA.ca
		tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-48*time.Hour), time.Now().Add(-time.Hour)
		der, err := x509.CreateCertificate(nil, &tmpl, &tmpl, expiredCA.caKey.Public(), expiredCA.caKey)
		if err != nil {
			t.Fatal(err)
		}
		expiredCA.ca, _ = x509.ParseCertificate(der)
	}
	roots := x509.NewCertPool()
	for _, ts := range []*testTSA{good, nonCritical, withServerAuth, certSignOnly, keyAgreement, expiredCA} {
		roots.AddCert(ts.ca)
	}
	trust := Trust{Roots: roots}

	cases := []struct {
		name   string
		answer func(w http.ResponseWriter, r *timestamp.Request)
		want   string // in the error; "" for accepted
	}{
		{"good", func(w http.ResponseWriter, r *timestamp.Request) { writeDER(w, tokenFor(t, good, r, nil)) }, ""},
		{"EKU not critical", func(w http.ResponseWriter, r *timestamp.Request) { writeDER(w, tokenFor(t, nonCritical, r, nil)) }, "extendedKeyUsage"},
		{"EKU timeStamping and serverAuth", func(w http.ResponseWriter, r *timestamp.Request) { writeDER(w, tokenFor(t, withServerAuth, r, nil)) }, "extendedKeyUsage"},
		{"keyUsage keyCertSign only", func(w http.ResponseWriter, r *timestamp.Request) { writeDER(w, tokenFor(t, certSignOnly, r, nil)) }, "keyUsage"},
		{"keyUsage with keyEncipherment", func(w http.ResponseWriter, r *timestamp.Request) { writeDER(w, tokenFor(t, keyAgreement, r, nil)) }, "keyUsage"},
		// genTime inside the TSA certificate's validity (an hour before
		// now to a day after), but far from when the request was sent.
		{"genTime half an hour ago", func(w http.ResponseWriter, r *timestamp.Request) {
			writeDER(w, tokenFor(t, good, r, func(tok *timestamp.Timestamp) { tok.Time = time.Now().Add(-30 * time.Minute).UTC() }))
		}, "genTime"},
		{"genTime an hour ahead", func(w http.ResponseWriter, r *timestamp.Request) {
			writeDER(w, tokenFor(t, good, r, func(tok *timestamp.Timestamp) { tok.Time = time.Now().Add(time.Hour).UTC() }))
		}, "genTime"},
		{"anchor expired at genTime", func(w http.ResponseWriter, r *timestamp.Request) {
			writeDER(w, tokenFor(t, expiredCA, r, func(tok *timestamp.Timestamp) { tok.Certificates = nil }))
		}, "chain"},
		{"another policy than asked", func(w http.ResponseWriter, r *timestamp.Request) {
			writeDER(w, tokenFor(t, good, r, func(tok *timestamp.Timestamp) { tok.Policy = asn1.ObjectIdentifier{1, 2, 3, 4} }))
		}, "policy"},
		{"nonce dropped", func(w http.ResponseWriter, r *timestamp.Request) {
			writeDER(w, tokenFor(t, good, r, func(tok *timestamp.Timestamp) { tok.Nonce = nil }))
		}, "nonce"},
		{"nonce off by one", func(w http.ResponseWriter, r *timestamp.Request) {
			writeDER(w, tokenFor(t, good, r, func(tok *timestamp.Timestamp) { tok.Nonce = new(big.Int).Add(r.Nonce, big.NewInt(1)) }))
		}, "nonce"},
		{"hash swapped", func(w http.ResponseWriter, r *timestamp.Request) {
			writeDER(w, tokenFor(t, good, r, func(tok *timestamp.Timestamp) {
				tok.HashAlgorithm = crypto.SHA512
				tok.HashedMessage = append(bytes.Clone(r.HashedMessage), make([]byte, 32)...)
			}))
		}, "another imprint"},
		{"trailing bytes", func(w http.ResponseWriter, r *timestamp.Request) {
			writeDER(w, append(tokenFor(t, good, r, nil), 0, 0))
		}, "trailing"},
	}
	digest := sha256.Sum256([]byte("a record"))
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			u, err := NewUpstream(UpstreamConfig{URLs: []string{craftedUpstream(t, c.answer)}, Trust: trust, Policy: testPolicy, Timeout: 5 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			defer u.Close()
			_, err = u.Stamp(context.Background(), crypto.SHA256, digest[:])
			switch {
			case c.want == "" && err != nil:
				t.Fatalf("a good token refused: %v", err)
			case c.want != "" && (!errors.Is(err, ErrToken) || !strings.Contains(err.Error(), c.want)):
				t.Fatalf("got %v, want a rejection (ErrToken) naming %q", err, c.want)
			}
		})
	}
}

// TestAttackUpstreamHostileTransport: a TSA that answers too much, too
// slowly, with a redirect, or with an HTTP error is refused within the
// timeout; signerd never follows the redirect.
func TestAttackUpstreamHostileTransport(t *testing.T) {
	good := newCriticalEKUTSA(t, "ecdsa")
	goodURL := craftedUpstream(t, func(w http.ResponseWriter, r *timestamp.Request) { writeDER(w, tokenFor(t, good, r, nil)) })
	const timeout = 500 * time.Millisecond
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	cases := []struct {
		name    string
		handler http.HandlerFunc
		want    string
	}{
		{"huge body", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/timestamp-reply")
			chunk := make([]byte, 64<<10)
			for range 64 { // 4 MiB
				if _, err := w.Write(chunk); err != nil {
					return
				}
			}
		}, "larger than"},
		{"slow header", func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body) // so that the server sees the client go
			select {
			case <-r.Context().Done():
			case <-stop:
			case <-time.After(time.Minute):
			}
		}, "TSA"},
		{"slowloris body", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/timestamp-reply")
			for range 600 {
				if _, err := w.Write([]byte{0x30}); err != nil {
					return
				}
				w.(http.Flusher).Flush()
				select {
				case <-r.Context().Done():
					return
				case <-stop:
					return
				case <-time.After(100 * time.Millisecond):
				}
			}
		}, "TSA"},
		{"redirect to a good TSA", func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, goodURL, http.StatusTemporaryRedirect)
		}, "307"},
		{"HTTP 500", func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "down", http.StatusInternalServerError) }, "500"},
	}
	digest := sha256.Sum256([]byte("a record"))
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			srv := httptest.NewServer(c.handler)
			t.Cleanup(srv.Close)
			u, err := NewUpstream(UpstreamConfig{URLs: []string{srv.URL}, Trust: trustOf(good), Timeout: timeout})
			if err != nil {
				t.Fatal(err)
			}
			defer u.Close()
			start := time.Now()
			_, err = u.Stamp(context.Background(), crypto.SHA256, digest[:])
			took := time.Since(start)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error naming %q", err, c.want)
			}
			if took > timeout+2*time.Second {
				t.Fatalf("took %s with a timeout of %s", took, timeout)
			}
		})
	}
}

// TestAttackVerifyBoundsHostileDER: an oversized or deeply nested token
// is refused at once with ErrToken, before the CMS parser (whose BER
// transcoding takes time quadratic in the nesting) sees it.
func TestAttackVerifyBoundsHostileDER(t *testing.T) {
	nested := func(depth int) []byte {
		b := []byte{0x30, 0}
		for range depth {
			b, _ = asn1.Marshal(asn1.RawValue{Tag: asn1.TagSequence, IsCompound: true, Bytes: b})
		}
		return b
	}
	indefinite := func(depth int) []byte {
		return append(bytes.Repeat([]byte{0x30, 0x80}, depth), bytes.Repeat([]byte{0, 0}, depth)...)
	}
	big := make([]byte, 4<<20)
	big[0], big[1], big[2], big[3], big[4], big[5] = 0x30, 0x84, 0x00, 0x3f, 0xff, 0xfa
	digest := sha256.Sum256([]byte("x"))
	for _, c := range []struct {
		name string
		der  []byte
	}{
		{"nested 20000 deep", nested(20000)},
		{"indefinite 100000 deep", indefinite(100000)},
		{"4 MiB", big},
	} {
		t.Run(c.name, func(t *testing.T) {
			start := time.Now()
			_, err := VerifyToken(c.der, crypto.SHA256, digest[:], nil, Trust{Roots: x509.NewCertPool()})
			if !errors.Is(err, ErrToken) {
				t.Fatalf("got %v, want ErrToken", err)
			}
			if took := time.Since(start); took > 50*time.Millisecond {
				t.Fatalf("took %s to refuse: the parser saw it", took)
			}
			resp, _ := asn1.Marshal(struct {
				Status struct{ Status int }
				Token  asn1.RawValue
			}{Token: asn1.RawValue{FullBytes: c.der}})
			if _, err := VerifyResponse(resp, crypto.SHA256, digest[:], nil, Trust{Roots: x509.NewCertPool()}); !errors.Is(err, ErrToken) {
				t.Fatalf("in a TimeStampResp: got %v, want ErrToken", err)
			}
		})
	}
}

// TestAttackExpiredCertificateNotUsed: an Issuer made while its
// certificate was valid refuses to issue once the certificate has
// expired (a cached issuer must not outlive its certificate).
func TestAttackExpiredCertificateNotUsed(t *testing.T) {
	ts := newCriticalEKUTSA(t, "ecdsa")
	is := ts.issuer(t, syncedClock)
	req, _ := (&timestamp.Request{HashAlgorithm: crypto.SHA256, HashedMessage: make([]byte, 32)}).Marshal()
	if _, _, err := is.Issue(context.Background(), req); err != nil {
		t.Fatalf("while valid: %v", err)
	}
	for _, at := range []time.Time{ts.cert.NotAfter.Add(time.Second), ts.cert.NotBefore.Add(-time.Second)} {
		is.now = func() time.Time { return at }
		resp, issued, err := is.Issue(context.Background(), req)
		var r *Refusal
		if issued != nil || !errors.As(err, &r) || !strings.Contains(r.Reason, "valid") {
			t.Fatalf("at %s: issued %v, err %v; want a refusal naming the validity", at, issued, err)
		}
		if st, _ := status(t, resp); st != int(timestamp.Rejection) {
			t.Fatalf("at %s: status %d, want rejection", at, st)
		}
	}
}

// TestAttackVerifyConcurrently verifies tokens from eight goroutines at
// once, as signerd's unbatched upstream mode and a client's verifier do:
// each verifies, and under -race no data race is found (digitorus/pkcs7's
// Parse writes a package variable).
func TestAttackVerifyConcurrently(t *testing.T) {
	ts := newCriticalEKUTSA(t, "ecdsa")
	is := ts.issuer(t, syncedClock)
	type stamped struct {
		digest [32]byte
		resp   []byte
	}
	var all []stamped
	for i := range 16 {
		d := sha256.Sum256([]byte{byte(i)})
		req, _ := (&timestamp.Request{HashAlgorithm: crypto.SHA256, HashedMessage: d[:], Certificates: true}).Marshal()
		resp, _, err := is.Issue(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, stamped{d, resp})
	}
	errs := make(chan error, 8*len(all))
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for _, s := range all {
				_, err := VerifyResponse(s.resp, crypto.SHA256, s.digest[:], nil, trustOf(ts))
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestAttackUpstreamBatchBounds: a batch is sent at MaxBatch callers, so
// callers beyond it wait for a batch of their own; a caller that gives up
// returns at once with its context's error, and the others of its batch
// still get their stamps; Close sends the batch pending and its callers
// get their stamps, not silence; a Stamp after Close is refused.
func TestAttackUpstreamBatchBounds(t *testing.T) {
	good := newCriticalEKUTSA(t, "ecdsa")
	release := make(chan struct{})
	calls := make(chan int, 16)
	url := craftedUpstream(t, func(w http.ResponseWriter, r *timestamp.Request) {
		calls <- 1
		<-release
		writeDER(w, tokenFor(t, good, r, nil))
	})
	u, err := NewUpstream(UpstreamConfig{URLs: []string{url}, Trust: trustOf(good), Window: time.Hour, MaxBatch: 4, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		i   int
		s   *Stamp
		err error
	}
	results := make(chan result, 6)
	ctxs := make([]context.Context, 6)
	cancels := make([]context.CancelFunc, 6)
	for i := range 6 {
		ctxs[i], cancels[i] = context.WithCancel(context.Background())
		defer cancels[i]()
	}
	stamp := func(i int) {
		d := sha256.Sum256([]byte{byte(i)})
		s, err := u.Stamp(ctxs[i], crypto.SHA256, d[:])
		if err == nil {
			err = VerifyStamp(s, crypto.SHA256, d[:])
		}
		results <- result{i, s, err}
	}
	for i := range 4 { // the fourth fills the batch: it is sent at once
		go stamp(i)
	}
	select {
	case <-calls:
	case <-time.After(10 * time.Second):
		t.Fatal("a full batch was not sent")
	}
	// Two more wait in the next batch, for the hour's window.
	go stamp(4)
	go stamp(5)
	deadline := time.Now().Add(10 * time.Second)
	for {
		u.mu.Lock()
		n := len(u.pending)
		u.mu.Unlock()
		if n == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d pending, want 2", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancels[0]() // gives up while its batch is in flight
	if r := <-results; r.i != 0 || !errors.Is(r.err, context.Canceled) {
		t.Fatalf("the caller that gave up: %d %v", r.i, r.err)
	}
	close(release)
	closed := make(chan struct{})
	go func() { u.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(20 * time.Second):
		t.Fatal("Close did not return")
	}
	got := map[int]bool{}
	for range 5 {
		r := <-results
		if r.err != nil {
			t.Fatalf("caller %d: %v", r.i, r.err)
		}
		if want := map[bool]int{true: 4, false: 2}[r.i < 4]; r.s.Size != want {
			t.Fatalf("caller %d in a batch of %d, want %d", r.i, r.s.Size, want)
		}
		got[r.i] = true
	}
	if len(got) != 5 || len(calls) != 1 {
		t.Fatalf("stamps for %v and %d more upstream calls; want callers 1-5 and one call for the batch pending at Close", got, len(calls))
	}
	d := sha256.Sum256([]byte("late"))
	if _, err := u.Stamp(context.Background(), crypto.SHA256, d[:]); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Fatalf("a stamp after Close: %v", err)
	}
}

// twoSignerToken is a granted TimeStampResp for r whose SignedData has
// two signers, the TSA and another key certified for time-stamping: the
// TSTInfo is the one the TSA would issue.
func twoSignerToken(t *testing.T, tsaA, tsaB *testTSA, r *timestamp.Request) []byte {
	t.Helper()
	one, err := timestamp.Parse(func() []byte {
		var resp struct {
			Status struct{ Status int }
			Token  asn1.RawValue
		}
		asn1.Unmarshal(tokenFor(t, tsaA, r, nil), &resp)
		return resp.Token.FullBytes
	}())
	if err != nil {
		t.Fatal(err)
	}
	var p7 struct {
		ContentType asn1.ObjectIdentifier
		SD          struct {
			Version int
			Algs    asn1.RawValue
			Encap   struct {
				ContentType asn1.ObjectIdentifier
				Content     []byte `asn1:"explicit,tag:0"`
			}
		} `asn1:"explicit,tag:0"`
	}
	if _, err := asn1.Unmarshal(one.RawToken, &p7); err != nil {
		t.Fatal(err)
	}
	sd, err := pkcs7.NewSignedData(p7.SD.Encap.Content)
	if err != nil {
		t.Fatal(err)
	}
	sd.SetContentType(oidTSTInfo)
	for _, ts := range []*testTSA{tsaA, tsaB} {
		h := sha256.Sum256(ts.cert.Raw)
		ess, _ := asn1.Marshal(struct{ Certs []struct{ CertHash []byte } }{Certs: []struct{ CertHash []byte }{{h[:]}}})
		if err := sd.AddSigner(ts.cert, ts.key, pkcs7.SignerInfoConfig{ExtraSignedAttributes: []pkcs7.Attribute{{Type: oidSigningCertificateV2, Value: asn1.RawValue{FullBytes: ess}}}}); err != nil {
			t.Fatal(err)
		}
	}
	der, err := sd.Finish()
	if err != nil {
		t.Fatal(err)
	}
	resp, err := asn1.Marshal(struct {
		Status struct{ Status int }
		Token  asn1.RawValue
	}{Token: asn1.RawValue{FullBytes: der}})
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// TestAttackUpstreamTwoSigners: a token signed twice, by the trusted TSA
// and by another key, is refused.
func TestAttackUpstreamTwoSigners(t *testing.T) {
	a := newCriticalEKUTSA(t, "ecdsa")
	// b's CA has a's name: b's certificate gets another serial, so that
	// each signer names its own certificate.
	eku, _ := asn1.Marshal([]asn1.ObjectIdentifier{oidTimeStamping})
	b := newTestTSA(t, "ecdsa", func(c *x509.Certificate) {
		c.SerialNumber = big.NewInt(3)
		c.ExtKeyUsage = nil
		c.ExtraExtensions = []pkix.Extension{{Id: oidExtKeyUsage, Critical: true, Value: eku}}
	})
	url := craftedUpstream(t, func(w http.ResponseWriter, r *timestamp.Request) { writeDER(w, twoSignerToken(t, a, b, r)) })
	roots := x509.NewCertPool()
	roots.AddCert(a.ca)
	roots.AddCert(b.ca)
	u, err := NewUpstream(UpstreamConfig{URLs: []string{url}, Trust: Trust{Roots: roots}})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	d := sha256.Sum256([]byte("x"))
	if _, err := u.Stamp(context.Background(), crypto.SHA256, d[:]); !errors.Is(err, ErrToken) || !strings.Contains(err.Error(), "2 signers") {
		t.Fatalf("got %v, want a rejection naming 2 signers", err)
	}
}

// TestAttackIssueHostileDER: what POST /tsa may carry, garbage nested
// deep or beyond the size limit, is an RFC 3161 rejection at once.
func TestAttackIssueHostileDER(t *testing.T) {
	is := newCriticalEKUTSA(t, "ecdsa").issuer(t, syncedClock)
	nested := []byte{0x30, 0}
	for len(nested) < MaxRequestSize-8 {
		nested, _ = asn1.Marshal(asn1.RawValue{Tag: asn1.TagSequence, IsCompound: true, Bytes: nested})
	}
	for _, c := range []struct {
		name string
		der  []byte
		fail timestamp.FailureInfo
	}{
		{"nested to the size limit", nested, timestamp.BadDataFormat},
		{"indefinite lengths", append(bytes.Repeat([]byte{0x30, 0x80}, MaxRequestSize/4), bytes.Repeat([]byte{0, 0}, MaxRequestSize/4)...), timestamp.BadDataFormat},
		{"one byte over", make([]byte, MaxRequestSize+1), timestamp.BadRequest},
		{"a length of 2^32", []byte{0x30, 0x84, 0xff, 0xff, 0xff, 0xff}, timestamp.BadDataFormat},
	} {
		t.Run(c.name, func(t *testing.T) {
			start := time.Now()
			resp, issued, err := is.Issue(context.Background(), c.der)
			var r *Refusal
			if issued != nil || !errors.As(err, &r) || r.FailInfo != c.fail {
				t.Fatalf("issued %v, err %v; want a refusal %v", issued, err, c.fail)
			}
			if st, _ := status(t, resp); st != int(timestamp.Rejection) {
				t.Fatalf("status %d", st)
			}
			if took := time.Since(start); took > 100*time.Millisecond {
				t.Fatalf("took %s", took)
			}
		})
	}
}
