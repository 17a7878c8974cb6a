package signer

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hsmsigner/hsmsigner/ocsp"
	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/audit"
	"github.com/hsmsigner/hsmsigner/signer/state"
)

// ErrOCSPOff is returned by the OCSP calls when [ocsp] enabled is false.
var ErrOCSPOff = errors.New("OCSP is turned off in the configuration ([ocsp] enabled = false)")

// Roles of a watched certificate, as GetOCSPStatus reports them.
const (
	ocspRoleSign         = "sign"
	ocspRoleAuth         = "auth"
	ocspRoleIntermediate = "intermediate"
)

// ocspWatch is the service's OCSP part: the watcher of every active sign
// and auth certificate and the intermediates of their chains, and what
// the service knows about each watched certificate.
type ocspWatch struct {
	w *ocsp.Watcher
	// issuers are the configured issuer certificates, for certificates
	// imported without their chain.
	issuers []*x509.Certificate
	// policy is what responses are verified under.
	policy ocsp.Policy

	mu sync.Mutex
	// roles says what each watched certificate is; chains lists, for a
	// member's certificate, the intermediates of its chain.
	roles  map[[32]byte]string
	chains map[[32]byte][][32]byte
	// keyCerts lists the watched certificates of each key, by token
	// serial and key id.
	keyCerts map[string][][32]byte
}

// certSource gives the OCSP watcher the certificates to watch; it is the
// service's ocsp.Source.
type certSource struct{ s *Service }

// Subjects lists every active sign and auth certificate with its issuer,
// and each intermediate of its chain with its own issuer, up to and not
// including a self-signed trust anchor. A certificate whose issuer is not
// known (imported without its chain, and no configured issuer fits) is
// left out: it cannot be checked, and so is never offered.
func (cs certSource) Subjects(ctx context.Context) ([]ocsp.Subject, error) {
	s := cs.s
	recs, err := s.store.ListCerts(ctx, state.CertFilter{})
	if err != nil {
		return nil, err
	}
	roles := map[[32]byte]string{}
	chains := map[[32]byte][][32]byte{}
	keyCerts := map[string][][32]byte{}
	var out []ocsp.Subject
	add := func(c, issuer *x509.Certificate, role string) [32]byte {
		h := sha256.Sum256(c.Raw)
		if _, ok := roles[h]; !ok {
			out = append(out, ocsp.Subject{Cert: c, Issuer: issuer})
			roles[h] = role
		}
		return h
	}
	for _, r := range recs {
		if !r.Active {
			continue
		}
		role := ""
		switch s.usageOf(ctx, r.Token, r.KeyID) {
		case UsageSign:
			role = ocspRoleSign
		case UsageAuth:
			role = ocspRoleAuth
		default:
			continue
		}
		cert, err := x509.ParseCertificate(r.DER)
		if err != nil {
			s.log.Warn("OCSP: a stored certificate does not parse; not watched", "cert", r.SHA256, "error", err.Error())
			continue
		}
		var chain []*x509.Certificate
		for _, der := range r.Chain {
			c, err := x509.ParseCertificate(der)
			if err != nil {
				break
			}
			chain = append(chain, c)
		}
		issuer := s.ocsp.issuerOf(cert, chain, 0)
		if issuer == nil {
			s.log.Warn("OCSP: no issuer known for a certificate (import it with its chain, or name the issuer in [ocsp] issuer_certs); it is not offered",
				"cert", r.SHA256, "subject", cert.Subject.String())
			continue
		}
		h := add(cert, issuer, role)
		keyCerts[r.Token+"/"+r.KeyID] = append(keyCerts[r.Token+"/"+r.KeyID], h)
		var inter [][32]byte
		for i, c := range chain {
			if isSelfSigned(c) {
				break
			}
			is := s.ocsp.issuerOf(c, chain, i+1)
			if is == nil {
				break
			}
			inter = append(inter, add(c, is, ocspRoleIntermediate))
		}
		chains[h] = inter
	}
	s.ocsp.mu.Lock()
	s.ocsp.roles, s.ocsp.chains, s.ocsp.keyCerts = roles, chains, keyCerts
	s.ocsp.mu.Unlock()
	return out, nil
}

