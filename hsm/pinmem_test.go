package hsm

import (
	"bytes"
	"os"
	"strconv"
	"strings"
	"testing"
)

// lockedKB reads VmLck, the process's locked memory, from /proc.
func lockedKB(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmLck:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no VmLck in /proc/self/status")
	return 0
}

// TestKeptPINLockedAndZeroed: a kept PIN lives in locked memory (VmLck
// grows by its pages) and forgetPIN zeroes it and unlocks it.
func TestKeptPINLockedAndZeroed(t *testing.T) {
	before := lockedKB(t)
	pin := bytes.Repeat([]byte("7"), 3*4096) // spans pages of its own
	kept := keepPIN(pin)
	if !bytes.Equal(kept, pin) || &kept[0] == &pin[0] {
		t.Fatal("keepPIN did not make a copy")
	}
	if got := lockedKB(t); got < before+8 {
		t.Fatalf("VmLck %d kB after keepPIN, was %d kB: the kept PIN is not locked", got, before)
	}
	forgetPIN(kept)
	if !bytes.Equal(kept, make([]byte, len(kept))) {
		t.Fatal("forgetPIN left the PIN in memory")
	}
	if got := lockedKB(t); got > before {
		t.Fatalf("VmLck %d kB after forgetPIN, was %d kB", got, before)
	}
	if keepPIN(nil) != nil {
		t.Fatal("keepPIN(nil) kept something")
	}
}
