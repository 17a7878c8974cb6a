package signer

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hsmsigner/hsmsigner/hsm"
	"github.com/hsmsigner/hsmsigner/ocsp"
	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/audit"
	"github.com/hsmsigner/hsmsigner/signer/dn"
	"github.com/hsmsigner/hsmsigner/signer/state"
)

// maxCertBytes bounds a certificate or chain element (a certificate is
// a few kilobytes; anything much larger is not one).
const maxCertBytes = 64 << 10

func statusName(st signerv1.CertStatus) (string, error) {
	switch st {
	case signerv1.CertStatus_CERT_STATUS_SAVED:
		return state.StatusSaved, nil
	case signerv1.CertStatus_CERT_STATUS_REGISTRATION_IN_PROGRESS:
		return state.StatusRegistrationInProgress, nil
	case signerv1.CertStatus_CERT_STATUS_REGISTERED:
		return state.StatusRegistered, nil
	case signerv1.CertStatus_CERT_STATUS_DELETION_IN_PROGRESS:
		return state.StatusDeletionInProgress, nil
	case signerv1.CertStatus_CERT_STATUS_GLOBAL_ERROR:
		return state.StatusGlobalError, nil
	}
	return "", fmt.Errorf("%w: give a certificate status (saved, registration_in_progress, registered, deletion_in_progress, global_error)", ErrInvalid)
}

func statusEnum(st string) signerv1.CertStatus {
	for _, e := range []signerv1.CertStatus{signerv1.CertStatus_CERT_STATUS_SAVED, signerv1.CertStatus_CERT_STATUS_REGISTRATION_IN_PROGRESS,
		signerv1.CertStatus_CERT_STATUS_REGISTERED, signerv1.CertStatus_CERT_STATUS_DELETION_IN_PROGRESS, signerv1.CertStatus_CERT_STATUS_GLOBAL_ERROR} {
		if n, _ := statusName(e); n == st {
			return e
		}
	}
	return signerv1.CertStatus_CERT_STATUS_UNSPECIFIED
}

func (s *Service) certMessage(ctx context.Context, r state.CertRecord) *signerv1.Certificate {
	return s.certMessageUsage(r, s.usageOf(ctx, r.Token, r.KeyID))
}

// certMessageUsage describes the certificate of r, whose key has the
// recorded usage.
func (s *Service) certMessageUsage(r state.CertRecord, usage string) *signerv1.Certificate {
	msg := &signerv1.Certificate{
		Sha256: r.SHA256, Sha1: r.SHA1, KeyId: r.KeyID, Member: r.Member, Status: statusEnum(r.Status), Active: r.Active,
		NotBefore: timestamppb.New(r.NotBefore), NotAfter: timestamppb.New(r.NotAfter), Der: r.DER, Chain: r.Chain,
		Imported: timestamppb.New(r.ImportedAt), Usage: usageEnum(usage),
	}
	if t := s.tokenBySerial(r.Token); t != nil {
		msg.Token = t.name
	}
	if c, err := x509.ParseCertificate(r.DER); err == nil {
		msg.Subject, msg.Issuer, msg.Serial = c.Subject.String(), c.Issuer.String(), c.SerialNumber.Text(16)
	}
	return msg
}

// errPrivateKey refuses an input that holds a private key.
var errPrivateKey = fmt.Errorf("%w: the input holds a private key, not a certificate; nothing was stored (a key that has been outside an HSM should be treated as compromised)", ErrInvalid)

// parseCertInput reads a certificate and its chain from PEM or DER. A PEM
// file holding a private key is refused without echoing any of it.
func parseCertInput(data []byte) ([]*x509.Certificate, error) {
	if len(data) == 0 {
		return nil, fmt.Errorf("%w: no certificate given", ErrInvalid)
	}
	if len(data) > 8*maxCertBytes {
		return nil, fmt.Errorf("%w: %d bytes is too large for a certificate and its chain", ErrInvalid, len(data))
	}
	// A private key is refused whatever shape it is in, before any
	// parsing: its bytes must never reach a log, an error or the state.
	if bytes.Contains(data, []byte("PRIVATE KEY-----")) {
		return nil, errPrivateKey
	}
	if _, err := x509.ParsePKCS8PrivateKey(data); err == nil {
		return nil, errPrivateKey
	}
	trimmed := bytes.TrimSpace(data)
	if !bytes.HasPrefix(trimmed, []byte("-----BEGIN")) {
		c, err := x509.ParseCertificate(data)
		if err != nil {
			return nil, fmt.Errorf("%w: not an X.509 certificate (PEM or DER): %w", ErrInvalid, err)
		}
		return []*x509.Certificate{c}, nil
	}
	var out []*x509.Certificate
	rest := trimmed
	for len(rest) > 0 {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			if len(bytes.TrimSpace(rest)) > 0 || len(out) == 0 {
				return nil, fmt.Errorf("%w: malformed PEM", ErrInvalid)
			}
			break
		}
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("%w: PEM block %q is not a CERTIFICATE", ErrInvalid, b.Type)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%w: PEM certificate %d: %w", ErrInvalid, len(out)+1, err)
		}
		out = append(out, c)
		rest = bytes.TrimSpace(rest)
	}
	return out, nil
}

