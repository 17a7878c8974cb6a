package tsa

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/digitorus/timestamp"

	"github.com/hsmsigner/hsmsigner/signer/merkle"
)

// Defaults of UpstreamConfig.
const (
	DefaultUpstreamTimeout   = 10 * time.Second
	DefaultUpstreamMaxSize   = 64 << 10
	DefaultMaxBatch          = 1024
	DefaultUnhealthyAfter    = 10 * time.Minute
	DefaultUpstreamMaxSkew   = time.Minute
	maxBatchSizesRemembered  = 64
	upstreamNonceBits        = 64
	upstreamRequestMediaType = "application/timestamp-query"
)

// UpstreamConfig configures the client of the external TSAs.
type UpstreamConfig struct {
	// URLs are the TSAs, tried in order until one answers with a token
	// that verifies.
	URLs []string
	// Timeout bounds one request to one TSA.
	Timeout time.Duration
	// MaxResponseSize bounds a TSA's answer.
	MaxResponseSize int64
	// Trust is what the TSAs' tokens must chain to.
	Trust Trust
	// Policy, if set, is asked of the TSA.
	Policy asn1.ObjectIdentifier
	// Window batches the requests that arrive within it into one upstream
	// call over the Merkle root of their digests; 0 sends each alone.
	Window time.Duration
	// MaxBatch sends a batch at once when it holds this many requests.
	MaxBatch int
	// UnhealthyAfter is how long without an upstream answer before
	// Health reports the mode unhealthy.
	UnhealthyAfter time.Duration
	// MaxSkew bounds how far a token's genTime may lie before the
	// request was sent or after its answer came (0 means
	// DefaultUpstreamMaxSkew): a token signed at another time is not
	// the answer to this request (a replay, or a TSA whose clock is
	// off), and a key whose certificate expired long ago can still
	// sign a token that verifies at a genTime of its choosing.
	MaxSkew time.Duration
	// Transport replaces the HTTP transport (tests).
	Transport http.RoundTripper
}

// Stamp is an upstream time-stamp for one digest.
type Stamp struct {
	// Response is the TSA's TimeStampResp, DER, verified.
	Response []byte
	// Token is what it says.
	Token *timestamp.Timestamp
	// Batched stamps: the token's imprint is the SHA-256 of the Merkle
	// root (merkle.SignedDigest) of Size digests; this one is leaf Index
	// with inclusion proof Proof. Size is 0 for a stamp of the digest
	// alone.
	Index, Size int
	Proof       []merkle.Hash
}

// VerifyStamp checks that s covers digest: the token's imprint is the
// digest itself, or, batched, the root the proof leads to from it.
// (The token itself was verified when it came.)
func VerifyStamp(s *Stamp, hash crypto.Hash, digest []byte) error {
	if s.Size == 0 {
		if s.Token.HashAlgorithm != hash || !bytes.Equal(s.Token.HashedMessage, digest) {
			return fmt.Errorf("%w: the token is for another imprint", ErrToken)
		}
		return nil
	}
	root, err := merkle.RootFromProof(digest, s.Index, s.Size, s.Proof)
	if err != nil {
		return fmt.Errorf("%w: inclusion proof: %v", ErrToken, err)
	}
	want, err := merkle.SignedDigest(root, crypto.SHA256)
	if err != nil {
		return err
	}
	if s.Token.HashAlgorithm != crypto.SHA256 || !bytes.Equal(s.Token.HashedMessage, want) {
		return fmt.Errorf("%w: the inclusion proof does not lead to the stamped root", ErrToken)
	}
	return nil
}

// UpstreamHealth is what the upstream mode reports.
type UpstreamHealth struct {
	Healthy     bool
	LastSuccess time.Time
	LastError   string
	LastErrorAt time.Time
	// Calls counts the requests sent upstream, Stamps the stamps given.
	Calls, Stamps uint64
	// BatchSizes are the sizes of the last batches sent.
	BatchSizes []int
}

type waiter struct {
	hash   crypto.Hash
	digest []byte
	done   chan batchResult
}

type batchResult struct {
	stamp *Stamp
	err   error
}

// Upstream is the client of the external TSAs. It is safe for concurrent
// use; Close it when done.
type Upstream struct {
	cfg    UpstreamConfig
	client *http.Client

	mu      sync.Mutex
	pending []*waiter
	timer   *time.Timer
	health  UpstreamHealth
	// failingSince is the first failure since the last success; zero
	// while the last call succeeded (or none was made).
	failingSince time.Time
	closed       bool
	flights      sync.WaitGroup
}

