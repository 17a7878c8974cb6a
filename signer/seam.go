package signer

import (
	"context"
	"crypto"
	"crypto/rsa"
	"crypto/x509"
	"fmt"
	"io"
	"reflect"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	"github.com/hsmsigner/hsmsigner/hsm"
	"github.com/hsmsigner/hsmsigner/hsm/sigalg"
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
	// KeySigner keeps a copy: the feature may reuse its Peer afterwards.
	// Nil means the daemon signs for a feature of its own: the key's usage
	// is checked, a key that serves a member is refused (it signs only
	// for a peer the policy lets use it), and the line carries the
	// daemon's uid, gid and pid.
	Peer *peercred.Peer
}

// signTimeout bounds a signature made through crypto.Signer's Sign, which
// carries no context.
const signTimeout = 30 * time.Second

// KeySigner returns the key keyID (hex, either case, nothing around it)
// as a crypto.Signer for an in-process feature. usage is UsageSign,
// UsageAuth or UsageTSA, and the key's recorded usage (an unknown or
// empty usage is ErrInvalid; UsageAudit is refused: the audit key signs
// the audit log's checkpoints and nothing else). For an actor with a peer
// the key must be one the policy lets that peer use; an actor without one
// gets no key that serves a member. Every signature is made as a Sign
// call's is: the key is resolved and checked again (usage, members,
// policy, OCSP revocation of its certificates), signed through the
// token's session pool and verified by the token when [module.token]
// verify says so, then verified with Public (a key destroyed and made
// again under its id signs no more through this signer), and one audit
// line of op a.Op is written before the signature is returned; when the
// line cannot be written the signature is withheld (ErrAudit). A refusal,
// here or at a signature, and a signature's failure are audited too. The
// crypto.Signer is an *AuditedSigner, whose SignContext takes a context.
func (s *Service) KeySigner(ctx context.Context, a Actor, keyID, usage string) (crypto.Signer, error) {
	if a.Op == "" {
		return nil, fmt.Errorf("%w: an Actor needs the audit op of its signatures", ErrInvalid)
	}
	if a.Peer != nil {
		p := *a.Peer
		a.Peer = &p
	}
	as := &AuditedSigner{s: s, actor: a, usage: usage}
	rec := audit.Record{Op: a.Op, Key: keyID, Detail: "usage=" + usage}
	ref, err := as.key(ctx, keyID, &rec)
	if err != nil {
		return nil, s.auditedOrCounted(ctx, as.caller(), rec, err)
	}
	// A key the checks allow but the token cannot read now (logged out,
	// say) makes no signer and no line: the feature's own line says why
	// it could not serve.
	k, err := ref.tok.tok.KeyByID(ctx, ref.id)
	if err = s.signed(ref, err); err != nil {
		return nil, err
	}
	as.keyID, as.pub = ref.idHex, k.Public
	return as, nil
}

// seamUsage checks a usage a feature asks KeySigner for.
func seamUsage(usage string) error {
	switch usage {
	case UsageSign, UsageAuth, UsageTSA:
		return nil
	case UsageAudit:
		return fmt.Errorf("%w: the audit key signs the audit log's checkpoints and nothing else", ErrPermission)
	}
	return fmt.Errorf("%w: %q is not a key usage a feature signs with (sign, auth or tsa)", ErrInvalid, truncate(usage, 64))
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
	if err := checkSignerOpts(as.pub, opts); err != nil {
		return nil, err
	}
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
	if err = as.s.signed(ref, err); err != nil {
		return nil, err
	}
	// The token verified sig with the key it holds under the id now; the
	// feature holds Public, which is what the signature must match.
	if err := sigalg.Verify(as.pub, alg, digest, sig); err != nil {
		return nil, fmt.Errorf("%w: key %s on token %s is no longer the key this signer was made for (destroyed and made again under its id?): %w", hsm.ErrBadSignature, ref.idHex, ref.tok.name, err)
	}
	return sig, nil
}

