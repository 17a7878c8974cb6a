package state

import (
	"bytes"
	"context"
	"crypto/sha1" //nolint:gosec // SHA-1 is an index (X-Road names certificates by it), not a security decision.
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Certificate statuses, as X-Road's security server uses them.
const (
	StatusSaved                  = "saved"
	StatusRegistrationInProgress = "registration_in_progress"
	StatusRegistered             = "registered"
	StatusDeletionInProgress     = "deletion_in_progress"
	StatusGlobalError            = "global_error"
)

// minPrefix is the shortest hash prefix GetCert accepts.
const minPrefix = 8

// validStatus reports whether s is one of the certificate statuses.
func validStatus(s string) bool {
	switch s {
	case StatusSaved, StatusRegistrationInProgress, StatusRegistered, StatusDeletionInProgress, StatusGlobalError:
		return true
	}
	return false
}

// CertRecord is a certificate known to the signer, with its binding to a
// key and member and its status. It is stored under the SHA-256 of DER.
type CertRecord struct {
	// SHA256 is the lower-case hex SHA-256 of DER; computed by PutCert (a
	// given value must match).
	SHA256 string `json:"sha256"`
	// SHA1 is the lower-case hex SHA-1 of DER; computed like SHA256.
	SHA1 string `json:"sha1"`
	// DER is the certificate.
	DER []byte `json:"der"`
	// Chain holds the issuing certificates, DER, nearest issuer first.
	Chain [][]byte `json:"chain,omitempty"`
	// Token is the serial of the token holding the certificate's key, if
	// known.
	Token string `json:"token,omitempty"`
	// KeyID is the hex CKA_ID of the certificate's key, if known.
	KeyID string `json:"key_id,omitempty"`
	// Member is the member the certificate belongs to (empty for
	// authentication certificates).
	Member string `json:"member,omitempty"`
	// Status is one of the Status constants.
	Status string `json:"status"`
	// Active reports whether the certificate may be used.
	Active bool `json:"active"`
	// NotBefore and NotAfter are the certificate's validity, as the caller
	// parsed it.
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	// ImportedAt is set when the record is first written, unless given.
	ImportedAt time.Time `json:"imported_at"`
	// UpdatedAt is set on every write.
	UpdatedAt time.Time `json:"updated_at"`
}

// CertFilter selects certificates in ListCerts; empty fields match all.
type CertFilter struct {
	Token  string // token serial
	Member string
	KeyID  string // hex, any case
	Status string
}

// normalize validates r and fills in its hashes.
func (r *CertRecord) normalize() error {
	if err := validDER("certificate", r.DER); err != nil {
		return err
	}
	s256 := sha256.Sum256(r.DER)
	s1 := sha1.Sum(r.DER) //nolint:gosec // see import
	for _, h := range []struct {
		what  string
		given *string
		want  string
	}{{"sha256", &r.SHA256, hex.EncodeToString(s256[:])}, {"sha1", &r.SHA1, hex.EncodeToString(s1[:])}} {
		if *h.given != "" && !strings.EqualFold(*h.given, h.want) {
			return fmt.Errorf("%w: %s %s does not match the certificate (%s)", ErrInvalid, h.what, *h.given, h.want)
		}
		*h.given = h.want
	}
	for i, c := range r.Chain {
		if err := validDER(fmt.Sprintf("chain certificate %d", i), c); err != nil {
			return err
		}
	}
	if r.Token != "" {
		if err := validToken(r.Token); err != nil {
			return err
		}
	}
	if r.KeyID != "" {
		id, err := normKeyID(r.KeyID)
		if err != nil {
			return err
		}
		r.KeyID = id
	}
	if err := validText("member", r.Member); err != nil {
		return err
	}
	if !validStatus(r.Status) {
		return fmt.Errorf("%w: unknown certificate status %q", ErrInvalid, r.Status)
	}
	if !r.NotBefore.IsZero() && !r.NotAfter.IsZero() && r.NotAfter.Before(r.NotBefore) {
		return fmt.Errorf("%w: certificate NotAfter %s before NotBefore %s", ErrInvalid, r.NotAfter, r.NotBefore)
	}
	return nil
}

// PutCert writes rec, replacing any record of the same certificate. The
// hashes are computed from DER. A zero ImportedAt keeps the stored one (or
// becomes now); UpdatedAt becomes now.
func (t *Tx) PutCert(rec CertRecord) error {
	if err := rec.normalize(); err != nil {
		return err
	}
	certs, err := t.bucket(bucketCerts, true)
	if err != nil {
		return err
	}
	idx, err := t.bucket(bucketCertSHA1, true)
	if err != nil {
		return err
	}
	if owner := idx.Get([]byte(rec.SHA1)); owner != nil && string(owner) != rec.SHA256 {
		return fmt.Errorf("%w: sha1 %s already names certificate %s", ErrExists, rec.SHA1, owner)
	}
	var old CertRecord
	exists, err := getJSON(certs, rec.SHA256, &old)
	if err != nil {
		return err
	}
	if rec.ImportedAt.IsZero() {
		rec.ImportedAt = t.now
		if exists {
			rec.ImportedAt = old.ImportedAt
		}
	}
	rec.UpdatedAt = t.now
	if err := t.bumpCerts(); err != nil {
		return err
	}
	if err := idx.Put([]byte(rec.SHA1), []byte(rec.SHA256)); err != nil {
		return fmt.Errorf("state: write sha1 index: %w", err)
	}
	return putJSON(certs, rec.SHA256, rec)
}

// GetCert finds a certificate by the hex SHA-256 or SHA-1 of its DER, or by
// a prefix of at least 8 hex digits of either (any case). A full hash wins
// over a prefix match. It returns ErrNotFound, or ErrAmbiguous when a prefix
// matches more than one certificate.
func (t *Tx) GetCert(hashOrPrefix string) (CertRecord, error) {
	q := strings.ToLower(hashOrPrefix)
	if len(q) < minPrefix || len(q) > 2*sha256.Size {
		return CertRecord{}, fmt.Errorf("%w: certificate hash or prefix %q must have %d to %d hex digits", ErrInvalid, hashOrPrefix, minPrefix, 2*sha256.Size)
	}
	if strings.Trim(q, "0123456789abcdef") != "" {
		return CertRecord{}, fmt.Errorf("%w: certificate hash or prefix %q is not hex", ErrInvalid, hashOrPrefix)
	}
	certs, err := t.bucket(bucketCerts, false)
	if err != nil {
		return CertRecord{}, err
	}
	idx, err := t.bucket(bucketCertSHA1, false)
	if err != nil {
		return CertRecord{}, err
	}

	// Exact matches first.
	key := ""
	switch len(q) {
	case 2 * sha256.Size:
		if certs.Get([]byte(q)) != nil {
			key = q
		}
	case 2 * sha1.Size:
		if v := idx.Get([]byte(q)); v != nil {
			key = string(v)
		}
	}
	if key == "" {
		var matches []string
		add := func(sha256hex string) {
			if !slices.Contains(matches, sha256hex) {
				matches = append(matches, sha256hex)
			}
		}
		scanPrefix(certs, q, func(k, _ []byte) { add(string(k)) })
		scanPrefix(idx, q, func(_, v []byte) { add(string(v)) })
		switch len(matches) {
		case 0:
			return CertRecord{}, fmt.Errorf("%w: certificate %s", ErrNotFound, q)
		case 1:
			key = matches[0]
		default:
			return CertRecord{}, fmt.Errorf("%w: %s matches %d certificates", ErrAmbiguous, q, len(matches))
		}
	}
	var rec CertRecord
	found, err := getJSON(certs, key, &rec)
	if err != nil {
		return CertRecord{}, err
	}
	if !found {
		return CertRecord{}, fmt.Errorf("%w: sha1 index names missing certificate %s", ErrCorrupt, key)
	}
	return rec, nil
}

// scanPrefix calls fn for the entries of b whose key starts with prefix,
// at most two: keys of one bucket name distinct certificates (the sha1 index
// is one-to-one), so two are enough to call a prefix ambiguous.
func scanPrefix(b *bolt.Bucket, prefix string, fn func(k, v []byte)) {
	c := b.Cursor()
	n := 0
	for k, v := c.Seek([]byte(prefix)); k != nil && bytes.HasPrefix(k, []byte(prefix)) && n < 2; k, v = c.Next() {
		fn(k, v)
		n++
	}
}

// ListCerts returns the certificates matching f, ordered by SHA-256. A
// filter that names a member or a key reads only that member's or key's
// records, found through the certificate index (see certIndex); others
// read every record.
func (t *Tx) ListCerts(f CertFilter) ([]CertRecord, error) {
	if f.KeyID != "" {
		id, err := normKeyID(f.KeyID)
		if err != nil {
			return nil, err
		}
		f.KeyID = id
	}
	if f.Status != "" && !validStatus(f.Status) {
		return nil, fmt.Errorf("%w: unknown certificate status %q", ErrInvalid, f.Status)
	}
	certs, err := t.bucket(bucketCerts, false)
	if err != nil {
		return nil, err
	}
	match := func(rec CertRecord) bool {
		return (f.Token == "" || rec.Token == f.Token) &&
			(f.Member == "" || rec.Member == f.Member) &&
			(f.KeyID == "" || rec.KeyID == f.KeyID) &&
			(f.Status == "" || rec.Status == f.Status)
	}
	var out []CertRecord
	if f.Member != "" || f.KeyID != "" {
		idx, err := t.certIndex()
		if err != nil {
			return nil, err
		}
		if idx != nil {
			for _, sum := range idx.candidates(f) {
				var rec CertRecord
				found, err := getJSON(certs, sum, &rec)
				if err != nil {
					return nil, err
				}
				if found && match(rec) {
					out = append(out, rec)
				}
			}
			return out, nil
		}
	}
	err = certs.ForEach(func(k, v []byte) error {
		var rec CertRecord
		if _, err := decodeJSON(string(k), v, &rec); err != nil {
			return err
		}
		if match(rec) {
			out = append(out, rec)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// normSHA256 checks and lower-cases a full hex SHA-256.
func normSHA256(s string) (string, error) {
	h, err := normHex("certificate sha256", s, sha256.Size)
	if err != nil {
		return "", err
	}
	if len(h) != 2*sha256.Size {
		return "", fmt.Errorf("%w: certificate sha256 %q must have %d hex digits", ErrInvalid, s, 2*sha256.Size)
	}
	return h, nil
}

// certBySHA256 reads the certificate named by its full hex SHA-256 and
// returns its normalised key, or ErrNotFound.
func (t *Tx) certBySHA256(sha256hex string) (string, CertRecord, error) {
	key, err := normSHA256(sha256hex)
	if err != nil {
		return "", CertRecord{}, err
	}
	certs, err := t.bucket(bucketCerts, true)
	if err != nil {
		return "", CertRecord{}, err
	}
	var rec CertRecord
	found, err := getJSON(certs, key, &rec)
	if err != nil {
		return "", CertRecord{}, err
	}
	if !found {
		return "", CertRecord{}, fmt.Errorf("%w: certificate %s", ErrNotFound, key)
	}
	return key, rec, nil
}

// UpdateCert reads the certificate named by its full hex SHA-256, lets fn
// change the record, and writes it back as PutCert does. If fn returns an
// error, nothing is written and that error is returned. fn may not change
// DER or the hashes (ErrInvalid).
func (t *Tx) UpdateCert(sha256hex string, fn func(*CertRecord) error) error {
	key, rec, err := t.certBySHA256(sha256hex)
	if err != nil {
		return err
	}
	der, s1 := bytes.Clone(rec.DER), rec.SHA1
	if err := fn(&rec); err != nil {
		return err
	}
	if rec.SHA256 != key || rec.SHA1 != s1 || !bytes.Equal(rec.DER, der) {
		return fmt.Errorf("%w: update may not change a certificate's DER or hashes", ErrInvalid)
	}
	return t.PutCert(rec)
}

// DeleteCert removes the certificate named by its full hex SHA-256, or
// returns ErrNotFound.
func (t *Tx) DeleteCert(sha256hex string) error {
	key, rec, err := t.certBySHA256(sha256hex)
	if err != nil {
		return err
	}
	certs, err := t.bucket(bucketCerts, true)
	if err != nil {
		return err
	}
	idx, err := t.bucket(bucketCertSHA1, true)
	if err != nil {
		return err
	}
	if err := t.bumpCerts(); err != nil {
		return err
	}
	if owner := idx.Get([]byte(rec.SHA1)); owner != nil && string(owner) == key {
		if err := idx.Delete([]byte(rec.SHA1)); err != nil {
			return fmt.Errorf("state: drop sha1 index: %w", err)
		}
	}
	if err := certs.Delete([]byte(key)); err != nil {
		return fmt.Errorf("state: delete certificate: %w", err)
	}
	return nil
}

// PutCert writes rec in its own transaction; see Tx.PutCert.
func (s *Store) PutCert(ctx context.Context, rec CertRecord) error {
	return s.Update(ctx, func(tx *Tx) error { return tx.PutCert(rec) })
}

// GetCert finds a certificate by hash or prefix; see Tx.GetCert.
func (s *Store) GetCert(ctx context.Context, hashOrPrefix string) (rec CertRecord, err error) {
	err = s.View(ctx, func(tx *Tx) error {
		rec, err = tx.GetCert(hashOrPrefix)
		return err
	})
	return rec, err
}

// ListCerts returns the certificates matching f; see Tx.ListCerts.
func (s *Store) ListCerts(ctx context.Context, f CertFilter) (recs []CertRecord, err error) {
	err = s.View(ctx, func(tx *Tx) error {
		recs, err = tx.ListCerts(f)
		return err
	})
	return recs, err
}

// UpdateCert changes a certificate record in one transaction; see
// Tx.UpdateCert.
func (s *Store) UpdateCert(ctx context.Context, sha256hex string, fn func(*CertRecord) error) error {
	return s.Update(ctx, func(tx *Tx) error { return tx.UpdateCert(sha256hex, fn) })
}

// DeleteCert removes a certificate record; see Tx.DeleteCert.
func (s *Store) DeleteCert(ctx context.Context, sha256hex string) error {
	return s.Update(ctx, func(tx *Tx) error { return tx.DeleteCert(sha256hex) })
}