// NewUpstream returns the client of cfg.URLs.
func NewUpstream(cfg UpstreamConfig) (*Upstream, error) {
	if len(cfg.URLs) == 0 {
		return nil, errors.New("tsa upstream: no URL")
	}
	if cfg.Trust.Roots == nil {
		return nil, errors.New("tsa upstream: no trust anchors for the TSAs' tokens")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultUpstreamTimeout
	}
	if cfg.MaxResponseSize <= 0 {
		cfg.MaxResponseSize = DefaultUpstreamMaxSize
	}
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = DefaultMaxBatch
	}
	if cfg.UnhealthyAfter <= 0 {
		cfg.UnhealthyAfter = DefaultUnhealthyAfter
	}
	if cfg.MaxSkew <= 0 {
		cfg.MaxSkew = DefaultUpstreamMaxSkew
	}
	tr := cfg.Transport
	if tr == nil {
		tr = &http.Transport{Proxy: nil, DialContext: (&net.Dialer{Timeout: cfg.Timeout}).DialContext, ResponseHeaderTimeout: cfg.Timeout, MaxIdleConnsPerHost: 4}
	}
	return &Upstream{cfg: cfg,
		client: &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}, nil
}

// Stamp has digest (of hash) stamped upstream, alone or in the batch of
// the current window, and returns the verified stamp.
func (u *Upstream) Stamp(ctx context.Context, hash crypto.Hash, digest []byte) (*Stamp, error) {
	if !hash.Available() || hash == crypto.SHA1 || len(digest) != hash.Size() {
		return nil, fmt.Errorf("tsa upstream: a %v digest of %d bytes", hash, len(digest))
	}
	if u.cfg.Window <= 0 {
		s, err := u.send(ctx, hash, digest)
		if err == nil {
			u.mu.Lock()
			u.health.Stamps++
			u.mu.Unlock()
		}
		return s, err
	}
	w := &waiter{hash: hash, digest: bytes.Clone(digest), done: make(chan batchResult, 1)}
	u.mu.Lock()
	if u.closed {
		u.mu.Unlock()
		return nil, errors.New("tsa upstream: closed")
	}
	u.pending = append(u.pending, w)
	switch {
	case len(u.pending) >= u.cfg.MaxBatch:
		u.flushLocked()
	case len(u.pending) == 1:
		u.timer = time.AfterFunc(u.cfg.Window, func() {
			u.mu.Lock()
			defer u.mu.Unlock()
			u.flushLocked()
		})
	}
	u.mu.Unlock()
	select {
	case r := <-w.done:
		return r.stamp, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// flushLocked sends the pending batch on a goroutine of its own.
func (u *Upstream) flushLocked() {
	if u.timer != nil {
		u.timer.Stop()
		u.timer = nil
	}
	batch := u.pending
	u.pending = nil
	if len(batch) == 0 {
		return
	}
	u.flights.Add(1)
	go func() {
		defer u.flights.Done()
		u.sendBatch(batch)
	}()
}

// sendBatch stamps the Merkle root of the batch's digests and gives each
// waiter the token and its inclusion proof.
func (u *Upstream) sendBatch(batch []*waiter) {
	leaves := make([][]byte, len(batch))
	for i, w := range batch {
		leaves[i] = w.digest
	}
	fail := func(err error) {
		for _, w := range batch {
			w.done <- batchResult{err: err}
		}
	}
	tree, err := merkle.New(leaves)
	if err != nil {
		fail(err)
		return
	}
	imprint, err := merkle.SignedDigest(tree.Root(), crypto.SHA256)
	if err != nil {
		fail(err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(len(u.cfg.URLs))*u.cfg.Timeout)
	defer cancel()
	s, err := u.send(ctx, crypto.SHA256, imprint)
	u.mu.Lock()
	u.health.BatchSizes = append(u.health.BatchSizes, len(batch))
	if n := len(u.health.BatchSizes); n > maxBatchSizesRemembered {
		u.health.BatchSizes = u.health.BatchSizes[n-maxBatchSizesRemembered:]
	}
	if err == nil {
		u.health.Stamps += uint64(len(batch))
	}
	u.mu.Unlock()
	if err != nil {
		fail(err)
		return
	}
	for i, w := range batch {
		proof, err := tree.Proof(i)
		if err != nil {
			w.done <- batchResult{err: err}
			continue
		}
		w.done <- batchResult{stamp: &Stamp{Response: s.Response, Token: s.Token, Index: i, Size: len(batch), Proof: proof}}
	}
}

// send asks the TSAs in turn for a token over (hash, digest) and returns
// the first that verifies.
func (u *Upstream) send(ctx context.Context, hash crypto.Hash, digest []byte) (*Stamp, error) {
	nonce, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), upstreamNonceBits))
	if err != nil {
		return nil, err
	}
	req, err := (&timestamp.Request{HashAlgorithm: hash, HashedMessage: digest, Nonce: nonce, Certificates: true, TSAPolicyOID: u.cfg.Policy}).Marshal()
	if err != nil {
		return nil, fmt.Errorf("tsa upstream: encoding the request: %w", err)
	}
	var errs []error
	for _, url := range u.cfg.URLs {
		sent := time.Now()
		resp, err := u.post(ctx, url, req)
		if err == nil {
			var tok *timestamp.Timestamp
			tok, err = VerifyResponse(resp, hash, digest, nonce, u.cfg.Trust)
			if err == nil {
				err = u.checkAnswer(tok, sent, time.Now())
			}
			if err == nil {
				u.mu.Lock()
				u.health.Calls++
				u.health.LastSuccess = time.Now()
				u.failingSince = time.Time{}
				u.mu.Unlock()
				return &Stamp{Response: resp, Token: tok}, nil
			}
		}
		err = fmt.Errorf("TSA %s: %w", url, err)
		errs = append(errs, err)
		u.mu.Lock()
		u.health.Calls++
		u.health.LastError, u.health.LastErrorAt = err.Error(), time.Now()
		u.mu.Unlock()
		if ctx.Err() != nil {
			break
		}
	}
	u.mu.Lock()
	if u.failingSince.IsZero() {
		u.failingSince = time.Now()
	}
	u.mu.Unlock()
	return nil, fmt.Errorf("tsa upstream: no TSA gave a token that verifies: %w", errors.Join(errs...))
}

