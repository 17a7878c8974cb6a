package state

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"os"
	"path/filepath"

	bolt "go.etcd.io/bbolt"
)

// createWhole makes the state file at path when it is missing or empty,
// whole or not at all: bbolt initialises a new file by writing its first
// pages in place, and a full disk cuts that write short, leaving a file
// of a page or two that no later start can open ("file size too small"),
// or whose metadata names pages the file does not hold, on which bbolt
// reads past the end of its mapping and the process dies of SIGBUS. So
// the file is initialised beside path under a temporary name, synced, and
// only then given its name. A write that fails is ErrWrite and leaves
// nothing behind.
func createWhole(path string) error {
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return fmt.Errorf("state: %s: %w", path, err)
	case fi.Mode().IsRegular() && fi.Size() == 0 && fi.Mode().Perm()&0o077 == 0:
		// An empty file: a start that failed before bbolt wrote a byte.
	default:
		return nil // bbolt and openStateFile judge it
	}
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".new-*")
	if err != nil {
		return writeError(path, "no state file was made", err)
	}
	tmp := f.Name()
	keep := false
	defer func() {
		if !keep {
			_ = os.Remove(tmp)
		}
	}()
	if err := f.Chmod(FileMode); err != nil {
		_ = f.Close()
		return fmt.Errorf("state: %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("state: %s: %w", tmp, err)
	}
	db, err := bolt.Open(tmp, FileMode, &bolt.Options{Timeout: lockTimeout, OpenFile: openStateFile})
	if err != nil {
		return writeError(path, "no state file was made", err)
	}
	s := &Store{db: db, path: tmp}
	if err := s.initSchema(); err != nil {
		_ = db.Close()
		return writeError(path, "no state file was made", err)
	}
	if err := db.Close(); err != nil {
		return writeError(path, "no state file was made", err)
	}
	if fi == nil {
		// Link rather than rename: a file another process made meanwhile
		// is kept, and opened below as it is.
		if err := os.Link(tmp, path); err != nil && !errors.Is(err, fs.ErrExist) {
			return writeError(path, "no state file was made", err)
		}
	} else if err := os.Rename(tmp, path); err != nil {
		return writeError(path, "the empty state file was not replaced", err)
	} else {
		keep = true
	}
	if d, err := os.Open(dir); err == nil {
		err = d.Sync()
		_ = d.Close()
		if err != nil {
			return writeError(dir, "the state directory was not synced", err)
		}
	}
	return nil
}

// writeError is ErrWrite for a write to path that failed with err, and
// what came of it (outcome).
func writeError(path, outcome string, err error) error {
	return fmt.Errorf("%w (a full disk, a read-only file system or an I/O error); %s: %s: %w", ErrWrite, outcome, path, err)
}

// bbolt's file layout, as far as checkWhole reads it: each of the first
// two pages holds a page header and then a meta record.
const (
	boltPageHeader = 16         // id u64, flags u16, count u16, overflow u32
	boltMetaLen    = 64         // magic, version, page size, flags u32; root u64 u64; freelist, pgid, txid, checksum u64
	boltMagic      = 0xED0CDAED // meta.magic
	boltVersion    = 2          // meta.version
)

// boltMeta is what checkWhole needs of a meta record.
type boltMeta struct {
	pageSize   uint32
	pgid, txid uint64
}

// readBoltMeta reads the meta record of the page at off, or reports that
// it is not a valid one.
func readBoltMeta(f *os.File, off int64) (boltMeta, bool) {
	var b [boltPageHeader + boltMetaLen]byte
	if _, err := f.ReadAt(b[:], off); err != nil {
		return boltMeta{}, false
	}
	m := b[boltPageHeader:]
	le := binary.LittleEndian
	if le.Uint32(m[0:]) != boltMagic || le.Uint32(m[4:]) != boltVersion {
		return boltMeta{}, false
	}
	h := fnv.New64a()
	_, _ = h.Write(m[:56])
	if h.Sum64() != le.Uint64(m[56:]) {
		return boltMeta{}, false
	}
	return boltMeta{pageSize: le.Uint32(m[8:]), pgid: le.Uint64(m[40:]), txid: le.Uint64(m[48:])}, true
}

// checkWhole refuses, as ErrCorrupt, a state file shorter than the pages
// its metadata says it holds (a file cut short: a copy that ended early,
// a disk that filled while bbolt made it). bbolt maps the file and would
// read those pages past its end, which kills the process with SIGBUS
// instead of returning an error. A file whose metadata is not valid is
// left to bbolt, which refuses it.
func checkWhole(path string) error {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("state: open %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() || fi.Size() == 0 {
		return nil // openStateFile and bbolt judge it
	}
	var best boltMeta
	found := false
	m0, ok0 := readBoltMeta(f, 0)
	if ok0 {
		best, found = m0, true
	}
	pageSize := int64(os.Getpagesize())
	if ok0 && m0.pageSize > 0 {
		pageSize = int64(m0.pageSize)
	}
	if m1, ok := readBoltMeta(f, pageSize); ok && (!found || m1.txid > best.txid) {
		best, found = m1, true
	}
	if !found || best.pageSize == 0 {
		if fi.Size() < 2*pageSize {
			return fmt.Errorf("%w: %s holds %d bytes, less than the two metadata pages of a state file (made on a full disk?); restore it from a backup, or remove it if it never held state", ErrCorrupt, path, fi.Size())
		}
		return nil
	}
	if need := int64(best.pgid) * int64(best.pageSize); fi.Size() < need {
		return fmt.Errorf("%w: %s holds %d bytes, but its metadata names %d (%d pages of %d): the file was cut short; restore it from a backup", ErrCorrupt, path, fi.Size(), need, best.pgid, best.pageSize)
	}
	return nil
}