// ImportCert implements signerv1.SignerServer. The certificate's member
// is the one given, else the one its request named, else the one its key
// is bound to; a key bound to no member yet is bound to it in the commit
// that records the certificate, and a certificate for another member than
// the key's is refused.
func (s *Service) ImportCert(ctx context.Context, req *signerv1.ImportCertRequest) (*signerv1.Certificate, error) {
	return handle(ctx, s, callerFrom(ctx), linePlan{intent: true}, audit.Record{Op: "cert.import", Detail: fmt.Sprintf("member=%q", req.GetMember())},
		func(rec *audit.Record) (*signerv1.Certificate, error) { return s.importCert(ctx, req, rec) })
}

func (s *Service) importCert(ctx context.Context, req *signerv1.ImportCertRequest, rec *audit.Record) (*signerv1.Certificate, error) {
	certs, err := parseCertInput(req.GetCertificate())
	if err != nil {
		return nil, err
	}
	for i, el := range req.GetChain() {
		more, err := parseCertInput(el)
		if err != nil {
			return nil, fmt.Errorf("chain element %d: %w", i+1, err)
		}
		certs = append(certs, more...)
	}
	cert, chain := certs[0], certs[1:]
	rec.Detail = "subject=" + cert.Subject.String()
	for i, issuer := range chain {
		child := cert
		if i > 0 {
			child = chain[i-1]
		}
		if err := child.CheckSignatureFrom(issuer); err != nil {
			return nil, fmt.Errorf("%w: chain element %d did not issue the certificate before it: %w", ErrInvalid, i+1, err)
		}
	}
	now := time.Now()
	if !req.GetForce() {
		switch {
		case now.After(cert.NotAfter):
			return nil, fmt.Errorf("%w: the certificate expired on %s (force to import it anyway)", ErrPrecondition, cert.NotAfter.UTC().Format(time.RFC3339))
		case now.Before(cert.NotBefore):
			return nil, fmt.Errorf("%w: the certificate is not valid before %s (force to import it anyway)", ErrPrecondition, cert.NotBefore.UTC().Format(time.RFC3339))
		}
	}
	sum := hexSHA256(cert.Raw)
	if existing, err := s.store.GetCert(ctx, sum); err == nil {
		rec.Key, rec.Detail = existing.KeyID, rec.Detail+" (already imported)"
		return s.certMessage(ctx, existing), nil
	} else if !errors.Is(err, state.ErrNotFound) {
		return nil, err
	}
	t, k, err := s.keyForCert(ctx, cert)
	if err != nil {
		return nil, err
	}
	rec.Token, rec.Key = t.name, k.IDHex()
	kr, err := s.store.GetKey(ctx, t.tok.Serial(), k.IDHex())
	if errors.Is(err, state.ErrNotFound) || (err == nil && kr.Usage == "") {
		return nil, fmt.Errorf("%w: key %s has no recorded usage; record it first (signerctl key rename --usage)", ErrPrecondition, k.IDHex())
	}
	if err != nil {
		return nil, err
	}
	if err := dn.CheckCertificate(cert, dn.Usage(kr.Usage)); err != nil {
		return nil, fmt.Errorf("%w: certificate for a %s key: %w", ErrInvalid, kr.Usage, err)
	}
	csrs, err := s.store.ListCSRs(ctx)
	if err != nil {
		return nil, err
	}
	var answered []state.CSRRecord
	for _, r := range csrs {
		if r.KeyID == k.IDHex() && r.Token == t.tok.Serial() && (r.Subject == cert.Subject.String() || len(answered) == 0) {
			answered = append(answered, r)
		}
	}
	member := req.GetMember()
	for _, r := range answered {
		if member == "" {
			member = r.Member
		}
	}
	if member == "" {
		member = kr.Member
	}
	if kr.Member != "" && member != kr.Member {
		return nil, boundElsewhere(k.IDHex(), kr.Member, member)
	}
	if err := s.checkServes(ctx, kr, member); err != nil {
		return nil, err
	}
	if kr.Usage == UsageSign && member == "" {
		return nil, fmt.Errorf("%w: a sign certificate belongs to a member: give the member, or import the answer to a request made with one", ErrInvalid)
	}
	created, err := t.tok.StoreCertificate(ctx, k.ID, k.Label, cert)
	if err != nil {
		return nil, fmt.Errorf("storing the certificate on the token: %w", err)
	}
	cr := state.CertRecord{DER: cert.Raw, Token: t.tok.Serial(), KeyID: k.IDHex(), Member: member, Status: state.StatusSaved,
		NotBefore: cert.NotBefore.UTC(), NotAfter: cert.NotAfter.UTC()}
	for _, ch := range chain {
		cr.Chain = append(cr.Chain, ch.Raw)
	}
	err = s.store.Update(ctx, func(tx *state.Tx) error {
		if member != "" {
			if err := tx.BindKey(kr.Token, kr.ID, member); errors.Is(err, state.ErrBound) {
				return fmt.Errorf("%w: %w", ErrPrecondition, err)
			} else if err != nil {
				return err
			}
		}
		if err := tx.PutCert(cr); err != nil {
			return err
		}
		for _, r := range answered {
			if err := tx.DeleteCSR(r.ID); err != nil && !errors.Is(err, state.ErrNotFound) {
				return err
			}
		}
		return nil
	})
	if err != nil {
		if !created {
			// The object was on the token before this import (put there
			// by another tool, or by an import whose record was lost):
			// not this call's to remove.
			return nil, fmt.Errorf("recording the certificate (the object already on the token is left there): %w", err)
		}
		if derr := t.tok.DeleteCertificate(context.WithoutCancel(ctx), cert.Raw); derr != nil {
			s.log.Error("certificate stored on the token but neither recorded nor removed", "sha256", sum, "error", derr.Error())
		}
		return nil, fmt.Errorf("recording the certificate (it was removed from the token again): %w", err)
	}
	s.forgetKeyRefs()
	s.certificatesChanged()
	stored, err := s.store.GetCert(ctx, sum)
	if err != nil {
		return nil, err
	}
	return s.certMessage(ctx, stored), nil
}

