package ocsp

import (
	"bytes"
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"maps"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	xocsp "golang.org/x/crypto/ocsp"
)

// fixedSource is a Source whose subjects a test sets.
type fixedSource struct {
	mu       sync.Mutex
	subjects []Subject
}

func (s *fixedSource) Subjects(context.Context) ([]Subject, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Subject(nil), s.subjects...), nil
}

func (s *fixedSource) set(subjects ...Subject) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.subjects = subjects
}

// memStore is a Store in memory.
type memStore struct {
	mu sync.Mutex
	m  map[[32]byte][]byte
}

func newMemStore() *memStore { return &memStore{m: map[[32]byte][]byte{}} }

func (s *memStore) LoadOCSPResponses(context.Context) (map[[32]byte][]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.m), nil
}

func (s *memStore) SaveOCSPResponse(_ context.Context, c [32]byte, der []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m[c] = bytes.Clone(der)
	return nil
}

func (s *memStore) DeleteOCSPResponse(_ context.Context, c [32]byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, c)
	return nil
}

func (s *memStore) get(c [32]byte) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[c]
}

// runWatcher starts w and stops it when the test ends.
func runWatcher(t *testing.T, w *Watcher) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Run: %v", err)
		}
	})
	select {
	case <-w.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("watcher not ready within 10 s")
	}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// waitFor polls cond until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, d)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func statusOf(t *testing.T, w *Watcher, cert *x509.Certificate) CertStatus {
	t.Helper()
	h := sha256.Sum256(cert.Raw)
	for _, s := range w.Statuses() {
		if s.SHA256 == h {
			return s
		}
	}
	t.Fatalf("certificate %s not in Statuses", cert.Subject)
	return CertStatus{}
}

