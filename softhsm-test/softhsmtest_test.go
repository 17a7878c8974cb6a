package softhsmtest_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	softhsmtest "github.com/hsmsigner/hsmsigner/softhsm-test"
)

// showSlots runs softhsm2-util --show-slots with conf and returns the tokens
// it lists, failing the test if it cannot.
func showSlots(t *testing.T, conf string) []softhsmtest.TokenInfo {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), "softhsm2-util", "--show-slots")
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+conf)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("softhsm2-util --show-slots: %v: %s\n%s", err, out, softhsmtest.InstallHint)
	}
	return softhsmtest.ParseShowSlots(string(out))
}

// hasToken reports whether infos holds an initialised token with label and serial.
func hasToken(infos []softhsmtest.TokenInfo, label, serial string) bool {
	for _, i := range infos {
		if i.Initialized && i.Label == label && i.Serial == serial {
			return true
		}
	}
	return false
}

var serialRE = regexp.MustCompile(`^[0-9a-f]{16}$`)

func TestNewTokenVisibleInShowSlots(t *testing.T) {
	tests := []struct {
		name  string
		opts  []softhsmtest.Option
		label string
	}{
		{name: "default label", label: "softhsmtest"},
		{name: "custom label", opts: []softhsmtest.Option{softhsmtest.WithLabel("signer token")}, label: "signer token"},
		{name: "32-byte label", opts: []softhsmtest.Option{softhsmtest.WithLabel(strings.Repeat("L", 32))}, label: strings.Repeat("L", 32)},
		{name: "fixed PINs", opts: []softhsmtest.Option{softhsmtest.WithPINs([]byte("user-pin"), []byte("so-pin-1"))}, label: "softhsmtest"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tok := softhsmtest.New(t, tc.opts...)
			if tok.Label != tc.label {
				t.Errorf("Label = %q, want %q", tok.Label, tc.label)
			}
			if !serialRE.MatchString(tok.Serial) {
				t.Errorf("Serial = %q, want 16 hex digits", tok.Serial)
			}
			if got := os.Getenv("SOFTHSM2_CONF"); got != tok.ConfPath {
				t.Errorf("SOFTHSM2_CONF = %q, want %q", got, tok.ConfPath)
			}
			if want := []string{"SOFTHSM2_CONF=" + tok.ConfPath}; !equal(tok.Env(), want) {
				t.Errorf("Env() = %q, want %q", tok.Env(), want)
			}
			if !hasToken(showSlots(t, tok.ConfPath), tc.label, tok.Serial) {
				t.Errorf("softhsm2-util --show-slots does not list token %q serial %s", tc.label, tok.Serial)
			}
			fi, err := os.Stat(filepath.Join(tok.Dir, "tokens"))
			if err != nil {
				t.Fatal(err)
			}
			if perm := fi.Mode().Perm(); perm != 0o700 {
				t.Errorf("tokens directory mode = %v, want 0700", perm)
			}
			conf, err := os.ReadFile(tok.ConfPath)
			if err != nil {
				t.Fatal(err)
			}
			for _, line := range []string{
				"directories.tokendir = " + filepath.Join(tok.Dir, "tokens"),
				"objectstore.backend = file",
				"log.level = ERROR",
				"slots.removable = false",
			} {
				if !bytes.Contains(conf, []byte(line+"\n")) {
					t.Errorf("%s lacks line %q:\n%s", tok.ConfPath, line, conf)
				}
			}
		})
	}
}

func equal(a, b []string) bool {
	return strings.Join(a, "\x00") == strings.Join(b, "\x00")
}

func TestTwoTokensAreDistinct(t *testing.T) {
	a := softhsmtest.New(t)
	b := softhsmtest.New(t)
	if a.Dir == b.Dir || a.ConfPath == b.ConfPath {
		t.Errorf("tokens share a directory: %s, %s", a.Dir, b.Dir)
	}
	if a.Serial == b.Serial {
		t.Errorf("tokens share serial %s", a.Serial)
	}
	if bytes.Equal(a.UserPIN, b.UserPIN) || bytes.Equal(a.SOPIN, b.SOPIN) {
		t.Error("default PINs are not random per token")
	}
	if got := os.Getenv("SOFTHSM2_CONF"); got != b.ConfPath {
		t.Errorf("SOFTHSM2_CONF = %q, want the last token's %q", got, b.ConfPath)
	}
	if infos := showSlots(t, a.ConfPath); hasToken(infos, b.Label, b.Serial) {
		t.Errorf("token b is visible through a's configuration")
	}

	// A second token in a's directory: one configuration sees both.
	c := softhsmtest.New(t, softhsmtest.WithDir(a.Dir), softhsmtest.WithLabel("second"))
	if c.ConfPath != a.ConfPath || c.Serial == a.Serial {
		t.Errorf("shared-dir token: conf %s serial %s; first: conf %s serial %s", c.ConfPath, c.Serial, a.ConfPath, a.Serial)
	}
	infos := showSlots(t, a.ConfPath)
	if !hasToken(infos, a.Label, a.Serial) || !hasToken(infos, c.Label, c.Serial) {
		t.Errorf("shared directory does not list both tokens: %+v", infos)
	}
}

