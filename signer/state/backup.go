package state

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	bolt "go.etcd.io/bbolt"
)

// Backup writes a consistent copy of the state database to w: the whole
// file as one read transaction sees it, so it holds every change committed
// before the copy began and none after, while writers go on. It returns
// the number of bytes written. The copy opens with Open like the original.
//
// The read transaction only lasts while the copy is written to an
// unlinked file of mode 0600 beside the state file; w is written from
// that file afterwards. A reader of w that stops reading (a client that
// stops reading the BackupState stream) so holds no transaction: bbolt
// makes a write that grows the file wait for every read transaction, and
// cannot reuse the pages a read transaction may still see.
func (s *Store) Backup(ctx context.Context, w io.Writer) (int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	tmp, err := os.CreateTemp(filepath.Dir(s.path), "."+filepath.Base(s.path)+".backup-")
	if err != nil {
		return 0, fmt.Errorf("state: backup of %s: %w", s.path, err)
	}
	defer tmp.Close()
	if err := os.Remove(tmp.Name()); err != nil {
		return 0, fmt.Errorf("state: backup of %s: %w", s.path, err)
	}
	var size int64
	err = s.db.View(func(tx *bolt.Tx) error {
		var err error
		size, err = tx.WriteTo(tmp)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("state: backup of %s: %w", s.path, err)
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return 0, fmt.Errorf("state: backup of %s: %w", s.path, err)
	}
	n, err := io.Copy(w, io.LimitReader(tmp, size))
	if err == nil && n != size {
		err = fmt.Errorf("copied %d of %d bytes", n, size)
	}
	if err != nil {
		return n, fmt.Errorf("state: backup of %s: %w", s.path, err)
	}
	return n, nil
}