// keyForCert finds the key pair whose public key the certificate carries,
// on any logged-in token.
func (s *Service) keyForCert(ctx context.Context, cert *x509.Certificate) (*tokenEntry, hsm.Key, error) {
	pub, ok := cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok {
		return nil, hsm.Key{}, fmt.Errorf("%w: the certificate's public key type %T is not one the appliance uses", ErrInvalid, cert.PublicKey)
	}
	var skipped []string
	for _, t := range s.tokens {
		keys, err := t.tok.ListKeys(ctx)
		if isTokenUnusable(err) {
			skipped = append(skipped, t.name)
			continue
		}
		if err != nil {
			return nil, hsm.Key{}, err
		}
		for _, k := range keys {
			if k.Damage != "" {
				continue // no certificate is for it: it cannot be used
			}
			if pub.Equal(k.Public) {
				return t, k, nil
			}
		}
	}
	hint := ""
	if len(skipped) > 0 {
		hint = fmt.Sprintf(" (tokens not searched, not logged in or unavailable: %s)", strings.Join(skipped, ", "))
	}
	return nil, hsm.Key{}, fmt.Errorf("%w: the certificate's public key matches no key on any token%s", ErrPrecondition, hint)
}

// ListCerts implements signerv1.SignerServer.
func (s *Service) ListCerts(ctx context.Context, req *signerv1.ListCertsRequest) (*signerv1.ListCertsResponse, error) {
	f := state.CertFilter{Member: req.GetMember(), KeyID: strings.ToLower(req.GetKeyId())}
	if req.GetStatus() != signerv1.CertStatus_CERT_STATUS_UNSPECIFIED {
		st, err := statusName(req.GetStatus())
		if err != nil {
			return nil, err
		}
		f.Status = st
	}
	// The certificates and their keys' records in one transaction, not
	// a transaction per certificate.
	var rs []state.CertRecord
	var keys []state.KeyRecord
	err := s.store.View(ctx, func(tx *state.Tx) (err error) {
		if rs, err = tx.ListCerts(f); err != nil {
			return err
		}
		keys, err = tx.ListKeys()
		return err
	})
	if err != nil {
		return nil, err
	}
	usage := make(map[string]string, len(keys))
	for _, k := range keys {
		usage[recordKey(k.Token, k.ID)] = k.Usage
	}
	resp := &signerv1.ListCertsResponse{Certificates: make([]*signerv1.Certificate, 0, len(rs))}
	for _, r := range rs {
		resp.Certificates = append(resp.Certificates, s.certMessageUsage(r, usage[recordKey(r.Token, r.KeyID)]))
	}
	return resp, nil
}

