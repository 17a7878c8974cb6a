// Package softhsmtest makes throwaway SoftHSM2 tokens for tests and for
// development, each in its own directory with its own SOFTHSM2_CONF.
//
// # How tokens are initialised, and why
//
// A token is initialised by child processes running OpenSC's pkcs11-tool,
// never inside the calling process, and PINs are never put on the argv of
// any process:
//
//   - softhsm2-util --init-token prompts for PINs only on a terminal; with a
//     pipe on stdin it fails ("Could not get SO PIN"), so the only way to
//     give it PINs non-interactively is --pin/--so-pin on argv, which any
//     local user can read with ps.
//   - pkcs11-tool accepts "env:NAME" wherever it takes a PIN (--so-pin,
//     --new-pin, --pin) and then reads the PIN from the environment variable
//     NAME. The PINs therefore travel in the child's environment, readable
//     only by the same user or root through /proc, never on argv.
//   - Initialising in-process through PKCS#11 is unsafe: SoftHSM reads
//     SOFTHSM2_CONF once, at C_Initialize, and a module cannot be initialised
//     twice in one process, so it would clash with (or be silently pointed at
//     the wrong token directory by) a caller that has the module open, as a
//     test of the hsm package does.
//
// pkcs11-tool --init-token acts on the first slot that has a token, which in a
// directory already holding tokens could be an initialised one. So each token
// is initialised in an empty staging token directory, where the only slot is
// SoftHSM's free slot, and its directory is then moved into the real token
// directory. Tokens are then found by label or serial, never by slot number;
// as pkcs11-tool --token-label matches label prefixes, PKCS11Tool finds the
// token's current slot from its serial.
package softhsmtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"unicode/utf8"
)

// Environment variable names used by this package.
const (
	// ConfEnv is the variable SoftHSM reads its configuration file from.
	ConfEnv = "SOFTHSM2_CONF"
	// ModuleEnv, when set, overrides where ModulePath looks for libsofthsm2.so.
	ModuleEnv = "SOFTHSM2_MODULE"
	// UserPINEnv holds the user PIN in the environment of the pkcs11-tool
	// processes this package starts; pass "--pin env:"+UserPINEnv to it.
	UserPINEnv = "SOFTHSM_USER_PIN"
	// SOPINEnv holds the SO PIN in the environment of the pkcs11-tool
	// processes this package starts; pass "--so-pin env:"+SOPINEnv to it.
	SOPINEnv = "SOFTHSM_SO_PIN"
)

// InstallHint tells how to install what this package needs on Debian.
const InstallHint = "install SoftHSM2 and OpenSC with: apt-get install -y softhsm2 opensc"

// Limits SoftHSM and PKCS#11 put on labels and PINs.
const (
	maxLabelLen = 32 // CK_TOKEN_INFO.label is 32 bytes, blank padded
	minPINLen   = 4  // SoftHSM's minimum PIN length
	maxPINLen   = 255
)

// ErrTokenExists is returned (wrapped) by Create when the directory already
// holds a token with the requested label. Create refuses rather than reuse
// the token because it cannot vouch that the caller's PINs are that token's.
var ErrTokenExists = errors.New("token with this label already exists")

// Token describes a throwaway SoftHSM token made for one test.
type Token struct {
	ModulePath string // path of libsofthsm2.so
	ConfPath   string // the SOFTHSM2_CONF file
	Dir        string // the token directory
	Label      string
	Serial     string // the token serial as PKCS#11 reports it (trimmed)
	UserPIN    []byte
	SOPIN      []byte
}

// String describes the token without its PINs, so that logging a Token
// never leaks them.
func (t Token) String() string {
	return fmt.Sprintf("softhsmtest.Token{Label: %q, Serial: %q, Dir: %q, UserPIN: [redacted], SOPIN: [redacted]}",
		t.Label, t.Serial, t.Dir)
}

// GoString is like String, for the %#v verb.
func (t Token) GoString() string { return t.String() }

// Env returns "SOFTHSM2_CONF=..." for child processes.
func (t *Token) Env() []string {
	return []string{ConfEnv + "=" + t.ConfPath}
}

