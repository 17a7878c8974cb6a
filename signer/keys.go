package signer

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hsmsigner/hsmsigner/hsm"
	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/audit"
	"github.com/hsmsigner/hsmsigner/signer/state"
)

// Key usages as the state and the policy name them.
const (
	UsageSign = "sign"
	UsageAuth = "auth"
	UsageTSA  = "tsa"
	// UsageAudit marks the key that signs the audit log's checkpoints; no
	// client rule reaches it unless it grants usage "audit".
	UsageAudit = "audit"
)

func usageName(u signerv1.KeyUsage) (string, error) {
	switch u {
	case signerv1.KeyUsage_KEY_USAGE_SIGN:
		return UsageSign, nil
	case signerv1.KeyUsage_KEY_USAGE_AUTH:
		return UsageAuth, nil
	case signerv1.KeyUsage_KEY_USAGE_TSA:
		return UsageTSA, nil
	case signerv1.KeyUsage_KEY_USAGE_AUDIT:
		return UsageAudit, nil
	}
	return "", fmt.Errorf("%w: give a key usage (sign, auth, tsa or audit)", ErrInvalid)
}

func usageEnum(u string) signerv1.KeyUsage {
	switch u {
	case UsageSign:
		return signerv1.KeyUsage_KEY_USAGE_SIGN
	case UsageAuth:
		return signerv1.KeyUsage_KEY_USAGE_AUTH
	case UsageTSA:
		return signerv1.KeyUsage_KEY_USAGE_TSA
	case UsageAudit:
		return signerv1.KeyUsage_KEY_USAGE_AUDIT
	}
	return signerv1.KeyUsage_KEY_USAGE_UNSPECIFIED
}

// keyMessage describes a key, with its attributes as k holds them (read
// from the token by the hsm lookups); rec is its state record, or nil.
func keyMessage(t *tokenEntry, k hsm.Key, rec *state.KeyRecord) *signerv1.Key {
	id := k.IDHex()
	if len(k.ID) == 0 {
		id = NoIDKeyRef
	}
	msg := &signerv1.Key{
		Id: id, Token: t.name, Label: k.Label, Type: k.Type.String(), Bits: int32(k.Bits), Curve: k.Curve,
		Sensitive: k.Attrs.Sensitive, Extractable: k.Attrs.Extractable, CanDecrypt: k.Attrs.Decrypt,
		CanSignRecover: k.Attrs.SignRecover, Modifiable: k.Attrs.Modifiable, Copyable: k.Attrs.Copyable,
	}
	for _, m := range k.Attrs.AllowedMechanisms {
		msg.AllowedMechanisms = append(msg.AllowedMechanisms, hsm.MechanismName(m))
	}
	if err := k.AttributeProblem(); err != nil {
		msg.AttributeProblem = err.Error()
	}
	if der, err := x509.MarshalPKIXPublicKey(k.Public); err == nil {
		msg.PublicKey = der
	}
	switch {
	case k.Damage != "":
		// It signs with nothing.
	case k.Type == hsm.KeyRSA:
		msg.Algorithms = []string{"SHA256withRSA", "SHA384withRSA", "SHA512withRSA", "SHA256withRSAandMGF1", "SHA384withRSAandMGF1", "SHA512withRSAandMGF1"}
	case k.Type == hsm.KeyEC:
		msg.Algorithms = []string{"SHA256withECDSA", "SHA384withECDSA", "SHA512withECDSA"}
	}
	if rec != nil {
		msg.Known, msg.Name, msg.Usage = true, rec.Name, usageEnum(rec.Usage)
		msg.BoundMember = strings.Join(rec.Members(), ", ")
		msg.Created = timestamppb.New(rec.CreatedAt)
	}
	return msg
}

