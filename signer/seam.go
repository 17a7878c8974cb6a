package signer

import (
	"context"
	"crypto"
	"crypto/x509"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/hsmsigner/hsmsigner/hsm"
	"github.com/hsmsigner/hsmsigner/signer/audit"
	"github.com/hsmsigner/hsmsigner/signer/peercred"
	"github.com/hsmsigner/hsmsigner/signer/state"
)

// This file is the seam for in-process features (a time-stamping
// authority, an X-Road listener): they get an audited crypto.Signer for a
// key of a given usage (KeySigner) and the active certificates of a usage
// (CertificatesOf), and declare, in their own package, the small
// interfaces they consume. Nothing here knows of any feature.

// Actor names, for the audit line of each signature, who an in-process
// feature signs for.
type Actor struct {
	// Op is the audit op of each signature, e.g. "tsa.sign".
	Op string
	// Peer is the process the feature serves, when its request came
	// through a Unix socket: the policy in force must then let that peer
	// sign with the key, as for a Sign call, and its line names the peer.
	// Nil means the daemon signs for a feature of its own: only the key's
	// usage is checked, and the line carries the daemon's uid, gid and pid.
	Peer *peercred.Peer
}

// signTimeout bounds a signature made through crypto.Signer's Sign, which
// carries no context.
const signTimeout = 30 * time.Second

// KeySigner returns the key keyID (hex, either case) as a crypto.Signer
// for an in-process feature. The key must have usage (UsageTSA, …) and,
// for an actor with a peer, be one the policy lets that peer use. Every
// signature is made as a Sign call's is: the key is resolved and checked
// again (usage, policy, OCSP revocation of its certificates), signed
// through the token's session pool and verified by the token when
// [module.token] verify says so, and one audit line of op a.Op is written
// before the signature is returned; when the line cannot be written the
// signature is withheld (ErrAudit). A refusal is audited too. The
// crypto.Signer is an *AuditedSigner, whose SignContext takes a context.
func (s *Service) KeySigner(ctx context.Context, a Actor, keyID, usage string) (crypto.Signer, error) {
	if a.Op == "" {
		return nil, fmt.Errorf("%w: an Actor needs the audit op of its signatures", ErrInvalid)
	}
	as := &AuditedSigner{s: s, actor: a, usage: usage}
	rec := audit.Record{Op: a.Op, Key: keyID, Detail: "usage=" + usage}
	ref, err := as.key(ctx, keyID, &rec)
	if err != nil {
		return nil, s.auditedOrCounted(ctx, as.caller(), rec, err)
	}
	k, err := ref.tok.tok.KeyByID(ctx, ref.id)
	if err = s.signed(ref, err); err != nil {
		return nil, err
	}
	as.keyID, as.pub = ref.idHex, k.Public
	return as, nil
}

// AuditedSigner is a key seen as a crypto.Signer by an in-process
// feature; see Service.KeySigner.
type AuditedSigner struct {
	s     *Service
	actor Actor
	usage string
	keyID string // lower-case hex
	pub   crypto.PublicKey
}

var _ crypto.Signer = (*AuditedSigner)(nil)

// Public returns the key's public key.
func (as *AuditedSigner) Public() crypto.PublicKey { return as.pub }

// KeyID returns the key's id in lower-case hex.
func (as *AuditedSigner) KeyID() string { return as.keyID }

// Sign implements crypto.Signer: SignContext bounded by 30 seconds. rand
// is not used; the HSM makes its own randomness.
func (as *AuditedSigner) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), signTimeout)
	defer cancel()
	return as.SignContext(ctx, digest, opts)
}

// SignContext signs digest with the key, the hash named by opts
// (*rsa.PSSOptions choose RSA-PSS), and returns the signature once its
// audit line is written.
func (as *AuditedSigner) SignContext(ctx context.Context, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	return handle(ctx, as.s, as.caller(), linePlan{counted: true}, audit.Record{Op: as.actor.Op, Key: as.keyID, Digest: hexOf(digest)},
		func(rec *audit.Record) ([]byte, error) { return as.sign(ctx, digest, opts, rec) })
}

func (as *AuditedSigner) sign(ctx context.Context, digest []byte, opts crypto.SignerOpts, rec *audit.Record) ([]byte, error) {
	alg, err := hsm.AlgorithmFor(hsm.Key{Public: as.pub}, opts)
	if err != nil {
		return nil, err
	}
	rec.Detail = alg.Name
	ref, err := as.key(ctx, as.keyID, rec)
	if err != nil {
		return nil, err
	}
	sig, err := ref.tok.tok.Sign(ctx, ref.id, alg, digest)
	return sig, as.s.signed(ref, err)
}

