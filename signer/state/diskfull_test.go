package state_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/hsmsigner/hsmsigner/signer/state"
	"github.com/hsmsigner/hsmsigner/softhsm-test/diskfull"
)

// smallDisk mounts a 1 MiB tmpfs on a new directory (see diskfull.Mount)
// and returns it.
func smallDisk(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "small")
	diskfull.Mount(t, dir, 1<<20)
	return dir
}

// TestWriteFailureOnAFullDisk puts the state file on a small tmpfs and
// fills it: a change that needs a new page of the file then fails with
// ErrWrite, naming the file and ENOSPC, and leaves nothing of itself; the
// changes before it stay. Once there is room again the same change is
// kept, and the file reopens with every acknowledged record.
func TestWriteFailureOnAFullDisk(t *testing.T) {
	ctx := context.Background()
	dir := smallDisk(t)
	path := filepath.Join(dir, "state.db")
	s, err := state.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if s != nil {
			s.Close()
		}
	}()
	record := func(i int) state.KeyRecord {
		return state.KeyRecord{Token: tok, ID: fmt.Sprintf("%04x", i), Label: fmt.Sprintf("key-%04d-%s", i, strings.Repeat("x", 200)), Usage: state.UsageSign}
	}
	const before = 10
	for i := range before {
		if err := s.CreateKey(ctx, record(i)); err != nil {
			t.Fatal(err)
		}
	}
	filler := filepath.Join(dir, "filler")
	diskfull.Fill(t, filler)

	acked := before
	var failed error
	for i := before; i < 20000 && failed == nil; i++ {
		if err := s.CreateKey(ctx, record(i)); err != nil {
			failed = err
			break
		}
		acked++
	}
	if failed == nil {
		t.Fatal("20,000 records written on a full disk; want ErrWrite once the file needs room")
	}
	if !errors.Is(failed, state.ErrWrite) || !errors.Is(failed, syscall.ENOSPC) || !strings.Contains(failed.Error(), path) {
		t.Fatalf("CreateKey on a full disk: %v; want ErrWrite wrapping ENOSPC and naming %s", failed, path)
	}
	if _, err := s.GetKey(ctx, tok, record(acked).ID); !errors.Is(err, state.ErrNotFound) {
		t.Fatalf("the record whose commit failed: %v; want ErrNotFound", err)
	}
	for i := range acked {
		if _, err := s.GetKey(ctx, tok, record(i).ID); err != nil {
			t.Fatalf("record %d, acknowledged before the failure: %v", i, err)
		}
	}
	// Another change fails the same way while the disk stays full.
	if err := s.CreateKey(ctx, record(acked)); !errors.Is(err, state.ErrWrite) {
		t.Fatalf("second try on the full disk: %v; want ErrWrite", err)
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateKey(ctx, record(acked)); err != nil {
		t.Fatalf("the same change with room again: %v", err)
	}
	acked++
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = nil
	s2, err := state.Open(ctx, path)
	if err != nil {
		t.Fatalf("reopen after the failure: %v", err)
	}
	defer s2.Close()
	recs, err := s2.ListKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != acked {
		t.Fatalf("%d records after reopening; want the %d acknowledged", len(recs), acked)
	}
}

// TestOpenOnAFullDisk makes the state file on a full disk with a few
// pages of room or none, as a first start of the daemon does: Open fails
// with ErrWrite naming the file and ENOSPC and leaves no file behind, not
// a part of one. Once there is room again the same Open makes the file
// and it keeps records. (bbolt used to leave the pages it could write: a
// file "too small" for any later start, or one whose metadata named
// pages it did not hold, which killed the next Open with SIGBUS.)
func TestOpenOnAFullDisk(t *testing.T) {
	ctx := context.Background()
	for _, room := range []int64{0, 4096, 8192, 12288} {
		t.Run(fmt.Sprintf("room%d", room), func(t *testing.T) {
			dir := smallDisk(t)
			filler := filepath.Join(dir, "filler")
			unfill := diskfull.FillLeaving(t, filler, room)
			path := filepath.Join(dir, "state.db")
			s, err := state.Open(ctx, path)
			if err == nil {
				s.Close()
				t.Fatalf("Open with %d bytes of room made the state file; want ErrWrite (the test needs less room than a state file)", room)
			}
			if !errors.Is(err, state.ErrWrite) || !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), path) {
				t.Fatalf("Open on a full disk: %v; want ErrWrite wrapping ENOSPC and naming %s", err, path)
			}
			diskfull.CheckOnly(t, dir, "filler") // nothing of the failed Open
			unfill()
			s, err = state.Open(ctx, path)
			if err != nil {
				t.Fatalf("Open with room again: %v", err)
			}
			rec := state.KeyRecord{Token: tok, ID: "01", Label: "after", Usage: state.UsageSign}
			if err := s.CreateKey(ctx, rec); err != nil {
				t.Fatal(err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			s, err = state.Open(ctx, path)
			if err != nil {
				t.Fatalf("reopen: %v", err)
			}
			defer s.Close()
			if _, err := s.GetKey(ctx, tok, rec.ID); err != nil {
				t.Fatalf("the record after reopening: %v", err)
			}
		})
	}
}

