package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hsmsigner/hsmsigner/cmd/internal/daemontest"
)

// devDaemon starts `signerd dev` in a fresh folder and returns the folder
// and the demo key id.
func devDaemon(t testing.TB) (dir, keyID string) {
	t.Helper()
	bin := daemontest.Build(t, "github.com/hsmsigner/hsmsigner/cmd/signerd")
	dir = filepath.Join(t.TempDir(), "signer-dev")
	d := daemontest.Start(t, bin, nil, "dev", "--dir", dir)
	d.WaitForLine("Stop with Ctrl-C", 0, time.Minute)
	out := d.Output()
	i := strings.Index(out, "demo key:")
	if i < 0 {
		t.Fatalf("no demo key:\n%s", out)
	}
	t.Cleanup(func() {
		d.Signal(syscall.SIGTERM)
		_ = d.Wait(time.Minute)
	})
	t.Setenv("SIGNER_SOCKET", filepath.Join(dir, "run/signer.sock"))
	return dir, strings.Fields(out[i+len("demo key:"):])[0]
}

// ctl runs signerctl in-process and returns stdout, stderr and the exit
// code.
func ctl(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), args, strings.NewReader(""), &out, &errb)
	return out.String(), errb.String(), code
}

func mustCtl(t *testing.T, args ...string) string {
	t.Helper()
	out, errs, code := ctl(t, args...)
	if code != 0 {
		t.Fatalf("signerctl %v: exit %d: %s", args, code, errs)
	}
	return out
}

