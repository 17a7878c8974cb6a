package ocsp

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha1" //nolint:gosec // certificates are also looked up by SHA-1, as X-Road does
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net/http"
	"sort"
	"sync"
	"time"

	xocsp "golang.org/x/crypto/ocsp"
)

// Subject is one certificate to watch, with the certificate that issued
// it.
type Subject struct {
	Cert   *x509.Certificate
	Issuer *x509.Certificate
}

// Source gives the certificates to watch. The Watcher reads it at start
// and after each Resync.
type Source interface {
	Subjects(ctx context.Context) ([]Subject, error)
}

// Store keeps verified responses across restarts, by certificate SHA-256.
type Store interface {
	LoadOCSPResponses(ctx context.Context) (map[[32]byte][]byte, error)
	SaveOCSPResponse(ctx context.Context, cert [32]byte, der []byte) error
	DeleteOCSPResponse(ctx context.Context, cert [32]byte) error
}

// Default schedule values of Options.
const (
	DefaultMaxInFlight  = 8
	DefaultRetryMin     = 10 * time.Second
	DefaultRetryMax     = 5 * time.Minute
	DefaultMinRefresh   = 30 * time.Second
	DefaultStartSpread  = 5 * time.Second
	defaultJitterFactor = 0.1
)

// Options configure a Watcher. Zero values mean the defaults.
type Options struct {
	Policy
	FetchLimits
	// Responders, when it returns a non-empty list for an issuer, is
	// asked instead of the certificate's AIA OCSP URLs, in order.
	Responders func(issuer *x509.Certificate) []Responder
	// MaxRefreshInterval, if set, caps the time between two refreshes of
	// a certificate; it must be shorter than the freshness window.
	MaxRefreshInterval time.Duration
	// MaxInFlight bounds the requests in flight at once, over all
	// responders.
	MaxInFlight int
	// RetryMin and RetryMax bound the backoff after a failed refresh.
	RetryMin, RetryMax time.Duration
	// MinRefresh is the shortest time between two fetches for one
	// certificate, whatever the response's validity.
	MinRefresh time.Duration
	// StartSpread spreads the first fetches of certificates that have no
	// response over this long, so a thousand certificates do not hit a
	// responder at once.
	StartSpread time.Duration
	// Transport replaces the HTTP transport (tests).
	Transport http.RoundTripper
	// Now replaces the clock (tests).
	Now func() time.Time
	// Log receives refresh failures and refusals; nil discards them.
	Log *slog.Logger
}

// Validate refuses options under which a response could go stale before
// its refresh.
func (o Options) Validate() error {
	f := o.freshness()
	if o.MaxRefreshInterval > 0 && o.MaxRefreshInterval >= f {
		return fmt.Errorf("OCSP refresh interval %s is not shorter than the freshness window %s: a response could go stale before it is refreshed", o.MaxRefreshInterval, f)
	}
	retryMax := o.RetryMax
	if retryMax <= 0 {
		retryMax = DefaultRetryMax
	}
	if retryMax >= f/2 {
		return fmt.Errorf("OCSP retry backoff up to %s is not shorter than half the freshness window %s: a failing responder would leave no second try before responses go stale", retryMax, f)
	}
	for _, r := range o.TrustedResponders {
		if r == nil {
			return errors.New("OCSP trusted responder: no certificate")
		}
	}
	return nil
}

func (o Options) withDefaults() Options {
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = DefaultMaxInFlight
	}
	if o.RetryMin <= 0 {
		o.RetryMin = DefaultRetryMin
	}
	if o.RetryMax <= 0 {
		o.RetryMax = DefaultRetryMax
	}
	if o.MinRefresh <= 0 {
		o.MinRefresh = DefaultMinRefresh
	}
	if o.StartSpread < 0 {
		o.StartSpread = 0
	} else if o.StartSpread == 0 {
		o.StartSpread = DefaultStartSpread
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return o
}

// entry is the watcher's state for one certificate.
type entry struct {
	subject Subject
	sha256  [32]byte
	sha1    [20]byte

	current   *Response // the newest verified response, any status
	responder string    // who gave current ("store" or "client" when not fetched)
	fetchedAt time.Time // when current was installed
	lastGood  time.Time // when the newest good response was installed

	lastAttempt time.Time
	lastErr     error
	lastErrAt   time.Time
	failures    int
	next        time.Time
	running     bool
	waiters     []chan struct{} // closed when the refresh under way ends
}