// moduleCandidates lists where Debian's softhsm2 package puts the module.
func moduleCandidates() []string {
	return []string{
		"/usr/lib/softhsm/libsofthsm2.so",
		"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
		"/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
		"/usr/local/lib/softhsm/libsofthsm2.so",
	}
}

// ModulePath returns the SoftHSM module path: $SOFTHSM2_MODULE if set, else the first of
// Debian's usual places that exists (/usr/lib/softhsm/libsofthsm2.so, /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so, /usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so, /usr/local/lib/softhsm/libsofthsm2.so); error naming the install command otherwise.
func ModulePath() (string, error) {
	if p := os.Getenv(ModuleEnv); p != "" {
		fi, err := os.Stat(p)
		if err != nil {
			return "", fmt.Errorf("softhsmtest: %s=%s: %w; set it to libsofthsm2.so or unset it, or %s", ModuleEnv, p, err, InstallHint)
		}
		if !fi.Mode().IsRegular() {
			return "", fmt.Errorf("softhsmtest: %s=%s is not a regular file; set it to libsofthsm2.so or unset it", ModuleEnv, p)
		}
		return p, nil
	}
	cands := moduleCandidates()
	for _, p := range cands {
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			return p, nil
		}
	}
	return "", fmt.Errorf("softhsmtest: SoftHSM2 module libsofthsm2.so not found in %s (or set %s); %s",
		strings.Join(cands, ", "), ModuleEnv, InstallHint)
}

// Option configures New.
type Option func(*options)

type options struct {
	label   string
	userPIN []byte
	soPIN   []byte
	dir     string
}

// WithLabel sets the token label (default "softhsmtest").
func WithLabel(label string) Option {
	return func(o *options) { o.label = label }
}

// WithPINs sets the user and SO PINs (default: random ones, different for
// every token). A nil PIN keeps the default for that PIN.
func WithPINs(user, so []byte) Option {
	return func(o *options) {
		o.userPIN = user
		o.soPIN = so
	}
}

// WithDir makes the token in dir instead of a fresh t.TempDir(). Passing the
// Dir of an earlier Token puts both tokens behind one SOFTHSM2_CONF, so one
// module instance sees both (their labels must differ).
func WithDir(dir string) Option {
	return func(o *options) { o.dir = dir }
}

// New makes a fresh token in t.TempDir() with its own SOFTHSM2_CONF, sets SOFTHSM2_CONF with t.Setenv for the rest of the test, and returns it. It calls t.Fatal (never t.Skip) with how to install SoftHSM when it is missing. Options via functional options: WithLabel(string), WithPINs(user, so []byte).
//
// Because it uses t.Setenv, New cannot be used in parallel tests. With more
// than one token in a test, SOFTHSM2_CONF names the last one made.
func New(t testing.TB, opts ...Option) *Token {
	t.Helper()
	o := options{label: "softhsmtest"}
	for _, opt := range opts {
		opt(&o)
	}
	if o.userPIN == nil {
		o.userPIN = []byte(rand.Text())
	}
	if o.soPIN == nil {
		o.soPIN = []byte(rand.Text())
	}
	if o.dir == "" {
		o.dir = t.TempDir()
	}
	tok, err := Create(t.Context(), o.dir, o.label, o.userPIN, o.soPIN)
	if err != nil {
		t.Fatalf("softhsmtest.New: %v", err)
	}
	t.Setenv(ConfEnv, tok.ConfPath)
	return tok
}

