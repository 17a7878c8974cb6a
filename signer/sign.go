package signer

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"

	"github.com/hsmsigner/hsmsigner/hsm"
	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/audit"
	"github.com/hsmsigner/hsmsigner/signer/merkle"
	"github.com/hsmsigner/hsmsigner/signer/state"
)

// forgetKeyRefs drops the key location cache after an admin change. Call
// it once the change is committed, never before: a fill that ran between
// the clear and the commit would cache what the change replaced. Fills
// that started before the clear are not stored (see resolveKey).
func (s *Service) forgetKeyRefs() {
	s.keysMu.Lock()
	s.keysGen++
	clear(s.keys)
	s.keysMu.Unlock()
	if h := s.keyHooks.Load(); h != nil && h.cleared != nil {
		h.cleared()
	}
}

// forgetKeyRef drops key idHex from the key location cache: the token
// said the key is gone (destroyed behind signerd's back, between resolve
// and C_SignInit). Fills that began before are not stored.
func (s *Service) forgetKeyRef(idHex string) {
	s.keysMu.Lock()
	s.keysGen++
	delete(s.keys, idHex)
	s.keysMu.Unlock()
}

// signed passes on the result of signing with ref; when the token said
// the key is not there, it first drops the key from the cache, so that
// the next call looks for it afresh; when the token is not logged in, the
// error names it as signerd.toml does and says how to log it in.
func (s *Service) signed(ref *keyRef, err error) error {
	if errors.Is(err, hsm.ErrKeyNotFound) {
		s.forgetKeyRef(ref.idHex)
	}
	return ref.tok.explain(err)
}

// explain names the token as signerd.toml does in an error about its
// login (the hsm layer names it by its PKCS#11 label), and says what an
// officer does about a token that is not logged in. Other errors pass
// unchanged.
func (t *tokenEntry) explain(err error) error {
	var pe *hsm.PINError
	switch {
	case errors.Is(err, hsm.ErrNotLoggedIn):
		return fmt.Errorf("%w: token %s (PKCS#11 label %q); an officer logs it in with `signerctl token login %s`", hsm.ErrNotLoggedIn, t.name, t.tok.Label(), t.name)
	case errors.As(err, &pe):
		return fmt.Errorf("token %s: %w", t.name, err)
	}
	return err
}

// keyCacheHooks let a test watch the key cache at the points where order
// matters; nil outside tests.
type keyCacheHooks struct {
	// filled runs when a fill has read the state and is about to store
	// what it read.
	filled func(idHex string)
	// cleared runs after the cache is cleared.
	cleared func()
}

// resolveKey finds where the key with hex id lives and what the state
// knows of it, from the cache when it can. The cache holds one entry per
// key, under its id in lower-case hex, whatever spelling a caller used;
// a fill is stored only if no admin change cleared the cache since it
// began, so it never brings back what a committed change replaced.
func (s *Service) resolveKey(ctx context.Context, idHex string) (*keyRef, error) {
	s.keysMu.RLock()
	ref, gen := s.keys[idHex], s.keysGen
	s.keysMu.RUnlock()
	if ref != nil {
		return ref, nil
	}
	id, err := parseKeyID(idHex)
	if err != nil {
		return nil, err
	}
	idHex = hex.EncodeToString(id)
	ref, err = s.keyFromState(ctx, id, idHex)
	if err != nil {
		return nil, err
	}
	if ref == nil {
		t, k, _, err := s.findKey(ctx, idHex)
		if err != nil {
			return nil, err
		}
		ref = &keyRef{tok: t, id: k.ID, idHex: idHex, label: k.Label}
	}
	if h := s.keyHooks.Load(); h != nil && h.filled != nil {
		h.filled(idHex)
	}
	s.keysMu.Lock()
	if s.keysGen == gen {
		s.keys[idHex] = ref
	}
	s.keysMu.Unlock()
	return ref, nil
}

