package state

import (
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Tx is a transaction handed to the function given to Store.Update or
// Store.View. It offers the same operations as Store, without a context:
// nothing inside a transaction waits on anything but the disk.
//
// A Tx is valid only while that function runs, and is not safe for
// concurrent use. Each method either makes its whole change or none of it;
// when a method fails, return its error from the function so that the
// transaction is rolled back as a whole.
type Tx struct {
	tx  *bolt.Tx
	now time.Time // one timestamp for every record written by this Tx
	// store is the Store the Tx runs in (its certificate index); nil for
	// a Tx made otherwise.
	store *Store
	// certsBumped is set once this Tx has moved the certificates
	// version on (see bumpCerts).
	certsBumped bool
}

// Writable reports whether tx is a read-write transaction.
func (t *Tx) Writable() bool { return t.tx != nil && t.tx.Writable() }

// bucket returns the named bucket, checking that the transaction is live and,
// for writes, writable.
func (t *Tx) bucket(name string, write bool) (*bolt.Bucket, error) {
	if t.tx == nil {
		return nil, ErrTxDone
	}
	if write && !t.tx.Writable() {
		return nil, ErrReadOnly
	}
	b := t.tx.Bucket([]byte(name))
	if b == nil {
		return nil, fmt.Errorf("%w: bucket %s missing", ErrCorrupt, name)
	}
	return b, nil
}

// getJSON decodes the value at key into v; found is false when absent.
// json.Unmarshal copies, so nothing returned points into bbolt's memory.
func getJSON(b *bolt.Bucket, key string, v any) (found bool, err error) {
	return decodeJSON(key, b.Get([]byte(key)), v)
}

// decodeJSON decodes raw (the value stored at key) into v; found is false
// when raw is nil.
func decodeJSON(key string, raw []byte, v any) (found bool, err error) {
	if raw == nil {
		return false, nil
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return true, fmt.Errorf("%w: record %q: %w", ErrCorrupt, key, err)
	}
	return true, nil
}

// putJSON encodes v and stores it at key.
func putJSON(b *bolt.Bucket, key string, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("state: encode record %s: %w", key, err)
	}
	if err := b.Put([]byte(key), raw); err != nil {
		return fmt.Errorf("state: write record %s: %w", key, err)
	}
	return nil
}

// listAll decodes every record of a bucket, in key order.
func listAll[T any](t *Tx, bucket string) ([]T, error) {
	b, err := t.bucket(bucket, false)
	if err != nil {
		return nil, err
	}
	var out []T
	err = b.ForEach(func(k, v []byte) error {
		var rec T
		if _, err := decodeJSON(string(k), v, &rec); err != nil {
			return err
		}
		out = append(out, rec)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}