// issuerOf returns the issuer of c: chain[next] when it signed c, else a
// configured issuer that did, else nil.
func (o *ocspWatch) issuerOf(c *x509.Certificate, chain []*x509.Certificate, next int) *x509.Certificate {
	if next < len(chain) && signedBy(c, chain[next]) {
		return chain[next]
	}
	for _, is := range o.issuers {
		if signedBy(c, is) {
			return is
		}
	}
	return nil
}

func signedBy(c, issuer *x509.Certificate) bool {
	return bytes.Equal(c.RawIssuer, issuer.RawSubject) && c.CheckSignatureFrom(issuer) == nil
}

func isSelfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignatureFrom(c) == nil
}

// setupOCSP makes the OCSP watcher from the [ocsp] table, loading the
// certificates it names; with OCSP off it logs a warning and does
// nothing.
func (s *Service) setupOCSP(ctx context.Context) error {
	oc := s.cfg.OCSP
	if !oc.Enabled {
		s.log.Warn("OCSP is turned off ([ocsp] enabled = false): certificates are offered without any revocation status")
		return nil
	}
	issuers, err := readCertFiles("issuer_certs", oc.IssuerCerts)
	if err != nil {
		return err
	}
	trusted, err := readCertFiles("trusted_responders", oc.TrustedResponders)
	if err != nil {
		return err
	}
	byIssuer := map[[32]byte][]ocsp.Responder{}
	for i, r := range oc.Responders {
		is, err := readCertFiles(fmt.Sprintf("responders[%d].issuer", i), []string{r.Issuer})
		if err != nil {
			return err
		}
		h := sha256.Sum256(is[0].Raw)
		for _, u := range r.URLs {
			byIssuer[h] = append(byIssuer[h], ocsp.Responder{URL: u, Method: ocsp.Method(r.Method), Nonce: r.Nonce})
		}
		issuers = append(issuers, is[0])
	}
	opts := ocsp.Options{
		Policy: ocsp.Policy{Freshness: oc.Freshness, MaxSkew: oc.MaxSkew, TrustedResponders: trusted},
		FetchLimits: ocsp.FetchLimits{
			ConnectTimeout: oc.ConnectTimeout, ReadTimeout: oc.ReadTimeout, MaxResponseSize: int64(oc.MaxResponseSize),
		},
		MaxRefreshInterval: oc.RefreshInterval,
		MaxInFlight:        oc.MaxInFlight,
		RetryMax:           oc.RetryMax(),
		Log:                s.log,
	}
	if len(byIssuer) > 0 {
		opts.Responders = func(issuer *x509.Certificate) []ocsp.Responder { return byIssuer[sha256.Sum256(issuer.Raw)] }
	}
	o := &ocspWatch{issuers: issuers, policy: opts.Policy}
	s.ocsp = o // certSource reads it
	if o.w, err = ocsp.NewWatcher(certSource{s}, s.store, opts); err != nil {
		s.ocsp = nil
		return err
	}
	s.metrics.reg.MustRegister(ocspCollector{s})
	s.OnCertificatesChanged(o.w.Resync)
	// The stored responses are served from the first request on, not
	// only once the watcher's goroutine has started.
	o.w.Prime(ctx)
	return nil
}

// readCertFiles reads the certificate in each file (PEM or DER, as
// ImportCert reads them: a private key is refused unread).
func readCertFiles(key string, paths []string) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", key, err)
		}
		certs, err := parseCertInput(b)
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %w", key, p, err)
		}
		out = append(out, certs[0])
	}
	return out, nil
}

// RunOCSP keeps the OCSP responses of the active certificates fresh until
// ctx is done; it returns at once when OCSP is turned off.
func (s *Service) RunOCSP(ctx context.Context) {
	if s.ocsp == nil {
		return
	}
	if err := s.ocsp.w.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		s.log.Error("OCSP watcher stopped", "error", err.Error())
	}
}