// Create does the same outside tests (used by `signerd dev` to make its throwaway token): dir is where conf and tokens go; it does not set the environment.
//
// dir/softhsm2.conf is (re)written and dir/tokens is made with mode 0700.
// dir may already hold tokens with other labels; a token with the same label
// makes Create fail with an error wrapping ErrTokenExists. Concurrent calls on
// one dir are serialised with a lock file. Labels are 1 to 32 bytes of
// printable UTF-8 without leading or trailing spaces; PINs are 4 to 255 bytes
// without NUL or line breaks.
func Create(ctx context.Context, dir, label string, userPIN, soPIN []byte) (*Token, error) {
	if err := checkLabel(label); err != nil {
		return nil, err
	}
	if err := checkPIN("user PIN", userPIN); err != nil {
		return nil, err
	}
	if err := checkPIN("SO PIN", soPIN); err != nil {
		return nil, err
	}
	module, err := ModulePath()
	if err != nil {
		return nil, err
	}
	for _, tool := range []string{"softhsm2-util", "pkcs11-tool"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("softhsmtest: %w; %s", err, InstallHint)
		}
	}
	dir, err = filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("softhsmtest: token directory: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("softhsmtest: token directory: %w", err)
	}
	unlock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	defer unlock()

	tokensDir := filepath.Join(dir, "tokens")
	if err := makePrivateDir(tokensDir); err != nil {
		return nil, err
	}
	confPath := filepath.Join(dir, "softhsm2.conf")
	if err := writeConf(confPath, tokensDir); err != nil {
		return nil, err
	}
	tok := &Token{
		ModulePath: module,
		ConfPath:   confPath,
		Dir:        dir,
		Label:      label,
		UserPIN:    bytes.Clone(userPIN),
		SOPIN:      bytes.Clone(soPIN),
	}
	existing, err := listTokens(ctx, confPath)
	if err != nil {
		return nil, err
	}
	if findLabel(existing, label) != nil {
		return nil, fmt.Errorf("softhsmtest: %q in %s: %w", label, dir, ErrTokenExists)
	}

	serial, err := initInStaging(ctx, tok)
	if err != nil {
		return nil, err
	}
	tok.Serial = serial

	after, err := listTokens(ctx, confPath)
	if err != nil {
		return nil, err
	}
	got := findLabel(after, label)
	if got == nil || got.serial != serial {
		return nil, fmt.Errorf("softhsmtest: token %q (serial %s) not visible in %s after initialisation", label, serial, dir)
	}
	return tok, nil
}

// initInStaging initialises the token in an empty staging token directory
// inside tok.Dir, whose only slot is SoftHSM's free one, then moves the token
// into tok.Dir/tokens. It returns the new token's serial.
func initInStaging(ctx context.Context, tok *Token) (string, error) {
	staging, err := os.MkdirTemp(tok.Dir, ".staging-")
	if err != nil {
		return "", fmt.Errorf("softhsmtest: staging directory: %w", err)
	}
	defer os.RemoveAll(staging)
	stagingTokens := filepath.Join(staging, "tokens")
	if err := makePrivateDir(stagingTokens); err != nil {
		return "", err
	}
	stagingConf := filepath.Join(staging, "softhsm2.conf")
	if err := writeConf(stagingConf, stagingTokens); err != nil {
		return "", err
	}
	st := *tok
	st.ConfPath = stagingConf

	if _, err := st.run(ctx, "--init-token", "--label="+tok.Label, "--so-pin", "env:"+SOPINEnv); err != nil {
		return "", fmt.Errorf("softhsmtest: initialising token %q: %w", tok.Label, err)
	}
	if _, err := st.PKCS11Tool(ctx, "--init-pin", "--login", "--login-type", "so",
		"--so-pin", "env:"+SOPINEnv, "--new-pin", "env:"+UserPINEnv); err != nil {
		return "", fmt.Errorf("softhsmtest: setting user PIN of token %q: %w", tok.Label, err)
	}
	infos, err := listTokens(ctx, stagingConf)
	if err != nil {
		return "", err
	}
	got := findLabel(infos, tok.Label)
	if got == nil || got.serial == "" {
		return "", fmt.Errorf("softhsmtest: token %q not found after initialisation", tok.Label)
	}

	entries, err := os.ReadDir(stagingTokens)
	if err != nil {
		return "", fmt.Errorf("softhsmtest: staging tokens: %w", err)
	}
	if len(entries) != 1 || !entries[0].IsDir() {
		return "", fmt.Errorf("softhsmtest: staging token directory %s holds %d entries, want 1 token directory", stagingTokens, len(entries))
	}
	name := entries[0].Name()
	if err := os.Rename(filepath.Join(stagingTokens, name), filepath.Join(tok.Dir, "tokens", name)); err != nil {
		return "", fmt.Errorf("softhsmtest: moving token into place: %w", err)
	}
	return got.serial, nil
}

