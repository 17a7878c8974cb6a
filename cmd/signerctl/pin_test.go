package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"unsafe"
)

// copiesInMemory counts the places in this process's writable memory,
// other than needle itself, that hold needle's bytes. It reads the
// process's own memory through /proc/self/mem, region by region, skipping
// regions larger than 1 GiB (the race detector's shadow memory), and
// clears what it read.
func copiesInMemory(t *testing.T, needle []byte) int {
	t.Helper()
	maps, err := os.Open("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	defer maps.Close()
	mem, err := os.Open("/proc/self/mem")
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	self := uintptr(unsafe.Pointer(unsafe.SliceData(needle)))
	const chunk = 1 << 20
	buf := make([]byte, chunk+len(needle))
	// Matches inside buf are the reading's own copies.
	bufLo := uintptr(unsafe.Pointer(unsafe.SliceData(buf)))
	bufHi := bufLo + uintptr(len(buf))
	found := 0
	sc := bufio.NewScanner(maps)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || !strings.HasPrefix(f[1], "rw") || (len(f) >= 6 && strings.HasPrefix(f[5], "[v")) {
			continue
		}
		lo, hi, ok := strings.Cut(f[0], "-")
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if !ok || err1 != nil || err2 != nil || end-start > 1<<30 {
			continue
		}
		for off := start; off < end; off += chunk {
			n := min(uint64(len(buf)), end-off)
			got, err := mem.ReadAt(buf[:n], int64(off))
			if err != nil && !errors.Is(err, io.EOF) && got == 0 {
				break // an unreadable region (guard pages)
			}
			for i := 0; ; {
				j := bytes.Index(buf[i:got], needle)
				if j < 0 {
					break
				}
				addr := uintptr(off) + uintptr(i+j)
				// A match starting in the overlap is found again in the
				// next chunk; count it there.
				if addr != self && (addr < bufLo || addr >= bufHi) && i+j < chunk {
					found++
				}
				i += j + 1
			}
		}
	}
	clear(buf)
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return found
}

// TestReadPINFileLeavesNoCopy reads a PIN file and clears the PIN, as the
// commands do after their call; no copy of the PIN is left anywhere in the
// process's memory (a string made of it would stay until the memory is
// reused).
func TestReadPINFileLeavesNoCopy(t *testing.T) {
	var raw [24]byte
	if _, err := rand.Read(raw[:]); err != nil {
		t.Fatal(err)
	}
	// Both buffers are larger than any stack variable may be, so that
	// they live on the heap: a stack that grows is copied, and the old
	// copy would count.
	const onHeap = 64<<10 + 1
	needle := make([]byte, hex.EncodedLen(len(raw)), onHeap)
	hex.Encode(needle, raw[:])
	clear(raw[:])
	path := filepath.Join(t.TempDir(), "user.pin")
	content := append(append(make([]byte, 0, onHeap), needle...), '\r', '\n')
	if err := os.WriteFile(path, content, 0o600); err != nil {
		t.Fatal(err)
	}
	clear(content)
	if n := copiesInMemory(t, needle); n != 0 {
		t.Fatalf("%d copies of the PIN before reading it: the test's own setup leaks", n)
	}

	a := &app{}
	pin, err := a.readPIN(path, "")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(pin, needle) {
		t.Fatalf("read %d bytes; want the PIN without its line ending", len(pin))
	}
	clear(pin)
	if n := copiesInMemory(t, needle); n != 0 {
		t.Fatalf("%d copies of the PIN remain in memory after it was cleared", n)
	}
}

// TestReadPINFileRefusals: files that are no PIN file are refused with a
// clear error that never holds their content.
func TestReadPINFileRefusals(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, b []byte, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name, path, want string
	}{
		{"readable by others", write("loose.pin", []byte("123456\n"), 0o644), "readable by others"},
		{"empty", write("empty.pin", []byte("\n"), 0o600), "empty"},
		{"too large", write("large.pin", bytes.Repeat([]byte("7"), maxPINFileBytes+1), 0o600), "larger than"},
		{"a folder", dir, "not a regular file"},
		{"missing", filepath.Join(dir, "nope.pin"), "no such file"},
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pin, err := readPINFile(tt.path)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("readPINFile(%s) = %d bytes, %v; want an error saying %q", tt.name, len(pin), err, tt.want)
			}
			if strings.Contains(err.Error(), "123456") || strings.Contains(err.Error(), "7777") {
				t.Fatal("the error holds the file's content")
			}
		})
	}
}