func TestSignctlWalkthrough(t *testing.T) {
	dir, keyID := devDaemon(t)
	work := t.TempDir()
	if !strings.Contains(mustCtl(t, "status"), "role admin+client") {
		t.Fatal("status does not show the role")
	}
	var keys struct {
		Keys []struct{ ID, Label string }
	}
	if err := json.Unmarshal([]byte(mustCtl(t, "key", "list", "-o", "json")), &keys); err != nil {
		t.Fatal(err)
	}
	labels := map[string]string{}
	for _, k := range keys.Keys {
		labels[k.Label] = k.ID
	}
	if len(keys.Keys) != 3 || labels["demo"] != keyID || labels["audit"] == "" || labels["tsa"] == "" {
		t.Fatalf("key list: %+v; want the demo, audit and TSA keys", keys)
	}
	// Generate an RSA key, sign a file with it, verify with openssl.
	gen := mustCtl(t, "key", "generate", "--label", "rsa-demo", "--algorithm", "RSA2048", "--usage", "sign", "--name", "RSA demo")
	rsaID := strings.Fields(strings.Split(gen, "\n")[1])[0]
	show := mustCtl(t, "key", "show", rsaID)
	for _, line := range []string{"sig-recover: no\n", "modifiable:  no\n", "copyable:    no\n", "mechanisms:  CKM_RSA_PKCS, CKM_RSA_PKCS_PSS\n"} {
		if !strings.Contains(show, line) || strings.Contains(show, "refused:") {
			t.Fatalf("key show lacks %q or refuses the key:\n%s", line, show)
		}
	}
	msg := filepath.Join(work, "msg.txt")
	_ = os.WriteFile(msg, []byte("signed through signerctl"), 0o600)
	for _, tc := range []struct{ id, alg, hash string }{
		{keyID, "SHA256withECDSA", "-sha256"},
		{rsaID, "SHA384withRSA", "-sha384"},
		{rsaID, "PS256", "-sha256"},
	} {
		sig := filepath.Join(work, tc.alg+".sig")
		pub := filepath.Join(work, tc.id+".pem")
		mustCtl(t, "sign", "--key", tc.id, "--alg", tc.alg, "--in", msg, "--out", sig)
		_ = os.WriteFile(pub, []byte(mustCtl(t, "key", "show", tc.id, "--public-pem")), 0o600)
		args := []string{"dgst", tc.hash, "-verify", pub, "-signature", sig}
		if tc.alg == "PS256" {
			args = append(args, "-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:digest")
		}
		if out, err := exec.Command("openssl", append(args, msg)...).CombinedOutput(); err != nil {
			t.Fatalf("openssl %v: %v\n%s", args, err, out)
		}
	}
	// A hex digest, base64 out.
	digest := strings.Repeat("ab", 32)
	b64 := strings.TrimSpace(mustCtl(t, "sign", "--key", keyID, "--alg", "ES256", digest))
	if sig, err := base64.StdEncoding.DecodeString(b64); err != nil || len(sig) < 64 {
		t.Fatalf("sign output %q: %v", b64, err)
	}
	// The audit log verifies; an edit is found, with its line, and a
	// non-zero exit.
	auditFile := filepath.Join(dir, "audit.jsonl")
	if out := mustCtl(t, "audit", "verify", auditFile); !strings.Contains(out, "chain intact") {
		t.Fatalf("audit verify: %s", out)
	}
	b, _ := os.ReadFile(auditFile)
	lines := strings.Split(string(b), "\n")
	edited := false
	for i := range lines {
		if strings.Contains(lines[i], `"op":"sign"`) {
			lines[i] = strings.Replace(lines[i], `"op":"sign"`, `"op":"sing"`, 1)
			edited = true
			break
		}
	}
	if !edited {
		t.Fatalf("no sign line in the audit log:\n%s", b)
	}
	tampered := filepath.Join(work, "audit.jsonl")
	_ = os.WriteFile(tampered, []byte(strings.Join(lines, "\n")), 0o600)
	_, errs, code := ctl(t, "audit", "verify", tampered)
	if code == 0 || !strings.Contains(errs, "line") {
		t.Fatalf("tampered audit: exit %d, %s", code, errs)
	}
	// The audit key's public key verifies the checkpoints dev mode writes
	// every 10 s; until the first, nothing is anchored and verify fails.
	pub := filepath.Join(work, "audit.pem")
	if err := os.WriteFile(pub, []byte(mustCtl(t, "key", "show", labels["audit"], "--public-pem")), 0o600); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(time.Minute); ; {
		out, errs, code := ctl(t, "audit", "verify", "--pub", pub, auditFile)
		if code == 0 {
			if !strings.Contains(out+errs, "checkpoint") {
				t.Fatalf("audit verify --pub says nothing of checkpoints: %s%s", out, errs)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("audit verify --pub: no checkpoint anchors the log after a minute: exit %d, %s", code, errs)
		}
		time.Sleep(time.Second)
	}
	// A copy without its head file verifies, with a warning that a cut
	// could not be checked.
	intact := filepath.Join(work, "copy.jsonl")
	_ = os.WriteFile(intact, b, 0o600)
	out, errs, code := ctl(t, "audit", "verify", intact)
	if code != 0 || !strings.Contains(out, "chain intact") || !strings.Contains(errs, "no head file") {
		t.Fatalf("audit copy without head: exit %d, %s, %s", code, out, errs)
	}
}

func TestSignctlErrors(t *testing.T) {
	dir, keyID := devDaemon(t)
	pinFile := filepath.Join(dir, "user.pin")
	loose := filepath.Join(t.TempDir(), "loose.pin")
	pin, _ := os.ReadFile(pinFile)
	_ = os.WriteFile(loose, pin, 0o644)
	_ = os.Chmod(loose, 0o644)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"PIN as a flag value is not accepted", []string{"token", "login", "dev", "--pin", "1234"}, "unknown flag: --pin"},
		{"PIN file readable by others", []string{"token", "login", "dev", "--pin-file", loose}, "readable by others"},
		{"unknown key", []string{"sign", "--key", "00ff", "--alg", "ES256", strings.Repeat("00", 32)}, "NotFound"},
		{"bad hex digest", []string{"sign", "--key", keyID, "--alg", "ES256", "xyz"}, "not hex"},
		{"wrong digest length", []string{"sign", "--key", keyID, "--alg", "ES256", "abcd"}, "InvalidArgument"},
		{"unknown algorithm", []string{"sign", "--key", keyID, "--alg", "MD5withRSA", "abcd"}, "unknown"},
		{"bad output format", []string{"status", "-o", "yaml"}, "use table or json"},
		{"no daemon", []string{"status", "--socket", filepath.Join(dir, "nope.sock")}, "is signerd running"},
		{"stale socket, nobody listening", []string{"status", "--socket", staleSocket(t)}, "is signerd running"},
		{"mistyped subcommand", []string{"key", "lsit"}, `unknown command "lsit" for "signerctl key"`},
		{"mistyped nested subcommand", []string{"audit", "verfy"}, `unknown command "verfy"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errs, code := ctl(t, tt.args...)
			if code == 0 {
				t.Fatalf("exit 0; want an error\n%s", out)
			}
			if !strings.Contains(errs, tt.want) || strings.Count(strings.TrimSpace(errs), "\n") != 0 || !strings.HasPrefix(errs, "signerctl: ") {
				t.Fatalf("stderr %q: want one line mentioning %q", errs, tt.want)
			}
			if strings.Contains(errs, string(pin)) {
				t.Fatal("the PIN reached the error")
			}
		})
	}
	// Logging in again from the proper PIN file works.
	if out := mustCtl(t, "token", "login", "dev", "--pin-file", pinFile); !strings.Contains(out, "yes") {
		t.Fatalf("login: %s", out)
	}
}

func TestBenchPrintsRatio(t *testing.T) {
	dir, keyID := devDaemon(t)
	t.Setenv("SOFTHSM2_CONF", filepath.Join(dir, "softhsm/softhsm2.conf"))
	module := ""
	for _, p := range []string{"/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so"} {
		if _, err := os.Stat(p); err == nil {
			module = p
			break
		}
	}
	for _, tt := range []struct {
		name   string
		flags  []string
		method string // the API method that carried the digests
	}{
		{"shared stream", nil, "SignStream"},
		{"unary", []string{"--unary"}, "Sign"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := signCalls(t, dir, tt.method)
			args := append([]string{"bench", "--key", keyID, "--duration", "1s", "--concurrency", "2", "--rounds", "1",
				"--raw", "--module", module, "--token", "label:signer-dev", "--pin-file", filepath.Join(dir, "user.pin")}, tt.flags...)
			out, errs, code := ctl(t, args...)
			if code != 0 {
				t.Fatalf("bench: %s", errs)
			}
			for _, want := range []string{"daemon ", "raw ", "daemon/raw: ", "p99"} {
				if !strings.Contains(out, want) {
					t.Fatalf("bench output lacks %q:\n%s", want, out)
				}
			}
			if !strings.Contains(errs, "digests/s") {
				t.Fatalf("no progress line on stderr: %q", errs)
			}
			// Most digests went by the method asked for; the first call of
			// a fresh connection is always a Sign call.
			if n := signCalls(t, dir, tt.method) - before; n < 100 {
				t.Fatalf("%d digests signed by %s during the run", n, tt.method)
			}
		})
	}
}

// signCalls reads from the dev daemon's /metrics how many calls of method
// it answered with OK.
func signCalls(t *testing.T, dir, method string) int {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", filepath.Join(dir, "run/http.sock"))
	}}}
	resp, err := hc.Get("http://signerd/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	prefix := `signerd_calls_total{code="OK",method="` + method + `"} `
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, prefix); ok {
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("metrics line %q: %v", line, err)
			}
			return int(n)
		}
	}
	return 0
}

// TestREADMEWalkthrough runs the README's walkthrough blocks word for word,
// in order in one shell, with `go run ./cmd/signerctl` replaced by the
// built binary, against `signerd dev` in a fresh folder that also holds a
// copy of softhsm-test/dev-ca.sh.
func TestREADMEWalkthrough(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(readme)
	i := strings.Index(text, "## Walkthrough")
	j := strings.Index(text, "## What it serves")
	if i < 0 || j < i {
		t.Fatal("README has no Walkthrough section")
	}
	var blocks []string
	for rest := text[i:j]; ; {
		start := strings.Index(rest, "```sh\n")
		if start < 0 {
			break
		}
		end := strings.Index(rest[start+6:], "```")
		blocks = append(blocks, rest[start+6:start+6+end])
		rest = rest[start+6+end+3:]
	}
	if len(blocks) < 2 {
		t.Fatalf("%d sh blocks in the Walkthrough, want the basic and the officer walkthrough", len(blocks))
	}
	script := strings.Join(blocks, "\n")
	ctlBin := daemontest.Build(t, "github.com/hsmsigner/hsmsigner/cmd/signerctl")
	script = strings.ReplaceAll(script, "go run ./cmd/signerctl", ctlBin)
	// The dev CA's OCSP responder: built here, on a free loopback port,
	// and stopped with the script's process group when the test ends.
	ocspBin := daemontest.Build(t, "github.com/hsmsigner/hsmsigner/softhsm-test/cmd/dev-ocsp")
	const buildOCSP = "go build -o dev-ocsp ./softhsm-test/cmd/dev-ocsp"
	if !strings.Contains(script, buildOCSP) || !strings.Contains(script, "127.0.0.1:8888") {
		t.Fatalf("the walkthrough no longer builds dev-ocsp or serves it on 127.0.0.1:8888; update this test:\n%s", script)
	}
	script = strings.ReplaceAll(script, buildOCSP, "cp "+ocspBin+" dev-ocsp")
	script = strings.ReplaceAll(script, "127.0.0.1:8888", freeLoopbackAddr(t))
	if strings.Contains(script, "go run") || strings.Contains(script, "go build") {
		t.Fatalf("the walkthrough runs something this test does not build:\n%s", script)
	}
	dir, _ := devDaemon(t)
	work := filepath.Dir(dir)
	if err := os.MkdirAll(filepath.Join(work, "softhsm-test"), 0o755); err != nil {
		t.Fatal(err)
	}
	ca, err := os.ReadFile("../../softhsm-test/dev-ca.sh")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(work, "softhsm-test/dev-ca.sh"), ca, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bash", "-euo", "pipefail", "-c", script)
	cmd.Dir = work
	cmd.Env = append(os.Environ(), "SIGNER_SOCKET=")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	t.Cleanup(func() {
		if cmd.Process != nil {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) // dev-ocsp, left in the background
		}
	})
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("README walkthrough failed: %v\n%s", err, out)
	}
	for _, want := range []string{"Verified OK", "chain intact", "every signature verified", "member-sign", " good ", "agency.pem: OK", "SHA256withRSA", "EE/GOV/70000310",
		"built-in TSA:  serving", "inclusion proof verified"} {
		if !strings.Contains(string(out), want) {
			t.Fatalf("walkthrough output lacks %q:\n%s", want, out)
		}
	}
	if n := strings.Count(string(out), "Verified OK"); n != 2 {
		t.Fatalf("%d signatures verified, want 2:\n%s", n, out)
	}
	// Three time-stamps by openssl ts -verify, two by signerctl tsa verify.
	if n := strings.Count(string(out), "Verification: OK"); n != 5 {
		t.Fatalf("%d time-stamps verified, want 5:\n%s", n, out)
	}
}

// freeLoopbackAddr returns a loopback address with a port free a moment
// ago.
func freeLoopbackAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// staleSocket returns the path of a Unix socket nobody listens on, as a
// crashed daemon leaves behind.
func staleSocket(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "stale.sock")
	l, err := net.Listen("unix", p)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	return p
}

// TestVersionFlag: --version prints the build's version and exits 0.
func TestVersionFlag(t *testing.T) {
	out, errs, code := ctl(t, "--version")
	if code != 0 || !strings.HasPrefix(out, "signerctl version ") || errs != "" {
		t.Fatalf("signerctl --version: exit %d, %q %q", code, out, errs)
	}
}
