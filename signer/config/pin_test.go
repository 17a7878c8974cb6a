package config

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// secret is the PIN the tests write; no error may ever contain it.
const secret = "s3cr3t-4711"

func TestParsePINSource(t *testing.T) {
	valid := []struct {
		in   string
		want PINSource
	}{
		{"login", PINSource{Kind: PINFromLogin}},
		{"file:/etc/signerd/signer.pin", PINSource{Kind: PINFromFile, Path: "/etc/signerd/signer.pin"}},
		{"credential:signer-pin", PINSource{Kind: PINFromCredential, Name: "signer-pin"}},
		{"credential:a.b@c", PINSource{Kind: PINFromCredential, Name: "a.b@c"}},
	}
	for _, tc := range valid {
		got, err := ParsePINSource(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParsePINSource(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
		if got.String() != tc.in {
			t.Errorf("%+v.String() = %q, want %q", got, got.String(), tc.in)
		}
	}
	invalid := []string{
		"", "LOGIN", secret, "env:" + secret, "file:", "file:" + secret, "file:/a/../" + secret,
		"file:/a/" + secret + "/", "credential:", "credential:" + secret + "/x", "credential:..", "credential:.",
		"credential:a\nb",
	}
	for _, in := range invalid {
		_, err := ParsePINSource(in)
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("ParsePINSource(%q) = %v, want ErrInvalid", in, err)
			continue
		}
		if strings.Contains(err.Error(), secret) {
			t.Errorf("ParsePINSource(%q) error shows the value: %v", in, err)
		}
	}
}

// pinFile writes content to a file of the given mode in a fresh directory.
func pinFile(t *testing.T, content string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "signer.pin")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

func fileSource(p string) PINSource { return PINSource{Kind: PINFromFile, Path: p} }

func TestReadPINFile(t *testing.T) {
	ctx := context.Background()
	ok := []struct {
		name    string
		content string
		mode    os.FileMode
		want    string
	}{
		{"0600 with newline", secret + "\n", 0o600, secret},
		{"0400", secret + "\n", 0o400, secret},
		{"no newline", secret, 0o600, secret},
		{"CRLF", secret + "\r\n", 0o600, secret},
		{"only one newline removed", secret + "\n\n", 0o600, secret + "\n"},
		{"inner spaces kept", " a b \n", 0o600, " a b "},
		{"longest PIN", strings.Repeat("9", MaxPINBytes) + "\r\n", 0o600, strings.Repeat("9", MaxPINBytes)},
	}
	for _, tc := range ok {
		t.Run(tc.name, func(t *testing.T) {
			got, err := fileSource(pinFile(t, tc.content, tc.mode)).Read(ctx)
			if err != nil || string(got) != tc.want {
				t.Errorf("Read = %q, %v; want %q", got, err, tc.want)
			}
		})
	}

	refused := []struct {
		name    string
		content string
		mode    os.FileMode
		is      error
		says    string
	}{
		{"0644", secret, 0o644, ErrUnsafePINFile, "mode 0644"},
		{"0640", secret, 0o640, ErrUnsafePINFile, "mode 0640"},
		{"0604", secret, 0o604, ErrUnsafePINFile, "mode 0604"},
		{"0700", secret, 0o700, ErrUnsafePINFile, "mode 0700"},
		{"0200", secret, 0o200, ErrUnsafePINFile, "mode 0200"},
		{"setuid", secret, 0o600 | os.ModeSetuid, ErrUnsafePINFile, "want 0600 or 0400"},
		{"empty", "", 0o600, ErrBadPIN, "is empty"},
		{"only a newline", "\n", 0o600, ErrBadPIN, "is empty"},
		{"too long", strings.Repeat("9", MaxPINBytes+1), 0o600, ErrBadPIN, "larger than"},
		{"too long with newline", strings.Repeat("9", MaxPINBytes+1) + "\n", 0o600, ErrBadPIN, "larger than"},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			p := pinFile(t, tc.content, tc.mode)
			got, err := fileSource(p).Read(ctx)
			if got != nil || !errors.Is(err, tc.is) {
				t.Fatalf("Read = %q, %v; want %v", got, err, tc.is)
			}
			msg := err.Error()
			if !strings.Contains(msg, p) || !strings.Contains(msg, tc.says) {
				t.Errorf("error %q does not name %s and say %q", msg, p, tc.says)
			}
			if strings.Contains(msg, secret) || strings.Contains(msg, strings.Repeat("9", 32)) {
				t.Errorf("error shows the PIN: %q", msg)
			}
		})
	}

	t.Run("symlink refused", func(t *testing.T) {
		target := pinFile(t, secret, 0o600)
		link := filepath.Join(t.TempDir(), "link.pin")
		if err := os.Symlink(target, link); err != nil {
			t.Fatal(err)
		}
		_, err := fileSource(link).Read(ctx)
		if !errors.Is(err, ErrUnsafePINFile) || !strings.Contains(err.Error(), "symbolic link") {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("directory refused", func(t *testing.T) {
		_, err := fileSource(t.TempDir()).Read(ctx)
		if !errors.Is(err, ErrUnsafePINFile) || !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("fifo refused without blocking", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "fifo.pin")
		if err := syscall.Mkfifo(p, 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := fileSource(p).Read(ctx)
		if !errors.Is(err, ErrUnsafePINFile) || !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("other owner refused", func(t *testing.T) {
		p := pinFile(t, secret, 0o600)
		other := os.Geteuid() + 1
		_, err := readPINFile(p, other, true)
		if !errors.Is(err, ErrUnsafePINFile) || !strings.Contains(err.Error(), fmt.Sprintf("owned by uid %d, not by the daemon's uid %d", os.Geteuid(), other)) {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("missing file", func(t *testing.T) {
		_, err := fileSource(filepath.Join(t.TempDir(), "none")).Read(ctx)
		if !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("relative path", func(t *testing.T) {
		_, err := fileSource("signer.pin").Read(ctx)
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("cancelled context", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := fileSource(pinFile(t, secret, 0o600)).Read(cctx); !errors.Is(err, context.Canceled) {
			t.Errorf("err = %v", err)
		}
	})
}

func TestReadPINLogin(t *testing.T) {
	pin, err := PINSource{Kind: PINFromLogin}.Read(context.Background())
	if pin != nil || !errors.Is(err, ErrNoPIN) {
		t.Errorf("Read = %q, %v; want ErrNoPIN", pin, err)
	}
	if _, err := (PINSource{Kind: "env"}).Read(context.Background()); !errors.Is(err, ErrInvalid) {
		t.Errorf("unknown kind: err = %v", err)
	}
}

func TestReadPINCredential(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
	}
	write("signer", secret+"\n", 0o400)
	write("group-readable", secret, 0o440) // as systemd may leave it, with an ACL
	write("world-readable", secret, 0o404)
	write("empty", "", 0o400)
	if err := os.Symlink(filepath.Join(dir, "signer"), filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	cred := func(name string) PINSource { return PINSource{Kind: PINFromCredential, Name: name} }

	t.Setenv("CREDENTIALS_DIRECTORY", dir)
	for _, name := range []string{"signer", "group-readable"} {
		if pin, err := cred(name).Read(ctx); err != nil || string(pin) != secret {
			t.Errorf("credential %s: Read = %q, %v", name, pin, err)
		}
	}
	for name, want := range map[string]error{
		"world-readable": ErrUnsafePINFile,
		"link":           ErrUnsafePINFile,
		"empty":          ErrBadPIN,
		"missing":        fs.ErrNotExist,
		"../signer":      ErrInvalid,
	} {
		_, err := cred(name).Read(ctx)
		if !errors.Is(err, want) {
			t.Errorf("credential %s: err = %v, want %v", name, err, want)
		} else if strings.Contains(err.Error(), secret) {
			t.Errorf("credential %s: error shows the PIN: %v", name, err)
		}
	}

	t.Setenv("CREDENTIALS_DIRECTORY", "relative/dir")
	if _, err := cred("signer").Read(ctx); !errors.Is(err, ErrUnsafePINFile) {
		t.Errorf("relative CREDENTIALS_DIRECTORY: err = %v", err)
	}
	t.Setenv("CREDENTIALS_DIRECTORY", "")
	if _, err := cred("signer").Read(ctx); !errors.Is(err, ErrNoCredentialsDirectory) {
		t.Errorf("empty CREDENTIALS_DIRECTORY: err = %v", err)
	}
	os.Unsetenv("CREDENTIALS_DIRECTORY") // t.Setenv restores it after the test
	if _, err := cred("signer").Read(ctx); !errors.Is(err, ErrNoCredentialsDirectory) || !strings.Contains(err.Error(), "signer") {
		t.Errorf("unset CREDENTIALS_DIRECTORY: err = %v", err)
	}
}
