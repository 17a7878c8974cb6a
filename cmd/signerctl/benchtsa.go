package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/digitorus/timestamp"

	"github.com/hsmsigner/hsmsigner/hsm/sigalg"
)

// maxTSAReply bounds a TSA's answer read by bench --tsa; a token with a
// chain is a few KiB.
const maxTSAReply = 1 << 20

// tsaHashes are the imprint algorithms bench --tsa offers.
var tsaHashes = map[string]crypto.Hash{"sha256": crypto.SHA256, "sha384": crypto.SHA384, "sha512": crypto.SHA512}

// tsaTarget is where bench --tsa sends its requests: the URL to POST to
// and the client that reaches it.
type tsaTarget struct {
	url    string
	client *http.Client
	// parseMu serialises timestamp.ParseResponse: digitorus/pkcs7's
	// Parse (through ber2der) writes a package variable, encodeIndent,
	// and so is not safe for concurrent use.
	parseMu sync.Mutex
}

// newTSATarget reads an RFC 3161 URL: http://host:port/path (or https),
// or unix:/path/to/http.sock for POST /tsa on signerd's HTTP socket. The
// client keeps a connection per caller.
func newTSATarget(raw string, conns int) (*tsaTarget, error) {
	tr := &http.Transport{Proxy: nil, MaxIdleConnsPerHost: conns, ResponseHeaderTimeout: time.Minute}
	t := &tsaTarget{url: raw, client: &http.Client{Transport: tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
	switch {
	case strings.HasPrefix(raw, "unix:"):
		sock := strings.TrimPrefix(raw, "unix:")
		if sock == "" {
			return nil, fmt.Errorf("--tsa %q: name the socket, as unix:/path/to/http.sock", raw)
		}
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}
		t.url = "http://signerd/tsa"
	case strings.HasPrefix(raw, "http://"), strings.HasPrefix(raw, "https://"):
	default:
		return nil, fmt.Errorf("--tsa %q: use http://host:port/path, https://… or unix:/path/to/http.sock", raw)
	}
	return t, nil
}

// stamp asks the TSA for a token over digest (of hash) with a fresh
// nonce and checks the answer: it parses, is granted (the signature
// checked against the certificate it carries, when it carries one), and
// echoes the nonce and the imprint.
func (t *tsaTarget) stamp(ctx context.Context, hash crypto.Hash, digest []byte, certReq bool) error {
	nonce, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		return err
	}
	req, err := (&timestamp.Request{HashAlgorithm: hash, HashedMessage: digest, Nonce: nonce, Certificates: certReq}).Marshal()
	if err != nil {
		return fmt.Errorf("encoding the request: %w", err)
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, t.url, bytes.NewReader(req))
	if err != nil {
		return err
	}
	hr.Header.Set("Content-Type", "application/timestamp-query")
	resp, err := t.client.Do(hr)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxTSAReply+1))
	switch {
	case err != nil:
		return fmt.Errorf("reading the answer: %w", err)
	case resp.StatusCode != http.StatusOK:
		return fmt.Errorf("HTTP %s: %s", resp.Status, bytes.TrimSpace(body[:min(len(body), 200)]))
	case len(body) > maxTSAReply:
		return fmt.Errorf("an answer over %d bytes", maxTSAReply)
	}
	t.parseMu.Lock()
	ts, err := timestamp.ParseResponse(body)
	t.parseMu.Unlock()
	switch {
	case err != nil:
		return fmt.Errorf("not a granted token: %w", err)
	case ts.HashAlgorithm != hash || !bytes.Equal(ts.HashedMessage, digest):
		return fmt.Errorf("a token for another imprint (%v %x)", ts.HashAlgorithm, ts.HashedMessage)
	case ts.Nonce == nil || ts.Nonce.Cmp(nonce) != 0:
		return fmt.Errorf("a token with nonce %v, asked %v", ts.Nonce, nonce)
	case certReq && len(ts.Certificates) == 0:
		return errors.New("certReq was set, the token carries no certificate")
	}
	return nil
}

// benchTSA is bench --tsa: RFC 3161 requests for random digests sent to
// o.tsaURL by o.concurrency callers for o.duration, each answer checked;
// it prints tokens per second, the p50, p99 and largest latency, the
// errors and the first of them.
func (a *app) benchTSA(ctx context.Context, o benchOptions) error {
	hash, ok := tsaHashes[strings.ToLower(o.hash)]
	if !ok {
		return fmt.Errorf("--hash %q: use sha256, sha384 or sha512", o.hash)
	}
	if o.concurrency < 1 || o.duration <= 0 {
		return errors.New("--concurrency and --duration must be positive")
	}
	target, err := newTSATarget(o.tsaURL, o.concurrency)
	if err != nil {
		return err
	}
	defer target.client.CloseIdleConnections()
	fmt.Fprintf(a.stdout, "TSA %s, %s, cert-req %t, concurrency %d, %s\n", o.tsaURL, strings.ToLower(o.hash), o.certReq, o.concurrency, o.duration)
	o.batch = 1
	stamp := func(ctx context.Context, digests [][]byte) error {
		return target.stamp(ctx, hash, digests[0], o.certReq)
	}
	r := a.benchRun(ctx, "tsa", stamp, o, sigalg.Algorithm{Name: "tsa", Hash: hash}, o.duration, 0)
	fmt.Fprintf(a.stdout, "%10s %10s %10s %10s %10s %8s\n", "tokens", "tokens/s", "p50", "p99", "max", "errors")
	fmt.Fprintf(a.stdout, "%10d %10.1f %10s %10s %10s %8d\n", r.calls, float64(r.calls)/r.elapsed.Seconds(),
		r.percentile(0.50).Round(time.Microsecond), r.percentile(0.99).Round(time.Microsecond), r.percentile(1).Round(time.Microsecond), r.errs)
	if r.firstErr != nil {
		fmt.Fprintf(a.stdout, "first error: %s\n", oneLine(r.firstErr))
	}
	if r.calls == 0 && r.firstErr != nil {
		return fmt.Errorf("no token in %s: %w", o.duration, r.firstErr)
	}
	return nil
}
