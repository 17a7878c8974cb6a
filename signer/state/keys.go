package state

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Key usages. A key's usage may also be empty: not yet assigned (X-Road
// assigns it when the first certificate request is made).
const (
	UsageSign = "sign" // signing messages for a member
	UsageAuth = "auth" // the security server's TLS authentication
	UsageTSA  = "tsa"  // issuing RFC 3161 timestamps
	// UsageAudit: signing the audit log's checkpoints.
	UsageAudit = "audit"
)

// KeyRecord is what the state knows about one key object in an HSM. Token
// and ID identify the key; the HSM holds the key itself.
type KeyRecord struct {
	// Token is the serial number of the token holding the key.
	Token string `json:"token"`
	// ID is the key's CKA_ID in hex; stored in lower case.
	ID string `json:"id"`
	// Label is the key's CKA_LABEL; unique per token among stored records
	// when not empty.
	Label string `json:"label,omitempty"`
	// Name is the officer's friendly name for the key.
	Name string `json:"name,omitempty"`
	// Usage is UsageSign, UsageAuth, UsageTSA, UsageAudit, or empty (not
	// assigned).
	Usage string `json:"usage,omitempty"`
	// Spec describes the key type, e.g. "rsa-3072" or "ec-p256".
	Spec string `json:"spec,omitempty"`
	// Member is the member the key is bound to, or empty while it is
	// bound to none. A certificate request or a certificate that names a
	// member binds the key to it (BindKey), in the transaction that
	// records the request or the certificate. A binding never changes
	// and is released only with the record itself (DeleteKey): deleting
	// or answering the request, or deleting the certificate, keeps it.
	Member string `json:"member,omitempty"`
	// MoreMembers are the further members a key recorded before bindings
	// were is bound to, when its certificates and requests named more
	// than one (BindKeyMembers, at start-up); Member is then the first of
	// them. They are set with Member, never change and go only with the
	// record, as Member does. Use Members for the whole binding.
	MoreMembers []string `json:"more_members,omitempty"`
	// CreatedAt is set when the record is first written, unless given.
	CreatedAt time.Time `json:"created_at"`
	// UpdatedAt is set on every write.
	UpdatedAt time.Time `json:"updated_at"`
}

// Members returns every member the key is bound to: Member, then
// MoreMembers; none for an unbound key.
func (r KeyRecord) Members() []string {
	if r.Member == "" {
		return nil
	}
	return append([]string{r.Member}, r.MoreMembers...)
}

// keyKey is the bucket key of a key record.
func keyKey(token, id string) string { return token + "/" + id }

// normKeyRef validates a token serial and key id and returns the normalised
// id.
func normKeyRef(token, id string) (string, error) {
	if err := validToken(token); err != nil {
		return "", err
	}
	return normKeyID(id)
}

// normalize validates r and lower-cases its id.
func (r *KeyRecord) normalize() error {
	id, err := normKeyRef(r.Token, r.ID)
	if err != nil {
		return err
	}
	r.ID = id
	switch r.Usage {
	case "", UsageSign, UsageAuth, UsageTSA, UsageAudit:
	default:
		return fmt.Errorf("%w: unknown key usage %q (want %s, %s, %s or %s)", ErrInvalid, r.Usage, UsageSign, UsageAuth, UsageTSA, UsageAudit)
	}
	for _, f := range []struct{ what, v string }{{"label", r.Label}, {"name", r.Name}, {"spec", r.Spec}, {"member", r.Member}} {
		if err := validText("key "+f.what, f.v); err != nil {
			return err
		}
	}
	if len(r.MoreMembers) > 0 && r.Member == "" {
		return fmt.Errorf("%w: key %s has further members but no member", ErrInvalid, keyKey(r.Token, r.ID))
	}
	for i, m := range r.MoreMembers {
		if err := validText("key member", m); err != nil {
			return err
		}
		if m == "" || slices.Contains(r.Members()[:i+1], m) {
			return fmt.Errorf("%w: key %s: member %q is empty or named twice", ErrInvalid, keyKey(r.Token, r.ID), m)
		}
	}
	return nil
}

// PutKey writes rec, replacing any record for the same token and id. A
// zero CreatedAt keeps the stored one (or becomes now); UpdatedAt becomes
// now. It fails with ErrExists when another key of the token has the same
// non-empty label, and with ErrBound when the stored record is bound to a
// member and rec names another or none (a binding never changes).
func (t *Tx) PutKey(rec KeyRecord) error { return t.putKey(rec, false) }

// CreateKey writes rec as a new key. It fails with ErrExists when a record
// for the same token and id exists, or another key of the token has the same
// non-empty label; the check and the write are one step.
func (t *Tx) CreateKey(rec KeyRecord) error { return t.putKey(rec, true) }

