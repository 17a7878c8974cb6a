package signer

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/audit"
	"github.com/hsmsigner/hsmsigner/signer/dn"
	"github.com/hsmsigner/hsmsigner/signer/state"
)

func csrMessage(t *tokenEntry, r state.CSRRecord, usage string, format signerv1.CsrFormat) *signerv1.CSR {
	msg := &signerv1.CSR{Id: r.ID, KeyId: r.KeyID, Member: r.Member, Subject: r.Subject, Created: timestamppb.New(r.CreatedAt), Usage: usageEnum(usage)}
	if t != nil {
		msg.Token = t.name
	}
	if format == signerv1.CsrFormat_CSR_FORMAT_DER {
		msg.Csr = r.DER
	} else {
		msg.Csr = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: r.DER})
	}
	return msg
}

// tokenBySerial returns the configured token with serial, or nil.
func (s *Service) tokenBySerial(serial string) *tokenEntry {
	for _, t := range s.tokens {
		if t.tok.Serial() == serial {
			return t
		}
	}
	return nil
}

// GenerateCSR implements signerv1.SignerServer. The request is signed
// inside the HSM through the key's crypto.Signer and kept in the state
// until a certificate answers it. A request that names a member binds the
// key to that member, committed with the request; a request naming
// another member than the key is bound to is refused.
func (s *Service) GenerateCSR(ctx context.Context, req *signerv1.GenerateCSRRequest) (*signerv1.CSR, error) {
	return handle(ctx, s, callerFrom(ctx), linePlan{intent: true},
		audit.Record{Op: "csr.generate", Key: req.GetKeyId(), Detail: fmt.Sprintf("subject=%q member=%q", req.GetSubject(), req.GetMember())},
		func(rec *audit.Record) (*signerv1.CSR, error) { return s.generateCSR(ctx, req, rec) })
}

// generateCSR makes the request; its outcome line names the key's token.
func (s *Service) generateCSR(ctx context.Context, req *signerv1.GenerateCSRRequest, rec *audit.Record) (*signerv1.CSR, error) {
	t, k, kr, err := s.findKey(ctx, req.GetKeyId())
	if err != nil {
		return nil, err
	}
	if kr == nil || kr.Usage == "" {
		return nil, fmt.Errorf("%w: key %s has no recorded usage; record it first (signerctl key rename --usage)", ErrPrecondition, k.IDHex())
	}
	if err := s.checkServes(ctx, *kr, req.GetMember()); err != nil {
		return nil, err
	}
	tmpl, err := dn.RequestTemplate(req.GetSubject(), dn.Usage(kr.Usage), k.Public, req.GetDnsNames(), req.GetEmails(), req.GetUris())
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	signer, err := t.tok.Signer(ctx, k.ID)
	if err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, signer)
	if err != nil {
		return nil, fmt.Errorf("signing the request in the HSM: %w", err)
	}
	parsed, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("the request just made does not parse: %w", err)
	}
	if err := parsed.CheckSignature(); err != nil {
		return nil, fmt.Errorf("the request just made does not verify: %w", err)
	}
	id := make([]byte, 8)
	if _, err := rand.Read(id); err != nil {
		return nil, err
	}
	r := state.CSRRecord{ID: hex.EncodeToString(id), Token: t.tok.Serial(), KeyID: k.IDHex(), Member: req.GetMember(),
		Subject: parsed.Subject.String(), DER: der, CreatedAt: time.Now().UTC()}
	// The request binds the key to its member in the same commit: from
	// then on only the member's clients may sign with the key.
	err = s.store.Update(ctx, func(tx *state.Tx) error {
		if r.Member != "" {
			if err := tx.BindKey(kr.Token, kr.ID, r.Member); errors.Is(err, state.ErrBound) {
				return fmt.Errorf("%w: %w", ErrPrecondition, err)
			} else if err != nil {
				return err
			}
		}
		return tx.PutCSR(r)
	})
	if err != nil {
		return nil, err
	}
	s.forgetKeyRefs()
	msg := csrMessage(t, r, kr.Usage, req.GetFormat())
	rec.Token = msg.Token
	return msg, nil
}

// boundElsewhere refuses a request or certificate for member want with a
// key bound to member bound.
func boundElsewhere(keyID, bound, want string) error {
	return fmt.Errorf("%w: key %s is bound to member %q; it serves no other member (%q): make a new key for that member", ErrPrecondition, keyID, bound, want)
}

// ListCSRs implements signerv1.SignerServer.
func (s *Service) ListCSRs(ctx context.Context, _ *signerv1.ListCSRsRequest) (*signerv1.ListCSRsResponse, error) {
	rs, err := s.store.ListCSRs(ctx)
	if err != nil {
		return nil, err
	}
	resp := &signerv1.ListCSRsResponse{}
	for _, r := range rs {
		resp.Csrs = append(resp.Csrs, csrMessage(s.tokenBySerial(r.Token), r, s.usageOf(ctx, r.Token, r.KeyID), signerv1.CsrFormat_CSR_FORMAT_PEM))
	}
	return resp, nil
}

// GetCSR implements signerv1.SignerServer.
func (s *Service) GetCSR(ctx context.Context, req *signerv1.GetCSRRequest) (*signerv1.CSR, error) {
	r, err := s.store.GetCSR(ctx, req.GetId())
	if err != nil {
		return nil, err
	}
	return csrMessage(s.tokenBySerial(r.Token), r, s.usageOf(ctx, r.Token, r.KeyID), req.GetFormat()), nil
}

// DeleteCSR implements signerv1.SignerServer.
func (s *Service) DeleteCSR(ctx context.Context, req *signerv1.DeleteCSRRequest) (*signerv1.DeleteCSRResponse, error) {
	return handle(ctx, s, callerFrom(ctx), linePlan{intent: true}, audit.Record{Op: "csr.delete", Detail: "id=" + req.GetId()},
		func(*audit.Record) (*signerv1.DeleteCSRResponse, error) {
			return &signerv1.DeleteCSRResponse{}, s.store.DeleteCSR(ctx, req.GetId())
		})
}

// usageOf returns the recorded usage of a key, or "".
func (s *Service) usageOf(ctx context.Context, tokenSerial, keyID string) string {
	kr, err := s.store.GetKey(ctx, tokenSerial, keyID)
	if err != nil {
		return ""
	}
	return kr.Usage
}