// PKCS11Tool runs `pkcs11-tool --module M --slot ID args...` against the
// token, with ID the slot SoftHSM gives it now (looked up by serial), and
// returns its standard output. The child's environment has
// SOFTHSM2_CONF for the token and the PINs in UserPINEnv and SOPINEnv, so
// args can log in without PINs on argv, e.g.
//
//	tok.PKCS11Tool(ctx, "--login", "--pin", "env:"+softhsmtest.UserPINEnv,
//		"--keypairgen", "--key-type", "EC:prime256v1", "--id", "01", "--label=k")
//
// Errors include pkcs11-tool's messages, with the PINs redacted.
func (t *Token) PKCS11Tool(ctx context.Context, args ...string) ([]byte, error) {
	slot, err := t.slotID(ctx)
	if err != nil {
		return nil, err
	}
	return t.run(ctx, append([]string{"--slot", slot}, args...)...)
}

// slotID finds the token's current slot ID by its serial (or, before the
// serial is known, by its exact label). pkcs11-tool --token-label is not
// used because it matches label prefixes: "dup" would pick a token "dup2".
func (t *Token) slotID(ctx context.Context) (string, error) {
	infos, err := listTokens(ctx, t.ConfPath)
	if err != nil {
		return "", err
	}
	var found []tokenInfo
	for _, i := range infos {
		if i.initialized && i.label == t.Label && (t.Serial == "" || i.serial == t.Serial) {
			found = append(found, i)
		}
	}
	switch {
	case len(found) == 0:
		return "", fmt.Errorf("softhsmtest: no token %q with serial %q in %s", t.Label, t.Serial, t.ConfPath)
	case len(found) > 1:
		return "", fmt.Errorf("softhsmtest: %d tokens %q in %s", len(found), t.Label, t.ConfPath)
	case found[0].slotID == "":
		return "", fmt.Errorf("softhsmtest: no slot ID for token %q in %s", t.Label, t.ConfPath)
	}
	return found[0].slotID, nil
}

// run runs pkcs11-tool --module M args... with the token's environment.
func (t *Token) run(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "pkcs11-tool", append([]string{"--module", t.ModulePath}, args...)...)
	cmd.Env = append(childEnv(t.ConfPath),
		UserPINEnv+"="+string(t.UserPIN),
		SOPINEnv+"="+string(t.SOPIN))
	cmd.Stdin = nil // pkcs11-tool must never wait for a PIN on a terminal
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		msg := redact(strings.TrimSpace(stderr.String()+"\n"+stdout.String()), t.UserPIN, t.SOPIN)
		what := redact(strings.Join(args, " "), t.UserPIN, t.SOPIN)
		return stdout.Bytes(), fmt.Errorf("pkcs11-tool %s: %w: %s", what, err, oneLine(msg))
	}
	return stdout.Bytes(), nil
}

// childEnv is this process's environment with SOFTHSM2_CONF set to conf and
// any inherited PIN variables removed.
func childEnv(conf string) []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch name {
		case ConfEnv, UserPINEnv, SOPINEnv:
			continue
		}
		env = append(env, kv)
	}
	return append(env, ConfEnv+"="+conf)
}

// listTokens runs softhsm2-util --show-slots with SOFTHSM2_CONF=conf.
func listTokens(ctx context.Context, conf string) ([]tokenInfo, error) {
	cmd := exec.CommandContext(ctx, "softhsm2-util", "--show-slots")
	cmd.Env = childEnv(conf)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("softhsmtest: softhsm2-util --show-slots (%s=%s): %w: %s",
			ConfEnv, conf, err, oneLine(strings.TrimSpace(stderr.String())))
	}
	return parseShowSlots(stdout.String()), nil
}

// tokenInfo is one slot of softhsm2-util --show-slots.
type tokenInfo struct {
	slotID      string // decimal, as softhsm2-util prints it
	label       string
	serial      string
	initialized bool
}

// parseShowSlots reads the tokens out of softhsm2-util --show-slots output.
func parseShowSlots(out string) []tokenInfo {
	var infos []tokenInfo
	for line := range strings.Lines(out) {
		line = strings.TrimRight(line, "\r\n")
		if id, ok := strings.CutPrefix(line, "Slot "); ok {
			infos = append(infos, tokenInfo{slotID: strings.TrimSpace(id)})
			continue
		}
		if len(infos) == 0 {
			continue
		}
		cur := &infos[len(infos)-1]
		key, val, ok := strings.Cut(strings.TrimLeft(line, " \t"), ":")
		if !ok {
			continue
		}
		// Values are padded with blanks to their PKCS#11 field width.
		val = strings.Trim(val, " ")
		switch key {
		case "Label":
			cur.label = val
		case "Serial number":
			cur.serial = val
		case "Initialized":
			cur.initialized = val == "yes"
		}
	}
	return infos
}

