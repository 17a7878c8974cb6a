package client

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
)

// DefaultStapleRefresh is how often a StapledCertificate asks signerd for
// the current OCSP response: signerd keeps it fresh, so asking is cheap
// and a minute keeps the staple close to the newest.
const DefaultStapleRefresh = time.Minute

// ErrNoStaple means signerd has no fresh good OCSP response for the
// certificate.
var ErrNoStaple = errors.New("no fresh good OCSP response for the certificate")

// StapledCertificate is a TLS certificate whose private key stays in the
// daemon's HSM and whose OCSP staple is the daemon's freshest good
// response, renewed in the background. Use GetCertificate in a
// tls.Config; Close it when done.
type StapledCertificate struct {
	c     *Client
	chain [][]byte
	leaf  *x509.Certificate
	hash  string
	sig   *Signer

	mu      sync.RWMutex
	cert    *tls.Certificate
	lastErr error
	expires time.Time // the staple's nextUpdate, zero when it has none

	stop chan struct{}
	done chan struct{}
	once sync.Once
}

// StapledCertificate returns a TLS certificate for chain (the leaf first,
// then its issuers) whose private key is the daemon's key keyID. The
// caller must be allowed to use the key and the leaf's OCSP response; it
// fails when the key is not the leaf's or when the daemon has no fresh
// good OCSP response for the leaf (ErrNoStaple). refresh is how often the
// staple is renewed (0: DefaultStapleRefresh); a renewal that fails keeps
// the staple in use until its nextUpdate, then drops it (see Err).
func (c *Client) StapledCertificate(ctx context.Context, keyID string, chain []*x509.Certificate, refresh time.Duration) (*StapledCertificate, error) {
	if len(chain) == 0 {
		return nil, errors.New("stapled certificate: no certificate given")
	}
	sig, err := c.Signer(ctx, keyID)
	if err != nil {
		return nil, err
	}
	leaf := chain[0]
	pub, ok := leaf.PublicKey.(interface{ Equal(x crypto.PublicKey) bool })
	if !ok || !pub.Equal(sig.Public()) {
		return nil, fmt.Errorf("stapled certificate: key %s is not the key of certificate %q", keyID, leaf.Subject)
	}
	sum := sha256.Sum256(leaf.Raw)
	sc := &StapledCertificate{c: c, leaf: leaf, hash: hex.EncodeToString(sum[:]), sig: sig, stop: make(chan struct{}), done: make(chan struct{})}
	for _, x := range chain {
		sc.chain = append(sc.chain, x.Raw)
	}
	if err := sc.renew(ctx); err != nil {
		return nil, err
	}
	if refresh <= 0 {
		refresh = DefaultStapleRefresh
	}
	go sc.run(refresh)
	return sc, nil
}

// renew asks the daemon for the current response and installs it.
func (sc *StapledCertificate) renew(ctx context.Context) error {
	r, err := sc.c.GetOCSPResponses(ctx, &signerv1.GetOCSPResponsesRequest{CertHashes: []string{sc.hash}})
	if err == nil && (len(r.GetResponses()) != 1 || len(r.GetResponses()[0].GetResponse()) == 0) {
		reason := "signerd gave no answer"
		if len(r.GetResponses()) == 1 {
			reason = r.GetResponses()[0].GetError()
		}
		err = fmt.Errorf("%w: %s", ErrNoStaple, reason)
	}
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if err != nil {
		sc.lastErr = err
		if sc.cert != nil && !sc.expires.IsZero() && time.Now().After(sc.expires) {
			// A staple past its nextUpdate is worse than none.
			c := *sc.cert
			c.OCSPStaple = nil
			sc.cert = &c
		}
		return err
	}
	item := r.GetResponses()[0]
	sc.cert = &tls.Certificate{Certificate: sc.chain, PrivateKey: sc.sig, Leaf: sc.leaf, OCSPStaple: item.GetResponse()}
	sc.expires = time.Time{}
	if item.GetNextUpdate() != nil {
		sc.expires = item.GetNextUpdate().AsTime()
	}
	sc.lastErr = nil
	return nil
}

func (sc *StapledCertificate) run(every time.Duration) {
	defer close(sc.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-sc.stop:
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), every)
			_ = sc.renew(ctx)
			cancel()
		}
	}
}

// GetCertificate returns the certificate with its current staple, for
// tls.Config.GetCertificate (and GetClientCertificate through Certificate).
func (sc *StapledCertificate) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return sc.Certificate(), nil
}

// Certificate returns the certificate with its current staple.
func (sc *StapledCertificate) Certificate() *tls.Certificate {
	sc.mu.RLock()
	defer sc.mu.RUnlock()
	return sc.cert
}

// Err returns why the last renewal failed, or nil when it worked.
func (sc *StapledCertificate) Err() error {
	sc.mu.RLock()
	defer sc.mu.RUnlock()
	return sc.lastErr
}

// Close stops the renewals.
func (sc *StapledCertificate) Close() {
	sc.once.Do(func() { close(sc.stop) })
	<-sc.done
}
