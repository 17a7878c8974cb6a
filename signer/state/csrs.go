package state

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// CSRRecord is a certificate signing request made for a key, kept until the
// certificate is imported or the officer deletes it.
type CSRRecord struct {
	// ID names the request: 1 to 128 of A-Z a-z 0-9 . _ -
	ID string `json:"id"`
	// Token and KeyID name the key the request was made with.
	Token string `json:"token"`
	KeyID string `json:"key_id"`
	// Member is the member the request is for (empty for authentication).
	Member string `json:"member,omitempty"`
	// Subject is the requested subject distinguished name, as text.
	Subject string `json:"subject,omitempty"`
	// DER is the PKCS#10 request.
	DER []byte `json:"der"`
	// CreatedAt is set when the record is first written, unless given.
	CreatedAt time.Time `json:"created_at"`
}

// validCSRID checks a CSR id.
func validCSRID(id string) error {
	if id == "" {
		return fmt.Errorf("%w: empty CSR id", ErrInvalid)
	}
	if len(id) > maxCSRIDLen {
		return fmt.Errorf("%w: CSR id longer than %d bytes", ErrInvalid, maxCSRIDLen)
	}
	const allowed = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"
	if strings.Trim(id, allowed) != "" {
		return fmt.Errorf("%w: CSR id %q may hold only letters, digits, '.', '_' and '-'", ErrInvalid, id)
	}
	return nil
}

// normalize validates r and lower-cases its key id.
func (r *CSRRecord) normalize() error {
	if err := validCSRID(r.ID); err != nil {
		return err
	}
	id, err := normKeyRef(r.Token, r.KeyID)
	if err != nil {
		return err
	}
	r.KeyID = id
	if err := validText("member", r.Member); err != nil {
		return err
	}
	if err := validText("subject", r.Subject); err != nil {
		return err
	}
	return validDER("CSR", r.DER)
}

// PutCSR writes rec, replacing any CSR with the same id. A zero CreatedAt
// keeps the stored one (or becomes now).
func (t *Tx) PutCSR(rec CSRRecord) error {
	if err := rec.normalize(); err != nil {
		return err
	}
	csrs, err := t.bucket(bucketCSRs, true)
	if err != nil {
		return err
	}
	if rec.CreatedAt.IsZero() {
		var old CSRRecord
		exists, err := getJSON(csrs, rec.ID, &old)
		if err != nil {
			return err
		}
		rec.CreatedAt = t.now
		if exists {
			rec.CreatedAt = old.CreatedAt
		}
	}
	return putJSON(csrs, rec.ID, rec)
}

// GetCSR returns the CSR with the given id, or ErrNotFound.
func (t *Tx) GetCSR(id string) (CSRRecord, error) {
	if err := validCSRID(id); err != nil {
		return CSRRecord{}, err
	}
	csrs, err := t.bucket(bucketCSRs, false)
	if err != nil {
		return CSRRecord{}, err
	}
	var rec CSRRecord
	found, err := getJSON(csrs, id, &rec)
	if err != nil {
		return CSRRecord{}, err
	}
	if !found {
		return CSRRecord{}, fmt.Errorf("%w: CSR %s", ErrNotFound, id)
	}
	return rec, nil
}

// ListCSRs returns every CSR, ordered by id.
func (t *Tx) ListCSRs() ([]CSRRecord, error) {
	return listAll[CSRRecord](t, bucketCSRs)
}

// DeleteCSR removes the CSR with the given id, or returns ErrNotFound.
func (t *Tx) DeleteCSR(id string) error {
	if err := validCSRID(id); err != nil {
		return err
	}
	csrs, err := t.bucket(bucketCSRs, true)
	if err != nil {
		return err
	}
	if csrs.Get([]byte(id)) == nil {
		return fmt.Errorf("%w: CSR %s", ErrNotFound, id)
	}
	if err := csrs.Delete([]byte(id)); err != nil {
		return fmt.Errorf("state: delete CSR: %w", err)
	}
	return nil
}

// PutCSR writes rec in its own transaction; see Tx.PutCSR.
func (s *Store) PutCSR(ctx context.Context, rec CSRRecord) error {
	return s.Update(ctx, func(tx *Tx) error { return tx.PutCSR(rec) })
}

// GetCSR returns a CSR; see Tx.GetCSR.
func (s *Store) GetCSR(ctx context.Context, id string) (rec CSRRecord, err error) {
	err = s.View(ctx, func(tx *Tx) error {
		rec, err = tx.GetCSR(id)
		return err
	})
	return rec, err
}

// ListCSRs returns every CSR; see Tx.ListCSRs.
func (s *Store) ListCSRs(ctx context.Context) (recs []CSRRecord, err error) {
	err = s.View(ctx, func(tx *Tx) error {
		recs, err = tx.ListCSRs()
		return err
	})
	return recs, err
}

// DeleteCSR removes a CSR; see Tx.DeleteCSR.
func (s *Store) DeleteCSR(ctx context.Context, id string) error {
	return s.Update(ctx, func(tx *Tx) error { return tx.DeleteCSR(id) })
}