// GetCert implements signerv1.SignerServer.
func (s *Service) GetCert(ctx context.Context, req *signerv1.CertRef) (*signerv1.Certificate, error) {
	r, err := s.store.GetCert(ctx, req.GetHash())
	if err != nil {
		return nil, err
	}
	return s.certMessage(ctx, r), nil
}

// updateCert changes a certificate's record in one transaction, audited.
func (s *Service) updateCert(ctx context.Context, op, hash string, fn func(*state.CertRecord) error) (*signerv1.Certificate, error) {
	return handle(ctx, s, callerFrom(ctx), linePlan{intent: true}, audit.Record{Op: op, Detail: "cert=" + hash},
		func(rec *audit.Record) (*signerv1.Certificate, error) {
			r, err := s.store.GetCert(ctx, hash)
			if err != nil {
				return nil, err
			}
			rec.Key, rec.Detail = r.KeyID, "cert="+r.SHA256
			if err = s.store.UpdateCert(ctx, r.SHA256, fn); err != nil {
				return nil, err
			}
			s.forgetKeyRefs()
			s.certificatesChanged()
			if r, err = s.store.GetCert(ctx, r.SHA256); err != nil {
				return nil, err
			}
			return s.certMessage(ctx, r), nil
		})
}

// ActivateCert implements signerv1.SignerServer.
func (s *Service) ActivateCert(ctx context.Context, req *signerv1.CertRef) (*signerv1.Certificate, error) {
	return s.updateCert(ctx, "cert.activate", req.GetHash(), func(r *state.CertRecord) error {
		if r.Status == state.StatusDeletionInProgress {
			return fmt.Errorf("%w: the certificate is being deleted", ErrPrecondition)
		}
		r.Active = true
		return nil
	})
}

// DeactivateCert implements signerv1.SignerServer.
func (s *Service) DeactivateCert(ctx context.Context, req *signerv1.CertRef) (*signerv1.Certificate, error) {
	return s.updateCert(ctx, "cert.deactivate", req.GetHash(), func(r *state.CertRecord) error {
		r.Active = false
		return nil
	})
}

// SetCertStatus implements signerv1.SignerServer.
func (s *Service) SetCertStatus(ctx context.Context, req *signerv1.SetCertStatusRequest) (*signerv1.Certificate, error) {
	st, err := statusName(req.GetStatus())
	if err != nil {
		return nil, err
	}
	return s.updateCert(ctx, "cert.status", req.GetHash(), func(r *state.CertRecord) error {
		r.Status = st
		return nil
	})
}

// DeleteCert implements signerv1.SignerServer: the certificate object on
// the token and its record go together.
func (s *Service) DeleteCert(ctx context.Context, req *signerv1.CertRef) (*signerv1.DeleteCertResponse, error) {
	return handle(ctx, s, callerFrom(ctx), linePlan{intent: true}, audit.Record{Op: "cert.delete", Detail: "cert=" + req.GetHash()},
		func(rec *audit.Record) (*signerv1.DeleteCertResponse, error) {
			r, err := s.store.GetCert(ctx, req.GetHash())
			if err != nil {
				return nil, err
			}
			rec.Key, rec.Detail = r.KeyID, "cert="+r.SHA256
			return &signerv1.DeleteCertResponse{}, s.deleteCertRecord(ctx, r)
		})
}

func (s *Service) deleteCertRecord(ctx context.Context, r state.CertRecord) error {
	if t := s.tokenBySerial(r.Token); t != nil {
		if err := t.tok.DeleteCertificate(ctx, r.DER); err != nil && !errors.Is(err, hsm.ErrCertNotFound) {
			return fmt.Errorf("removing the certificate from the token: %w", err)
		}
	}
	err := s.store.DeleteCert(ctx, r.SHA256)
	s.forgetKeyRefs() // after the commit: see forgetKeyRefs
	s.certificatesChanged()
	if err != nil && !errors.Is(err, state.ErrNotFound) {
		return fmt.Errorf("the certificate is gone from the token but its record stays (delete it again to clear it): %w", err)
	}
	return err
}

