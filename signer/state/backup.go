package state

import (
	"context"
	"fmt"
	"io"

	bolt "go.etcd.io/bbolt"
)

// Backup writes a consistent copy of the state database to w: the whole
// file as one read transaction sees it, so it holds every change committed
// before the copy began and none after, while writers go on. It returns
// the number of bytes written. The copy opens with Open like the original.
func (s *Store) Backup(ctx context.Context, w io.Writer) (int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	var n int64
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		n, err = tx.WriteTo(w)
		return err
	})
	if err != nil {
		return n, fmt.Errorf("state: backup of %s: %w", s.path, err)
	}
	return n, nil
}