// GenerateKey implements signerv1.SignerServer. The key pair is made in
// the HSM, then recorded in the state; if recording fails the pair is
// destroyed again, so nothing is left half-done.
func (s *Service) GenerateKey(ctx context.Context, req *signerv1.GenerateKeyRequest) (*signerv1.Key, error) {
	return handle(ctx, s, callerFrom(ctx), linePlan{intent: true},
		audit.Record{Op: "key.generate", Token: req.GetToken(), Detail: fmt.Sprintf("label=%q algorithm=%s usage=%s", req.GetLabel(), req.GetAlgorithm(), req.GetUsage())},
		func(rec *audit.Record) (*signerv1.Key, error) { return s.generateKey(ctx, req, rec) })
}

// generateKey makes and records the key pair; its outcome line names the
// key.
func (s *Service) generateKey(ctx context.Context, req *signerv1.GenerateKeyRequest, rec *audit.Record) (*signerv1.Key, error) {
	t, err := s.token(req.GetToken())
	if err != nil {
		return nil, err
	}
	spec, err := hsm.ParseKeySpec(req.GetAlgorithm())
	if err != nil {
		return nil, err
	}
	usage, err := usageName(req.GetUsage())
	if err != nil {
		return nil, err
	}
	k, err := t.tok.GenerateKey(ctx, spec, req.GetLabel())
	if err != nil {
		return nil, err
	}
	now := time.Now().UTC()
	kr := state.KeyRecord{Token: t.tok.Serial(), ID: k.IDHex(), Label: k.Label, Name: req.GetName(), Usage: usage, Spec: string(spec), CreatedAt: now, UpdatedAt: now}
	if err := s.store.CreateKey(ctx, kr); err != nil {
		if derr := t.tok.DeleteKey(context.WithoutCancel(ctx), k.ID); derr != nil {
			s.log.Error("key generated but neither recorded nor removed", "key", k.IDHex(), "error", derr.Error())
		}
		return nil, fmt.Errorf("recording the key (it was removed from the HSM again): %w", err)
	}
	msg := keyMessage(t, k, &kr)
	rec.Key = msg.Id
	return msg, nil
}

// ListKeys implements signerv1.SignerServer.
func (s *Service) ListKeys(ctx context.Context, req *signerv1.ListKeysRequest) (*signerv1.ListKeysResponse, error) {
	resp := &signerv1.ListKeysResponse{SkippedTokens: map[string]string{}}
	// Every record, in one transaction: a transaction per key would
	// cost more than the key's own listing.
	recs, err := s.keyRecords(ctx)
	if err != nil {
		return nil, err
	}
	for _, t := range s.tokens {
		if req.GetToken() != "" && t.name != req.GetToken() {
			continue
		}
		keys, err := t.tok.ListKeys(ctx)
		if isTokenUnusable(err) {
			resp.SkippedTokens[t.name] = t.explain(err).Error()
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("token %q: %w", t.name, err)
		}
		for _, k := range keys {
			if rec, ok := recs[recordKey(t.tok.Serial(), k.IDHex())]; ok {
				resp.Keys = append(resp.Keys, keyMessage(t, k, &rec))
			} else {
				resp.Keys = append(resp.Keys, keyMessage(t, k, nil))
			}
		}
	}
	if req.GetToken() != "" {
		if _, err := s.token(req.GetToken()); err != nil {
			return nil, err
		}
	}
	return resp, nil
}

// findKey returns the token and key for a hex key id, looking on every
// token.
func (s *Service) findKey(ctx context.Context, idHex string) (*tokenEntry, hsm.Key, *state.KeyRecord, error) {
	return s.findKeyOn(ctx, idHex, nil)
}