// TestCreateSameLabelRefused documents that Create refuses, with
// ErrTokenExists, a label already present in the directory, and leaves the
// existing token alone.
func TestCreateSameLabelRefused(t *testing.T) {
	dir := t.TempDir()
	first, err := softhsmtest.Create(t.Context(), dir, "dup", []byte("user-1"), []byte("so-pin-1"))
	if err != nil {
		t.Fatalf("Create: %v (%s)", err, softhsmtest.InstallHint)
	}
	tests := []struct {
		name    string
		label   string
		wantErr error
	}{
		{name: "same label", label: "dup", wantErr: softhsmtest.ErrTokenExists},
		{name: "other label", label: "dup2"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tok, err := softhsmtest.Create(t.Context(), dir, tc.label, []byte("user-2"), []byte("so-pin-2"))
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Create(%q) error = %v, want %v", tc.label, err, tc.wantErr)
			}
			if err != nil {
				for _, pin := range []string{"user-2", "so-pin-2"} {
					if strings.Contains(err.Error(), pin) {
						t.Errorf("error %q contains a PIN", err)
					}
				}
				return
			}
			if tok.Serial == first.Serial {
				t.Errorf("new token has the first token's serial %s", tok.Serial)
			}
		})
	}
	// The first token still opens with its own PIN.
	if _, err := first.PKCS11Tool(t.Context(), "--login", "--pin", "env:"+softhsmtest.UserPINEnv, "--list-objects"); err != nil {
		t.Errorf("first token after refused Create: %v", err)
	}
}

// TestPINsTakeEffect checks that the token's PINs are the ones given, and
// that PINs reach pkcs11-tool through the environment: a different PIN in
// the same variable must be refused.
func TestPINsTakeEffect(t *testing.T) {
	tok := softhsmtest.New(t, softhsmtest.WithPINs([]byte("good-user-pin"), []byte("good-so-pin")))
	wrongUser := *tok
	wrongUser.UserPIN = []byte("bad-user-pin")
	wrongSO := *tok
	wrongSO.SOPIN = []byte("bad-so-pin")
	tests := []struct {
		name    string
		tok     *softhsmtest.Token
		args    []string
		wantErr bool
	}{
		{name: "user PIN", tok: tok, args: []string{"--login", "--pin", "env:" + softhsmtest.UserPINEnv, "--list-objects"}},
		{name: "SO PIN", tok: tok, args: []string{"--login", "--login-type", "so", "--so-pin", "env:" + softhsmtest.SOPINEnv, "--session-rw", "--list-objects"}},
		{name: "wrong user PIN", tok: &wrongUser, args: []string{"--login", "--pin", "env:" + softhsmtest.UserPINEnv, "--list-objects"}, wantErr: true},
		{name: "wrong SO PIN", tok: &wrongSO, args: []string{"--login", "--login-type", "so", "--so-pin", "env:" + softhsmtest.SOPINEnv, "--session-rw", "--list-objects"}, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.tok.PKCS11Tool(t.Context(), tc.args...)
			if (err != nil) != tc.wantErr {
				t.Fatalf("PKCS11Tool(%q) error = %v, want error: %v", tc.args, err, tc.wantErr)
			}
			if tc.wantErr && !strings.Contains(err.Error(), "CKR_PIN_INCORRECT") {
				t.Errorf("error = %v, want CKR_PIN_INCORRECT", err)
			}
			if err != nil && (strings.Contains(err.Error(), "bad-user-pin") || strings.Contains(err.Error(), "bad-so-pin")) {
				t.Errorf("error contains a PIN: %v", err)
			}
		})
	}
}