// TestFaultyResponderRejectedAndFailover puts, for each fault, a faulty
// responder first and a good one second: the fault is counted with its
// reason and the good one's response is used. Then the good one goes
// down too: the previous good response stays in service.
func TestFaultyResponderRejectedAndFailover(t *testing.T) {
	root := newRoot(t, "Root")
	ca := newIntermediate(t, "Issuing CA", root)
	other := newIntermediate(t, "Other CA", root)
	now := time.Now()
	noEKU := newDelegate(t, ca, false, now.Add(-time.Hour), now.Add(time.Hour))
	foreign := newDelegate(t, other, true, now.Add(-time.Hour), now.Add(time.Hour))

	closed := newResponder(t, ca)
	closed.srv.Close()
	cases := []struct {
		name    string
		setup   func(r *responder, cert *x509.Certificate)
		url     func(r *responder) string
		nonce   bool
		reason  string // in the last error once both responders fail
		outcome string // the fetch outcome counted for the faulty one
	}{
		{name: "down", url: func(*responder) string { return closed.URL() }, reason: "unreachable", outcome: "fetch_error"},
		{name: "slow past the timeout", setup: func(r *responder, c *x509.Certificate) {
			r.set(c, answer{status: xocsp.Good})
			r.setDelay(2 * time.Second)
		}, reason: "within", outcome: "fetch_error"},
		{name: "HTTP 500", setup: func(r *responder, _ *x509.Certificate) {
			r.setHandler(func(w http.ResponseWriter, _ *http.Request, _ []byte) { http.Error(w, "boom", 500) })
		}, reason: "HTTP 500", outcome: "fetch_error"},
		{name: "garbage body", setup: func(r *responder, _ *x509.Certificate) {
			r.setHandler(func(w http.ResponseWriter, _ *http.Request, _ []byte) { w.Write([]byte("garbage")) })
		}, reason: "(parse)", outcome: "rejected_parse"},
		{name: "oversized body", setup: func(r *responder, _ *x509.Certificate) {
			r.setHandler(func(w http.ResponseWriter, _ *http.Request, _ []byte) { w.Write(make([]byte, 4096)) })
		}, reason: "larger than 2048 bytes", outcome: "fetch_error"},
		{name: "wrong CertID", setup: func(r *responder, c *x509.Certificate) {
			r.set(c, answer{status: xocsp.Good, issuer: other, signer: ca})
		}, reason: "(certid)", outcome: "rejected_certid"},
		{name: "signed by an unauthorised key", setup: func(r *responder, c *x509.Certificate) {
			r.set(c, answer{status: xocsp.Good, signer: foreign, embed: true})
		}, reason: "(responder)", outcome: "rejected_responder"},
		{name: "delegated responder without OCSPSigning", setup: func(r *responder, c *x509.Certificate) {
			r.set(c, answer{status: xocsp.Good, signer: noEKU, embed: true})
		}, reason: "id-kp-OCSPSigning", outcome: "rejected_responder"},
		{name: "thisUpdate too old", setup: func(r *responder, c *x509.Certificate) {
			r.set(c, answer{status: xocsp.Good, thisUpdate: time.Now().Add(-3 * time.Hour), nextUpdate: time.Now().Add(time.Hour)})
		}, reason: "(too_old)", outcome: "rejected_too_old"},
		{name: "thisUpdate in the future", setup: func(r *responder, c *x509.Certificate) {
			r.set(c, answer{status: xocsp.Good, thisUpdate: time.Now().Add(time.Hour)})
		}, reason: "(this_update_future)", outcome: "rejected_this_update_future"},
		{name: "nextUpdate passed", setup: func(r *responder, c *x509.Certificate) {
			r.set(c, answer{status: xocsp.Good, thisUpdate: time.Now().Add(-10 * time.Minute), nextUpdate: time.Now().Add(-time.Minute)})
		}, reason: "(next_update_passed)", outcome: "rejected_next_update_passed"},
		{name: "nonce mismatch", nonce: true, setup: func(r *responder, c *x509.Certificate) {
			r.set(c, answer{status: xocsp.Good, nonce: []byte("not the nonce sent")})
		}, reason: "(nonce)", outcome: "rejected_nonce"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			faulty, good := newResponder(t, ca), newResponder(t, ca)
			cert := newLeaf(t, "member "+c.name, ca)
			if c.setup != nil {
				c.setup(faulty, cert)
			}
			good.set(cert, answer{status: xocsp.Good, echoNonce: true})
			faultyURL := faulty.URL()
			if c.url != nil {
				faultyURL = c.url(faulty)
			}
			w, err := NewWatcher(&fixedSource{subjects: []Subject{{cert, ca.cert}}}, nil, Options{
				FetchLimits: FetchLimits{ReadTimeout: 300 * time.Millisecond, MaxResponseSize: 2048},
				Responders: func(*x509.Certificate) []Responder {
					return []Responder{{URL: faultyURL, Nonce: c.nonce}, {URL: good.URL(), Nonce: c.nonce}}
				},
				StartSpread: -1,
			})
			if err != nil {
				t.Fatal(err)
			}
			runWatcher(t, w)
			ctx := testCtx(t)
			if err := w.RefreshNow(ctx); err != nil {
				t.Fatal(err)
			}
			s := statusOf(t, w, cert)
			if !s.Usable || s.Status != "good" || s.Responder != good.URL() {
				t.Fatalf("after failover: %+v, want good from the second responder", s)
			}
			if n := w.Fetches()[[2]string{faultyURL, c.outcome}]; n != 1 {
				t.Fatalf("fetches %v, want one %q from the faulty responder", w.Fetches(), c.outcome)
			}
			// Now the good responder fails as well: the previous good
			// response is kept, and the error says what went wrong.
			good.setHandler(func(w http.ResponseWriter, _ *http.Request, _ []byte) { http.Error(w, "down", 503) })
			if err := w.RefreshNow(ctx); err != nil {
				t.Fatal(err)
			}
			s = statusOf(t, w, cert)
			if !s.Usable || s.Status != "good" {
				t.Fatalf("previous good response not kept: %+v", s)
			}
			if !strings.Contains(s.LastError, c.reason) || !strings.Contains(s.LastError, "HTTP 503") {
				t.Fatalf("last error %q, want %q and the second responder's HTTP 503", s.LastError, c.reason)
			}
			if _, err := w.Usable(sha256.Sum256(cert.Raw)); err != nil {
				t.Fatalf("Usable: %v", err)
			}
		})
	}
}