// caller is who the audit line names: the actor's peer, or the daemon.
func (as *AuditedSigner) caller() caller {
	if as.actor.Peer == nil {
		return self()
	}
	return as.s.callerFor(*as.actor.Peer)
}

// key resolves keyID and checks that the actor may sign with it now: its
// usage, the policy for an actor's peer, and no revoked certificate or
// issuing CA. It names the key and its token in rec.
func (as *AuditedSigner) key(ctx context.Context, keyID string, rec *audit.Record) (*keyRef, error) {
	if keyID == "" {
		return nil, fmt.Errorf("%w: name the key", ErrInvalid)
	}
	ref, err := as.s.resolveKey(ctx, keyID)
	if err != nil {
		return nil, err
	}
	rec.Token, rec.Key = ref.tok.name, ref.idHex
	if ref.usage != as.usage {
		return nil, fmt.Errorf("%w: key %s has usage %q, not %q", ErrPermission, ref.idHex, ref.usage, as.usage)
	}
	if as.actor.Peer != nil {
		if err := as.caller().mayUseKey(ref); err != nil {
			return nil, err
		}
	}
	if cert := as.s.ocspRevokedCertOfKey(ref); cert != "" {
		return nil, fmt.Errorf("%w: key %s has a revoked certificate or issuing CA (%s, OCSP): it signs no more", ErrPrecondition, ref.idHex, cert)
	}
	return ref, nil
}

// KeyCertificate is an active certificate of a key, with its chain, as
// CertificatesOf finds it.
type KeyCertificate struct {
	// KeyID is the certificate's key, in lower-case hex: the id to give
	// KeySigner.
	KeyID string
	// Token names the configured token the key is on.
	Token string
	// Member is the member the certificate was imported for, if any.
	Member string
	// SHA256 is the certificate's hash, in lower-case hex.
	SHA256      string
	Certificate *x509.Certificate
	// Chain are the CA certificates imported with it, the issuer first.
	Chain []*x509.Certificate
}

// CertificatesOf returns the certificates of keys of usage that are
// active, valid now and not revoked (OCSP, when on), the newest first
// (latest notBefore, then latest notAfter, then latest import).
func (s *Service) CertificatesOf(ctx context.Context, usage string) ([]KeyCertificate, error) {
	rs, err := s.store.ListCerts(ctx, state.CertFilter{})
	if err != nil {
		return nil, err
	}
	now := time.Now()
	var found []state.CertRecord
	for _, r := range rs {
		if !r.Active || now.Before(r.NotBefore) || now.After(r.NotAfter) || s.usageOf(ctx, r.Token, r.KeyID) != usage || s.ocspRevoked(r.SHA256) {
			continue
		}
		found = append(found, r)
	}
	slices.SortFunc(found, func(a, b state.CertRecord) int {
		if c := b.NotBefore.Compare(a.NotBefore); c != 0 {
			return c
		}
		if c := b.NotAfter.Compare(a.NotAfter); c != 0 {
			return c
		}
		return b.ImportedAt.Compare(a.ImportedAt)
	})
	out := make([]KeyCertificate, 0, len(found))
	for _, r := range found {
		kc := KeyCertificate{KeyID: r.KeyID, Member: r.Member, SHA256: r.SHA256}
		if t := s.tokenBySerial(r.Token); t != nil {
			kc.Token = t.name
		}
		if kc.Certificate, err = x509.ParseCertificate(r.DER); err != nil {
			return nil, fmt.Errorf("certificate %s: %w", r.SHA256, err)
		}
		for i, der := range r.Chain {
			c, err := x509.ParseCertificate(der)
			if err != nil {
				return nil, fmt.Errorf("certificate %s, chain element %d: %w", r.SHA256, i+1, err)
			}
			kc.Chain = append(kc.Chain, c)
		}
		out = append(out, kc)
	}
	return out, nil
}

// OnCertificatesChanged registers fn to be called, after the change is
// committed, each time a certificate is imported, activated, deactivated,
// given a new status or deleted (with its key or alone). fn must not
// block: it is called on the changing call's goroutine (a feature kicks
// its own worker, as the OCSP watcher's Resync does). A feature that
// holds certificates from CertificatesOf reads them again when notified.
func (s *Service) OnCertificatesChanged(fn func()) {
	s.certHooksMu.Lock()
	defer s.certHooksMu.Unlock()
	s.certHooks = append(s.certHooks, fn)
}

// certificatesChanged calls the functions OnCertificatesChanged
// registered.
func (s *Service) certificatesChanged() {
	s.certHooksMu.Lock()
	hooks := slices.Clone(s.certHooks)
	s.certHooksMu.Unlock()
	for _, fn := range hooks {
		fn()
	}
}
