// Package diskfull gives tests a small file system to fill, as a full
// disk: a tmpfs of a chosen size, and a file that takes all its room
// until removed. It serves the tests of the state store, of the service
// and of the daemon as a process alike.
package diskfull

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// Mount mounts a tmpfs of size bytes on dir (made if missing, which
// must be empty) and unmounts it when the test ends: a small file system
// that a test can fill, as a full disk. Mounting needs root
// (CAP_SYS_ADMIN): CI runs as root and must not skip, so under CI=true a
// refusal fails the test; elsewhere the test is skipped with the reason.
func Mount(t testing.TB, dir string, size int) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
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
}

// Fill writes the file at path until its file system is full (ENOSPC),
// and returns the function that removes it, giving the room back.
func Fill(t testing.TB, path string) (unfill func()) {
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
				t.Fatalf("filling the disk with %s: %v; want ENOSPC", path, err)
			}
			return func() {
				t.Helper()
				if err := os.Remove(path); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
}

// FillLeaving fills the file system as Fill does, then gives back room
// bytes (the file cut that much shorter): a disk with that little left.
func FillLeaving(t testing.TB, path string, room int64) (unfill func()) {
	t.Helper()
	unfill = Fill(t, path)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, fi.Size()-room); err != nil {
		t.Fatal(err)
	}
	return unfill
}

// CheckOnly fails the test for each entry of dir but those named keep:
// what a failed write must not leave behind.
func CheckOnly(t testing.TB, dir string, keep ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if !slices.Contains(keep, e.Name()) {
			t.Errorf("%s was left in %s", e.Name(), dir)
		}
	}
}
