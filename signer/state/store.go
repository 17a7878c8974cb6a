package state

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// SchemaVersion is the version of the state file layout this package writes
// and understands. Files with a higher version are refused.
const SchemaVersion = 1

// FileMode is the permission of the state file.
const FileMode fs.FileMode = 0o600

// lockTimeout bounds the wait for bbolt's flock on the state file.
const lockTimeout = time.Second

// Bucket names.
const (
	bucketMeta      = "meta"
	bucketKeys      = "keys"
	bucketKeyLabels = "key_labels"
	bucketCerts     = "certs"
	bucketCertSHA1  = "cert_sha1"
	bucketCSRs      = "csrs"
	bucketOCSP      = "ocsp_responses"

	keySchemaVersion = "schema_version"
)

// allBuckets returns every bucket of the current schema.
func allBuckets() []string {
	return []string{bucketMeta, bucketKeys, bucketKeyLabels, bucketCerts, bucketCertSHA1, bucketCSRs, bucketOCSP}
}

// Store is an open state file. Its methods are safe for concurrent use;
// bbolt serialises writers and lets readers run beside them.
type Store struct {
	db   *bolt.DB
	path string
	// certIdx indexes the certificate records by member and by key, as
	// of the certificates version it was built at (see certIndex).
	certIdx atomic.Pointer[certIndex]
}

// Open opens the state file at path, creating it with mode 0600 when it does
// not exist. The parent directory must exist. An existing file must be a
// regular file without group or other permissions (ErrPermissions).
//
// Open takes bbolt's exclusive file lock, waiting at most one second (less
// if ctx has an earlier deadline); when another process holds it, Open
// returns an error wrapping ErrLocked. A file written with a newer schema
// version is refused with ErrSchemaVersion; a file that is not a signerd
// state file with ErrCorrupt.
func Open(ctx context.Context, path string) (*Store, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if path == "" {
		return nil, fmt.Errorf("%w: empty state file path", ErrInvalid)
	}
	dir := filepath.Dir(path)
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("state: directory %s of state file does not exist: %w", dir, err)
	case err != nil:
		return nil, fmt.Errorf("state: state directory: %w", err)
	case !fi.IsDir():
		return nil, fmt.Errorf("state: %s (parent of the state file) is not a directory", dir)
	}

	timeout := lockTimeout
	if dl, ok := ctx.Deadline(); ok {
		if left := time.Until(dl); left < timeout {
			timeout = left
		}
	}
	if timeout <= 0 {
		return nil, context.DeadlineExceeded
	}

	if err := createWhole(path); err != nil {
		return nil, err
	}
	if err := checkWhole(path); err != nil {
		return nil, err
	}
	db, err := bolt.Open(path, FileMode, &bolt.Options{Timeout: timeout, OpenFile: openStateFile})
	switch {
	case errors.Is(err, berrors.ErrTimeout):
		return nil, fmt.Errorf("%w: %s", ErrLocked, path)
	case errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrVersionMismatch), errors.Is(err, berrors.ErrChecksum):
		return nil, fmt.Errorf("%w: %s: %w", ErrCorrupt, path, err)
	case err != nil:
		return nil, fmt.Errorf("state: open %s: %w", path, err)
	}
	s := &Store{db: db, path: path}
	if err := s.initSchema(); err != nil {
		_ = db.Close()
		if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrSchemaVersion) {
			err = writeError(path, "its schema was not written", err)
		}
		return nil, err
	}
	return s, nil
}

// openStateFile opens the file for bbolt and checks its type and mode on the
// opened descriptor, so that the check and the use see the same file.
func openStateFile(name string, flag int, perm os.FileMode) (*os.File, error) {
	f, err := os.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		_ = f.Close()
		return nil, fmt.Errorf("%w: %s is not a regular file", ErrPermissions, name)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		_ = f.Close()
		return nil, fmt.Errorf("%w: %s has mode %04o, want %04o (chmod 600)", ErrPermissions, name, fi.Mode().Perm(), FileMode)
	}
	return f, nil
}

