package hsm

import "golang.org/x/sys/unix"

// keepPIN returns a copy of pin, to be kept for re-login, in memory locked
// against swapping (mlock) where the process may lock it: a kept PIN does
// not reach the swap device. Go's collector does not move heap objects, so
// the pages stay locked while the copy lives. Release it with forgetPIN.
func keepPIN(pin []byte) []byte {
	if len(pin) == 0 {
		return nil
	}
	kept := make([]byte, len(pin))
	copy(kept, pin)
	_ = unix.Mlock(kept) // RLIMIT_MEMLOCK may refuse; the PIN is kept anyway
	return kept
}

// forgetPIN zeroes a PIN keepPIN made and unlocks its memory.
func forgetPIN(kept []byte) {
	if len(kept) == 0 {
		return
	}
	clear(kept)
	_ = unix.Munlock(kept)
}
