package signer

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
	"math/big"
	"mime"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/digitorus/timestamp"
	"google.golang.org/protobuf/types/known/timestamppb"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/audit"
	"github.com/hsmsigner/hsmsigner/signer/config"
	"github.com/hsmsigner/hsmsigner/tsa"
)

// ErrTSAOff is returned by Timestamp when the mode asked for is not
// configured.
// It is a FAILED_PRECONDITION.
var ErrTSAOff = fmt.Errorf("%w: time-stamping is turned off in the configuration", ErrPrecondition)

// maxTSANonce bounds the nonce of a Timestamp call, in bytes.
const maxTSANonce = 32

// tsaService is the time-stamping service: the built-in TSA (a
// tsa.Issuer over the TSA key, made again after each change to the
// certificates, under one clock guard for the daemon's life) and the
// client of the external TSAs.
type tsaService struct {
	builtin  bool
	cfg      tsa.Config
	key      string // configured key id, "" for the one TSA key with a certificate
	guard    *tsa.Guard
	listen   string
	upstream *tsa.Upstream // nil without [tsa.upstream] urls
	upCfg    config.TSAUpstream

	issued, refused atomic.Uint64

	// build lets one request at a time make the issuer; mu guards the
	// issuer and is never held while the HSM or the state is asked, so a
	// certificate change (forget) never waits for a request.
	build  sync.Mutex
	mu     sync.Mutex
	gen    uint64      // counts forget calls: an issuer made across one is not kept
	issuer *tsa.Issuer // nil until a request finds a fit certificate
	keyID  string      // the issuer's key, lower-case hex
	certID string      // the issuer's certificate, SHA-256 hex
}

// setupTSA prepares the time-stamping service from [tsa]: the built-in
// TSA serves once a key of usage tsa has an active certificate fit for
// time-stamping; the upstream client is made at once.
func (s *Service) setupTSA() error {
	tc := s.cfg.TSA
	t := &tsaService{builtin: tc.Enabled, key: tc.Key, listen: tc.Listen, upCfg: tc.Upstream}
	if tc.Enabled {
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
			hash, _ := hashNamed(h) // checked by package config
			c.Hashes = append(c.Hashes, hash)
		}
		t.cfg, t.guard = c, tsa.NewGuard(s.tsaClock, c)
		if c.SkipClockCheck {
			s.log.Warn("TSA CLOCK GUARD OFF ([tsa] require_synced_clock = false): time-stamps are issued whatever the kernel says of the clock; never in production")
		}
	} else if tc.Listen != "" {
		return errors.New("listen is set but the built-in TSA is off: set enabled = true or remove listen")
	}
	if len(tc.Upstream.URLs) > 0 {
		u, err := newUpstream(tc.Upstream)
		if err != nil {
			return err
		}
		t.upstream = u
	}
	if !t.builtin && t.upstream == nil {
		return nil
	}
	s.tsa = t
	s.OnCertificatesChanged(t.forget)
	s.metrics.registerTSA(s)
	return nil
}

// hashNamed maps a hash of [tsa] hashes or of a Timestamp call to its
// algorithm.
func hashNamed(name string) (crypto.Hash, bool) {
	switch name {
	case "SHA256":
		return crypto.SHA256, true
	case "SHA384":
		return crypto.SHA384, true
	case "SHA512":
		return crypto.SHA512, true
	}
	return 0, false
}

// newUpstream makes the client of [tsa.upstream], reading its trust
// anchors and TSA certificates.
func newUpstream(uc config.TSAUpstream) (*tsa.Upstream, error) {
	anchors, err := readCertFiles("upstream.trust_anchors", uc.TrustAnchors)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	for _, c := range anchors {
		roots.AddCert(c)
	}
	certs, err := readCertFiles("upstream.tsa_certs", uc.TSACerts)
	if err != nil {
		return nil, err
	}
	cfg := tsa.UpstreamConfig{URLs: uc.URLs, Timeout: uc.Timeout, Trust: tsa.Trust{Roots: roots, Certificates: certs},
		Window: uc.BatchWindow, MaxBatch: uc.MaxBatch, UnhealthyAfter: uc.UnhealthyAfter}
	if uc.Policy != "" {
		if cfg.Policy, err = config.ParseOID(uc.Policy); err != nil {
			return nil, err
		}
	}
	return tsa.NewUpstream(cfg)
}

// forget drops the issuer; the next request makes it again from the
// certificates as they are now.
func (t *tsaService) forget() {
	t.mu.Lock()
	t.issuer, t.keyID, t.certID = nil, "", ""
	t.gen++
	t.mu.Unlock()
}