func (t *Tx) putKey(rec KeyRecord, create bool) error {
	if err := rec.normalize(); err != nil {
		return err
	}
	keys, err := t.bucket(bucketKeys, true)
	if err != nil {
		return err
	}
	labels, err := t.bucket(bucketKeyLabels, true)
	if err != nil {
		return err
	}
	k := keyKey(rec.Token, rec.ID)
	var old KeyRecord
	exists, err := getJSON(keys, k, &old)
	if err != nil {
		return err
	}
	if exists && create {
		return fmt.Errorf("%w: key %s", ErrExists, k)
	}
	if exists && old.Member != "" && !slices.Equal(rec.Members(), old.Members()) {
		return fmt.Errorf("%w: key %s is bound to member %s", ErrBound, k, quoted(old.Members()))
	}
	if rec.Label != "" {
		if owner := labels.Get([]byte(keyKey(rec.Token, rec.Label))); owner != nil && string(owner) != rec.ID {
			return fmt.Errorf("%w: token %s already has a key labelled %q (id %s)", ErrExists, rec.Token, rec.Label, owner)
		}
	}
	if rec.CreatedAt.IsZero() {
		rec.CreatedAt = t.now
		if exists {
			rec.CreatedAt = old.CreatedAt
		}
	}
	rec.UpdatedAt = t.now

	// All checks done; write.
	if exists && old.Label != rec.Label {
		if err := dropLabel(labels, old); err != nil {
			return err
		}
	}
	if rec.Label != "" {
		if err := labels.Put([]byte(keyKey(rec.Token, rec.Label)), []byte(rec.ID)); err != nil {
			return fmt.Errorf("state: write label index: %w", err)
		}
	}
	return putJSON(keys, k, rec)
}

// dropLabel removes rec's entry from the label index if it points to rec.
func dropLabel(labels *bolt.Bucket, rec KeyRecord) error {
	if rec.Label == "" {
		return nil
	}
	lk := []byte(keyKey(rec.Token, rec.Label))
	if owner := labels.Get(lk); owner == nil || string(owner) != rec.ID {
		return nil
	}
	if err := labels.Delete(lk); err != nil {
		return fmt.Errorf("state: drop label index: %w", err)
	}
	return nil
}

// GetKey returns the record of key id on token, or ErrNotFound.
func (t *Tx) GetKey(token, id string) (KeyRecord, error) {
	id, err := normKeyRef(token, id)
	if err != nil {
		return KeyRecord{}, err
	}
	keys, err := t.bucket(bucketKeys, false)
	if err != nil {
		return KeyRecord{}, err
	}
	var rec KeyRecord
	found, err := getJSON(keys, keyKey(token, id), &rec)
	if err != nil {
		return KeyRecord{}, err
	}
	if !found {
		return KeyRecord{}, fmt.Errorf("%w: key %s", ErrNotFound, keyKey(token, id))
	}
	return rec, nil
}

// ListKeys returns every key record, ordered by token serial, then id.
func (t *Tx) ListKeys() ([]KeyRecord, error) {
	return listAll[KeyRecord](t, bucketKeys)
}

// UpdateKey reads the record of key id on token, lets fn change it, and
// writes it back as PutKey does. If fn returns an error, nothing is written
// and that error is returned. fn may not change Token or ID (ErrInvalid).
func (t *Tx) UpdateKey(token, id string, fn func(*KeyRecord) error) error {
	if _, err := t.bucket(bucketKeys, true); err != nil {
		return err
	}
	rec, err := t.GetKey(token, id)
	if err != nil {
		return err
	}
	tok, kid := rec.Token, rec.ID
	if err := fn(&rec); err != nil {
		return err
	}
	if rec.Token != tok || rec.ID != kid {
		return fmt.Errorf("%w: update may not change a key's token or id", ErrInvalid)
	}
	return t.putKey(rec, false)
}

// RenameKey sets the friendly name of key id on token; an empty name clears
// it. ErrNotFound when there is no such record.
func (t *Tx) RenameKey(token, id, newName string) error {
	return t.UpdateKey(token, id, func(r *KeyRecord) error {
		r.Name = newName
		return nil
	})
}

// BindKey binds key id on token to member, which must not be empty. A key
// bound to member already stays as it is; a key bound to another member
// is refused with ErrBound; ErrNotFound when there is no such record.
func (t *Tx) BindKey(token, id, member string) error {
	if member == "" {
		return fmt.Errorf("%w: bind key %s to an empty member", ErrInvalid, keyKey(token, id))
	}
	if err := validText("member", member); err != nil {
		return err
	}
	if _, err := t.bucket(bucketKeys, true); err != nil {
		return err
	}
	rec, err := t.GetKey(token, id)
	if err != nil {
		return err
	}
	switch {
	case slices.Contains(rec.Members(), member):
		return nil
	case rec.Member == "":
		rec.Member = member
		return t.putKey(rec, false)
	}
	return fmt.Errorf("%w: key %s is bound to member %s, not %q", ErrBound, keyKey(rec.Token, rec.ID), quoted(rec.Members()), member)
}