// findLabel returns the initialised token labelled label, or nil.
func findLabel(infos []tokenInfo, label string) *tokenInfo {
	for i := range infos {
		if infos[i].initialized && infos[i].label == label {
			return &infos[i]
		}
	}
	return nil
}

// writeConf writes a SoftHSM configuration file naming tokensDir.
func writeConf(path, tokensDir string) error {
	conf := "# Written by softhsmtest: a throwaway SoftHSM2 configuration.\n" +
		"directories.tokendir = " + tokensDir + "\n" +
		"objectstore.backend = file\n" +
		"log.level = ERROR\n" +
		"slots.removable = false\n"
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(conf), 0o600); err != nil {
		return fmt.Errorf("softhsmtest: writing SoftHSM configuration: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("softhsmtest: writing SoftHSM configuration: %w", err)
	}
	return nil
}

// makePrivateDir makes dir with mode 0700, or checks that an existing dir is
// a directory owned by this user and makes it 0700.
func makePrivateDir(dir string) error {
	err := os.Mkdir(dir, 0o700)
	if err == nil {
		return nil
	}
	if !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("softhsmtest: %w", err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("softhsmtest: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("softhsmtest: %s exists and is not a directory", dir)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Getuid() {
		return fmt.Errorf("softhsmtest: %s is owned by uid %d, not by this user (uid %d)", dir, st.Uid, os.Getuid())
	}
	if fi.Mode().Perm() != 0o700 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("softhsmtest: %w", err)
		}
	}
	return nil
}

// lockDir takes an exclusive lock on dir/.softhsmtest.lock and returns the
// function that releases it.
func lockDir(dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, ".softhsmtest.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("softhsmtest: lock file: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("softhsmtest: locking %s: %w", dir, err)
	}
	return func() { f.Close() }, nil // closing the file releases the lock
}

// checkLabel validates a token label; see Create.
func checkLabel(label string) error {
	switch {
	case label == "":
		return errors.New("softhsmtest: empty token label")
	case len(label) > maxLabelLen:
		return fmt.Errorf("softhsmtest: token label %q is %d bytes, more than %d", label, len(label), maxLabelLen)
	case !utf8.ValidString(label):
		return fmt.Errorf("softhsmtest: token label %q is not valid UTF-8", label)
	case strings.TrimSpace(label) != label:
		return fmt.Errorf("softhsmtest: token label %q has leading or trailing blanks", label)
	}
	for _, r := range label {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("softhsmtest: token label %q has a control character", label)
		}
	}
	return nil
}

// checkPIN validates a PIN without ever putting it in the error.
func checkPIN(what string, pin []byte) error {
	switch {
	case len(pin) < minPINLen || len(pin) > maxPINLen:
		return fmt.Errorf("softhsmtest: %s must be %d to %d bytes, got %d", what, minPINLen, maxPINLen, len(pin))
	case bytes.ContainsAny(pin, "\x00\r\n"):
		return fmt.Errorf("softhsmtest: %s contains NUL or a line break", what)
	}
	return nil
}

// redact replaces every occurrence of the PINs in s.
func redact(s string, pins ...[]byte) string {
	for _, p := range pins {
		if len(p) > 0 {
			s = strings.ReplaceAll(s, string(p), "[redacted]")
		}
	}
	return s
}

// oneLine joins the lines of s with "; ".
func oneLine(s string) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", " ; ")), " ")
}

// BuildCommand compiles the command pkg (an import path such as
// "github.com/hsmsigner/hsmsigner/cmd/signerd") into the test's temporary
// folder and returns the binary's path, for tests that run a command as a
// separate process (one that loads its own copy of the module).
func BuildCommand(t testing.TB, pkg string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), filepath.Base(pkg))
	if out, err := exec.CommandContext(t.Context(), "go", "build", "-o", bin, pkg).CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, out)
	}
	return bin
}