// GetSigningInfo implements signerv1.SignerServer: of the member's
// certificates for sign keys, the active, registered and currently valid
// one, the newest where several are; FAILED_PRECONDITION says why there is
// none.
func (s *Service) GetSigningInfo(ctx context.Context, req *signerv1.GetSigningInfoRequest) (*signerv1.SigningInfo, error) {
	c := callerFrom(ctx)
	member := req.GetMember()
	if member == "" {
		return nil, fmt.Errorf("%w: name the member", ErrInvalid)
	}
	if !c.mayUseMember(member) {
		err := fmt.Errorf("%w: %s may not sign for member %q", ErrPermission, c.peer, member)
		return nil, s.auditedOrCounted(ctx, c, audit.Record{Op: "denied", Detail: "GetSigningInfo member=" + member}, err)
	}
	rs, err := s.store.ListCerts(ctx, state.CertFilter{Member: member})
	if err != nil {
		return nil, err
	}
	now := time.Now()
	var found []state.CertRecord
	var sign, active, registered int
	for _, r := range rs {
		if s.usageOf(ctx, r.Token, r.KeyID) != UsageSign {
			continue
		}
		sign++
		if !r.Active {
			continue
		}
		active++
		if r.Status != state.StatusRegistered {
			continue
		}
		registered++
		if now.Before(r.NotBefore) || now.After(r.NotAfter) {
			continue
		}
		found = append(found, r)
	}
	switch {
	case sign == 0:
		return nil, fmt.Errorf("%w: member %q has no sign certificate", ErrPrecondition, member)
	case active == 0:
		return nil, fmt.Errorf("%w: member %q has no active sign certificate", ErrPrecondition, member)
	case registered == 0:
		return nil, fmt.Errorf("%w: member %q has no registered, active sign certificate", ErrPrecondition, member)
	case len(found) == 0:
		return nil, fmt.Errorf("%w: every active, registered sign certificate of member %q is expired or not yet valid", ErrPrecondition, member)
	}
	slices.SortFunc(found, func(a, b state.CertRecord) int {
		if c := b.NotBefore.Compare(a.NotBefore); c != 0 {
			return c
		}
		if c := b.NotAfter.Compare(a.NotAfter); c != 0 {
			return c
		}
		return b.ImportedAt.Compare(a.ImportedAt) // issued in the same second: the later import
	})
	// The newest whose OCSP status is a fresh "good" (all of them, with
	// OCSP off).
	var best state.CertRecord
	var resp *ocsp.Response
	var problems []string
	for _, r := range found {
		or, err := s.ocspUsable(r.SHA256)
		if err != nil {
			problems = append(problems, err.Error())
			continue
		}
		best, resp = r, or
		break
	}
	if best.SHA256 == "" {
		return nil, fmt.Errorf("%w: no active, registered sign certificate of member %q has a fresh good OCSP response: %s", ErrPrecondition, member, strings.Join(problems, "; "))
	}
	cert, err := x509.ParseCertificate(best.DER)
	if err != nil {
		return nil, fmt.Errorf("certificate %s: %w", best.SHA256, err)
	}
	info := &signerv1.SigningInfo{Member: member, KeyId: best.KeyID, Algorithm: signingAlgorithm(cert.PublicKey), Certificate: best.DER,
		Chain: best.Chain, CertSha256: best.SHA256}
	if t := s.tokenBySerial(best.Token); t != nil {
		info.Token = t.name
	}
	if resp != nil {
		info.OcspResponse = resp.Raw
	}
	return info, nil
}

// signingAlgorithm is the algorithm a security server uses with a key:
// SHA-256 with RSA PKCS#1 v1.5 (as X-Road does), ECDSA with the hash that
// matches the curve.
func signingAlgorithm(pub crypto.PublicKey) string {
	if k, ok := pub.(*ecdsa.PublicKey); ok {
		switch k.Curve.Params().BitSize {
		case 384:
			return "SHA384withECDSA"
		case 521:
			return "SHA512withECDSA"
		}
		return "SHA256withECDSA"
	}
	return "SHA256withRSA"
}

func hexSHA256(b []byte) string {
	h := crypto.SHA256.New()
	h.Write(b)
	return hex.EncodeToString(h.Sum(nil))
}
