package state_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/hsmsigner/hsmsigner/signer/state"
)

// mountSmallTmpfs mounts a tmpfs of size bytes on a new directory and
// unmounts it when the test ends. Mounting needs root (CAP_SYS_ADMIN):
// CI runs as root, and there the test must not be skipped; elsewhere it is
// skipped with the reason.
func mountSmallTmpfs(t *testing.T, size int) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "small")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, fmt.Sprintf("size=%d,mode=0700", size)); err != nil {
		if errors.Is(err, syscall.EPERM) && os.Getenv("CI") != "true" {
			t.Skipf("mounting a %d-byte tmpfs needs root: %v", size, err)
		}
		t.Fatalf("mount a %d-byte tmpfs on %s: %v", size, dir, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// fillDisk writes a file at path until the file system is full, and
// leaves it there.
func fillDisk(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 4096)
	for {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("filling the disk: %v; want ENOSPC", err)
			}
			return
		}
	}
}

// TestWriteFailureOnAFullDisk puts the state file on a small tmpfs and
// fills it: a change that needs a new page of the file then fails with
// ErrWrite, naming the file and ENOSPC, and leaves nothing of itself; the
// changes before it stay. Once there is room again the same change is
// kept, and the file reopens with every acknowledged record.
func TestWriteFailureOnAFullDisk(t *testing.T) {
	ctx := context.Background()
	dir := mountSmallTmpfs(t, 1<<20)
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
	fillDisk(t, filler)

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