// Watcher keeps a fresh, verified response for every certificate its
// Source gives. Create it with NewWatcher and run it with Run.
type Watcher struct {
	src   Source
	store Store
	opts  Options
	f     *fetcher
	sem   chan struct{}
	kick  chan struct{} // a refresh is due earlier than the timer says
	sync  chan struct{} // the source changed
	ready chan struct{} // closed once the store and source are loaded
	prime sync.Once     // loads them, once (Prime or Run)

	mu       sync.Mutex
	bySHA256 map[[32]byte]*entry
	bySHA1   map[[20]byte][32]byte
	fetches  map[fetchKey]uint64
	// revoked holds the revoked responses of certificates not watched
	// now (deactivated, or stored for a certificate not yet known), by
	// certificate SHA-256: a revocation is not forgotten when its
	// certificate is watched again. They are kept in the store too.
	revoked map[[32]byte][]byte

	// storeMu orders the store's writes: a response is saved only while
	// its certificate is watched (checked under storeMu), and a dropped
	// certificate's response is deleted under storeMu, after it left
	// bySHA256; so a save never lands after the delete.
	storeMu sync.Mutex

	rndMu sync.Mutex // rnd is used with and without mu held
	rnd   *mrand.Rand
}

type fetchKey struct{ responder, outcome string }

// NewWatcher returns a Watcher of src's certificates that keeps responses
// in store (nil for none). It refuses options Validate refuses.
func NewWatcher(src Source, store Store, opts Options) (*Watcher, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	opts = opts.withDefaults()
	var seed [16]byte
	_, _ = rand.Read(seed[:])
	w := &Watcher{
		src:      src,
		store:    store,
		opts:     opts,
		f:        newFetcher(opts.FetchLimits, opts.Transport),
		sem:      make(chan struct{}, opts.MaxInFlight),
		kick:     make(chan struct{}, 1),
		sync:     make(chan struct{}, 1),
		ready:    make(chan struct{}),
		bySHA256: map[[32]byte]*entry{},
		bySHA1:   map[[20]byte][32]byte{},
		fetches:  map[fetchKey]uint64{},
		revoked:  map[[32]byte][]byte{},
		rnd:      mrand.New(mrand.NewChaCha8([32]byte(append(seed[:], seed[:]...)))),
	}
	return w, nil
}

// Resync makes the watcher read its Source again at once: call it after
// every change to the set of certificates. It never blocks.
func (w *Watcher) Resync() {
	select {
	case w.sync <- struct{}{}:
	default:
	}
}

// Prime loads the stored responses and reads the source, once, so that
// the stored responses are served before Run starts (a service calls it
// before it takes requests); Run primes the watcher itself otherwise.
func (w *Watcher) Prime(ctx context.Context) {
	w.prime.Do(func() {
		w.resync(ctx, w.loadStore(ctx))
		close(w.ready)
	})
}

// Ready is closed once Run has loaded the stored responses and read the
// source for the first time.
func (w *Watcher) Ready() <-chan struct{} { return w.ready }

// Run loads the stored responses, reads the source and keeps every
// certificate's response fresh until ctx is done. It returns ctx's error
// after every refresh under way has ended.
func (w *Watcher) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	w.Prime(ctx)
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		for _, e := range w.due() {
			wg.Add(1)
			go func() {
				defer wg.Done()
				w.refresh(ctx, e)
			}()
		}
		timer.Reset(w.untilNext())
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-w.sync:
			w.resync(ctx, nil)
		case <-w.kick:
		case <-timer.C:
		}
	}
}

// loadStore reads the stored responses; they are installed by resync once
// their certificates are known.
func (w *Watcher) loadStore(ctx context.Context) map[[32]byte][]byte {
	if w.store == nil {
		return nil
	}
	stored, err := w.store.LoadOCSPResponses(ctx)
	if err != nil {
		w.opts.Log.Error("OCSP: cannot load stored responses; fetching all", "error", err.Error())
		return nil
	}
	return stored
}