// cached returns the issuer kept, if its certificate is valid now, and
// the generation it belongs to. No change fires when a certificate merely
// expires: an issuer whose certificate is not valid now is dropped, to be
// made again from the certificates as they are (a newer one, or none).
func (t *tsaService) cached() (*tsa.Issuer, string, uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.issuer != nil {
		if c, now := t.issuer.Certificate(), time.Now(); now.Before(c.NotBefore) || now.After(c.NotAfter) {
			t.issuer, t.keyID, t.certID = nil, "", ""
		}
	}
	return t.issuer, t.keyID, t.gen
}

// close sends the upstream batch pending and waits for those in flight.
func (t *tsaService) close() {
	if t != nil && t.upstream != nil {
		t.upstream.Close()
	}
}

// tsaIssuer returns the built-in TSA's issuer and its key id, making it
// from the TSA key's newest active certificate when needed, or why there
// is none. Only an issuer is kept: why there is none (a token logged out,
// say) is found again at the next request, so the TSA serves as soon as
// it can.
func (s *Service) tsaIssuer(ctx context.Context) (*tsa.Issuer, string, error) {
	t := s.tsa
	if t == nil || !t.builtin {
		return nil, "", fmt.Errorf("%w: the built-in TSA is off ([tsa] enabled = false)", ErrTSAOff)
	}
	if is, keyID, _ := t.cached(); is != nil {
		return is, keyID, nil
	}
	t.build.Lock()
	defer t.build.Unlock()
	is, keyID, gen := t.cached()
	if is != nil {
		return is, keyID, nil // made by the request this one waited for
	}
	certs, err := s.CertificatesOf(ctx, UsageTSA)
	if err != nil {
		return nil, "", err
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
		is, err := tsa.NewIssuerGuarded(t.cfg, sig, kc.Certificate, kc.Chain, t.guard)
		if err != nil {
			problems = append(problems, kc.SHA256+": "+err.Error())
			continue
		}
		t.mu.Lock()
		if t.gen == gen { // no change since the certificates were read
			t.issuer, t.keyID, t.certID = is, kc.KeyID, kc.SHA256
		}
		t.mu.Unlock()
		return is, kc.KeyID, nil
	}
	which := "no key of usage tsa"
	if t.key != "" {
		which = "key " + t.key + " (usage tsa)"
	}
	return nil, "", fmt.Errorf("%w: the TSA does not serve: %s has no active certificate fit for time-stamping %v", ErrPrecondition, which, problems)
}

// tsaReason says why the built-in TSA would not issue a token now, or
// "": no fit certificate, its key's token logged out, or the clock guard.
func (s *Service) tsaReason(ctx context.Context) (keyID string, reason string) {
	_, keyID, err := s.tsaIssuer(ctx)
	if err != nil {
		return "", err.Error()
	}
	if ref, err := s.resolveKey(ctx, keyID); err != nil {
		return keyID, err.Error()
	} else if !ref.tok.tok.LoggedIn() {
		return keyID, fmt.Sprintf("token %s of the TSA key is not logged in", ref.tok.name)
	}
	if err := s.tsa.guard.Ready(); err != nil {
		return keyID, "clock guard: " + err.Error()
	}
	return keyID, ""
}

// issueToken answers the DER TimeStampReq der for caller c with the
// built-in TSA: resp is always a TimeStampResp (a token, or a rejection
// whose failInfo says why). c must be allowed the TSA key, unless c came
// through the TCP listener (admitted by [tsa] listen). The outcome is one
// audit line, tsa.issue, naming c; a token whose line cannot be written
// becomes a rejection.
func (s *Service) issueToken(ctx context.Context, c caller, der []byte) (resp []byte, issued *tsa.Issued, err error) {
	rec := audit.Record{Op: "tsa.issue"}
	if c.remote != "" {
		rec.Detail = "remote=" + c.remote
	}
	var fail timestamp.FailureInfo = timestamp.SystemFailure
	is, keyID, err := s.tsaIssuer(ctx)
	if err == nil {
		rec.Key = keyID
		if c.remote == "" {
			var ref *keyRef
			if ref, err = s.resolveKey(ctx, keyID); err == nil {
				rec.Token = ref.tok.name
				err = c.mayUseKey(ref)
			}
			if errors.Is(err, ErrPermission) {
				fail = timestamp.BadRequest
			}
		}
	}
	if err == nil {
		resp, issued, err = is.Issue(ctx, der)
		if issued != nil {
			rec.Detail = joinDetail(rec.Detail, issued.String())
		}
	}
	if err = s.writeLine(ctx, c, linePlan{counted: true}, rec, err); err != nil {
		s.tsa.refused.Add(1)
		var r *tsa.Refusal
		if !errors.As(err, &r) || issued != nil {
			// No token leaves without its line; a refusal before the
			// issuer was asked is answered here.
			resp, _ = timestamp.CreateErrorResponse(timestamp.Rejection, fail)
		}
		return resp, nil, err
	}
	s.tsa.issued.Add(1)
	return resp, issued, nil
}