func TestCreateRejectsBadInput(t *testing.T) {
	const secret = "s3cr3t\npin" // a PIN that must not show in errors
	tests := []struct {
		name    string
		label   string
		user    []byte
		so      []byte
		wantMsg string
	}{
		{name: "empty label", label: "", user: []byte("1234"), so: []byte("12345678"), wantMsg: "empty token label"},
		{name: "long label", label: strings.Repeat("x", 33), user: []byte("1234"), so: []byte("12345678"), wantMsg: "more than 32"},
		{name: "padded label", label: " x", user: []byte("1234"), so: []byte("12345678"), wantMsg: "blanks"},
		{name: "control in label", label: "a\tb", user: []byte("1234"), so: []byte("12345678"), wantMsg: "control character"},
		{name: "short user PIN", label: "ok", user: []byte("123"), so: []byte("12345678"), wantMsg: "user PIN must be 4 to 255 bytes"},
		{name: "long SO PIN", label: "ok", user: []byte("1234"), so: bytes.Repeat([]byte("9"), 256), wantMsg: "SO PIN must be 4 to 255 bytes"},
		{name: "newline in user PIN", label: "ok", user: []byte(secret), so: []byte("12345678"), wantMsg: "user PIN contains NUL or a line break"},
		{name: "NUL in SO PIN", label: "ok", user: []byte("1234"), so: []byte("abc\x00def"), wantMsg: "SO PIN contains NUL"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			_, err := softhsmtest.Create(t.Context(), dir, tc.label, tc.user, tc.so)
			if err == nil || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("Create error = %v, want one containing %q", err, tc.wantMsg)
			}
			if strings.Contains(err.Error(), "s3cr3t") {
				t.Errorf("error %q contains the PIN", err)
			}
		})
	}
}

func TestModulePath(t *testing.T) {
	fake := filepath.Join(t.TempDir(), "libfake.so")
	if err := os.WriteFile(fake, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(t.TempDir(), "nope", "libsofthsm2.so")
	tests := []struct {
		name     string
		env      string
		want     string   // exact path wanted, if set
		wantErrs []string // substrings the error must have; nil means success
	}{
		{name: "env names existing file", env: fake, want: fake},
		{name: "env names missing file", env: missing, wantErrs: []string{missing, "SOFTHSM2_MODULE", "apt-get install -y softhsm2 opensc"}},
		{name: "env names a directory", env: t.TempDir(), wantErrs: []string{"not a regular file"}},
		{name: "env unset: Debian location"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("SOFTHSM2_MODULE", tc.env)
			got, err := softhsmtest.ModulePath()
			if tc.wantErrs != nil {
				if err == nil {
					t.Fatalf("ModulePath() = %q, want an error", got)
				}
				for _, s := range tc.wantErrs {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error %q lacks %q", err, s)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("ModulePath: %v", err)
			}
			if tc.want != "" && got != tc.want {
				t.Errorf("ModulePath() = %q, want %q", got, tc.want)
			}
			if tc.want == "" && filepath.Base(got) != "libsofthsm2.so" {
				t.Errorf("ModulePath() = %q, want a libsofthsm2.so", got)
			}
		})
	}
}

func TestTokenStringRedactsPINs(t *testing.T) {
	tok := softhsmtest.Token{Label: "l", Serial: "s", Dir: "/d", UserPIN: []byte("user-secret"), SOPIN: []byte("so-secret")}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
		for _, v := range []any{tok, &tok} {
			got := fmt.Sprintf(verb, v)
			if strings.Contains(got, "secret") || !strings.Contains(got, `"l"`) {
				t.Errorf("Sprintf(%q) = %s", verb, got)
			}
		}
	}
}