// checkSignerOpts refuses, before anything is signed, the opts that
// crypto.Signer implementations answer with a panic or would read as
// another algorithm: nil opts (or a nil pointer), and RSA-PSS options for
// a key that is not RSA.
func checkSignerOpts(pub crypto.PublicKey, opts crypto.SignerOpts) error {
	if opts == nil {
		return fmt.Errorf("%w: give the hash of the digest in the signer options", ErrInvalid)
	}
	if v := reflect.ValueOf(opts); v.Kind() == reflect.Pointer && v.IsNil() {
		return fmt.Errorf("%w: signer options %T are a nil pointer", ErrInvalid, opts)
	}
	if _, pss := opts.(*rsa.PSSOptions); pss {
		if _, isRSA := pub.(*rsa.PublicKey); !isRSA {
			return fmt.Errorf("%w: RSA-PSS options for a %T key", ErrInvalid, pub)
		}
	}
	return nil
}

// caller is who the audit line names: the actor's peer, or the daemon.
func (as *AuditedSigner) caller() caller {
	if as.actor.Peer == nil {
		return self()
	}
	return as.s.callerFor(*as.actor.Peer)
}

// key resolves keyID and checks that the actor may sign with it now: its
// usage, the policy for an actor's peer (an actor without one: no key
// that serves a member), and no revoked certificate or issuing CA. It
// names the key and its token in rec.
func (as *AuditedSigner) key(ctx context.Context, keyID string, rec *audit.Record) (*keyRef, error) {
	if err := seamUsage(as.usage); err != nil {
		return nil, err
	}
	if keyID == "" {
		return nil, fmt.Errorf("%w: name the key", ErrInvalid)
	}
	ref, err := as.s.resolveKey(ctx, keyID)
	if err != nil {
		return nil, err
	}
	rec.Token, rec.Key = ref.tok.name, ref.idHex
	if ref.usage == "" || ref.usage != as.usage {
		return nil, fmt.Errorf("%w: key %s has usage %q, not %q", ErrPermission, ref.idHex, ref.usage, as.usage)
	}
	if as.actor.Peer != nil {
		if err := as.caller().mayUseKey(ref); err != nil {
			return nil, err
		}
	} else if len(ref.members) > 0 {
		return nil, fmt.Errorf("%w: key %s serves member %s: it signs only for a peer the policy lets use it, not for the daemon's own features", ErrPermission, ref.idHex, strings.Join(ref.members, ", "))
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
// (latest notBefore, then latest notAfter, then latest import). usage is
// one of the key usages; an empty or unknown one is ErrInvalid.
func (s *Service) CertificatesOf(ctx context.Context, usage string) ([]KeyCertificate, error) {
	switch usage {
	case UsageSign, UsageAuth, UsageTSA, UsageAudit:
	default:
		return nil, fmt.Errorf("%w: %q is not a key usage (sign, auth, tsa or audit)", ErrInvalid, truncate(usage, 64))
	}
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
// given a new status or deleted (with its key or alone). A feature that
// holds certificates from CertificatesOf reads them again when notified.
// Each fn runs on a goroutine of its own, at the same time as the other
// hooks and possibly as itself (for another change), and may call back
// into the service. The changing call waits for the hooks, so that a
// feature has let go of what changed when the call returns, but for at
// most certHookWait: fn should not block (a feature kicks its own
// worker, as the OCSP watcher's Resync does). A hook that panics is
// logged; the other hooks are told all the same.
func (s *Service) OnCertificatesChanged(fn func()) {
	s.certHooksMu.Lock()
	defer s.certHooksMu.Unlock()
	s.certHooks = append(s.certHooks, fn)
}

// certHookWait bounds how long a changing call waits for the hooks
// OnCertificatesChanged registered.
const certHookWait = 5 * time.Second

// certificatesChanged calls the functions OnCertificatesChanged
// registered, each on a goroutine of its own, and waits until they
// return or certHookWait has passed.
func (s *Service) certificatesChanged() {
	s.certHooksMu.Lock()
	hooks := slices.Clone(s.certHooks)
	s.certHooksMu.Unlock()
	done := make(chan struct{}, len(hooks))
	for i, fn := range hooks {
		go func() {
			defer func() { done <- struct{}{} }()
			s.certHook(i, fn)
		}()
	}
	wait := time.NewTimer(certHookWait)
	defer wait.Stop()
	for returned := 0; returned < len(hooks); returned++ {
		select {
		case <-done:
		case <-wait.C:
			s.log.Error("certificate change hooks have not returned; the change is committed and the call goes on without them", "waiting_for", len(hooks)-returned, "waited", certHookWait.String())
			return
		}
	}
}

// certHook runs hook i, logging a panic instead of passing it on.
func (s *Service) certHook(i int, fn func()) {
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("certificate change hook panicked", "hook", i, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
		}
	}()
	fn()
}
