//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package audit

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// noFollow makes Open refuse a log path that is a symbolic link.
const noFollow = syscall.O_NOFOLLOW

// isSymlinkError reports whether err is what opening a symbolic link with
// noFollow gives.
func isSymlinkError(err error) bool { return errors.Is(err, syscall.ELOOP) }

// lockFile takes an exclusive flock(2) on f without waiting; it is released
// when f is closed.
func lockFile(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var lerr error
	if err := rc.Control(func(fd uintptr) {
		lerr = syscall.Flock(int(fd), syscall.LOCK_EX|syscall.LOCK_NB)
	}); err != nil {
		return err
	}
	if errors.Is(lerr, syscall.EWOULDBLOCK) {
		return ErrInUse
	}
	if lerr != nil {
		return fmt.Errorf("audit: flock: %w", lerr)
	}
	return nil
}