// resync reads the source and makes the watched set what it says: new
// certificates are added (with their stored response when it is still
// valid, else due for a first fetch soon), removed ones are dropped.
func (w *Watcher) resync(ctx context.Context, stored map[[32]byte][]byte) {
	subjects, err := w.src.Subjects(ctx)
	if err != nil {
		w.opts.Log.Error("OCSP: cannot read the certificates to watch; keeping the current set", "error", err.Error())
		return
	}
	now := w.opts.Now()
	want := map[[32]byte]Subject{}
	for _, s := range subjects {
		if s.Cert == nil || s.Issuer == nil {
			continue
		}
		want[sha256.Sum256(s.Cert.Raw)] = s
	}
	var drop [][32]byte
	w.mu.Lock()
	for h, e := range w.bySHA256 {
		if _, ok := want[h]; !ok {
			delete(w.bySHA256, h)
			delete(w.bySHA1, e.sha1)
			if e.current != nil && e.current.Status == StatusRevoked {
				w.revoked[h] = e.current.Raw // kept, in the store too
			} else {
				drop = append(drop, h)
			}
		}
	}
	for h, s := range want {
		if _, ok := w.bySHA256[h]; ok {
			continue
		}
		e := &entry{subject: s, sha256: h, sha1: sha1.Sum(s.Cert.Raw)}
		e.next = now.Add(w.jitter(w.opts.StartSpread))
		der, ok := stored[h]
		if !ok {
			der, ok = w.revoked[h]
		}
		if ok {
			r, err := Verify(der, s.Cert, s.Issuer, w.opts.Policy, now, nil)
			if err != nil {
				// A revocation does not age: an old revoked response
				// still says the certificate is revoked.
				if rr, rerr := VerifyRevocation(der, s.Cert, s.Issuer, w.opts.Policy, now); rerr == nil {
					r, err = rr, nil
				}
			}
			if err == nil {
				e.current, e.responder, e.fetchedAt = r, "store", now
				if r.Status == StatusGood {
					e.lastGood = now
				}
				e.next = w.nextRefresh(r, now)
			} else {
				w.opts.Log.Info("OCSP: stored response no longer usable; fetching a new one", "cert", hex.EncodeToString(h[:]), "error", err.Error())
				drop = append(drop, h)
			}
			delete(stored, h)
			delete(w.revoked, h)
		}
		if err := s.Cert.CheckSignatureFrom(s.Issuer); err != nil {
			e.lastErr, e.lastErrAt = fmt.Errorf("the issuer given did not sign this certificate: %w", err), now
		}
		w.bySHA256[h] = e
		w.bySHA1[e.sha1] = h
	}
	for h, der := range stored { // stored for certificates not watched
		if r, err := xocsp.ParseResponse(der, nil); err == nil && r.Status == xocsp.Revoked {
			// Verified when its certificate is watched again.
			w.revoked[h] = der
			continue
		}
		drop = append(drop, h)
	}
	w.mu.Unlock()
	if w.store != nil {
		w.storeMu.Lock()
		defer w.storeMu.Unlock()
		for _, h := range drop {
			if err := w.store.DeleteOCSPResponse(ctx, h); err != nil {
				w.opts.Log.Warn("OCSP: cannot delete a stored response", "cert", hex.EncodeToString(h[:]), "error", err.Error())
			}
		}
	}
}

// due marks the entries whose refresh time has come as running and
// returns them.
func (w *Watcher) due() []*entry {
	now := w.opts.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []*entry
	for _, e := range w.bySHA256 {
		if !e.running && !e.next.After(now) {
			e.running = true
			out = append(out, e)
		}
	}
	return out
}

// untilNext is how long until the next refresh is due.
func (w *Watcher) untilNext() time.Duration {
	now := w.opts.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	d := time.Hour
	for _, e := range w.bySHA256 {
		if !e.running {
			d = min(d, max(e.next.Sub(now), 0))
		}
	}
	return d
}

// refresh asks e's responders in turn until one gives a response Verify
// accepts, installs it and schedules the next refresh.
func (w *Watcher) refresh(ctx context.Context, e *entry) {
	var errs []error
	var got *Response
	var from string
	for _, r := range w.responders(e.subject) {
		resp, err := w.ask(ctx, e.subject, r)
		w.countFetch(r.URL, err)
		if err != nil {
			errs = append(errs, err)
			w.opts.Log.Warn("OCSP: responder failed", "cert", hex.EncodeToString(e.sha256[:]), "responder", r.URL, "error", err.Error())
			if ctx.Err() != nil {
				break
			}
			continue
		}
		got, from = resp, r.URL
		break
	}
	if got == nil && len(errs) == 0 {
		errs = append(errs, fmt.Errorf("certificate %q names no OCSP responder and none is configured for its issuer", e.subject.Cert.Subject))
	}
	now := w.opts.Now()
	w.mu.Lock()
	e.running = false
	e.lastAttempt = now
	for _, c := range e.waiters {
		close(c)
	}
	e.waiters = nil
	var save []byte
	installed := got != nil && w.installLocked(e, got, from, now)
	if installed {
		save = got.Raw
	}
	if got != nil {
		e.failures, e.lastErr = 0, nil
		if !installed && e.current.Status == StatusRevoked && got.Status != StatusRevoked {
			// Shown, not retried sooner: the responder contradicts a
			// verified revocation.
			e.lastErr, e.lastErrAt = fmt.Errorf("OCSP responder %s answered %s (thisUpdate %s) after a verified revocation; the certificate stays revoked",
				from, got.Status, got.ThisUpdate.UTC().Format(time.RFC3339)), now
		}
		e.next = w.nextRefresh(e.current, now)
	} else {
		e.failures++
		e.lastErr, e.lastErrAt = errors.Join(errs...), now
		backoff := min(w.opts.RetryMin<<min(e.failures-1, 16), w.opts.RetryMax)
		e.next = now.Add(backoff - w.jitter(backoff))
	}
	w.mu.Unlock()
	select {
	case w.kick <- struct{}{}:
	default:
	}
	if save != nil {
		w.save(ctx, e, save)
	}
}