// BindKeyMembers binds key id on token, bound to no member yet, to every
// one of members at once (a key recorded before bindings were, whose
// certificates and requests name them): the first in sorted order
// becomes Member, the others MoreMembers. A key bound to exactly these
// members already stays as it is; a key bound otherwise is refused with
// ErrBound; ErrInvalid for no member or an empty one; ErrNotFound when
// there is no such record.
func (t *Tx) BindKeyMembers(token, id string, members []string) error {
	members = slices.Compact(slices.Sorted(slices.Values(members)))
	if len(members) == 0 || members[0] == "" {
		return fmt.Errorf("%w: bind key %s to no member or an empty one", ErrInvalid, keyKey(token, id))
	}
	if _, err := t.bucket(bucketKeys, true); err != nil {
		return err
	}
	rec, err := t.GetKey(token, id)
	if err != nil {
		return err
	}
	bound := slices.Sorted(slices.Values(rec.Members()))
	switch {
	case slices.Equal(bound, members):
		return nil
	case len(bound) > 0:
		return fmt.Errorf("%w: key %s is bound to member %s, not %s", ErrBound, keyKey(rec.Token, rec.ID), quoted(bound), quoted(members))
	}
	rec.Member, rec.MoreMembers = members[0], members[1:]
	if len(rec.MoreMembers) == 0 {
		rec.MoreMembers = nil
	}
	return t.putKey(rec, false)
}

// quoted lists members for an error: "A" or "A", "B".
func quoted(members []string) string {
	q := make([]string, len(members))
	for i, m := range members {
		q[i] = strconv.Quote(m)
	}
	return strings.Join(q, ", ")
}

// DeleteKey removes the record of key id on token, or returns ErrNotFound.
// Its member binding goes with it: this is the only way a binding is
// released. Certificates and CSRs of the key are not touched; delete them
// in the same Update when that is wanted.
func (t *Tx) DeleteKey(token, id string) error {
	keys, err := t.bucket(bucketKeys, true)
	if err != nil {
		return err
	}
	labels, err := t.bucket(bucketKeyLabels, true)
	if err != nil {
		return err
	}
	rec, err := t.GetKey(token, id)
	if err != nil {
		return err
	}
	if err := dropLabel(labels, rec); err != nil {
		return err
	}
	if err := keys.Delete([]byte(keyKey(rec.Token, rec.ID))); err != nil {
		return fmt.Errorf("state: delete key: %w", err)
	}
	return nil
}

// PutKey writes rec in its own transaction; see Tx.PutKey.
func (s *Store) PutKey(ctx context.Context, rec KeyRecord) error {
	return s.Update(ctx, func(tx *Tx) error { return tx.PutKey(rec) })
}

// CreateKey writes rec as a new key in its own transaction; see
// Tx.CreateKey.
func (s *Store) CreateKey(ctx context.Context, rec KeyRecord) error {
	return s.Update(ctx, func(tx *Tx) error { return tx.CreateKey(rec) })
}

// GetKey returns the record of key id on token; see Tx.GetKey.
func (s *Store) GetKey(ctx context.Context, token, id string) (rec KeyRecord, err error) {
	err = s.View(ctx, func(tx *Tx) error {
		rec, err = tx.GetKey(token, id)
		return err
	})
	return rec, err
}

// ListKeys returns every key record; see Tx.ListKeys.
func (s *Store) ListKeys(ctx context.Context) (recs []KeyRecord, err error) {
	err = s.View(ctx, func(tx *Tx) error {
		recs, err = tx.ListKeys()
		return err
	})
	return recs, err
}

// UpdateKey changes a key record in one transaction; see Tx.UpdateKey.
func (s *Store) UpdateKey(ctx context.Context, token, id string, fn func(*KeyRecord) error) error {
	return s.Update(ctx, func(tx *Tx) error { return tx.UpdateKey(token, id, fn) })
}

// RenameKey sets a key's friendly name; see Tx.RenameKey.
func (s *Store) RenameKey(ctx context.Context, token, id, newName string) error {
	return s.Update(ctx, func(tx *Tx) error { return tx.RenameKey(token, id, newName) })
}

// BindKeyMembers binds a key to members in its own transaction; see
// Tx.BindKeyMembers.
func (s *Store) BindKeyMembers(ctx context.Context, token, id string, members []string) error {
	return s.Update(ctx, func(tx *Tx) error { return tx.BindKeyMembers(token, id, members) })
}

// BindKey binds a key to a member in its own transaction; see
// Tx.BindKey.
func (s *Store) BindKey(ctx context.Context, token, id, member string) error {
	return s.Update(ctx, func(tx *Tx) error { return tx.BindKey(token, id, member) })
}

// DeleteKey removes a key record; see Tx.DeleteKey.
func (s *Store) DeleteKey(ctx context.Context, token, id string) error {
	return s.Update(ctx, func(tx *Tx) error { return tx.DeleteKey(token, id) })
}