// initSchema checks the schema version and creates missing buckets. It only
// writes when something is missing, so opening an initialised file does not
// commit a transaction.
func (s *Store) initSchema() error {
	need := false
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		need, err = checkSchema(tx)
		return err
	})
	if err != nil || !need {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		// Check again: the answer cannot change under our flock, but the
		// write must rest on what this transaction sees.
		if _, err := checkSchema(tx); err != nil {
			return err
		}
		for _, name := range allBuckets() {
			if _, err := tx.CreateBucketIfNotExists([]byte(name)); err != nil {
				return fmt.Errorf("state: create bucket %s: %w", name, err)
			}
		}
		meta := tx.Bucket([]byte(bucketMeta))
		if meta.Get([]byte(keySchemaVersion)) == nil {
			return meta.Put([]byte(keySchemaVersion), []byte(strconv.Itoa(SchemaVersion)))
		}
		return nil
	})
}

// checkSchema reports whether buckets or the version must be written, and
// refuses files it does not understand.
func checkSchema(tx *bolt.Tx) (need bool, err error) {
	meta := tx.Bucket([]byte(bucketMeta))
	if meta == nil {
		empty := true
		_ = tx.ForEach(func([]byte, *bolt.Bucket) error {
			empty = false
			return nil
		})
		if !empty {
			return false, fmt.Errorf("%w: no meta bucket; not a signerd state file", ErrCorrupt)
		}
		return true, nil
	}
	raw := meta.Get([]byte(keySchemaVersion))
	if raw == nil {
		return false, fmt.Errorf("%w: meta bucket has no schema version", ErrCorrupt)
	}
	v, err := strconv.Atoi(string(raw))
	if err != nil || v < 1 {
		return false, fmt.Errorf("%w: bad schema version %q", ErrCorrupt, raw)
	}
	if v > SchemaVersion {
		return false, fmt.Errorf("%w: state file has schema version %d, this signerd supports up to %d", ErrSchemaVersion, v, SchemaVersion)
	}
	for _, name := range allBuckets() {
		if tx.Bucket([]byte(name)) == nil {
			return true, nil
		}
	}
	return false, nil
}

// Path returns the path of the state file.
func (s *Store) Path() string { return s.path }

// Close closes the state file and releases its lock. It waits for running
// transactions to finish.
func (s *Store) Close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("state: close %s: %w", s.path, err)
	}
	return nil
}

// Update runs fn in one read-write transaction. If fn returns nil the
// transaction is committed and synced to disk before Update returns; if fn
// returns an error (or panics) nothing of it is written. fn must not call
// methods of the Store itself (that would deadlock), and must not keep tx.
func (s *Store) Update(ctx context.Context, fn func(tx *Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.run(true, fn)
}

// View runs fn in one read-only transaction, which sees a consistent
// snapshot. Write methods of tx return ErrReadOnly.
func (s *Store) View(ctx context.Context, fn func(tx *Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.run(false, fn)
}

func (s *Store) run(writable bool, fn func(tx *Tx) error) error {
	fnDone := false // fn returned nil: an error after it is the commit's
	call := func(btx *bolt.Tx) error {
		t := &Tx{tx: btx, now: time.Now().UTC().Round(0), store: s}
		defer func() { t.tx = nil }()
		if err := fn(t); err != nil {
			return err
		}
		fnDone = true
		return nil
	}
	var err error
	if writable {
		err = s.db.Update(call)
	} else {
		err = s.db.View(call)
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, berrors.ErrDatabaseNotOpen):
		return fmt.Errorf("%w: %w", ErrClosed, err)
	case writable && fnDone:
		// bbolt rolled the transaction back: the file holds the state
		// before it, and the next transaction starts from there.
		return writeError(s.path, "the change is not made (after a failed sync of the file it may still show once signerd restarts)", err)
	}
	return err
}
