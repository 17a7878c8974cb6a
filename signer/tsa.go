package signer

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"sync"

	"github.com/digitorus/timestamp"

	"github.com/hsmsigner/hsmsigner/signer/audit"
	"github.com/hsmsigner/hsmsigner/signer/config"
	"github.com/hsmsigner/hsmsigner/tsa"
)

// tsaService is the built-in time-stamping authority: a tsa.Issuer over
// the TSA key, made again after each change to the certificates.
type tsaService struct {
	cfg   tsa.Config
	key   string // configured key id, "" for the one TSA key with a certificate
	clock tsa.ClockSource

	mu     sync.Mutex
	issuer *tsa.Issuer // nil until a request finds a fit certificate
}

// setupTSA prepares the built-in TSA from [tsa]; it serves once a key of
// usage tsa has an active certificate fit for time-stamping.
func (s *Service) setupTSA() error {
	tc := s.cfg.TSA
	if len(tc.Upstream.URLs) > 0 {
		return errors.New("[tsa.upstream]: this release does not serve the upstream mode yet; leave urls empty")
	}
	if !tc.Enabled {
		return nil
	}
	c := tsa.Config{Accuracy: tc.Accuracy, SkipClockCheck: !tc.RequireSyncedClock}
	var err error
	if c.Policy, err = config.ParseOID(tc.Policy); err != nil {
		return err
	}
	for _, p := range tc.AcceptedPolicies {
		oid, err := config.ParseOID(p)
		if err != nil {
			return err
		}
		c.AcceptedPolicies = append(c.AcceptedPolicies, oid)
	}
	for _, h := range tc.Hashes {
		c.Hashes = append(c.Hashes, map[string]crypto.Hash{"SHA256": crypto.SHA256, "SHA384": crypto.SHA384, "SHA512": crypto.SHA512}[h])
	}
	if c.SkipClockCheck {
		s.log.Warn("TSA clock guard OFF ([tsa] require_synced_clock = false): time-stamps are issued whatever the kernel says of the clock; never in production")
	}
	s.tsa = &tsaService{cfg: c, key: tc.Key, clock: tsa.KernelClock{}}
	s.OnCertificatesChanged(s.tsa.forget)
	return nil
}

// forget drops the issuer; the next request makes it again from the
// certificates as they are now.
func (t *tsaService) forget() {
	t.mu.Lock()
	t.issuer = nil
	t.mu.Unlock()
}

// tsaIssuer returns the issuer, making it from the TSA key's newest
// active certificate when needed, or why there is none. Only an issuer is
// kept: why there is none (a token logged out, say) is found again at the
// next request, so the TSA serves as soon as it can.
func (s *Service) tsaIssuer(ctx context.Context) (*tsa.Issuer, error) {
	t := s.tsa
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.issuer != nil {
		return t.issuer, nil
	}
	certs, err := s.CertificatesOf(ctx, UsageTSA)
	if err != nil {
		return nil, err
	}
	var problems []string
	for _, kc := range certs {
		if t.key != "" && kc.KeyID != t.key {
			continue
		}
		sig, err := s.KeySigner(ctx, Actor{Op: "tsa.sign"}, kc.KeyID, UsageTSA)
		if err != nil {
			problems = append(problems, kc.SHA256+": "+err.Error())
			continue
		}
		is, err := tsa.NewIssuer(t.cfg, sig, kc.Certificate, kc.Chain, t.clock)
		if err != nil {
			problems = append(problems, kc.SHA256+": "+err.Error())
			continue
		}
		t.issuer = is
		return is, nil
	}
	which := "no key of usage tsa"
	if t.key != "" {
		which = "key " + t.key + " (usage tsa)"
	}
	return nil, fmt.Errorf("the TSA does not serve: %s has no active certificate fit for time-stamping %v", which, problems)
}

// serveTSA answers POST /tsa: an RFC 3161 TimeStampReq in, a
// TimeStampResp out. A refusal of a readable request is an RFC 3161
// rejection; each token and each refusal is audited.
func (s *Service) serveTSA(w http.ResponseWriter, r *http.Request) {
	if s.tsa == nil {
		http.Error(w, "the time-stamping authority is turned off ([tsa] enabled = false)", http.StatusNotFound)
		return
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/timestamp-query" {
		http.Error(w, "want Content-Type application/timestamp-query", http.StatusUnsupportedMediaType)
		return
	}
	req, err := io.ReadAll(io.LimitReader(r.Body, tsa.MaxRequestSize+1))
	if err != nil {
		http.Error(w, "reading the request: "+err.Error(), http.StatusBadRequest)
		return
	}
	ctx := r.Context()
	var resp []byte
	var issued *tsa.Issued
	is, ierr := s.tsaIssuer(ctx)
	if ierr != nil {
		resp, _ = timestamp.CreateErrorResponse(timestamp.Rejection, timestamp.SystemFailure)
		err = ierr
	} else {
		resp, issued, err = is.Issue(ctx, req)
	}
	rec := audit.Record{Op: "tsa.issue"}
	if issued != nil {
		rec.Detail = issued.String()
	}
	if aerr := s.audited(ctx, self(), rec, err); issued != nil && aerr != nil {
		// No token leaves without its line.
		resp, _ = timestamp.CreateErrorResponse(timestamp.Rejection, timestamp.SystemFailure)
	}
	if resp == nil {
		http.Error(w, "time-stamping failed", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/timestamp-reply")
	_, _ = w.Write(resp)
}
