package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hsmsigner/hsmsigner/cmd/internal/daemontest"
	softhsmtest "github.com/hsmsigner/hsmsigner/softhsm-test"
)

// pinCountLow reports whether the token shows "user PIN count low": a
// wrong user PIN was presented since its last good login. It asks
// pkcs11-tool in a process of its own, which reads the token from its
// files, as the next signerd would.
func pinCountLow(ctx context.Context, t *testing.T, soft *softhsmtest.Token) bool {
	t.Helper()
	out, err := soft.PKCS11Tool(ctx, "--list-token-slots")
	if err != nil {
		t.Fatal(err)
	}
	var inToken, found bool
	var flags string
	for line := range strings.Lines(string(out)) {
		key, val, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		key, val = strings.TrimSpace(key), strings.TrimSpace(val)
		switch {
		case strings.HasPrefix(key, "Slot "):
			if inToken && found {
				return strings.Contains(flags, "user PIN count low")
			}
			inToken, found, flags = true, false, ""
		case key == "token flags":
			flags = val
		case key == "serial num" && val == soft.Serial:
			found = true
		}
	}
	if !found {
		t.Fatalf("token %s not in pkcs11-tool's list:\n%s", soft.Serial, out)
	}
	return strings.Contains(flags, "user PIN count low")
}

// clearCountLow clears the token's "count low" flag, if set, with a good
// login, so that each case starts from a token with no wrong try.
func clearCountLow(ctx context.Context, t *testing.T, soft *softhsmtest.Token) {
	t.Helper()
	if !pinCountLow(ctx, t, soft) {
		return
	}
	if _, err := soft.PKCS11Tool(ctx, "--login", "--pin", "env:"+softhsmtest.UserPINEnv, "--list-objects"); err != nil {
		t.Fatal(err)
	}
	if pinCountLow(ctx, t, soft) {
		t.Fatal("a good login did not clear the count")
	}
}

// twoTokenConfig writes a configuration with token a (whose PIN file holds
// a wrong PIN) and the [[module.token]] and [[module]] tables of more,
// each a fmt format taking the module path; it returns the path.
func twoTokenConfig(t *testing.T, dir string, a *softhsmtest.Token, more string) string {
	t.Helper()
	for _, d := range []string{"run", "state"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o750); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "a.pin"), []byte("not-the-pin"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`[server]
grpc_socket = %[1]q
http_socket = %[2]q
state_dir = %[3]q
audit_file = %[4]q

[[module]]
name = "softhsm"
path = %[5]q
  [[module.token]]
  name = "a"
  token = %[6]q
  pin = "file:%[7]s"
%[8]s
[policy]
  [policy.admins]
  uids = [%[9]d]
`, filepath.Join(dir, "run/signer.sock"), filepath.Join(dir, "run/http.sock"), filepath.Join(dir, "state"), filepath.Join(dir, "audit.jsonl"),
		a.ModulePath, "label:"+a.Label, filepath.Join(dir, "a.pin"), more, os.Getuid())
	path := filepath.Join(dir, "signerd.toml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestStartFailsBeforeAnyPIN: signerd sets up its sockets and finds every
// module, token and PIN source before it presents any configured PIN, so
// that a start that fails, and the service manager's restarts after it,
// cost the token no try. Token a's PIN file is wrong in every case; a
// later step fails; the token must show no wrong try afterwards. The last
// case is the cost that remains: a start that succeeds with a wrong PIN
// file tries it once (and runs with the token logged out).
func TestStartFailsBeforeAnyPIN(t *testing.T) {
	bin := daemontest.Build(t, signerdPkg)
	hsmDir := t.TempDir()
	a := softhsmtest.New(t, softhsmtest.WithLabel("token-a"), softhsmtest.WithDir(hsmDir))
	b := softhsmtest.New(t, softhsmtest.WithLabel("token-b"), softhsmtest.WithDir(hsmDir))
	tests := []struct {
		name string
		more string // more tables; %[1]s is the module path, %[2]s the folder
		edit func(t *testing.T, dir string)
		want string // in the output of a start that fails; "" for a start that succeeds
	}{
		{"token b not found", `
  [[module.token]]
  name = "b"
  token = "label:no-such-token"
  pin = "login"
`, nil, "no-such-token"},
		{"token b's PIN file missing", `
  [[module.token]]
  name = "b"
  token = "label:token-b"
  pin = "file:%[2]s/missing.pin"
`, nil, "missing.pin"},
		{"token b's PIN file readable by others", `
  [[module.token]]
  name = "b"
  token = "label:token-b"
  pin = "file:%[2]s/b.pin"
`, func(t *testing.T, dir string) {
			if err := os.WriteFile(filepath.Join(dir, "b.pin"), b.UserPIN, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(filepath.Join(dir, "b.pin"), 0o644); err != nil {
				t.Fatal(err)
			}
		}, "b.pin"},
		{"second module missing", `
[[module]]
name = "other"
path = "%[2]s/no-such-module.so"
  [[module.token]]
  name = "c"
  token = "label:c"
  pin = "login"
`, nil, "no-such-module.so"},
		{"socket folder missing", "", func(t *testing.T, dir string) {
			if err := os.RemoveAll(filepath.Join(dir, "run")); err != nil {
				t.Fatal(err)
			}
		}, "socket folder unusable"},
		{"start succeeds: the wrong PIN is tried once", "", nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := ctxT(t)
			clearCountLow(ctx, t, a)
			dir := t.TempDir()
			more := tt.more
			if strings.Contains(more, "%[") {
				more = fmt.Sprintf(more, a.ModulePath, dir)
			}
			cfg := twoTokenConfig(t, dir, a, more)
			if tt.edit != nil {
				tt.edit(t, dir)
			}
			if tt.want == "" {
				d := daemontest.Start(t, bin, nil, "--config", cfg)
				d.WaitForLine("PIN refused at start-up", 0, time.Minute)
				d.Signal(syscall.SIGTERM)
				if err := d.Wait(time.Minute); err != nil {
					t.Fatalf("signerd exit after SIGTERM: %v\n%s", err, d.Output())
				}
				if !pinCountLow(ctx, t, a) {
					t.Fatal("token a shows no wrong try after a start with a wrong PIN file; the check of the flag does not work")
				}
				return
			}
			out, err := daemontest.Run(t, bin, nil, "--config", cfg)
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
				t.Fatalf("exit %v, want status 1\n%s", err, out)
			}
			if !strings.Contains(out, tt.want) {
				t.Fatalf("output does not mention %q:\n%s", tt.want, out)
			}
			if pinCountLow(ctx, t, a) {
				t.Fatalf("token a counts a wrong try: signerd presented its PIN before the start failed\n%s", out)
			}
			if strings.Contains(out, "not-the-pin") || strings.Contains(out, string(a.UserPIN)) || strings.Contains(out, string(b.UserPIN)) {
				t.Fatalf("a PIN reached the output:\n%s", out)
			}
		})
	}
}
