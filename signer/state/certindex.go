package state

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
)

// keyCertsVersion, in the meta bucket, counts the transactions that
// changed a certificate record. The certificate index is valid for the
// version it was built at; a state file without it is at version 0.
const keyCertsVersion = "certs_version"

// certIndex lists the certificates (by SHA-256, sorted) of each member
// and of each key, as the records stood at version. It is built from one
// read of every record and kept until a transaction changes a
// certificate, so that finding a member's or a key's certificates costs
// a lookup per certificate of theirs, not a read of every record. It is
// never changed once built.
type certIndex struct {
	version  uint64
	byMember map[string][]string
	byKey    map[string][]string // keyKey(token, key id) → certificates
}

// candidates returns the certificates f's member or key names, sorted by
// SHA-256; the caller checks each record against the whole filter.
func (x *certIndex) candidates(f CertFilter) []string {
	var byMember, byKey []string
	if f.Member != "" {
		byMember = x.byMember[f.Member]
	}
	if f.KeyID != "" {
		if f.Token != "" {
			byKey = x.byKey[keyKey(f.Token, f.KeyID)]
		} else {
			for k, v := range x.byKey {
				if len(k) > len(f.KeyID) && k[len(k)-len(f.KeyID)-1:] == "/"+f.KeyID {
					byKey = append(byKey, v...)
				}
			}
			slices.Sort(byKey)
			byKey = slices.Compact(byKey)
		}
	}
	switch {
	case f.Member == "":
		return byKey
	case f.KeyID == "" || len(byMember) <= len(byKey):
		return byMember
	}
	return byKey
}

// certsVersion reads the certificates version of the transaction's
// snapshot.
func (t *Tx) certsVersion() (uint64, error) {
	meta, err := t.bucket(bucketMeta, false)
	if err != nil {
		return 0, err
	}
	v := meta.Get([]byte(keyCertsVersion))
	if v == nil {
		return 0, nil
	}
	n, err := strconv.ParseUint(string(v), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: %s %q", ErrCorrupt, keyCertsVersion, v)
	}
	return n, nil
}

// bumpCerts moves the certificates version on, once per transaction
// that changes a certificate record; it commits or rolls back with the
// change.
func (t *Tx) bumpCerts() error {
	if t.certsBumped {
		return nil
	}
	n, err := t.certsVersion()
	if err != nil {
		return err
	}
	meta, err := t.bucket(bucketMeta, true)
	if err != nil {
		return err
	}
	if err := meta.Put([]byte(keyCertsVersion), []byte(strconv.FormatUint(n+1, 10))); err != nil {
		return fmt.Errorf("state: write %s: %w", keyCertsVersion, err)
	}
	t.certsBumped = true
	return nil
}

// certIndex returns the certificate index for the transaction's
// snapshot: the store's when it was built at the snapshot's version, else
// one built now from every record. A read-only transaction keeps what it
// builds for the next; a read-write one that changed a certificate gets
// nil (its records are not committed, so nothing is built from them; the
// caller reads every record).
func (t *Tx) certIndex() (*certIndex, error) {
	v, err := t.certsVersion()
	if err != nil {
		return nil, err
	}
	if t.store != nil {
		if x := t.store.certIdx.Load(); x != nil && x.version == v {
			return x, nil
		}
	}
	if t.Writable() {
		return nil, nil
	}
	certs, err := t.bucket(bucketCerts, false)
	if err != nil {
		return nil, err
	}
	x := &certIndex{version: v, byMember: map[string][]string{}, byKey: map[string][]string{}}
	// Only the fields the index needs are decoded.
	var rec struct {
		Token  string `json:"token"`
		KeyID  string `json:"key_id"`
		Member string `json:"member"`
	}
	err = certs.ForEach(func(k, raw []byte) error {
		rec.Token, rec.KeyID, rec.Member = "", "", ""
		if err := json.Unmarshal(raw, &rec); err != nil {
			return fmt.Errorf("%w: record %s: %w", ErrCorrupt, k, err)
		}
		sum := string(k)
		if rec.Member != "" {
			x.byMember[rec.Member] = append(x.byMember[rec.Member], sum)
		}
		if rec.KeyID != "" {
			kk := keyKey(rec.Token, rec.KeyID)
			x.byKey[kk] = append(x.byKey[kk], sum)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if t.store != nil {
		// A newer index may be there already: keep the newer.
		for {
			old := t.store.certIdx.Load()
			if old != nil && old.version >= v {
				break
			}
			if t.store.certIdx.CompareAndSwap(old, x) {
				break
			}
		}
	}
	return x, nil
}