// TestGETAndNonce checks an RFC 5019 GET request and a nonce the
// responder echoes.
func TestGETAndNonce(t *testing.T) {
	ca := newRoot(t, "CA")
	r := newResponder(t, ca)
	cert := newLeaf(t, "member", ca, r.URL())
	r.set(cert, answer{status: xocsp.Good, echoNonce: true})
	w, err := NewWatcher(&fixedSource{subjects: []Subject{{cert, ca.cert}}}, nil, Options{
		Responders: func(*x509.Certificate) []Responder {
			return []Responder{{URL: r.URL(), Method: MethodGET, Nonce: true}}
		},
		StartSpread: -1,
	})
	if err != nil {
		t.Fatal(err)
	}
	runWatcher(t, w)
	if err := w.RefreshNow(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if s := statusOf(t, w, cert); !s.Usable {
		t.Fatalf("GET with nonce: %+v", s)
	}
	if n := requestNonce(t, r.lastRequest()); len(n) != NonceSize {
		t.Fatalf("request nonce %x, want %d bytes", n, NonceSize)
	}
}

// TestRevokedAndUnknownNotUsable checks that a revoked or unknown status
// makes the certificate unusable, with the reason, and that an older
// "good" response handed over later does not undo a revocation.
func TestRevokedAndUnknownNotUsable(t *testing.T) {
	ca := newRoot(t, "CA")
	r := newResponder(t, ca)
	cert := newLeaf(t, "member", ca, r.URL())
	h := sha256.Sum256(cert.Raw)
	oldGood := respond(t, cert, ca, answer{status: xocsp.Good, thisUpdate: time.Now().Add(-10 * time.Minute).Truncate(time.Second)}, nil)
	w, err := NewWatcher(&fixedSource{subjects: []Subject{{cert, ca.cert}}}, nil, Options{StartSpread: -1})
	if err != nil {
		t.Fatal(err)
	}
	runWatcher(t, w)
	ctx := testCtx(t)
	for _, c := range []struct {
		status int
		reason string
	}{{xocsp.Unknown, "answered unknown"}, {xocsp.Revoked, "revoked"}} {
		r.set(cert, answer{status: c.status})
		if err := w.RefreshNow(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := w.Usable(h); !errors.Is(err, ErrUnusable) || !strings.Contains(err.Error(), c.reason) {
			t.Fatalf("status %d: Usable %v, want unusable with %q", c.status, err, c.reason)
		}
	}
	if !w.Revoked(h) {
		t.Fatal("Revoked false after a revoked response")
	}
	if _, err := w.Put(ctx, h, oldGood); err != nil {
		t.Fatalf("Put of an older good response: %v (it verifies; it just must not replace)", err)
	}
	if !w.Revoked(h) {
		t.Fatal("an older good response undid the revocation")
	}
}

// TestRestartServesStoredResponses checks that a second watcher on the
// same store serves the stored response before any fetch, with its
// responder down, and drops a stored response that is no longer fresh.
func TestRestartServesStoredResponses(t *testing.T) {
	ca := newRoot(t, "CA")
	r := newResponder(t, ca)
	fresh := newLeaf(t, "fresh", ca, r.URL())
	stale := newLeaf(t, "stale", ca, r.URL())
	r.set(fresh, answer{status: xocsp.Good})
	store := newMemStore()
	src := &fixedSource{subjects: []Subject{{fresh, ca.cert}, {stale, ca.cert}}}
	opts := Options{StartSpread: 5 * time.Second}
	w1, err := NewWatcher(src, store, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w1.Run(ctx) }()
	<-w1.Ready()
	if err := w1.RefreshNow(testCtx(t), sha256.Sum256(fresh.Raw)); err != nil {
		t.Fatal(err)
	}
	cancel()
	<-done
	if store.get(sha256.Sum256(fresh.Raw)) == nil {
		t.Fatal("the fetched response was not stored")
	}
	// A stored response for "stale" that is no longer fresh.
	staleH := sha256.Sum256(stale.Raw)
	store.SaveOCSPResponse(ctx, staleH, respond(t, stale, ca, answer{status: xocsp.Good, thisUpdate: time.Now().Add(-2 * time.Hour), nextUpdate: time.Now().Add(time.Hour)}, nil))

	r.setHandler(func(w http.ResponseWriter, _ *http.Request, _ []byte) { http.Error(w, "down", 503) })
	w2, err := NewWatcher(src, store, opts)
	if err != nil {
		t.Fatal(err)
	}
	runWatcher(t, w2)
	if _, err := w2.Usable(sha256.Sum256(fresh.Raw)); err != nil {
		t.Fatalf("restart does not serve the stored response: %v", err)
	}
	if s := statusOf(t, w2, fresh); s.Responder != "store" {
		t.Fatalf("served from %q, want the store", s.Responder)
	}
	if store.get(staleH) != nil {
		t.Fatal("a stored response that is no longer fresh was kept")
	}
	if _, err := w2.Usable(staleH); !errors.Is(err, ErrUnusable) {
		t.Fatalf("stale stored response: Usable %v, want ErrUnusable", err)
	}
}

// TestPutVerifiesHandedOverResponses checks SetOCSPResponses' path: a
// response for the certificate is accepted and served; one for another
// certificate, or signed by someone the issuer did not authorise, is
// refused and changes nothing.
func TestPutVerifiesHandedOverResponses(t *testing.T) {
	ca := newRoot(t, "CA")
	rogue := newRoot(t, "Rogue")
	cert := newLeaf(t, "member", ca)
	another := newLeaf(t, "another", ca)
	h := sha256.Sum256(cert.Raw)
	w, err := NewWatcher(&fixedSource{subjects: []Subject{{cert, ca.cert}}}, newMemStore(), Options{StartSpread: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	runWatcher(t, w)
	ctx := testCtx(t)
	for _, c := range []struct {
		name string
		der  []byte
		want Check
	}{
		{"for another certificate", respond(t, another, ca, answer{status: xocsp.Good}, nil), CheckParse},
		{"from an untrusted signer", respond(t, cert, ca, answer{status: xocsp.Good, signer: rogue}, nil), CheckSignature},
	} {
		if _, err := w.Put(ctx, h, c.der); CheckOf(err) != c.want {
			t.Fatalf("%s: Put %v, want check %q", c.name, err, c.want)
		}
		if _, err := w.Usable(h); !errors.Is(err, ErrUnusable) {
			t.Fatalf("%s: a refused response made the certificate usable", c.name)
		}
	}
	if _, err := w.Put(ctx, sha256.Sum256(another.Raw), respond(t, another, ca, answer{status: xocsp.Good}, nil)); !errors.Is(err, ErrNotWatched) {
		t.Fatalf("Put for an unwatched certificate: %v", err)
	}
	good := respond(t, cert, ca, answer{status: xocsp.Good}, nil)
	if _, err := w.Put(ctx, h, good); err != nil {
		t.Fatal(err)
	}
	r, err := w.Usable(h)
	if err != nil || !bytes.Equal(r.Raw, good) {
		t.Fatalf("handed-over response not served: %v", err)
	}
}

// TestResyncFollowsTheSource checks that certificates added to or removed
// from the source are watched or dropped after Resync, without a restart.
func TestResyncFollowsTheSource(t *testing.T) {
	ca := newRoot(t, "CA")
	r := newResponder(t, ca)
	a, b := newLeaf(t, "a", ca, r.URL()), newLeaf(t, "b", ca, r.URL())
	r.set(a, answer{status: xocsp.Good})
	r.set(b, answer{status: xocsp.Good})
	src := &fixedSource{subjects: []Subject{{a, ca.cert}}}
	w, err := NewWatcher(src, nil, Options{StartSpread: -1})
	if err != nil {
		t.Fatal(err)
	}
	runWatcher(t, w)
	hb := sha256.Sum256(b.Raw)
	if _, ok := w.Lookup(hb[:]); ok {
		t.Fatal("b watched before it was added")
	}
	src.set(Subject{a, ca.cert}, Subject{b, ca.cert})
	w.Resync()
	waitFor(t, 10*time.Second, "b fetched after Resync", func() bool { _, err := w.Usable(hb); return err == nil })
	src.set(Subject{b, ca.cert})
	w.Resync()
	ha := sha256.Sum256(a.Raw)
	waitFor(t, 10*time.Second, "a dropped after Resync", func() bool { _, err := w.Usable(ha); return errors.Is(err, ErrNotWatched) })
	// SHA-1 lookup, as X-Road names certificates.
	if got, ok := w.Lookup(sha1Of(b.Raw)); !ok || got != hb {
		t.Fatal("b not found by its SHA-1")
	}
}

// TestManyCertificatesBoundedInFlight watches 200 certificates: every one
// gets a response, never more requests are in flight than MaxInFlight,
// and the first fetches are spread out rather than sent at once.
func TestManyCertificatesBoundedInFlight(t *testing.T) {
	ca := newRoot(t, "CA")
	r := newResponder(t, ca)
	r.setDelay(5 * time.Millisecond)
	var subjects []Subject
	for range 200 {
		c := newLeaf(t, "member", ca, r.URL())
		r.set(c, answer{status: xocsp.Good})
		subjects = append(subjects, Subject{c, ca.cert})
	}
	const bound = 4
	w, err := NewWatcher(&fixedSource{subjects: subjects}, nil, Options{MaxInFlight: bound, StartSpread: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	runWatcher(t, w)
	waitFor(t, time.Minute, "all 200 usable", func() bool {
		for _, s := range w.Statuses() {
			if !s.Usable {
				return false
			}
		}
		return true
	})
	if m := r.maxSeen.Load(); m > bound || m < 1 {
		t.Fatalf("%d requests in flight at most, bound %d", m, bound)
	}
	if r.requests.Load() != 200 {
		t.Fatalf("%d requests for 200 certificates", r.requests.Load())
	}
	if el := time.Since(start); el < 500*time.Millisecond {
		t.Fatalf("all first fetches done in %s: not spread over the 1 s start window", el)
	}
}

// TestValidateRefusesRefreshLongerThanFreshness checks the configuration
// rule: a refresh interval that could let a response go stale is refused
// with a message saying why.
func TestValidateRefusesRefreshLongerThanFreshness(t *testing.T) {
	for _, c := range []struct {
		o    Options
		want string
	}{
		{Options{MaxRefreshInterval: time.Hour}, "not shorter than the freshness window"},
		{Options{Policy: Policy{Freshness: 20 * time.Minute}, MaxRefreshInterval: 30 * time.Minute}, "could go stale"},
		{Options{Policy: Policy{Freshness: 8 * time.Minute}}, "retry backoff"},
		{Options{MaxRefreshInterval: 20 * time.Minute}, ""},
	} {
		err := c.o.Validate()
		if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%+v: %v, want %q", c.o, err, c.want)
		}
	}
}

// TestNextRefresh checks the schedule: the earlier of half the validity
// and half the freshness window after thisUpdate, less up to a tenth of
// jitter, never sooner than MinRefresh.
func TestNextRefresh(t *testing.T) {
	w, err := NewWatcher(&fixedSource{}, nil, Options{})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		name       string
		this, next time.Time
		lo, hi     time.Time
	}{
		{"validity longer than freshness", now, now.Add(24 * time.Hour), now.Add(27 * time.Minute), now.Add(30 * time.Minute)},
		{"short validity", now, now.Add(10 * time.Minute), now.Add(4*time.Minute + 30*time.Second), now.Add(5 * time.Minute)},
		{"no nextUpdate", now, time.Time{}, now.Add(27 * time.Minute), now.Add(30 * time.Minute)},
		{"already due: floor", now.Add(-50 * time.Minute), now.Add(time.Hour), now.Add(DefaultMinRefresh), now.Add(DefaultMinRefresh)},
	} {
		for range 50 {
			got := w.nextRefresh(&Response{ThisUpdate: c.this, NextUpdate: c.next}, now)
			if got.Before(c.lo) || got.After(c.hi) {
				t.Fatalf("%s: next refresh %v, want in [%v, %v]", c.name, got, c.lo, c.hi)
			}
		}
	}
}

func sha1Of(b []byte) []byte {
	h := sha1.Sum(b)
	return h[:]
}

// TestRevocationIsKept checks that a verified "revoked" is not lost: not
// to a good response with the same or a later thisUpdate (a lagging
// responder, a response produced in the same second), only lifted by a
// later good response when the revocation was a certificateHold; not
// when the stored revoked response has aged past the freshness window by
// a restart with the responder down; not when the certificate stops
// being watched and is watched again (deactivated and reactivated).
func TestRevocationIsKept(t *testing.T) {
	ca := newRoot(t, "CA")
	r := newResponder(t, ca)
	down := func(w http.ResponseWriter, _ *http.Request, _ []byte) { http.Error(w, "down", 503) }
	tu := time.Now().Add(-10 * time.Minute).Truncate(time.Second)

	t.Run("a good response never undoes a revocation", func(t *testing.T) {
		for _, c := range []struct {
			name      string
			hold      bool
			goodAt    time.Time
			revokedOK bool // still revoked after the good response
		}{
			{"same thisUpdate", false, tu, true},
			{"later thisUpdate", false, tu.Add(time.Minute), true},
			{"hold, same thisUpdate", true, tu, true},
			{"hold, later thisUpdate lifts it", true, tu.Add(time.Minute), false},
		} {
			t.Run(c.name, func(t *testing.T) {
				cert := newLeaf(t, "member", ca)
				h := sha256.Sum256(cert.Raw)
				w, err := NewWatcher(&fixedSource{subjects: []Subject{{cert, ca.cert}}}, nil, Options{StartSpread: time.Hour})
				if err != nil {
					t.Fatal(err)
				}
				runWatcher(t, w)
				ctx := testCtx(t)
				if _, err := w.Put(ctx, h, respond(t, cert, ca, answer{status: xocsp.Revoked, hold: c.hold, thisUpdate: tu}, nil)); err != nil || !w.Revoked(h) {
					t.Fatalf("Put revoked: %v, Revoked %v", err, w.Revoked(h))
				}
				if _, err := w.Put(ctx, h, respond(t, cert, ca, answer{status: xocsp.Good, thisUpdate: c.goodAt}, nil)); err != nil {
					t.Fatalf("Put good: %v (it verifies)", err)
				}
				if got := w.Revoked(h); got != c.revokedOK {
					t.Fatalf("Revoked %v after the good response, want %v", got, c.revokedOK)
				}
			})
		}
	})

	t.Run("restart with an aged revoked response and the responder down", func(t *testing.T) {
		cert := newLeaf(t, "member", ca, r.URL())
		h := sha256.Sum256(cert.Raw)
		r.setHandler(down)
		t.Cleanup(func() { r.setHandler(nil) })
		store := newMemStore()
		aged := respond(t, cert, ca, answer{status: xocsp.Revoked, thisUpdate: time.Now().Add(-3 * time.Hour), nextUpdate: time.Now().Add(-2 * time.Hour)}, nil)
		store.SaveOCSPResponse(testCtx(t), h, aged)
		w, err := NewWatcher(&fixedSource{subjects: []Subject{{cert, ca.cert}}}, store, Options{StartSpread: -1})
		if err != nil {
			t.Fatal(err)
		}
		runWatcher(t, w)
		if !w.Revoked(h) {
			t.Fatal("a stored revocation was forgotten at start because the response aged")
		}
		if store.get(h) == nil {
			t.Fatal("the stored revocation was deleted")
		}
		if _, err := w.Usable(h); !errors.Is(err, ErrUnusable) {
			t.Fatalf("Usable %v, want ErrUnusable", err)
		}
	})

	t.Run("unwatched and watched again with the responder down", func(t *testing.T) {
		cert := newLeaf(t, "member", ca, r.URL())
		h := sha256.Sum256(cert.Raw)
		store := newMemStore()
		src := &fixedSource{subjects: []Subject{{cert, ca.cert}}}
		w, err := NewWatcher(src, store, Options{StartSpread: -1})
		if err != nil {
			t.Fatal(err)
		}
		runWatcher(t, w)
		r.set(cert, answer{status: xocsp.Revoked})
		if err := w.RefreshNow(testCtx(t), h); err != nil || !w.Revoked(h) {
			t.Fatalf("RefreshNow: %v, Revoked %v", err, w.Revoked(h))
		}
		r.setHandler(down)
		t.Cleanup(func() { r.setHandler(nil) })
		src.set()
		w.Resync()
		waitFor(t, 10*time.Second, "certificate unwatched", func() bool { _, ok := w.Lookup(h[:]); return !ok })
		src.set(Subject{cert, ca.cert})
		w.Resync()
		waitFor(t, 10*time.Second, "certificate watched again", func() bool { _, ok := w.Lookup(h[:]); return ok })
		if !w.Revoked(h) {
			t.Fatal("the revocation was forgotten when the certificate was watched again")
		}
		if store.get(h) == nil {
			t.Fatal("the stored revocation was deleted when the certificate stopped being watched")
		}
	})
}

// gatedStore is a memStore whose first SaveOCSPResponse tells saving and
// waits for release before it stores.
type gatedStore struct {
	*memStore
	once    sync.Once
	saving  chan struct{}
	release chan struct{}
}

func (s *gatedStore) SaveOCSPResponse(ctx context.Context, c [32]byte, der []byte) error {
	first := false
	s.once.Do(func() { first = true })
	if first {
		close(s.saving)
		<-s.release
	}
	return s.memStore.SaveOCSPResponse(ctx, c, der)
}

// TestUnwatchedDuringSaveLeavesNothingStored checks the race of a refresh
// with a Resync that drops its certificate (deactivated while its
// response was being stored): the store does not keep a response for a
// certificate no longer watched.
func TestUnwatchedDuringSaveLeavesNothingStored(t *testing.T) {
	ca := newRoot(t, "CA")
	r := newResponder(t, ca)
	cert := newLeaf(t, "member", ca, r.URL())
	h := sha256.Sum256(cert.Raw)
	r.set(cert, answer{status: xocsp.Good})
	store := &gatedStore{memStore: newMemStore(), saving: make(chan struct{}), release: make(chan struct{})}
	src := &fixedSource{subjects: []Subject{{cert, ca.cert}}}
	w, err := NewWatcher(src, store, Options{StartSpread: -1})
	if err != nil {
		t.Fatal(err)
	}
	runWatcher(t, w)
	select {
	case <-store.saving:
	case <-time.After(10 * time.Second):
		t.Fatal("the first response was not stored within 10 s")
	}
	src.set()
	w.Resync()
	waitFor(t, 10*time.Second, "certificate unwatched", func() bool { _, ok := w.Lookup(h[:]); return !ok })
	close(store.release)
	waitFor(t, 5*time.Second, "no stored response for the unwatched certificate", func() bool { return store.get(h) == nil })
}