// ocspUsable returns the freshest good response of the certificate with
// SHA-256 hex sum, or why the certificate may not be offered: OCSP says
// it (or an intermediate of its chain) is revoked, or there is no fresh
// good response. With OCSP off it returns nil, nil. Callers wrap the
// error with the code they answer.
func (s *Service) ocspUsable(sum string) (*ocsp.Response, error) {
	if s.ocsp == nil {
		return nil, nil
	}
	raw, err := hex.DecodeString(sum)
	if err != nil || len(raw) != sha256.Size {
		return nil, fmt.Errorf("%w: certificate hash %q", ErrInvalid, sum)
	}
	h := [32]byte(raw)
	s.ocsp.mu.Lock()
	inter := s.ocsp.chains[h]
	s.ocsp.mu.Unlock()
	for _, ih := range inter {
		if s.ocsp.w.Revoked(ih) {
			return nil, fmt.Errorf("an intermediate CA of certificate %s (%s) is revoked", sum, hex.EncodeToString(ih[:]))
		}
	}
	r, err := s.ocsp.w.Usable(h)
	switch {
	case errors.Is(err, ocsp.ErrNotWatched):
		return nil, fmt.Errorf("certificate %s has no OCSP status: it is not active, or its issuer is not known (import it with its chain)", sum)
	case err != nil:
		return nil, fmt.Errorf("certificate %s: %w", sum, err)
	}
	return r, nil
}

// ocspRevoked reports whether OCSP says the certificate with SHA-256 hex
// sum, or an intermediate CA of its chain, is revoked.
func (s *Service) ocspRevoked(sum string) bool {
	if s.ocsp == nil {
		return false
	}
	raw, err := hex.DecodeString(sum)
	return err == nil && len(raw) == sha256.Size && s.ocsp.revokedInChain([32]byte(raw)) != ""
}

// revokedInChain returns the SHA-256 hex of the watched certificate h,
// or of an intermediate CA of its chain, that OCSP says is revoked, or "".
func (o *ocspWatch) revokedInChain(h [32]byte) string {
	o.mu.Lock()
	inter := o.chains[h]
	o.mu.Unlock()
	for _, c := range append([][32]byte{h}, inter...) {
		if o.w.Revoked(c) {
			return hex.EncodeToString(c[:])
		}
	}
	return ""
}

// ocspRevokedCertOfKey returns the SHA-256 hex of an active certificate
// of the key that OCSP says is revoked, or of a revoked intermediate CA
// of its chain, or "": a key whose certificate was revoked signs no more,
// by key id or otherwise.
func (s *Service) ocspRevokedCertOfKey(ref *keyRef) string {
	if s.ocsp == nil {
		return ""
	}
	s.ocsp.mu.Lock()
	certs := s.ocsp.keyCerts[ref.tok.tok.Serial()+"/"+ref.idHex]
	s.ocsp.mu.Unlock()
	for _, h := range certs {
		if c := s.ocsp.revokedInChain(h); c != "" {
			return c
		}
	}
	return ""
}

// parseCertHash reads a certificate named by SHA-256 (64 hex digits) or
// SHA-1 (40) and returns the SHA-256 of the watched certificate.
func (o *ocspWatch) parseCertHash(h string) ([32]byte, error) {
	h = strings.ToLower(strings.TrimSpace(h))
	raw, err := hex.DecodeString(h)
	if err != nil || (len(raw) != sha256.Size && len(raw) != 20) {
		return [32]byte{}, fmt.Errorf("%w: %q is not a SHA-256 (64 hex digits) or SHA-1 (40) certificate hash", ErrInvalid, truncate(h, 80))
	}
	sum, ok := o.w.Lookup(raw)
	if !ok {
		return [32]byte{}, notWatched(h)
	}
	return sum, nil
}