// TestOpenTruncatedFile: a state file cut short (a copy that ended early,
// a disk that filled while it was made) is refused with ErrCorrupt naming
// the file, however much of it is left; bbolt would map it and read the
// missing pages, and the process would die of SIGBUS.
func TestOpenTruncatedFile(t *testing.T) {
	ctx := context.Background()
	src := filepath.Join(t.TempDir(), "state.db")
	s, err := state.Open(ctx, src)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 200 {
		if err := s.CreateKey(ctx, state.KeyRecord{Token: tok, ID: fmt.Sprintf("%04x", i), Label: fmt.Sprintf("key-%04d-%s", i, strings.Repeat("x", 200)), Usage: state.UsageSign}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	whole, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	// The pages the file's metadata names: bbolt grows the file in steps
	// beyond them, so the last page of the file may hold nothing.
	db, err := bolt.Open(src, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	var used int64
	if err := db.View(func(tx *bolt.Tx) error { used = tx.Size(); return nil }); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	page := int64(os.Getpagesize())
	for _, size := range []int64{page, 2 * page, 3 * page, used - page} {
		t.Run(fmt.Sprintf("size%d", size), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state.db")
			if err := os.WriteFile(path, whole[:size], 0o600); err != nil {
				t.Fatal(err)
			}
			s, err := state.Open(ctx, path)
			if err == nil {
				s.Close()
				t.Fatalf("Open of the state file cut to %d of %d bytes succeeded; want ErrCorrupt", size, len(whole))
			}
			if !errors.Is(err, state.ErrCorrupt) || !strings.Contains(err.Error(), path) {
				t.Fatalf("Open of the state file cut to %d of %d bytes: %v; want ErrCorrupt naming %s", size, len(whole), err, path)
			}
		})
	}
}

// TestManyFailedCommitsOnAFullDisk: a thousand commits refused on a full
// disk, of records large enough to need new pages each (60 KiB OCSP
// responses), leave the store usable: once there is room again a commit
// succeeds, and bbolt's own consistency check of the reopened file (every
// page reachable once, the freelist agreeing) finds nothing, so no page
// was lost or given twice, and it holds every acknowledged record.
func TestManyFailedCommitsOnAFullDisk(t *testing.T) {
	ctx := context.Background()
	dir := smallDisk(t)
	path := filepath.Join(dir, "state.db")
	s, err := state.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if s != nil {
			s.Close()
		}
	}()
	der := make([]byte, 60<<10)
	save := func(i int) error {
		var sum [32]byte
		binary.BigEndian.PutUint32(sum[:], uint32(i))
		return s.SaveOCSPResponse(ctx, sum, der)
	}
	acked := 0
	for i := range 3 {
		if err := save(i); err != nil {
			t.Fatal(err)
		}
		acked++
	}
	filler := filepath.Join(dir, "filler")
	diskfull.Fill(t, filler)
	failed := 0
	for i := 3; i < 1003; i++ {
		err := save(i)
		if err == nil {
			acked++ // it fit in pages freed before
			continue
		}
		if !errors.Is(err, state.ErrWrite) {
			t.Fatalf("commit %d on a full disk: %v; want ErrWrite", i, err)
		}
		failed++
	}
	if failed < 990 {
		t.Fatalf("%d of 1000 commits of 60 KiB records failed on a full disk; want nearly all", failed)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if err := save(5000); err != nil {
		t.Fatalf("a commit with room again, after %d failed: %v", failed, err)
	}
	acked++
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = nil
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	n := 0
	if err := db.View(func(tx *bolt.Tx) error {
		var errs []error
		for err := range tx.Check() {
			errs = append(errs, err)
		}
		n = tx.Bucket([]byte("ocsp_responses")).Stats().KeyN
		return errors.Join(errs...)
	}); err != nil {
		t.Fatalf("bbolt check after %d failed commits: %v", failed, err)
	}
	if n != acked {
		t.Fatalf("%d responses in the reopened file; want the %d acknowledged", n, acked)
	}
}
