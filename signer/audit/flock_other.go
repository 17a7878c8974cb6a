//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package audit

import "os"

// noFollow is not available here.
const noFollow = 0

// isSymlinkError is always false here.
func isSymlinkError(error) bool { return false }

// lockFile does nothing where flock(2) is not available: one writer per log
// is then the caller's duty.
func lockFile(*os.File) error { return nil }
