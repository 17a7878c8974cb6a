package config

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// PIN source kinds.
const (
	PINFromFile       = "file"       // a file of mode 0600 or 0400 owned by the daemon's user
	PINFromCredential = "credential" // $CREDENTIALS_DIRECTORY/NAME (systemd LoadCredential=)
	PINFromLogin      = "login"      // no stored PIN: the officer logs in over the socket
)

// MaxPINBytes is the largest PIN file accepted.
const MaxPINBytes = 1024

// Errors that PINSource.Read returns; each error also names the path
// concerned, never the PIN.
var (
	// ErrNoPIN: the source is "login", so no PIN is stored; an officer
	// logs the token in over the socket.
	ErrNoPIN = errors.New("no stored PIN: the token waits for an officer's login")
	// ErrUnsafePINFile: the file is not a regular file, is a symbolic link,
	// grants group or other access, or belongs to another user.
	ErrUnsafePINFile = errors.New("unsafe PIN file")
	// ErrBadPIN: the file is empty or longer than MaxPINBytes.
	ErrBadPIN = errors.New("unusable PIN file")
	// ErrNoCredentialsDirectory: a credential source is used but
	// $CREDENTIALS_DIRECTORY is unset (the unit has no LoadCredential=).
	ErrNoCredentialsDirectory = errors.New("CREDENTIALS_DIRECTORY is not set")
)

// PINSource says where a token's user PIN comes from, as written in the
// pin key: "login", "file:/absolute/path" or "credential:NAME".
type PINSource struct {
	Kind string // PINFromFile, PINFromCredential or PINFromLogin
	Path string // the file, for PINFromFile
	Name string // the credential's name, for PINFromCredential
}

// ParsePINSource parses a pin value. The value is never repeated in the
// error, in case someone wrote the PIN itself there. Errors wrap ErrInvalid.
func ParsePINSource(s string) (PINSource, error) {
	ps, problem := parsePINSource(s)
	if problem != "" {
		return PINSource{}, &Error{Key: "pin", Msg: "pin: " + problem}
	}
	return ps, nil
}

func parsePINSource(s string) (PINSource, string) {
	const want = `must be "login", "file:/absolute/path" or "credential:NAME" (value not shown)`
	switch {
	case s == PINFromLogin:
		return PINSource{Kind: PINFromLogin}, ""
	case strings.HasPrefix(s, PINFromFile+":"):
		p := strings.TrimPrefix(s, PINFromFile+":")
		if problem := pathProblem(p); problem != "" {
			return PINSource{}, "file: path " + problem
		}
		return PINSource{Kind: PINFromFile, Path: p}, ""
	case strings.HasPrefix(s, PINFromCredential+":"):
		n := strings.TrimPrefix(s, PINFromCredential+":")
		if n == "" || n == "." || n == ".." || len(n) > 255 || strings.ContainsFunc(n, func(r rune) bool { return r == '/' || r < 0x20 || r == 0x7f }) {
			return PINSource{}, "credential: NAME must be a file name (no '/', not . or ..)"
		}
		return PINSource{Kind: PINFromCredential, Name: n}, ""
	}
	return PINSource{}, want
}

// String formats s as it is written in the configuration.
func (s PINSource) String() string {
	switch s.Kind {
	case PINFromFile:
		return PINFromFile + ":" + s.Path
	case PINFromCredential:
		return PINFromCredential + ":" + s.Name
	}
	return s.Kind
}