func TestParseShowSlots(t *testing.T) {
	const out = `Available slots:
Slot 1491885875
    Slot info:
        Description:      SoftHSM slot ID 0x58ec5f33                                      
        Token present:    yes
    Token info:
        Serial number:    8300727c58ec5f33
        Initialized:      yes
        User PIN init.:   yes
        Label:            two words                       
Slot 2
    Slot info:
        Description:      SoftHSM slot ID 0x2                                             
    Token info:
        Serial number:                    
        Initialized:      no
        User PIN init.:   no
        Label:                                            
`
	tests := []struct {
		name string
		in   string
		want []softhsmtest.TokenInfo
	}{
		{name: "empty", in: "", want: nil},
		{name: "no slots", in: "Available slots:\n", want: nil},
		{name: "initialised and free", in: out, want: []softhsmtest.TokenInfo{
			{SlotID: "1491885875", Label: "two words", Serial: "8300727c58ec5f33", Initialized: true},
			{SlotID: "2"},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := softhsmtest.ParseShowSlots(tc.in)
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("ParseShowSlots = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestScript(t *testing.T) {
	script, err := filepath.Abs("softhsm-token.sh")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := softhsmtest.ModulePath(); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "dev token")
	run := func(t *testing.T, env []string, args ...string) (stdout, stderr string, err error) {
		t.Helper()
		cmd := exec.CommandContext(t.Context(), "bash", append([]string{script}, args...)...)
		cmd.Env = append(os.Environ(), env...)
		var o, e bytes.Buffer
		cmd.Stdout, cmd.Stderr = &o, &e
		err = cmd.Run()
		return o.String(), e.String(), err
	}
	pins := []string{"SOFTHSM_USER_PIN=script-user", "SOFTHSM_SO_PIN=script-so"}
	tests := []struct {
		name       string
		env        []string
		args       []string
		wantErr    bool
		wantStderr string
	}{
		{name: "new token", env: pins, args: []string{dir, "demo"}, wantStderr: `initialised token "demo"`},
		{name: "again: idempotent", env: pins, args: []string{dir, "demo"}, wantStderr: "already exists"},
		{name: "empty PINs refused", env: []string{"SOFTHSM_USER_PIN=", "SOFTHSM_SO_PIN="}, args: []string{dir, "other"}, wantErr: true, wantStderr: "must be 4 to 255"},
		{name: "missing module", env: append([]string{"SOFTHSM2_MODULE=/nonexistent/libsofthsm2.so"}, pins...), args: []string{dir, "x"}, wantErr: true, wantStderr: "apt-get install -y softhsm2 opensc"},
		{name: "usage", env: pins, args: []string{dir}, wantErr: true, wantStderr: "usage:"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			stdout, stderr, err := run(t, tc.env, tc.args...)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error: %v; stderr:\n%s", err, tc.wantErr, stderr)
			}
			if !strings.Contains(stderr, tc.wantStderr) {
				t.Errorf("stderr lacks %q:\n%s", tc.wantStderr, stderr)
			}
			if strings.Contains(stdout+stderr, "script-user") || strings.Contains(stdout+stderr, "script-so") {
				t.Errorf("output shows a PIN:\n%s%s", stdout, stderr)
			}
			if tc.wantErr {
				return
			}
			conf := filepath.Join(dir, "softhsm2.conf")
			if !strings.Contains(stdout, "export SOFTHSM2_CONF=") || !strings.Contains(stdout, "export SOFTHSM2_MODULE=") {
				t.Errorf("stdout lacks the export lines:\n%s", stdout)
			}
			found := false
			for _, i := range showSlots(t, conf) {
				found = found || (i.Initialized && i.Label == "demo")
			}
			if !found {
				t.Errorf("token demo not listed for %s", conf)
			}
		})
	}

	// Unset PINs fall back to defaults, with a development-only warning.
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SOFTHSM_USER_PIN=") && !strings.HasPrefix(kv, "SOFTHSM_SO_PIN=") {
			env = append(env, kv)
		}
	}
	cmd := exec.CommandContext(t.Context(), "bash", script, dir, "defaults")
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "development only") {
		t.Errorf("default PINs: err = %v, output:\n%s", err, out)
	}
}

// recordingTB records how New gives up, instead of ending the test.
type recordingTB struct {
	testing.TB
	fatal   string
	skipped bool
}

// stopped is what recordingTB panics with to leave New, as t.FailNow would.
type stopped struct{}

func (r *recordingTB) Fatal(args ...any) { r.fatal = fmt.Sprint(args...); panic(stopped{}) }
func (r *recordingTB) Fatalf(format string, args ...any) {
	r.fatal = fmt.Sprintf(format, args...)
	panic(stopped{})
}
func (r *recordingTB) FailNow()             { r.fatal = "FailNow"; panic(stopped{}) }
func (r *recordingTB) Skip(...any)          { r.skipped = true; panic(stopped{}) }
func (r *recordingTB) Skipf(string, ...any) { r.skipped = true; panic(stopped{}) }
func (r *recordingTB) SkipNow()             { r.skipped = true; panic(stopped{}) }

func TestNewFailsLoudlyWithoutSoftHSM(t *testing.T) {
	t.Setenv("SOFTHSM2_MODULE", filepath.Join(t.TempDir(), "missing", "libsofthsm2.so"))
	r := &recordingTB{TB: t}
	func() {
		defer func() {
			if v := recover(); v != nil {
				if _, ok := v.(stopped); !ok {
					panic(v)
				}
			}
		}()
		softhsmtest.New(r)
	}()
	if r.skipped {
		t.Error("New skipped the test; it must fail it")
	}
	if !strings.Contains(r.fatal, "apt-get install -y softhsm2 opensc") {
		t.Errorf("New's failure %q does not say how to install SoftHSM", r.fatal)
	}
}