// findKeyOn is findKey on the token only, or on every token when only is
// nil.
func (s *Service) findKeyOn(ctx context.Context, idHex string, only *tokenEntry) (*tokenEntry, hsm.Key, *state.KeyRecord, error) {
	id, err := parseKeyID(idHex)
	if err != nil {
		return nil, hsm.Key{}, nil, err
	}
	var firstErr error
	for _, t := range s.tokens {
		if only != nil && t != only {
			continue
		}
		k, err := t.tok.KeyByID(ctx, id)
		if err != nil {
			if firstErr == nil || errors.Is(firstErr, hsm.ErrKeyNotFound) {
				firstErr = err
			}
			continue
		}
		rec, err := s.store.GetKey(ctx, t.tok.Serial(), k.IDHex())
		switch {
		case errors.Is(err, state.ErrNotFound):
			return t, k, nil, nil
		case err != nil:
			return nil, hsm.Key{}, nil, err
		}
		return t, k, &rec, nil
	}
	if firstErr == nil || errors.Is(firstErr, hsm.ErrKeyNotFound) {
		return nil, hsm.Key{}, nil, fmt.Errorf("%w: %s", hsm.ErrKeyNotFound, idHex)
	}
	return nil, hsm.Key{}, nil, firstErr
}

// maxKeyIDBytes bounds a key id (a CKA_ID; signerd makes 16-byte ones).
const maxKeyIDBytes = 128

// parseKeyID reads a key id given in hex, in either case. Its one
// spelling, in the cache and the audit log, is the lower-case hex of the
// result (see canonicalKeyID).
func parseKeyID(idHex string) ([]byte, error) {
	if len(idHex) > 2*maxKeyIDBytes {
		return nil, fmt.Errorf("%w: a key id of %d characters; a key id has at most %d hex digits", ErrInvalid, len(idHex), 2*maxKeyIDBytes)
	}
	id, err := hex.DecodeString(idHex)
	if err != nil || len(id) == 0 {
		return nil, fmt.Errorf("%w: key id %q is not hex", ErrInvalid, idHex)
	}
	return id, nil
}

// GetKey implements signerv1.SignerServer. A caller that is not an admin
// sees only keys the policy lets it sign with; a refusal is audited.
func (s *Service) GetKey(ctx context.Context, req *signerv1.GetKeyRequest) (*signerv1.Key, error) {
	if c := callerFrom(ctx); !c.admin {
		ref, err := s.resolveKey(ctx, req.GetKeyId())
		if err != nil {
			return nil, err
		}
		if err := c.mayUseKey(ref); err != nil {
			return nil, s.auditedOrCounted(ctx, c, audit.Record{Op: "denied", Token: ref.tok.name, Key: ref.idHex, Detail: "GetKey"}, err)
		}
	}
	t, k, rec, err := s.findKey(ctx, req.GetKeyId())
	if err != nil {
		return nil, err
	}
	return keyMessage(t, k, rec), nil
}

// DeleteKey implements signerv1.SignerServer.
func (s *Service) DeleteKey(ctx context.Context, req *signerv1.DeleteKeyRequest) (*signerv1.DeleteKeyResponse, error) {
	return handle(ctx, s, callerFrom(ctx), linePlan{intent: true}, audit.Record{Op: "key.delete", Key: req.GetKeyId()},
		func(rec *audit.Record) (*signerv1.DeleteKeyResponse, error) {
			return &signerv1.DeleteKeyResponse{}, s.deleteKey(ctx, req, rec)
		})
}