// Read returns the PIN. For a file it checks, before reading, that the
// path is a regular file and not a symbolic link, of mode 0600 or 0400,
// owned by the effective uid; for a credential, that it is a regular file
// and not a symbolic link, giving others no access (systemd owns the
// directory and may grant access through the group bits and an ACL). One
// trailing "\n" or "\r\n" is removed; an empty PIN is refused. For "login"
// it returns ErrNoPIN. Errors never contain the PIN. The caller owns the
// returned slice and should clear it after use.
func (s PINSource) Read(ctx context.Context) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	switch s.Kind {
	case PINFromLogin:
		return nil, ErrNoPIN
	case PINFromFile:
		if problem := pathProblem(s.Path); problem != "" {
			return nil, fmt.Errorf("%w: pin file %s", ErrInvalid, problem)
		}
		return readPINFile(s.Path, os.Geteuid(), true)
	case PINFromCredential:
		dir, ok := os.LookupEnv("CREDENTIALS_DIRECTORY")
		if !ok || dir == "" {
			return nil, fmt.Errorf("%w: credential %q needs LoadCredential= in the unit", ErrNoCredentialsDirectory, s.Name)
		}
		if !filepath.IsAbs(dir) {
			return nil, fmt.Errorf("%w: CREDENTIALS_DIRECTORY %q is not absolute", ErrUnsafePINFile, dir)
		}
		if _, problem := parsePINSource(PINFromCredential + ":" + s.Name); problem != "" {
			return nil, fmt.Errorf("%w: pin %s", ErrInvalid, problem)
		}
		return readPINFile(filepath.Join(dir, s.Name), os.Geteuid(), false)
	}
	return nil, fmt.Errorf("%w: unknown PIN source kind %q", ErrInvalid, s.Kind)
}

// readPINFile opens path without following a final symbolic link and
// without blocking on a FIFO, checks what it opened, and reads it. strict
// asks for the file rules (owner euid, mode 0600 or 0400); otherwise only
// the other-access bits are checked.
func readPINFile(path string, euid int, strict bool) ([]byte, error) {
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK|syscall.O_CLOEXEC|syscall.O_NOCTTY, 0)
	if errors.Is(err, syscall.ELOOP) {
		return nil, fmt.Errorf("%w: %s is a symbolic link; give the file itself", ErrUnsafePINFile, path)
	}
	if err != nil {
		return nil, fmt.Errorf("pin file: %w", &os.PathError{Op: "open", Path: path, Err: err})
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("pin file %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: %s is not a regular file (%v)", ErrUnsafePINFile, path, fi.Mode().Type())
	}
	mode := fi.Mode() & (os.ModePerm | os.ModeSetuid | os.ModeSetgid | os.ModeSticky)
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil, fmt.Errorf("%w: %s: cannot read its owner", ErrUnsafePINFile, path)
	}
	if strict {
		if mode != 0o600 && mode != 0o400 {
			return nil, fmt.Errorf("%w: %s has mode %04o; want 0600 or 0400 (no group or other access)", ErrUnsafePINFile, path, uint32(fi.Mode().Perm()))
		}
		if int64(st.Uid) != int64(euid) {
			return nil, fmt.Errorf("%w: %s is owned by uid %d, not by the daemon's uid %d", ErrUnsafePINFile, path, st.Uid, euid)
		}
	} else if mode&0o007 != 0 || mode&(os.ModeSetuid|os.ModeSetgid|os.ModeSticky) != 0 {
		return nil, fmt.Errorf("%w: %s has mode %04o; others must have no access", ErrUnsafePINFile, path, uint32(fi.Mode().Perm()))
	}
	// Room for the longest PIN, a "\r\n", and one byte to see a longer file.
	if fi.Size() > MaxPINBytes+2 {
		return nil, fmt.Errorf("%w: %s is larger than %d bytes", ErrBadPIN, path, MaxPINBytes)
	}
	buf := make([]byte, MaxPINBytes+3)
	defer clear(buf)
	n, err := io.ReadFull(f, buf)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("pin file %s: %w", path, err)
	}
	pin := buf[:n]
	if bytes.HasSuffix(pin, []byte("\r\n")) {
		pin = pin[:len(pin)-2]
	} else if bytes.HasSuffix(pin, []byte("\n")) {
		pin = pin[:len(pin)-1]
	}
	switch {
	case len(pin) == 0:
		return nil, fmt.Errorf("%w: %s is empty", ErrBadPIN, path)
	case len(pin) > MaxPINBytes:
		return nil, fmt.Errorf("%w: %s is larger than %d bytes", ErrBadPIN, path, MaxPINBytes)
	}
	return bytes.Clone(pin), nil
}