// checkAnswer checks what VerifyResponse does not know: the token's
// genTime lies between sent and received, give or take MaxSkew, and its
// policy is the one asked for, if any.
func (u *Upstream) checkAnswer(tok *timestamp.Timestamp, sent, received time.Time) error {
	if tok.Time.Before(sent.Add(-u.cfg.MaxSkew)) || tok.Time.After(received.Add(u.cfg.MaxSkew)) {
		return fmt.Errorf("%w: genTime %s is not within %s of the request (sent %s, answered %s)", ErrToken,
			tok.Time.UTC().Format(time.RFC3339Nano), u.cfg.MaxSkew, sent.UTC().Format(time.RFC3339Nano), received.UTC().Format(time.RFC3339Nano))
	}
	if len(u.cfg.Policy) > 0 && !tok.Policy.Equal(u.cfg.Policy) {
		return fmt.Errorf("%w: the token's policy %s is not the one asked, %s", ErrToken, tok.Policy, u.cfg.Policy)
	}
	return nil
}

func (u *Upstream) post(ctx context.Context, url string, req []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, u.cfg.Timeout)
	defer cancel()
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(req))
	if err != nil {
		return nil, err
	}
	hr.Header.Set("Content-Type", upstreamRequestMediaType)
	resp, err := u.client.Do(hr)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("HTTP %s", resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, u.cfg.MaxResponseSize+1))
	if err != nil {
		return nil, err
	}
	if int64(len(body)) > u.cfg.MaxResponseSize {
		return nil, fmt.Errorf("answer larger than %d bytes", u.cfg.MaxResponseSize)
	}
	return body, nil
}

// Health reports the mode unhealthy once every TSA has failed, with no
// success since, for UnhealthyAfter (as X-Road's acceptable timestamp
// failure period), with the last error and the batch sizes seen.
func (u *Upstream) Health() UpstreamHealth {
	u.mu.Lock()
	defer u.mu.Unlock()
	h := u.health
	h.BatchSizes = append([]int(nil), h.BatchSizes...)
	h.Healthy = u.failingSince.IsZero() || time.Since(u.failingSince) < u.cfg.UnhealthyAfter
	return h
}

// Close sends what is pending and waits for the batches in flight.
func (u *Upstream) Close() {
	u.mu.Lock()
	u.closed = true
	u.flushLocked()
	u.mu.Unlock()
	u.flights.Wait()
}
