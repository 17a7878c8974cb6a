package signer

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/hsmsigner/hsmsigner/hsm"
	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/audit"
	"github.com/hsmsigner/hsmsigner/signer/merkle"
	"github.com/hsmsigner/hsmsigner/signer/state"
)

// forgetKeyRefs drops the key location cache after an admin change.
func (s *Service) forgetKeyRefs() {
	s.keysMu.Lock()
	clear(s.keys)
	s.keysMu.Unlock()
}

// resolveKey finds where the key with hex id lives and what the state
// knows of it, from the cache when it can.
func (s *Service) resolveKey(ctx context.Context, idHex string) (*keyRef, error) {
	s.keysMu.RLock()
	ref := s.keys[idHex]
	s.keysMu.RUnlock()
	if ref != nil {
		return ref, nil
	}
	id, err := parseKeyID(idHex)
	if err != nil {
		return nil, err
	}
	for _, t := range s.tokens {
		rec, err := s.store.GetKey(ctx, t.tok.Serial(), idHex)
		if errors.Is(err, state.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		ref = &keyRef{tok: t, id: id, idHex: idHex, usage: rec.Usage, label: rec.Label}
		break
	}
	if ref == nil {
		t, k, _, err := s.findKey(ctx, idHex)
		if err != nil {
			return nil, err
		}
		ref = &keyRef{tok: t, id: k.ID, idHex: idHex, label: k.Label}
	}
	certs, err := s.store.ListCerts(ctx, state.CertFilter{Token: ref.tok.tok.Serial(), KeyID: idHex})
	if err != nil {
		return nil, err
	}
	for _, c := range certs {
		if c.Member != "" && !slices.Contains(ref.members, c.Member) {
			ref.members = append(ref.members, c.Member)
		}
	}
	s.keysMu.Lock()
	s.keys[idHex] = ref
	s.keysMu.Unlock()
	return ref, nil
}

// signingKey resolves the key a sign request names and checks that the
// policy lets the caller sign with it.
func (s *Service) signingKey(ctx context.Context, c caller, keyID, certHash string) (*keyRef, error) {
	if certHash != "" {
		r, err := s.store.GetCert(ctx, certHash)
		if err != nil {
			return nil, err
		}
		if !r.Active {
			return nil, fmt.Errorf("%w: certificate %s is not active", ErrPrecondition, r.SHA256)
		}
		keyID = r.KeyID
	}
	if keyID == "" {
		return nil, fmt.Errorf("%w: name the key (key_id)", ErrInvalid)
	}
	ref, err := s.resolveKey(ctx, keyID)
	if err != nil {
		return nil, err
	}
	if err := policyAllowsKey(c, ref); err != nil {
		return nil, err
	}
	return ref, nil
}

// Sign implements signerv1.SignerServer. The signature is returned only
// after its audit line is written.
func (s *Service) Sign(ctx context.Context, req *signerv1.SignRequest) (*signerv1.SignResponse, error) {
	c := callerFrom(ctx)
	resp, rec, err := s.sign(ctx, c, req)
	if err = s.audited(ctx, c, rec, err); err != nil {
		return nil, err
	}
	return resp, nil
}

// sign signs for c as Sign does and returns the audit record of the
// operation, which the caller must write before it returns the
// signature.
func (s *Service) sign(ctx context.Context, c caller, req *signerv1.SignRequest) (*signerv1.SignResponse, audit.Record, error) {
	rec := audit.Record{Op: "sign", Key: req.GetKeyId(), Digest: hexOf(req.GetDigest()), Detail: req.GetAlgorithm()}
	alg, err := hsm.ParseAlgorithm(req.GetAlgorithm())
	if err != nil {
		return nil, rec, err
	}
	ref, err := s.signingKey(ctx, c, req.GetKeyId(), req.GetCertHash())
	if err != nil {
		return nil, rec, err
	}
	rec.Token, rec.Key = ref.tok.name, ref.idHex
	sig, err := ref.tok.tok.Sign(ctx, ref.id, alg, req.GetDigest())
	if err != nil {
		return nil, rec, err
	}
	return &signerv1.SignResponse{Signature: sig, KeyId: ref.idHex, Algorithm: alg.Name}, rec, nil
}

// SignBatch implements signerv1.SignerServer.
func (s *Service) SignBatch(ctx context.Context, req *signerv1.SignBatchRequest) (*signerv1.SignBatchResponse, error) {
	c := callerFrom(ctx)
	rec := audit.Record{Op: "sign_batch", Key: req.GetKeyId(), Count: len(req.GetDigests()), Detail: req.GetAlgorithm() + " " + req.GetMode().String()}
	resp, tree, err := s.signBatch(ctx, c, req, &rec)
	if tree != nil {
		root := tree.Root()
		rec.Digest = hexOf(root[:])
	}
	if err = s.audited(ctx, c, rec, err); err != nil {
		return nil, err
	}
	return resp, nil
}

func (s *Service) signBatch(ctx context.Context, c caller, req *signerv1.SignBatchRequest, rec *audit.Record) (*signerv1.SignBatchResponse, *merkle.Tree, error) {
	digests := req.GetDigests()
	switch {
	case len(digests) == 0:
		return nil, nil, fmt.Errorf("%w: an empty batch", ErrInvalid)
	case len(digests) > s.cfg.Server.MaxBatch:
		return nil, nil, fmt.Errorf("%w: %d digests in one batch; at most %d", ErrTooLarge, len(digests), s.cfg.Server.MaxBatch)
	}
	alg, err := hsm.ParseAlgorithm(req.GetAlgorithm())
	if err != nil {
		return nil, nil, err
	}
	for i, d := range digests {
		if len(d) != alg.Hash.Size() {
			return nil, nil, fmt.Errorf("%w: digest %d: %s needs %d bytes, got %d", hsm.ErrDigestLength, i, alg.Name, alg.Hash.Size(), len(d))
		}
	}
	// The tree commits the audit line to exactly these digests.
	tree, err := merkle.New(digests)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	ref, err := s.signingKey(ctx, c, req.GetKeyId(), req.GetCertHash())
	if err != nil {
		return nil, tree, err
	}
	rec.Token, rec.Key = ref.tok.name, ref.idHex
	resp := &signerv1.SignBatchResponse{KeyId: ref.idHex, Algorithm: alg.Name, TreeSize: uint32(tree.Size())}
	switch req.GetMode() {
	case signerv1.BatchMode_BATCH_MODE_UNSPECIFIED, signerv1.BatchMode_BATCH_MODE_INDIVIDUAL:
		resp.Signatures, err = ref.tok.tok.SignMany(ctx, ref.id, alg, digests)
		return resp, tree, err
	case signerv1.BatchMode_BATCH_MODE_MERKLE:
		root := tree.Root()
		signed, err := merkle.SignedDigest(root, alg.Hash)
		if err != nil {
			return nil, tree, err
		}
		if resp.RootSignature, err = ref.tok.tok.Sign(ctx, ref.id, alg, signed); err != nil {
			return nil, tree, err
		}
		resp.Root = root[:]
		resp.Proofs = make([]*signerv1.MerkleProof, len(digests))
		for i := range digests {
			path, err := tree.Proof(i)
			if err != nil {
				return nil, tree, err
			}
			p := &signerv1.MerkleProof{Index: uint32(i), Path: make([][]byte, len(path))}
			for j := range path {
				p.Path[j] = path[j][:]
			}
			resp.Proofs[i] = p
		}
		return resp, tree, nil
	}
	return nil, tree, fmt.Errorf("%w: unknown batch mode %v", ErrInvalid, req.GetMode())
}