// save stores der, e's current response, unless e stopped being watched
// meanwhile (a revoked response moved to w.revoked is stored all the
// same: it is kept).
func (w *Watcher) save(ctx context.Context, e *entry, der []byte) {
	if w.store == nil {
		return
	}
	w.storeMu.Lock()
	defer w.storeMu.Unlock()
	w.mu.Lock()
	keep := w.bySHA256[e.sha256] == e || bytes.Equal(w.revoked[e.sha256], der)
	w.mu.Unlock()
	if !keep {
		return
	}
	if err := w.store.SaveOCSPResponse(ctx, e.sha256, der); err != nil {
		w.opts.Log.Error("OCSP: cannot store a response; it is served from memory", "cert", hex.EncodeToString(e.sha256[:]), "error", err.Error())
	}
}

// ask sends one request to r and verifies the answer.
func (w *Watcher) ask(ctx context.Context, s Subject, r Responder) (*Response, error) {
	var nonce []byte
	if r.Nonce {
		nonce = make([]byte, NonceSize)
		if _, err := rand.Read(nonce); err != nil {
			return nil, fmt.Errorf("making a nonce: %w", err)
		}
	}
	req, err := Request(s.Cert, s.Issuer, nonce)
	if err != nil {
		return nil, err
	}
	select {
	case w.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	der, err := w.f.fetch(ctx, r, req)
	<-w.sem
	if err != nil {
		return nil, err
	}
	resp, err := Verify(der, s.Cert, s.Issuer, w.opts.Policy, w.opts.Now(), nonce)
	if err != nil {
		return nil, fmt.Errorf("OCSP responder %s: %w", r.URL, err)
	}
	return resp, nil
}

// installLocked makes r e's current response unless the current one is
// newer (a response never goes back in time: a replayed "good" cannot
// undo a "revoked") or says the certificate is revoked and r does not: a
// revocation is final (RFC 5280), and a responder that answers "good"
// after "revoked" is lagging or replayed; only a later response lifts a
// certificateHold. It reports whether r was installed.
func (w *Watcher) installLocked(e *entry, r *Response, from string, now time.Time) bool {
	if cur := e.current; cur != nil {
		if r.ThisUpdate.Before(cur.ThisUpdate) {
			return false
		}
		if cur.Status == StatusRevoked && r.Status != StatusRevoked &&
			(cur.RevocationReason != xocsp.CertificateHold || !r.ThisUpdate.After(cur.ThisUpdate)) {
			return false
		}
	}
	e.current, e.responder, e.fetchedAt = r, from, now
	if r.Status == StatusGood {
		e.lastGood = now
	}
	return true
}

// responders is whom to ask for s: the configured list for its issuer,
// else the certificate's AIA OCSP URLs, by POST without a nonce.
func (w *Watcher) responders(s Subject) []Responder {
	if w.opts.Responders != nil {
		if rs := w.opts.Responders(s.Issuer); len(rs) > 0 {
			return rs
		}
	}
	var rs []Responder
	for _, u := range s.Cert.OCSPServer {
		rs = append(rs, Responder{URL: u})
	}
	return rs
}

// nextRefresh is when to refresh after r was installed at now: the earlier
// of half r's validity and half the freshness window (and of the
// configured cap) after thisUpdate, made earlier by up to a tenth for
// jitter, and never sooner than MinRefresh from now.
func (w *Watcher) nextRefresh(r *Response, now time.Time) time.Time {
	interval := w.opts.freshness() / 2
	if !r.NextUpdate.IsZero() {
		interval = min(interval, r.NextUpdate.Sub(r.ThisUpdate)/2)
	}
	if w.opts.MaxRefreshInterval > 0 {
		interval = min(interval, w.opts.MaxRefreshInterval)
	}
	base := r.ThisUpdate
	if base.After(now) {
		base = now
	}
	next := base.Add(interval - w.jitter(time.Duration(float64(interval)*defaultJitterFactor)))
	return maxTime(next, now.Add(w.opts.MinRefresh))
}

// jitter returns a random duration in [0, d).
func (w *Watcher) jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	w.rndMu.Lock()
	defer w.rndMu.Unlock()
	return time.Duration(w.rnd.Int64N(int64(d)))
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// countFetch counts one fetch by responder and outcome.
func (w *Watcher) countFetch(responder string, err error) {
	outcome := "ok"
	var fe *FetchError
	switch {
	case err == nil:
	case errors.As(err, &fe):
		outcome = "fetch_error"
	case CheckOf(err) != "":
		outcome = "rejected_" + string(CheckOf(err))
	default:
		outcome = "error"
	}
	w.mu.Lock()
	w.fetches[fetchKey{responder, outcome}]++
	w.mu.Unlock()
}

// RefreshNow refreshes the certificates named (all of them if none) at
// once and waits until each refresh has ended or ctx is done. It returns
// an error naming a certificate that is not watched.
func (w *Watcher) RefreshNow(ctx context.Context, certs ...[32]byte) error {
	w.mu.Lock()
	if len(certs) == 0 {
		for h := range w.bySHA256 {
			certs = append(certs, h)
		}
	}
	var waits []chan struct{}
	for _, h := range certs {
		e, ok := w.bySHA256[h]
		if !ok {
			w.mu.Unlock()
			return fmt.Errorf("%w: %s", ErrNotWatched, hex.EncodeToString(h[:]))
		}
		c := make(chan struct{})
		e.waiters = append(e.waiters, c)
		waits = append(waits, c)
		if !e.running {
			e.next = time.Time{}
		}
	}
	w.mu.Unlock()
	select {
	case w.kick <- struct{}{}:
	default:
	}
	for _, c := range waits {
		select {
		case <-c:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// ErrNotWatched is returned for a certificate the watcher does not watch.
var ErrNotWatched = errors.New("certificate not watched for OCSP")

// ErrUnusable is in the chain of the error Usable returns for a watched
// certificate without a fresh good response.
var ErrUnusable = errors.New("no fresh good OCSP response")

// Usable returns the freshest good response for the certificate with the
// given SHA-256, if it is fresh now. Otherwise the error says why
// (ErrNotWatched, or ErrUnusable with the check that failed and when the
// last good response was fetched).
func (w *Watcher) Usable(cert [32]byte) (*Response, error) {
	now := w.opts.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	e, ok := w.bySHA256[cert]
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrNotWatched, hex.EncodeToString(cert[:]))
	}
	return w.usableLocked(e, now)
}

func (w *Watcher) usableLocked(e *entry, now time.Time) (*Response, error) {
	last := "no good response was ever fetched"
	if !e.lastGood.IsZero() {
		last = "the last good response was fetched at " + e.lastGood.UTC().Format(time.RFC3339)
	}
	lastErr := ""
	if e.lastErr != nil {
		lastErr = "; last error: " + e.lastErr.Error()
	}
	r := e.current
	switch {
	case r == nil:
		return nil, fmt.Errorf("%w: %s%s", ErrUnusable, last, lastErr)
	case r.Status == StatusRevoked:
		return nil, fmt.Errorf("%w: the certificate is revoked (since %s, reason %d)", ErrUnusable, r.RevokedAt.UTC().Format(time.RFC3339), r.RevocationReason)
	case r.Status != StatusGood:
		return nil, fmt.Errorf("%w: the responder answered %s; %s%s", ErrUnusable, r.Status, last, lastErr)
	}
	if stale := r.StaleAt(w.opts.Policy); !now.Before(stale) {
		check := CheckTooOld
		if !r.NextUpdate.IsZero() && !r.NextUpdate.After(now) {
			check = CheckNextUpdate
		}
		return nil, fmt.Errorf("%w (%s): the response went stale at %s; %s%s", ErrUnusable, check, stale.UTC().Format(time.RFC3339), last, lastErr)
	}
	return r, nil
}

// Revoked reports whether the newest verified response for the
// certificate says it is revoked.
func (w *Watcher) Revoked(cert [32]byte) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	e, ok := w.bySHA256[cert]
	return ok && e.current != nil && e.current.Status == StatusRevoked
}

// Lookup returns the SHA-256 of a watched certificate given its SHA-256
// or SHA-1 (hex, any case, as parsed bytes).
func (w *Watcher) Lookup(hash []byte) ([32]byte, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch len(hash) {
	case sha256.Size:
		h := [32]byte(hash)
		_, ok := w.bySHA256[h]
		return h, ok
	case sha1.Size:
		h, ok := w.bySHA1[[20]byte(hash)]
		return h, ok
	}
	return [32]byte{}, false
}

// Put verifies der as a response for the watched certificate and installs
// it when it is newer than the current one (a security server handing
// over a response it got from a peer). The response must pass Verify
// against the issuer the watcher knows; no nonce is required.
func (w *Watcher) Put(ctx context.Context, cert [32]byte, der []byte) (*Response, error) {
	now := w.opts.Now()
	w.mu.Lock()
	e, ok := w.bySHA256[cert]
	w.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrNotWatched, hex.EncodeToString(cert[:]))
	}
	r, err := Verify(der, e.subject.Cert, e.subject.Issuer, w.opts.Policy, now, nil)
	if err != nil {
		return nil, err
	}
	w.mu.Lock()
	installed := w.installLocked(e, r, "client", now)
	if installed {
		e.next = maxTime(now.Add(w.opts.MinRefresh), minTime(e.next, w.nextRefresh(r, now)))
	}
	w.mu.Unlock()
	if installed {
		w.save(ctx, e, r.Raw)
	}
	return r, nil
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// CertStatus is what the watcher knows of one certificate.
type CertStatus struct {
	SHA256  [32]byte
	Subject string
	Serial  string
	// Status is "good", "revoked", "unknown", or "none" before any
	// response was verified.
	Status                             string
	ThisUpdate, NextUpdate, ProducedAt time.Time
	// Responder gave the current response ("store" when it was loaded at
	// start, "client" when a security server handed it over).
	Responder   string
	LastFetch   time.Time
	LastGood    time.Time
	NextRefresh time.Time
	LastError   string
	LastErrorAt time.Time
	// StaleAt is when the current response stops being usable.
	StaleAt time.Time
	// StaleBeforeRefresh: the current response goes stale before the
	// next refresh is due (or there is none).
	StaleBeforeRefresh bool
	// Usable: a fresh good response is served now; otherwise Reason says
	// why not.
	Usable bool
	Reason string
}