func (s *Service) deleteKey(ctx context.Context, req *signerv1.DeleteKeyRequest, rec *audit.Record) error {
	ref, only, err := s.deleteTarget(req.GetKeyId())
	if err != nil {
		return err
	}
	if ref == NoIDKeyRef {
		return s.deleteWithoutID(ctx, rec, only)
	}
	t, k, kr, err := s.findKeyOn(ctx, ref, only)
	if errors.Is(err, hsm.ErrKeyNotFound) {
		return s.deleteRemains(ctx, req, ref, only, rec, err)
	}
	if err != nil {
		return err
	}
	rec.Token = t.name
	if only == nil {
		// The id also naming objects on another token (damage, or a
		// copy of the key) makes "delete ID" ambiguous: the officer who
		// saw damage under the id would delete the whole key here.
		if others := s.tokensWithID(ctx, t, k.ID); len(others) > 0 {
			return fmt.Errorf("%w: key %s is on token %s, and objects with its id are also on token(s) %s; name the token: key delete %s%s%s",
				ErrPrecondition, k.IDHex(), t.name, strings.Join(others, ", "), k.IDHex(), TokenRefSep, t.name)
		}
	}
	defer s.forgetKeyRefs()
	defer s.certificatesChanged() // its certificates may go with it
	certs, err := s.store.ListCerts(ctx, state.CertFilter{Token: t.tok.Serial(), KeyID: k.IDHex()})
	if err != nil {
		return err
	}
	if len(certs) > 0 && !req.GetForce() {
		return fmt.Errorf("%w: key %s has %d certificate(s); delete them first, or force to delete the key with them", ErrPrecondition, k.IDHex(), len(certs))
	}
	// The token objects (key pair and certificates, which share the id)
	// go first: once they are gone the records must follow.
	if err := t.tok.DeleteKey(ctx, k.ID); err != nil {
		return err
	}
	csrs, err := s.store.ListCSRs(ctx)
	if err != nil {
		return err
	}
	err = s.store.Update(ctx, func(tx *state.Tx) error {
		for _, c := range certs {
			if err := tx.DeleteCert(c.SHA256); err != nil && !errors.Is(err, state.ErrNotFound) {
				return err
			}
		}
		for _, r := range csrs {
			if r.KeyID == k.IDHex() && r.Token == t.tok.Serial() {
				if err := tx.DeleteCSR(r.ID); err != nil && !errors.Is(err, state.ErrNotFound) {
					return err
				}
			}
		}
		if kr != nil {
			if err := tx.DeleteKey(kr.Token, kr.ID); err != nil && !errors.Is(err, state.ErrNotFound) {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("the key is gone from the HSM but its records stay: %w", err)
	}
	if len(certs) > 0 {
		rec.Detail = fmt.Sprintf("with %d certificate(s)", len(certs))
	}
	return nil
}

// deleteRemains deletes what is left of a key that no token holds whole:
// a private key object without its public key (Key.Damage: a deletion or
// generation cut short), and the key's records with its certificates and
// requests (reconcile.missing_key: a deletion cut short between the HSM
// and the state, or a key deleted outside signerd). Only tokens that are
// logged in are searched. With neither it returns notFound.
func (s *Service) deleteRemains(ctx context.Context, req *signerv1.DeleteKeyRequest, idRef string, only *tokenEntry, rec *audit.Record, notFound error) error {
	id, err := parseKeyID(idRef)
	if err != nil {
		return err
	}
	idHex := hex.EncodeToString(id)
	for _, t := range s.tokens {
		if (only != nil && t != only) || !t.tok.LoggedIn() {
			continue
		}
		kr, err := s.store.GetKey(ctx, t.tok.Serial(), idHex)
		if errors.Is(err, state.ErrNotFound) {
			gone, err := destroyRemains(ctx, t, id)
			if len(gone) > 0 {
				rec.Token = t.name
				rec.Detail = "damaged: destroyed " + objectList(gone) + "; no record"
			}
			if err != nil {
				return err
			}
			if len(gone) > 0 {
				return nil
			}
			continue
		}
		if err != nil {
			return err
		}
		rec.Token = t.name
		defer s.forgetKeyRefs()
		defer s.certificatesChanged()
		certs, err := s.store.ListCerts(ctx, state.CertFilter{Token: kr.Token, KeyID: kr.ID})
		if err != nil {
			return err
		}
		if len(certs) > 0 && !req.GetForce() {
			return fmt.Errorf("%w: key %s has %d certificate(s); delete them first, or force to delete the key with them", ErrPrecondition, kr.ID, len(certs))
		}
		gone, err := destroyRemains(ctx, t, id)
		if err != nil {
			if len(gone) > 0 {
				rec.Detail = "damaged: destroyed " + objectList(gone) + " before failing; the record stays"
			}
			return err
		}
		csrs, err := s.store.ListCSRs(ctx)
		if err != nil {
			return err
		}
		err = s.store.Update(ctx, func(tx *state.Tx) error {
			for _, c := range certs {
				if err := tx.DeleteCert(c.SHA256); err != nil && !errors.Is(err, state.ErrNotFound) {
					return err
				}
			}
			for _, r := range csrs {
				if r.KeyID == kr.ID && r.Token == kr.Token {
					if err := tx.DeleteCSR(r.ID); err != nil && !errors.Is(err, state.ErrNotFound) {
						return err
					}
				}
			}
			return tx.DeleteKey(kr.Token, kr.ID)
		})
		if err != nil {
			return err
		}
		what := "record only: the token holds no such key"
		if len(gone) > 0 {
			what = "damaged: destroyed " + objectList(gone) + ", and the record"
		}
		rec.Detail = fmt.Sprintf("%s; with %d certificate(s)", what, len(certs))
		return nil
	}
	return notFound
}

// destroyRemains destroys the objects with CKA_ID id on t, which holds
// no whole key pair with that id (hsm.Token.DeleteDamaged), and returns
// them; none when t holds no object with the id.
func destroyRemains(ctx context.Context, t *tokenEntry, id []byte) ([]hsm.Object, error) {
	gone, err := t.tok.DeleteDamaged(ctx, id)
	if errors.Is(err, hsm.ErrKeyNotFound) && len(gone) == 0 {
		return nil, nil
	}
	return gone, err
}

// objectList names the objects for an audit line.
func objectList(objs []hsm.Object) string {
	names := make([]string, len(objs))
	for i, o := range objs {
		names[i] = o.String()
	}
	return strings.Join(names, ", ")
}

// tokensWithID names the logged-in tokens other than t that hold an
// object with CKA_ID id. A token that cannot answer is named too, with
// why: an id it may hold is as ambiguous.
func (s *Service) tokensWithID(ctx context.Context, t *tokenEntry, id []byte) []string {
	var out []string
	for _, o := range s.tokens {
		if o == t || !o.tok.LoggedIn() {
			continue
		}
		found, err := o.tok.HasObjectsWithID(ctx, id)
		switch {
		case err != nil:
			out = append(out, fmt.Sprintf("%s (not searched: %v)", o.name, err))
		case found:
			out = append(out, o.name)
		}
	}
	return out
}

// TokenRefSep joins a key id (or NoIDKeyRef) and a token name in a
// DeleteKeyRequest's key_id: "ID@TOKEN" deletes on that token alone. It
// is needed when an id names objects on more than one token.
const TokenRefSep = "@"

// deleteTarget splits a DeleteKeyRequest's key_id into the key id (hex,
// or NoIDKeyRef) and the token it names after TokenRefSep, or nil.
func (s *Service) deleteTarget(keyID string) (string, *tokenEntry, error) {
	ref, name, scoped := strings.Cut(keyID, TokenRefSep)
	if !scoped {
		return keyID, nil, nil
	}
	if name == "" {
		return "", nil, fmt.Errorf("%w: %q names no token after %q", ErrInvalid, keyID, TokenRefSep)
	}
	t, err := s.token(name)
	if err != nil {
		return "", nil, err
	}
	return ref, t, nil
}

// NoIDKeyRef is the key id under which ListKeys lists an object without a
// CKA_ID (hsm.Key.Damage: a private key, public key or certificate object
// that a key generation or certificate import cut short leaves), and with
// which DeleteKey destroys every such object on the logged-in tokens, or
// on one with NoIDKeyRef+TokenRefSep+TOKEN: no other name can tell them
// apart, and none can be used. It is not hex, so no key id is ever it.
const NoIDKeyRef = "no-id"

// deleteWithoutID destroys every object without a CKA_ID on the logged-in
// tokens, or on only when it is not nil (see NoIDKeyRef), and names each
// in the audit line.
func (s *Service) deleteWithoutID(ctx context.Context, rec *audit.Record, only *tokenEntry) error {
	var done []string
	defer func() {
		if len(done) > 0 {
			rec.Detail = "damaged: objects without CKA_ID destroyed: " + strings.Join(done, "; ")
		}
	}()
	for _, t := range s.tokens {
		if (only != nil && t != only) || !t.tok.LoggedIn() {
			continue
		}
		gone, err := t.tok.DeleteKeysWithoutID(ctx)
		if len(gone) > 0 {
			if rec.Token == "" {
				rec.Token = t.name
			}
			done = append(done, fmt.Sprintf("%d on token %s (%s)", len(gone), t.name, objectList(gone)))
		}
		if errors.Is(err, hsm.ErrKeyNotFound) && len(gone) == 0 {
			continue
		}
		if err != nil {
			return fmt.Errorf("token %q: %w", t.name, err)
		}
	}
	if len(done) == 0 {
		return fmt.Errorf("%w: no object without CKA_ID on a logged-in token", hsm.ErrKeyNotFound)
	}
	return nil
}

// RenameKey implements signerv1.SignerServer.
func (s *Service) RenameKey(ctx context.Context, req *signerv1.RenameKeyRequest) (*signerv1.Key, error) {
	return handle(ctx, s, callerFrom(ctx), linePlan{intent: true},
		audit.Record{Op: "key.rename", Key: req.GetKeyId(), Detail: fmt.Sprintf("name=%q usage=%s", req.GetName(), req.GetUsage())},
		func(rec *audit.Record) (*signerv1.Key, error) {
			msg, err := s.renameKey(ctx, req)
			if err != nil {
				return nil, err
			}
			rec.Token = msg.Token
			return msg, nil
		})
}

func (s *Service) renameKey(ctx context.Context, req *signerv1.RenameKeyRequest) (*signerv1.Key, error) {
	t, k, kr, err := s.findKey(ctx, req.GetKeyId())
	if err != nil {
		return nil, err
	}
	defer s.forgetKeyRefs()
	if kr != nil {
		if req.GetUsage() != signerv1.KeyUsage_KEY_USAGE_UNSPECIFIED && usageEnum(kr.Usage) != req.GetUsage() {
			return nil, fmt.Errorf("%w: key %s has usage %s; a key's usage does not change", ErrPrecondition, kr.ID, kr.Usage)
		}
		if err := s.store.RenameKey(ctx, kr.Token, kr.ID, req.GetName()); err != nil {
			return nil, err
		}
		kr.Name = req.GetName()
		return keyMessage(t, k, kr), nil
	}
	usage, err := usageName(req.GetUsage())
	if err != nil {
		return nil, fmt.Errorf("key %s is not recorded yet: %w", k.IDHex(), err)
	}
	// A key made outside signerd is recorded only when it signs and does
	// nothing else; k's attributes were just read from the token.
	if err := k.AttributeProblem(); err != nil {
		return nil, fmt.Errorf("key %s is not recorded: %w", k.IDHex(), err)
	}
	now := time.Now().UTC()
	nr := state.KeyRecord{Token: t.tok.Serial(), ID: k.IDHex(), Label: k.Label, Name: req.GetName(), Usage: usage, CreatedAt: now, UpdatedAt: now}
	if err := s.store.CreateKey(ctx, nr); err != nil {
		return nil, err
	}
	return keyMessage(t, k, &nr), nil
}

// recordKey names a key record in the map keyRecords returns.
func recordKey(tokenSerial, idHex string) string { return tokenSerial + "/" + idHex }

// keyRecords reads every key record in one transaction, by recordKey.
func (s *Service) keyRecords(ctx context.Context) (map[string]state.KeyRecord, error) {
	recs, err := s.store.ListKeys(ctx)
	if err != nil {
		return nil, err
	}
	out := make(map[string]state.KeyRecord, len(recs))
	for _, r := range recs {
		out[recordKey(r.Token, r.ID)] = r
	}
	return out, nil
}