func joinDetail(a, b string) string {
	if a == "" {
		return b
	}
	return a + " " + b
}

// serveTSA answers POST /tsa on the HTTP socket: an RFC 3161 TimeStampReq
// in, a TimeStampResp out, for a caller the policy lets use the TSA key.
func (s *Service) serveTSA(w http.ResponseWriter, r *http.Request) {
	p, ok := peerOfRequest(r)
	if !ok {
		http.Error(w, "no socket credentials", http.StatusForbidden)
		return
	}
	s.serveTSAFor(w, r, func() caller { return s.callerFor(p) })
}

// serveTSAFor answers POST /tsa for the caller who returns once the
// request is read: the policy in force then admits it, however long its
// body took.
func (s *Service) serveTSAFor(w http.ResponseWriter, r *http.Request, who func() caller) {
	if s.tsa == nil || !s.tsa.builtin {
		http.Error(w, "the built-in time-stamping authority is turned off ([tsa] enabled = false)", http.StatusNotFound)
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
	c := who()
	done, err := s.limits.startCall(c.peer)
	if err != nil {
		http.Error(w, err.Error(), http.StatusTooManyRequests)
		return
	}
	defer done()
	resp, _, _ := s.issueToken(r.Context(), c, req)
	if resp == nil {
		http.Error(w, "time-stamping failed", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/timestamp-reply")
	_, _ = w.Write(resp)
}

// Timestamp issues a token for a digest: by the built-in TSA, or by the
// external TSAs with req.upstream.
func (s *Service) Timestamp(ctx context.Context, req *signerv1.TimestampRequest) (*signerv1.TimestampResponse, error) {
	c := callerFrom(ctx)
	hash, ok := hashNamed(req.GetHash())
	switch {
	case !ok:
		return nil, fmt.Errorf("%w: hash %q: give SHA256, SHA384 or SHA512", ErrInvalid, req.GetHash())
	case len(req.GetDigest()) != hash.Size():
		return nil, fmt.Errorf("%w: a %s digest has %d bytes, not %d", ErrInvalid, req.GetHash(), hash.Size(), len(req.GetDigest()))
	case len(req.GetNonce()) > maxTSANonce:
		return nil, fmt.Errorf("%w: a nonce of %d bytes, at most %d", ErrInvalid, len(req.GetNonce()), maxTSANonce)
	}
	if req.GetUpstream() {
		return s.stampUpstream(ctx, c, hash, req)
	}
	if s.tsa == nil || !s.tsa.builtin {
		return nil, fmt.Errorf("%w: the built-in TSA is off ([tsa] enabled = false)", ErrTSAOff)
	}
	tr := timestamp.Request{HashAlgorithm: hash, HashedMessage: req.GetDigest(), Certificates: req.GetCertReq()}
	if len(req.GetNonce()) > 0 {
		tr.Nonce = new(big.Int).SetBytes(req.GetNonce())
	}
	if req.GetPolicy() != "" {
		oid, err := config.ParseOID(req.GetPolicy())
		if err != nil {
			return nil, fmt.Errorf("%w: policy: %w", ErrInvalid, err)
		}
		tr.TSAPolicyOID = oid
	}
	der, err := tr.Marshal()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	resp, issued, err := s.issueToken(ctx, c, der)
	if err != nil {
		return nil, refusalError(err)
	}
	// The token is read out of the answer with encoding/asn1: the issuer
	// has checked what it made, and digitorus/pkcs7's Parse (behind
	// timestamp.ParseResponse) is not safe for concurrent use.
	var answer struct {
		Status struct{ Status int }
		Token  asn1.RawValue
	}
	if _, err := asn1.Unmarshal(resp, &answer); err != nil || answer.Status.Status != int(timestamp.Granted) {
		return nil, fmt.Errorf("the answer issued holds no token (status %d): %v", answer.Status.Status, err)
	}
	return &signerv1.TimestampResponse{Token: answer.Token.FullBytes, Serial: issued.Serial.Text(16), GenTime: timestamppb.New(issued.GenTime)}, nil
}

// refusalError names an RFC 3161 refusal's failInfo in the error a gRPC
// caller gets, with the code that says what it means.
func refusalError(err error) error {
	var r *tsa.Refusal
	if !errors.As(err, &r) {
		return err
	}
	switch r.FailInfo {
	case timestamp.TimeNotAvailable:
		return fmt.Errorf("%w: %s (RFC 3161 failInfo timeNotAvailable)", ErrPrecondition, r.Reason)
	case timestamp.SystemFailure:
		return fmt.Errorf("time-stamping failed: %s (RFC 3161 failInfo systemFailure)", r.Reason)
	}
	return fmt.Errorf("%w: %s (RFC 3161 failInfo %s)", ErrInvalid, r.Reason, r.Name())
}

// stampUpstream has the external TSAs stamp the digest, for a caller the
// policy grants usage tsa; the stamp is verified before it is returned
// and audited (tsa.upstream).
func (s *Service) stampUpstream(ctx context.Context, c caller, hash crypto.Hash, req *signerv1.TimestampRequest) (*signerv1.TimestampResponse, error) {
	if s.tsa == nil || s.tsa.upstream == nil {
		return nil, fmt.Errorf("%w: no external TSAs are configured ([tsa.upstream] urls)", ErrTSAOff)
	}
	if len(req.GetNonce()) > 0 || req.GetPolicy() != "" {
		return nil, fmt.Errorf("%w: an upstream stamp takes no nonce or policy of its own: signerd sends its own nonce and [tsa.upstream] policy, and verifies the token", ErrInvalid)
	}
	rec := audit.Record{Op: "tsa.upstream", Digest: hexOf(req.GetDigest())}
	return handle(ctx, s, c, linePlan{counted: true}, rec, func(rec *audit.Record) (*signerv1.TimestampResponse, error) {
		if !c.policy.MayUseUsage(c.cfgPeer(), UsageTSA) {
			return nil, fmt.Errorf("%w: %s is granted no usage tsa by the policy", ErrPermission, c.peer)
		}
		st, err := s.tsa.upstream.Stamp(ctx, hash, req.GetDigest())
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrUpstream, err)
		}
		if err := tsa.VerifyStamp(st, hash, req.GetDigest()); err != nil {
			return nil, err
		}
		rec.Detail = fmt.Sprintf("serial=%s gen_time=%s batch=%d/%d", st.Token.SerialNumber.Text(16), st.Token.Time.UTC().Format(time.RFC3339Nano), st.Index, st.Size)
		out := &signerv1.TimestampResponse{Token: st.Token.RawToken, Serial: st.Token.SerialNumber.Text(16), GenTime: timestamppb.New(st.Token.Time),
			BatchIndex: uint32(st.Index), BatchSize: uint32(st.Size)}
		for _, h := range st.Proof {
			out.Proof = append(out.Proof, h[:])
		}
		return out, nil
	})
}

// GetTSAStatus reports the time-stamping service.
func (s *Service) GetTSAStatus(ctx context.Context, _ *signerv1.GetTSAStatusRequest) (*signerv1.TSAStatus, error) {
	t := s.tsa
	out := &signerv1.TSAStatus{}
	if t == nil {
		out.Reason = "time-stamping is turned off ([tsa] enabled = false, no [tsa.upstream] urls)"
		return out, nil
	}
	out.BuiltinEnabled, out.Listen = t.builtin, t.listen
	out.Issued, out.Refused = t.issued.Load(), t.refused.Load()
	if t.builtin {
		out.KeyId, out.Reason = s.tsaReason(ctx)
		out.Serving = out.Reason == ""
		t.mu.Lock()
		if t.issuer != nil {
			cert := t.issuer.Certificate()
			out.CertSha256, out.CertSubject, out.CertNotAfter = t.certID, cert.Subject.String(), timestamppb.New(cert.NotAfter)
		}
		t.mu.Unlock()
		gs := t.guard.State()
		out.ClockGuardOff, out.ClockSynced, out.ClockProblem = gs.Off, gs.Clock.Synced, gs.Problem
		out.ClockMaxErrorMicros, out.ClockSteppedMicros = gs.Clock.MaxError.Microseconds(), gs.Stepped.Microseconds()
		if gs.ReadError != "" && out.ClockProblem == "" {
			out.ClockProblem = "cannot read the clock's state: " + gs.ReadError
		}
	} else {
		out.Reason = "the built-in TSA is off ([tsa] enabled = false)"
	}
	if t.upstream != nil {
		h := t.upstream.Health()
		u := &signerv1.TSAUpstreamStatus{Urls: t.upCfg.URLs, Healthy: h.Healthy, LastError: h.LastError, Calls: h.Calls, Stamps: h.Stamps,
			BatchWindowMicros: t.upCfg.BatchWindow.Microseconds()}
		if !h.LastSuccess.IsZero() {
			u.LastSuccess = timestamppb.New(h.LastSuccess)
		}
		if !h.LastErrorAt.IsZero() {
			u.LastErrorAt = timestamppb.New(h.LastErrorAt)
		}
		for _, n := range h.BatchSizes {
			u.BatchSizes = append(u.BatchSizes, uint32(n))
		}
		out.Upstream = u
	}
	return out, nil
}