// Statuses returns every watched certificate's status, ordered by
// subject and serial.
func (w *Watcher) Statuses() []CertStatus {
	now := w.opts.Now()
	w.mu.Lock()
	out := make([]CertStatus, 0, len(w.bySHA256))
	for _, e := range w.bySHA256 {
		s := CertStatus{
			SHA256:      e.sha256,
			Subject:     e.subject.Cert.Subject.String(),
			Serial:      e.subject.Cert.SerialNumber.Text(16),
			Status:      "none",
			Responder:   e.responder,
			LastFetch:   e.lastAttempt,
			LastGood:    e.lastGood,
			NextRefresh: e.next,
			LastErrorAt: e.lastErrAt,
		}
		if e.running {
			s.NextRefresh = now
		}
		if e.lastErr != nil {
			s.LastError = e.lastErr.Error()
		}
		if r := e.current; r != nil {
			s.Status = r.Status.String()
			s.ThisUpdate, s.NextUpdate, s.ProducedAt = r.ThisUpdate, r.NextUpdate, r.ProducedAt
			s.StaleAt = r.StaleAt(w.opts.Policy)
		}
		s.StaleBeforeRefresh = s.StaleAt.IsZero() || s.StaleAt.Before(s.NextRefresh)
		if _, err := w.usableLocked(e, now); err != nil {
			s.Reason = err.Error()
		} else {
			s.Usable = true
		}
		out = append(out, s)
	}
	w.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].Subject != out[j].Subject {
			return out[i].Subject < out[j].Subject
		}
		return out[i].Serial < out[j].Serial
	})
	return out
}

// Fetches returns the count of fetches by responder URL and outcome ("ok",
// "fetch_error", "rejected_<check>", "error").
func (w *Watcher) Fetches() map[[2]string]uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make(map[[2]string]uint64, len(w.fetches))
	for k, n := range w.fetches {
		out[[2]string{k.responder, k.outcome}] = n
	}
	return out
}