// keyFromState reads, in one transaction, the first token's record of the
// key and the members it serves: the member it is bound to and, for a key
// recorded before bindings were, the members its certificates and open
// requests name. It returns nil when no token's record has the key.
func (s *Service) keyFromState(ctx context.Context, id []byte, idHex string) (*keyRef, error) {
	var ref *keyRef
	err := s.store.View(ctx, func(tx *state.Tx) error {
		for _, t := range s.tokens {
			rec, err := tx.GetKey(t.tok.Serial(), idHex)
			if errors.Is(err, state.ErrNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			ref = &keyRef{tok: t, id: id, idHex: idHex, usage: rec.Usage, label: rec.Label}
			ref.members, err = keyMembers(tx, rec)
			return err
		}
		return nil
	})
	return ref, err
}

// keyMembers returns the members the key of rec serves: those it is
// bound to and, for a key recorded before bindings were and not bound
// yet (see bindRecorded), those its certificates and requests name.
func keyMembers(tx *state.Tx, rec state.KeyRecord) ([]string, error) {
	var members []string
	add := func(m string) {
		if m != "" && !slices.Contains(members, m) {
			members = append(members, m)
		}
	}
	for _, m := range rec.Members() {
		add(m)
	}
	certs, err := tx.ListCerts(state.CertFilter{Token: rec.Token, KeyID: rec.ID})
	if err != nil {
		return nil, err
	}
	for _, c := range certs {
		add(c.Member)
	}
	csrs, err := tx.ListCSRs()
	if err != nil {
		return nil, err
	}
	for _, r := range csrs {
		if r.Token == rec.Token && r.KeyID == rec.ID {
			add(r.Member)
		}
	}
	return members, nil
}

// checkServes refuses member for the key of rec when the key serves
// another member already (see keyMembers); an empty member passes.
func (s *Service) checkServes(ctx context.Context, rec state.KeyRecord, member string) error {
	if member == "" {
		return nil
	}
	var members []string
	err := s.store.View(ctx, func(tx *state.Tx) (err error) {
		members, err = keyMembers(tx, rec)
		return err
	})
	if err != nil {
		return err
	}
	for _, m := range members {
		if m != member {
			return boundElsewhere(rec.ID, m, member)
		}
	}
	return nil
}

// signingKey resolves the key a sign request names and checks that the
// policy lets the caller sign with it. It names the key in rec (and its
// token, once known) as soon as it knows it, so that a refusal of a
// request by certificate hash is audited with the certificate's key.
func (s *Service) signingKey(ctx context.Context, c caller, keyID, certHash string, rec *audit.Record) (*keyRef, error) {
	if certHash != "" {
		r, err := s.store.GetCert(ctx, certHash)
		if err != nil {
			return nil, err
		}
		rec.Key = r.KeyID
		if t := s.tokenBySerial(r.Token); t != nil {
			rec.Token = t.name
		}
		if !r.Active {
			return nil, fmt.Errorf("%w: certificate %s is not active", ErrPrecondition, r.SHA256)
		}
		if s.ocspRevoked(r.SHA256) {
			return nil, fmt.Errorf("%w: certificate %s, or a CA of its chain, is revoked (OCSP)", ErrPrecondition, r.SHA256)
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
	rec.Token, rec.Key = ref.tok.name, ref.idHex
	if err := c.mayUseKey(ref); err != nil {
		return nil, err
	}
	if cert := s.ocspRevokedCertOfKey(ref); cert != "" {
		return nil, fmt.Errorf("%w: key %s has a revoked certificate or issuing CA (%s, OCSP): it signs no more", ErrPrecondition, ref.idHex, cert)
	}
	return ref, nil
}

// Sign implements signerv1.SignerServer. The signature is returned only
// after its audit line is written.
func (s *Service) Sign(ctx context.Context, req *signerv1.SignRequest) (*signerv1.SignResponse, error) {
	c := callerFrom(ctx)
	return handle(ctx, s, c, linePlan{counted: true}, signRecord(req),
		func(rec *audit.Record) (*signerv1.SignResponse, error) { return s.sign(ctx, c, req, rec) })
}

// signRecord is the audit line of a sign request as known before it is
// signed.
func signRecord(req *signerv1.SignRequest) audit.Record {
	return audit.Record{Op: "sign", Key: req.GetKeyId(), Digest: hexOf(req.GetDigest()), Detail: req.GetAlgorithm()}
}

// sign signs for c as Sign does, naming the key and its token in rec as
// soon as it knows them.
func (s *Service) sign(ctx context.Context, c caller, req *signerv1.SignRequest, rec *audit.Record) (*signerv1.SignResponse, error) {
	alg, err := hsm.ParseAlgorithm(req.GetAlgorithm())
	if err != nil {
		return nil, err
	}
	ref, err := s.signingKey(ctx, c, req.GetKeyId(), req.GetCertHash(), rec)
	if err != nil {
		return nil, err
	}
	hook := s.signHook.Load()
	if hook != nil {
		(*hook)(true)
	}
	sig, err := ref.tok.tok.Sign(ctx, ref.id, alg, req.GetDigest())
	if hook != nil {
		(*hook)(false)
	}
	if err = s.signed(ref, err); err != nil {
		return nil, err
	}
	return &signerv1.SignResponse{Signature: sig, KeyId: ref.idHex, Algorithm: alg.Name}, nil
}

// SignBatch implements signerv1.SignerServer.
func (s *Service) SignBatch(ctx context.Context, req *signerv1.SignBatchRequest) (*signerv1.SignBatchResponse, error) {
	c := callerFrom(ctx)
	return handle(ctx, s, c, linePlan{counted: true},
		audit.Record{Op: "sign_batch", Key: req.GetKeyId(), Count: len(req.GetDigests()), Detail: req.GetAlgorithm() + " " + req.GetMode().String()},
		func(rec *audit.Record) (*signerv1.SignBatchResponse, error) { return s.signBatch(ctx, c, req, rec) })
}

// signBatch signs a batch for c, naming in rec the Merkle root of its
// digests once they are known good, and the key and its token.
func (s *Service) signBatch(ctx context.Context, c caller, req *signerv1.SignBatchRequest, rec *audit.Record) (*signerv1.SignBatchResponse, error) {
	digests := req.GetDigests()
	switch {
	case len(digests) == 0:
		return nil, fmt.Errorf("%w: an empty batch", ErrInvalid)
	case len(digests) > s.cfg.Server.MaxBatch:
		return nil, fmt.Errorf("%w: %d digests in one batch; at most %d", ErrTooLarge, len(digests), s.cfg.Server.MaxBatch)
	}
	alg, err := hsm.ParseAlgorithm(req.GetAlgorithm())
	if err != nil {
		return nil, err
	}
	for i, d := range digests {
		if len(d) != alg.Hash.Size() {
			return nil, fmt.Errorf("%w: digest %d: %s needs %d bytes, got %d", hsm.ErrDigestLength, i, alg.Name, alg.Hash.Size(), len(d))
		}
	}
	// The tree commits the audit line to exactly these digests.
	tree, err := merkle.New(digests)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	root := tree.Root()
	rec.Digest = hexOf(root[:])
	ref, err := s.signingKey(ctx, c, req.GetKeyId(), req.GetCertHash(), rec)
	if err != nil {
		return nil, err
	}
	resp := &signerv1.SignBatchResponse{KeyId: ref.idHex, Algorithm: alg.Name, TreeSize: uint32(tree.Size())}
	switch req.GetMode() {
	case signerv1.BatchMode_BATCH_MODE_UNSPECIFIED, signerv1.BatchMode_BATCH_MODE_INDIVIDUAL:
		resp.Signatures, err = ref.tok.tok.SignMany(ctx, ref.id, alg, digests)
		return resp, s.signed(ref, err)
	case signerv1.BatchMode_BATCH_MODE_MERKLE:
		signed, err := merkle.SignedDigest(root, alg.Hash)
		if err != nil {
			return nil, err
		}
		resp.RootSignature, err = ref.tok.tok.Sign(ctx, ref.id, alg, signed)
		if err = s.signed(ref, err); err != nil {
			return nil, err
		}
		resp.Root = root[:]
		resp.Proofs = make([]*signerv1.MerkleProof, len(digests))
		for i := range digests {
			path, err := tree.Proof(i)
			if err != nil {
				return nil, err
			}
			p := &signerv1.MerkleProof{Index: uint32(i), Path: make([][]byte, len(path))}
			for j := range path {
				p.Path[j] = path[j][:]
			}
			resp.Proofs[i] = p
		}
		return resp, nil
	}
	return nil, fmt.Errorf("%w: unknown batch mode %v", ErrInvalid, req.GetMode())
}
