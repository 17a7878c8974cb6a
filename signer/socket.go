package signer

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// ErrSocketDir means the socket's folder is missing or unsafe.
var ErrSocketDir = errors.New("socket folder unusable")

// ListenUnix listens on a Unix socket at path with mode 0660, owned by
// group when it is not empty. The folder must exist, belong to this user
// and be writable by nobody else; it is set to mode 0750. A stale socket
// file left by a crashed daemon is replaced; a live one (another daemon
// answers) is an error.
func ListenUnix(ctx context.Context, path, group string) (net.Listener, error) {
	dir := filepath.Dir(path)
	st, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w (create it, mode 0750, owned by the daemon's user)", ErrSocketDir, dir, err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("%w: %s is not a folder", ErrSocketDir, dir)
	}
	if st.Mode().Perm()&0o022 != 0 {
		return nil, fmt.Errorf("%w: %s is writable by group or others (mode %04o): another user could replace the socket", ErrSocketDir, dir, st.Mode().Perm())
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && int(sys.Uid) != os.Geteuid() {
		return nil, fmt.Errorf("%w: %s belongs to uid %d, not to the daemon's uid %d", ErrSocketDir, dir, sys.Uid, os.Geteuid())
	}
	if err := os.Chmod(dir, 0o750); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrSocketDir, dir, err)
	}
	gid := -1
	if group != "" {
		if gid, err = lookupGroup(group); err != nil {
			return nil, err
		}
		if err := os.Chown(dir, -1, gid); err != nil {
			return nil, fmt.Errorf("%w: giving %s to group %s: %w", ErrSocketDir, dir, group, err)
		}
	}
	if err := removeStaleSocket(ctx, path); err != nil {
		return nil, err
	}
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(true)
	if err := os.Chmod(path, 0o660); err != nil {
		l.Close()
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	if gid >= 0 {
		if err := os.Chown(path, -1, gid); err != nil {
			l.Close()
			return nil, fmt.Errorf("socket %s: giving it to group %s: %w", path, group, err)
		}
	}
	return l, nil
}

func lookupGroup(group string) (int, error) {
	if n, err := strconv.Atoi(group); err == nil {
		return n, nil
	}
	g, err := user.LookupGroup(group)
	if err != nil {
		return -1, fmt.Errorf("socket group %q: %w", group, err)
	}
	return strconv.Atoi(g.Gid)
}

// removeStaleSocket removes a socket file nobody answers on.
func removeStaleSocket(ctx context.Context, path string) error {
	st, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("socket %s: %w", path, err)
	}
	if st.Mode()&fs.ModeSocket == 0 {
		return fmt.Errorf("socket %s: a file that is not a socket is in the way", path)
	}
	d := net.Dialer{Timeout: time.Second}
	if c, err := d.DialContext(ctx, "unix", path); err == nil {
		c.Close()
		return fmt.Errorf("socket %s: another daemon is listening on it", path)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("removing the stale socket %s: %w", path, err)
	}
	return nil
}