// notWatched is the error for a certificate hash h (as parseCertHash
// normalises it) that names no watched certificate. A client is given
// the same for another member's certificate, so that it learns nothing
// of it (not that it is active here, nor whose it is).
func notWatched(h string) error {
	return fmt.Errorf("%w: certificate %s is not watched: not an active sign or auth certificate, nor an intermediate of one", state.ErrNotFound, truncate(h, 80))
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// mayReadOCSP reports whether caller c may have the OCSP response of the
// watched certificate sum: an admin always; a client for a member's
// certificate only when it may sign for that member; intermediates and
// certificates of no member (auth) are anyone's.
func (s *Service) mayReadOCSP(ctx context.Context, c caller, sum [32]byte) (bool, string) {
	if c.admin {
		return true, ""
	}
	rec, err := s.store.GetCert(ctx, hex.EncodeToString(sum[:]))
	switch {
	case errors.Is(err, state.ErrNotFound):
		return true, "" // an intermediate CA: no record, no member
	case err != nil:
		return false, "" // the state could not be read: when unsure, refuse
	case rec.Member == "":
		return true, ""
	}
	return c.mayUseMember(rec.Member), rec.Member
}

// mayHaveOCSP refuses caller c the watched certificate sum, named as h,
// when mayReadOCSP does: the refusal is audited with the member, and the
// caller is told what it would be told of a certificate not watched.
func (s *Service) mayHaveOCSP(ctx context.Context, c caller, op, h string, sum [32]byte) error {
	ok, member := s.mayReadOCSP(ctx, c, sum)
	if ok {
		return nil
	}
	err := fmt.Errorf("%w: %s may not sign for member %q", ErrPermission, c.peer, member)
	_ = s.auditedOrCounted(ctx, c, audit.Record{Op: "denied", Detail: op + " cert=" + hex.EncodeToString(sum[:]) + " member=" + member}, err)
	return notWatched(strings.ToLower(strings.TrimSpace(h)))
}

// maxOCSPItems bounds the certificates of one GetOCSPResponses or
// SetOCSPResponses call.
func (s *Service) maxOCSPItems() int { return max(s.cfg.Server.MaxBatch, 1) }

// GetOCSPResponses implements signerv1.SignerServer.
func (s *Service) GetOCSPResponses(ctx context.Context, req *signerv1.GetOCSPResponsesRequest) (*signerv1.GetOCSPResponsesResponse, error) {
	if s.ocsp == nil {
		return nil, fmt.Errorf("%w: %w", ErrPrecondition, ErrOCSPOff)
	}
	if n := len(req.GetCertHashes()); n > s.maxOCSPItems() {
		return nil, fmt.Errorf("%w: %d certificates in one call, at most %d", ErrTooLarge, n, s.maxOCSPItems())
	}
	c := callerFrom(ctx)
	out := &signerv1.GetOCSPResponsesResponse{}
	for _, h := range req.GetCertHashes() {
		item := &signerv1.OCSPResponse{CertHash: truncate(h, 80)}
		out.Responses = append(out.Responses, item)
		sum, err := s.ocsp.parseCertHash(h)
		if err != nil {
			item.Error = err.Error()
			continue
		}
		if err := s.mayHaveOCSP(ctx, c, "GetOCSPResponses", h, sum); err != nil {
			item.Error = err.Error()
			continue
		}
		item.CertSha256 = hex.EncodeToString(sum[:])
		r, err := s.ocspUsable(item.CertSha256)
		if err != nil {
			item.Error = err.Error()
			continue
		}
		item.Response = r.Raw
		item.ThisUpdate = timestamppb.New(r.ThisUpdate)
		if !r.NextUpdate.IsZero() {
			item.NextUpdate = timestamppb.New(r.NextUpdate)
		}
	}
	return out, nil
}

// SetOCSPResponses implements signerv1.SignerServer: each response is
// verified against the issuer signerd knows and kept when newer than the
// one held. The call is audited with what was accepted and refused.
func (s *Service) SetOCSPResponses(ctx context.Context, req *signerv1.SetOCSPResponsesRequest) (*signerv1.SetOCSPResponsesResponse, error) {
	if s.ocsp == nil {
		return nil, fmt.Errorf("%w: %w", ErrPrecondition, ErrOCSPOff)
	}
	if n := len(req.GetResponses()); n > s.maxOCSPItems() {
		return nil, fmt.Errorf("%w: %d responses in one call, at most %d", ErrTooLarge, n, s.maxOCSPItems())
	}
	c := callerFrom(ctx)
	out := &signerv1.SetOCSPResponsesResponse{}
	accepted, refused := 0, 0
	var firstRefusal string
	for _, it := range req.GetResponses() {
		item := &signerv1.OCSPResponse{CertHash: truncate(it.GetCertHash(), 80)}
		out.Results = append(out.Results, item)
		err := s.setOCSPResponse(ctx, c, it, item)
		if err != nil {
			item.Error = err.Error()
			refused++
			if firstRefusal == "" {
				firstRefusal = err.Error()
			}
			continue
		}
		accepted++
	}
	detail := fmt.Sprintf("accepted=%d refused=%d", accepted, refused)
	if firstRefusal != "" {
		detail += " first_refusal=" + strconv.Quote(truncate(firstRefusal, 200))
	}
	if err := s.audited(ctx, c, audit.Record{Op: "ocsp.set", Detail: detail}, nil); err != nil {
		return nil, err
	}
	return out, nil
}

func (s *Service) setOCSPResponse(ctx context.Context, c caller, it *signerv1.SetOCSPResponsesRequest_Item, item *signerv1.OCSPResponse) error {
	sum, err := s.ocsp.parseCertHash(it.GetCertHash())
	if err != nil {
		return err
	}
	if err := s.mayHaveOCSP(ctx, c, "SetOCSPResponses", it.GetCertHash(), sum); err != nil {
		return err
	}
	item.CertSha256 = hex.EncodeToString(sum[:])
	if n := len(it.GetResponse()); n == 0 || n > ocsp.DefaultMaxResponseSize*4 {
		return fmt.Errorf("%w: OCSP response of %d bytes", ErrInvalid, n)
	}
	r, err := s.ocsp.w.Put(ctx, sum, it.GetResponse())
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	item.ThisUpdate = timestamppb.New(r.ThisUpdate)
	if !r.NextUpdate.IsZero() {
		item.NextUpdate = timestamppb.New(r.NextUpdate)
	}
	return nil
}

// GetOCSPStatus implements signerv1.SignerServer.
func (s *Service) GetOCSPStatus(ctx context.Context, req *signerv1.GetOCSPStatusRequest) (*signerv1.GetOCSPStatusResponse, error) {
	if s.ocsp == nil {
		return &signerv1.GetOCSPStatusResponse{Enabled: false}, nil
	}
	var only *[32]byte
	if req.GetCertHash() != "" {
		sum, err := s.ocsp.parseCertHash(req.GetCertHash())
		if err != nil {
			return nil, err
		}
		only = &sum
	}
	return s.ocspStatus(only), nil
}

// RefreshOCSP implements signerv1.SignerServer: it fetches at once and
// answers once the fetches have ended (or the call's deadline passed).
func (s *Service) RefreshOCSP(ctx context.Context, req *signerv1.RefreshOCSPRequest) (*signerv1.GetOCSPStatusResponse, error) {
	if s.ocsp == nil {
		return nil, fmt.Errorf("%w: %w", ErrPrecondition, ErrOCSPOff)
	}
	c := callerFrom(ctx)
	var certs [][32]byte
	var only *[32]byte
	target := "all"
	if req.GetCertHash() != "" {
		sum, err := s.ocsp.parseCertHash(req.GetCertHash())
		if err != nil {
			return nil, s.audited(ctx, c, audit.Record{Op: "ocsp.refresh", Detail: "cert=" + truncate(req.GetCertHash(), 80)}, err)
		}
		certs, only, target = [][32]byte{sum}, &sum, hex.EncodeToString(sum[:])
	}
	err := s.ocsp.w.RefreshNow(ctx, certs...)
	if err := s.audited(ctx, c, audit.Record{Op: "ocsp.refresh", Detail: "cert=" + target}, err); err != nil {
		return nil, err
	}
	return s.ocspStatus(only), nil
}

// ocspStatus reports the watched certificates (only one when only is set).
func (s *Service) ocspStatus(only *[32]byte) *signerv1.GetOCSPStatusResponse {
	out := &signerv1.GetOCSPStatusResponse{Enabled: true}
	s.ocsp.mu.Lock()
	roles := s.ocsp.roles
	s.ocsp.mu.Unlock()
	ts := func(t time.Time) *timestamppb.Timestamp {
		if t.IsZero() {
			return nil
		}
		return timestamppb.New(t)
	}
	for _, st := range s.ocsp.w.Statuses() {
		if only != nil && st.SHA256 != *only {
			continue
		}
		out.Certificates = append(out.Certificates, &signerv1.OCSPCertStatus{
			CertSha256: hex.EncodeToString(st.SHA256[:]), Subject: st.Subject, Serial: st.Serial, Status: st.Status,
			ThisUpdate: ts(st.ThisUpdate), NextUpdate: ts(st.NextUpdate), ProducedAt: ts(st.ProducedAt),
			Responder: st.Responder, LastFetch: ts(st.LastFetch), LastGood: ts(st.LastGood), NextRefresh: ts(st.NextRefresh),
			LastError: st.LastError, LastErrorAt: ts(st.LastErrorAt), StaleAt: ts(st.StaleAt),
			StaleBeforeRefresh: st.StaleBeforeRefresh, Usable: st.Usable, Reason: st.Reason, Role: roles[st.SHA256],
		})
	}
	return out
}

// serveOCSP answers GET /ocsp/{cert-sha256-hex} on the HTTP socket with
// the certificate's freshest good response and the RFC 5019 caching
// headers.
func (s *Service) serveOCSP(w http.ResponseWriter, r *http.Request) {
	if s.ocsp == nil {
		http.Error(w, ErrOCSPOff.Error(), http.StatusNotFound)
		return
	}
	h := strings.ToLower(r.PathValue("hash"))
	if len(h) != 2*sha256.Size {
		http.Error(w, "want /ocsp/ and the certificate's SHA-256 in hex", http.StatusBadRequest)
		return
	}
	sum, err := s.ocsp.parseCertHash(h)
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	resp, err := s.ocspUsable(hex.EncodeToString(sum[:]))
	if err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	now := time.Now()
	stale := resp.StaleAt(s.ocspPolicy())
	etag := sha256.Sum256(resp.Raw)
	hd := w.Header()
	hd.Set("Content-Type", "application/ocsp-response")
	hd.Set("Last-Modified", resp.ThisUpdate.UTC().Format(http.TimeFormat))
	hd.Set("Expires", stale.UTC().Format(http.TimeFormat))
	hd.Set("Cache-Control", fmt.Sprintf("max-age=%d, public, no-transform, must-revalidate", max(int(stale.Sub(now).Seconds()), 0)))
	hd.Set("ETag", `"`+hex.EncodeToString(etag[:])+`"`)
	if match := r.Header.Get("If-None-Match"); match != "" && match == hd.Get("ETag") {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	_, _ = w.Write(resp.Raw)
}

// ocspPolicy is the policy the watcher verifies responses under.
func (s *Service) ocspPolicy() ocsp.Policy { return s.ocsp.policy }

// ocspCollector exports, per watched certificate, the response's age and
// the seconds until it goes stale, and the fetches by responder and
// outcome.
type ocspCollector struct{ s *Service }

var (
	ocspAgeDesc    = prometheus.NewDesc("signerd_ocsp_response_age_seconds", "Age of the certificate's current OCSP response (now - thisUpdate).", []string{"cert", "role"}, nil)
	ocspStaleDesc  = prometheus.NewDesc("signerd_ocsp_seconds_until_stale", "Seconds until the certificate's current OCSP response stops being usable; negative when it has.", []string{"cert", "role"}, nil)
	ocspUsableDesc = prometheus.NewDesc("signerd_ocsp_usable", "1 when the certificate has a fresh good OCSP response.", []string{"cert", "role"}, nil)
	ocspFetchDesc  = prometheus.NewDesc("signerd_ocsp_fetches_total", "OCSP fetches by responder and outcome (ok, fetch_error, rejected_<check>).", []string{"responder", "outcome"}, nil)
)

// Describe implements prometheus.Collector.
func (oc ocspCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- ocspAgeDesc
	ch <- ocspStaleDesc
	ch <- ocspUsableDesc
	ch <- ocspFetchDesc
}

// Collect implements prometheus.Collector.
func (oc ocspCollector) Collect(ch chan<- prometheus.Metric) {
	o := oc.s.ocsp
	now := time.Now()
	o.mu.Lock()
	roles := o.roles
	o.mu.Unlock()
	for _, st := range o.w.Statuses() {
		cert, role := hex.EncodeToString(st.SHA256[:]), roles[st.SHA256]
		ch <- prometheus.MustNewConstMetric(ocspUsableDesc, prometheus.GaugeValue, boolFloat(st.Usable), cert, role)
		if st.ThisUpdate.IsZero() {
			continue
		}
		ch <- prometheus.MustNewConstMetric(ocspAgeDesc, prometheus.GaugeValue, now.Sub(st.ThisUpdate).Seconds(), cert, role)
		ch <- prometheus.MustNewConstMetric(ocspStaleDesc, prometheus.GaugeValue, st.StaleAt.Sub(now).Seconds(), cert, role)
	}
	for k, n := range o.w.Fetches() {
		ch <- prometheus.MustNewConstMetric(ocspFetchDesc, prometheus.CounterValue, float64(n), k[0], k[1])
	}
}
