package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/digitorus/timestamp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/hsmsigner/hsmsigner/cmd/internal/daemontest"
	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/audit"
	"github.com/hsmsigner/hsmsigner/signer/client"
	"github.com/hsmsigner/hsmsigner/signer/config"
	"github.com/hsmsigner/hsmsigner/signer/xroad/xroadpb"
	softhsmtest "github.com/hsmsigner/hsmsigner/softhsm-test"
	"github.com/hsmsigner/hsmsigner/tsa"
)

const signerdPkg = "github.com/hsmsigner/hsmsigner/cmd/signerd"

// daemonConfig writes a configuration for a fresh SoftHSM token logged in
// from a PIN file; clientKeys is the TOML array body of the test user's
// keys.
func daemonConfig(t *testing.T, dir string, soft *softhsmtest.Token, clientKeys string) string {
	t.Helper()
	return daemonConfigFor(t, dir, soft, clientKeys, os.Getuid())
}

// daemonConfigFor is daemonConfig with uid as the admin and client.
func daemonConfigFor(t *testing.T, dir string, soft *softhsmtest.Token, clientKeys string, uid int) string {
	t.Helper()
	for _, d := range []string{"run", "state"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o750); err != nil {
			t.Fatal(err)
		}
	}
	pin := filepath.Join(dir, "user.pin")
	if err := os.WriteFile(pin, soft.UserPIN, 0o600); err != nil {
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
  name = "t1"
  token = %[6]q
  pin = "file:%[7]s"

[policy]
  [policy.admins]
  uids = [%[8]d]
  [[policy.client]]
  name = "tester"
  uids = [%[8]d]
  keys = [%[9]s]
  usages = ["sign"]
`, filepath.Join(dir, "run/signer.sock"), filepath.Join(dir, "run/http.sock"), filepath.Join(dir, "state"), filepath.Join(dir, "audit.jsonl"),
		soft.ModulePath, "label:"+soft.Label, pin, uid, clientKeys)
	path := filepath.Join(dir, "signerd.toml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func signWith(ctx context.Context, c *client.Client, id string) error {
	_, err := c.Sign(ctx, &signerv1.SignRequest{Key: &signerv1.SignRequest_KeyId{KeyId: id}, Algorithm: "ES256", Digest: make([]byte, 32)})
	return err
}

// TestDaemonLifecycle starts signerd as a process, waits for READY=1,
// checks /healthz, reloads the policy on SIGHUP while calls go on, keeps
// the old policy when the new file is broken, and stops cleanly on
// SIGTERM.
func TestDaemonLifecycle(t *testing.T) {
	bin := daemontest.Build(t, signerdPkg)
	soft := softhsmtest.New(t)
	dir := t.TempDir()
	cfgPath := daemonConfig(t, dir, soft, `"*"`)
	d := daemontest.Start(t, bin, nil, "--config", cfgPath)

	sock := filepath.Join(dir, "run/signer.sock")
	for _, s := range []string{sock, filepath.Join(dir, "run/http.sock")} {
		st, err := os.Stat(s)
		if err != nil || st.Mode().Perm() != 0o660 || st.Mode()&os.ModeSocket == 0 {
			t.Fatalf("socket %s: %v, mode %v; want a 0660 socket", s, err, st.Mode())
		}
	}
	if st, _ := os.Stat(filepath.Join(dir, "run")); st.Mode().Perm() != 0o750 {
		t.Fatalf("socket folder mode %v, want 0750", st.Mode().Perm())
	}
	hc := http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", filepath.Join(dir, "run/http.sock"))
	}}}
	for path, want := range map[string]string{"/healthz": "ok", "/metrics": "signerd_hsm_sessions_open"} {
		resp, err := hc.Get("http://signerd" + path)
		if err != nil {
			t.Fatal(err)
		}
		body := make([]byte, 1<<20)
		n, _ := resp.Body.Read(body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(body[:n]), want) {
			t.Fatalf("GET %s: %d %q", path, resp.StatusCode, body[:n])
		}
	}

	c, err := client.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := ctxT(t)
	a, err := c.GenerateKey(ctx, &signerv1.GenerateKeyRequest{Token: "t1", Label: "a", Algorithm: "EC-P256", Usage: signerv1.KeyUsage_KEY_USAGE_SIGN})
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.GenerateKey(ctx, &signerv1.GenerateKeyRequest{Token: "t1", Label: "b", Algorithm: "EC-P256", Usage: signerv1.KeyUsage_KEY_USAGE_SIGN})
	if err != nil {
		t.Fatal(err)
	}

	// Narrow the policy to key a, and reload while a caller keeps signing
	// with a: no call may fail.
	daemonConfig(t, dir, soft, fmt.Sprintf("%q", a.GetId()))
	stop := make(chan struct{})
	signedOne := make(chan struct{}, 1) // a signature was made
	signErr := make(chan error, 1)      // the signing loop failed
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := signWith(ctx, c, a.GetId()); err != nil {
				signErr <- err
				return
			}
			select {
			case signedOne <- struct{}{}:
			default:
			}
		}
	})
	waitSigned := func(when string) {
		t.Helper()
		select {
		case <-signedOne:
		case err := <-signErr:
			t.Fatalf("signing %s the reload: %v", when, err)
		case <-time.After(time.Minute):
			t.Fatalf("no signature %s the reload", when)
		}
	}
	waitSigned("before")
	n := d.Lines()
	d.Signal(syscall.SIGHUP)
	d.WaitForLine("access policy reloaded", n, time.Minute)
	for range 3 {
		waitSigned("after")
	}
	close(stop)
	wg.Wait()
	select {
	case err := <-signErr:
		t.Fatalf("signing across the reload: %v", err)
	default:
	}
	if err := signWith(ctx, c, b.GetId()); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("key b after the narrowing reload: %v; want PermissionDenied", err)
	}

	// A broken file keeps the policy in force.
	if err := os.WriteFile(cfgPath, []byte("[policy\nbroken"), 0o600); err != nil {
		t.Fatal(err)
	}
	n = d.Lines()
	d.Signal(syscall.SIGHUP)
	d.WaitForLine("policy not reloaded", n, time.Minute)
	if err := signWith(ctx, c, a.GetId()); err != nil {
		t.Fatalf("key a after a refused reload: %v", err)
	}

	d.Signal(syscall.SIGTERM)
	if err := d.Wait(time.Minute); err != nil {
		t.Fatalf("signerd exit after SIGTERM: %v\n%s", err, d.Output())
	}
	// The client's open sign stream ended with the drain; it did not hold
	// the graceful stop until the shutdown timeout.
	if strings.Contains(d.Output(), "did not finish in time") {
		t.Fatalf("an open sign stream held up the graceful stop:\n%s", d.Output())
	}
	for _, s := range []string{sock, filepath.Join(dir, "run/http.sock")} {
		if _, err := os.Stat(s); !os.IsNotExist(err) {
			t.Fatalf("socket %s left behind after exit: %v", s, err)
		}
	}
	if _, err := audit.VerifyFile(filepath.Join(dir, "audit.jsonl")); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(d.Output(), string(soft.UserPIN)) {
		t.Fatal("the PIN appears in the log")
	}
}

func TestDaemonRefusesToStart(t *testing.T) {
	bin := daemontest.Build(t, signerdPkg)
	soft := softhsmtest.New(t)
	tests := []struct {
		name  string
		setup func(t *testing.T, dir string) string
		want  string
	}{
		{"no config flag", func(t *testing.T, dir string) string { return "" }, "--config is required"},
		{"unknown key", func(t *testing.T, dir string) string {
			p := daemonConfig(t, dir, soft, `"*"`)
			b, _ := os.ReadFile(p)
			_ = os.WriteFile(p, []byte(strings.Replace(string(b), `usages = ["sign"]`, `usages = ["sign"]`+"\n  kyes = []", 1)), 0o600)
			return p
		}, `kyes`},
		{"syntax error", func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "bad.toml")
			_ = os.WriteFile(p, []byte("[server\n"), 0o600)
			return p
		}, "to end table name"},
		{"socket folder missing", func(t *testing.T, dir string) string {
			p := daemonConfig(t, dir, soft, `"*"`)
			_ = os.RemoveAll(filepath.Join(dir, "run"))
			return p
		}, "socket folder unusable"},
		{"socket folder writable by others", func(t *testing.T, dir string) string {
			p := daemonConfig(t, dir, soft, `"*"`)
			_ = os.Chmod(filepath.Join(dir, "run"), 0o777)
			return p
		}, "writable by group or others"},
		{"PIN file readable by others", func(t *testing.T, dir string) string {
			p := daemonConfig(t, dir, soft, `"*"`)
			_ = os.Chmod(filepath.Join(dir, "user.pin"), 0o644)
			return p
		}, "user.pin"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			args := []string{}
			if p := tt.setup(t, dir); p != "" {
				args = append(args, "--config", p)
			}
			out, err := daemontest.Run(t, bin, nil, args...)
			if err == nil {
				t.Fatalf("signerd started; want a refusal\n%s", out)
			}
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
				t.Fatalf("exit %v, want status 1\n%s", err, out)
			}
			if !strings.Contains(out, tt.want) {
				t.Fatalf("output does not mention %q:\n%s", tt.want, out)
			}
			if strings.Contains(out, "not-the-pin") || strings.Contains(out, string(soft.UserPIN)) {
				t.Fatalf("a PIN reached the output:\n%s", out)
			}
		})
	}
}

// TestDaemonStartsWhenTheTokenRefusesThePIN: a PIN file the token refuses
// does not stop the start. An exit would have systemd (Restart=on-failure)
// start the daemon again and again, each time with one more wrong try,
// until the token locks. The daemon is ready, the token logged out with
// the reason, and the PIN is in no output.
func TestDaemonStartsWhenTheTokenRefusesThePIN(t *testing.T) {
	bin := daemontest.Build(t, signerdPkg)
	soft := softhsmtest.New(t)
	dir := t.TempDir()
	cfgPath := daemonConfig(t, dir, soft, `"*"`)
	if err := os.WriteFile(filepath.Join(dir, "user.pin"), []byte("not-the-pin"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := daemontest.Start(t, bin, nil, "--config", cfgPath)
	d.WaitForLine("PIN refused at start-up", 0, time.Minute)
	c, err := client.Dial(filepath.Join(dir, "run/signer.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tok, err := c.GetToken(ctxT(t), &signerv1.GetTokenRequest{Token: "t1"})
	if err != nil {
		t.Fatal(err)
	}
	if tok.GetLoggedIn() || !strings.Contains(tok.GetLoggedOutReason(), "PIN incorrect") {
		t.Fatalf("token: logged in %v, reason %q; want logged out because the PIN was refused", tok.GetLoggedIn(), tok.GetLoggedOutReason())
	}
	d.Signal(syscall.SIGTERM)
	if err := d.Wait(time.Minute); err != nil {
		t.Fatalf("signerd exit after SIGTERM: %v\n%s", err, d.Output())
	}
	if out := d.Output(); strings.Contains(out, "not-the-pin") || strings.Contains(out, string(soft.UserPIN)) {
		t.Fatalf("a PIN reached the output:\n%s", out)
	}
}

// TestDevMode runs the README's first command: signerd dev makes its token,
// starts, and has a demo key that signs; openssl verifies the signature; a
// second start reuses everything.
func TestDevMode(t *testing.T) {
	bin := daemontest.Build(t, signerdPkg)
	dir := filepath.Join(t.TempDir(), "signer-dev")
	var keyID string
	for run := range 2 {
		d := daemontest.Start(t, bin, nil, "dev", "--dir", dir)
		d.WaitForLine("Stop with Ctrl-C", 0, time.Minute)
		out := d.Output()
		i := strings.Index(out, "demo key:")
		if i < 0 {
			t.Fatalf("no demo key printed:\n%s", out)
		}
		id := strings.Fields(out[i+len("demo key:"):])[0]
		if run == 1 && id != keyID {
			t.Fatalf("second start made a new demo key %s, want %s", id, keyID)
		}
		keyID = id
		c, err := client.Dial(filepath.Join(dir, "run/signer.sock"))
		if err != nil {
			t.Fatal(err)
		}
		k, err := c.GetKey(ctxT(t), &signerv1.GetKeyRequest{KeyId: keyID})
		if err != nil {
			t.Fatal(err)
		}
		msg := []byte("hello")
		signer, err := c.Signer(ctxT(t), keyID)
		if err != nil {
			t.Fatal(err)
		}
		digest := sha256.Sum256(msg)
		sig, err := signer.SignContext(ctxT(t), digest[:], crypto.SHA256)
		if err != nil {
			t.Fatal(err)
		}
		devTSAWorks(t, c, dir, out)
		c.Close()
		work := t.TempDir()
		_ = os.WriteFile(filepath.Join(work, "hello.txt"), msg, 0o600)
		_ = os.WriteFile(filepath.Join(work, "hello.sig"), sig, 0o600)
		_ = os.WriteFile(filepath.Join(work, "pub.pem"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: k.GetPublicKey()}), 0o600)
		if out, err := exec.Command("openssl", "dgst", "-sha256", "-verify", filepath.Join(work, "pub.pem"), "-signature", filepath.Join(work, "hello.sig"), filepath.Join(work, "hello.txt")).CombinedOutput(); err != nil {
			t.Fatalf("openssl: %v\n%s", err, out)
		}
		d.Signal(syscall.SIGINT)
		if err := d.Wait(time.Minute); err != nil {
			t.Fatalf("dev exit: %v", err)
		}
	}
	for _, f := range []string{"user.pin", "so.pin", "signerd.toml"} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v, mode %v; want 0600", f, err, st.Mode())
		}
	}
}

// devTSAWorks checks dev mode's time-stamping: it says loudly that the
// clock guard is off; the built-in TSA's token for a digest verifies with
// `openssl ts -verify` against the dev CA; so does a token asked over the
// loopback TCP listener; an upstream stamp (dev mode's own TSA as the
// external one) verifies with its inclusion proof.
func devTSAWorks(t *testing.T, c *client.Client, dir, out string) {
	t.Helper()
	if !strings.Contains(out, "CLOCK GUARD OFF") {
		t.Fatalf("dev mode does not say the TSA's clock guard is off:\n%s", out)
	}
	st, err := c.GetTSAStatus(ctxT(t), &signerv1.GetTSAStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if !st.GetServing() || !st.GetClockGuardOff() || st.GetListen() == "" || st.GetUpstream() == nil {
		t.Fatalf("dev TSA status: %v", st)
	}
	work := t.TempDir()
	root := filepath.Join(dir, "ca", "root.pem")
	digest := sha256.Sum256([]byte("stamped in dev mode"))
	r, err := c.Timestamp(ctxT(t), &signerv1.TimestampRequest{Digest: digest[:], Hash: "SHA256", CertReq: true})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := client.ResponseOf(r.GetToken())
	if err != nil {
		t.Fatal(err)
	}
	rp := filepath.Join(work, "rpc.tsr")
	_ = os.WriteFile(rp, resp, 0o600)
	if o, err := exec.Command("openssl", "ts", "-verify", "-in", rp, "-digest", hex.EncodeToString(digest[:]), "-CAfile", root).CombinedOutput(); err != nil || !strings.Contains(string(o), "Verification: OK") {
		t.Fatalf("openssl ts -verify of a dev token: %v\n%s", err, o)
	}
	// Over the TCP listener, as an RFC 3161 client that speaks only HTTP.
	req, err := (&timestamp.Request{HashAlgorithm: crypto.SHA256, HashedMessage: digest[:], Certificates: true}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	hr, err := http.Post("http://"+st.GetListen()+"/tsa", "application/timestamp-query", bytes.NewReader(req))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(hr.Body)
	hr.Body.Close()
	tp := filepath.Join(work, "tcp.tsr")
	_ = os.WriteFile(tp, body, 0o600)
	if o, err := exec.Command("openssl", "ts", "-verify", "-in", tp, "-digest", hex.EncodeToString(digest[:]), "-CAfile", root).CombinedOutput(); err != nil || !strings.Contains(string(o), "Verification: OK") {
		t.Fatalf("openssl ts -verify of a token over TCP: %v\n%s", err, o)
	}
	up, err := c.Timestamp(ctxT(t), &signerv1.TimestampRequest{Digest: digest[:], Hash: "SHA256", Upstream: true})
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pemRoot, _ := os.ReadFile(root)
	pool.AppendCertsFromPEM(pemRoot)
	if _, err := client.VerifyTimestamp(up.GetToken(), crypto.SHA256, digest[:], client.ProofOf(up), tsa.Trust{Roots: pool}); err != nil {
		t.Fatalf("upstream stamp: %v", err)
	}
}

// TestTornAuditLineNeedsAcknowledgement: after a crash that left a torn
// last audit line, signerd refuses to start and says how to go on; with
// --accept-audit-cut it starts, keeps the torn bytes and audits the
// acknowledgement.
func TestTornAuditLineNeedsAcknowledgement(t *testing.T) {
	bin := daemontest.Build(t, signerdPkg)
	soft := softhsmtest.New(t)
	dir := t.TempDir()
	cfgPath := daemonConfig(t, dir, soft, `"*"`)
	d := daemontest.Start(t, bin, nil, "--config", cfgPath)
	d.Signal(syscall.SIGTERM)
	if err := d.Wait(time.Minute); err != nil {
		t.Fatal(err)
	}
	auditFile := filepath.Join(dir, "audit.jsonl")
	f, err := os.OpenFile(auditFile, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(`{"time":"2026-11-27T10:00:00Z","seq":99,"ui`); err != nil {
		t.Fatal(err)
	}
	f.Close()
	out, err := daemontest.Run(t, bin, nil, "--config", cfgPath)
	if err == nil || !strings.Contains(out, "--accept-audit-cut") || !strings.Contains(out, "truncated") {
		t.Fatalf("start with a torn audit line: %v\n%s", err, out)
	}
	d = daemontest.Start(t, bin, nil, "--config", cfgPath, "--accept-audit-cut")
	d.Signal(syscall.SIGTERM)
	if err := d.Wait(time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, err := audit.VerifyFile(auditFile); err != nil {
		t.Fatalf("audit log after the acknowledgement: %v", err)
	}
	b, _ := os.ReadFile(auditFile)
	if !strings.Contains(string(b), audit.OpCutAcknowledged) {
		t.Fatal("the acknowledgement was not audited")
	}
	if kept, _ := filepath.Glob(auditFile + ".torn-*"); len(kept) != 1 {
		t.Fatalf("torn bytes kept in %v", kept)
	}
}

// TestSocketActivation passes signerd its two sockets the way systemd does
// (descriptors 3 and 4, LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES) and checks
// that it serves on them instead of making its own.
func TestSocketActivation(t *testing.T) {
	bin := daemontest.Build(t, signerdPkg)
	soft := softhsmtest.New(t)
	dir := t.TempDir()
	cfgPath := daemonConfig(t, dir, soft, `"*"`)
	// The sockets systemd would make, at paths other than the config's.
	sockDir := filepath.Join(dir, "activated")
	if err := os.Mkdir(sockDir, 0o750); err != nil {
		t.Fatal(err)
	}
	var files []*os.File
	for _, name := range []string{"grpc.sock", "http.sock"} {
		l, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(sockDir, name), Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		f, err := l.File()
		if err != nil {
			t.Fatal(err)
		}
		l.SetUnlinkOnClose(false) // the socket stays, as systemd keeps it
		l.Close()
		files = append(files, f)
	}
	// LISTEN_PID must be the daemon's own pid: a shell sets it and execs.
	d := daemontest.StartWithFiles(t, "sh", []string{"LISTEN_FDS=2", "LISTEN_FDNAMES=grpc:http"}, files,
		"-c", `LISTEN_PID=$$ exec "$0" "$@"`, bin, "--config", cfgPath)
	if _, err := os.Stat(filepath.Join(dir, "run/signer.sock")); !os.IsNotExist(err) {
		t.Fatalf("signerd made its own socket although systemd passed one: %v", err)
	}
	c, err := client.Dial(filepath.Join(sockDir, "grpc.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	st, err := c.GetStatus(ctxT(t), &signerv1.GetStatusRequest{})
	if err != nil || st.GetCaller().GetRole() != "admin+client" {
		t.Fatalf("status over the activated socket: %v, %v", st, err)
	}
	d.Signal(syscall.SIGTERM)
	if err := d.Wait(time.Minute); err != nil {
		t.Fatalf("exit: %v\n%s", err, d.Output())
	}
}

// TestShippedConfigLoads: the example production configuration in
// systemd/ is one signerd accepts.
func TestShippedConfigLoads(t *testing.T) {
	cfg, err := config.Load("../../systemd/signerd.toml")
	if err != nil {
		t.Fatalf("systemd/signerd.toml: %v", err)
	}
	if cfg.Server.GRPCSocket != "/run/signerd/signer.sock" || len(cfg.Modules) != 1 || cfg.Policy == nil {
		t.Fatalf("unexpected configuration: %+v", cfg.Server)
	}
	if cfg.Limits != config.DefaultLimits() {
		t.Fatalf("[limits] %+v; the shipped file documents the defaults %+v", cfg.Limits, config.DefaultLimits())
	}
}

// TestVersionFlag: signerd --version prints the build's version (a Go
// build from a git checkout names its revision) and exits 0.
func TestVersionFlag(t *testing.T) {
	out, err := exec.Command(daemontest.Build(t, signerdPkg), "--version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "signerd version ") || strings.Contains(string(out), "version dev\n") {
		t.Fatalf("signerd --version: %v %q", err, out)
	}
}

// TestXRoadListener: with [xroad] set, signerd serves X-Road's signer
// protocol on loopback TCP (here without TLS, insecure_loopback), naming
// the caller by the uid the kernel gives, and stops cleanly.
func TestXRoadListener(t *testing.T) {
	bin := daemontest.Build(t, signerdPkg)
	soft := softhsmtest.New(t)
	dir := t.TempDir()
	cfgPath := daemonConfig(t, dir, soft, `"*"`)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	f, err := os.OpenFile(cfgPath, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(f, "\n[xroad]\nlisten = %q\ninsecure_loopback = true\n", addr)
	f.Close()
	d := daemontest.Start(t, bin, nil, "--config", cfgPath)
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	op, err := xroadpb.NewTokenServiceClient(cc).GetHSMOperationalInfo(ctxT(t), &xroadpb.Empty{})
	if err != nil || !op.GetOperational() {
		t.Fatalf("GetHSMOperationalInfo: %v %v", op, err)
	}
	d.Signal(syscall.SIGTERM)
	if err := d.Wait(time.Minute); err != nil {
		t.Fatalf("exit: %v", err)
	}
	if !strings.Contains(d.Output(), "serving X-Road's signer protocol") {
		t.Fatalf("no listener line in the log:\n%s", d.Output())
	}
}

// TestDaemonRefusesRootAndUnsafeFiles: signerd refuses to run as root
// without --allow-root, a configuration others can write or another user
// owns, a state folder others can write and a PIN file others can read;
// each refusal names the file and what to do, and nothing is started.
func TestDaemonRefusesRootAndUnsafeFiles(t *testing.T) {
	bin := daemontest.Build(t, signerdPkg)
	soft := softhsmtest.New(t)
	if os.Geteuid() == 0 {
		dir := t.TempDir()
		p := daemonConfig(t, dir, soft, `"*"`)
		out, err := exec.Command(bin, "--config", p).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "refuses to run as root") || !strings.Contains(string(out), "--allow-root") {
			t.Fatalf("as root without --allow-root: %v\n%s", err, out)
		}
	}
	cases := []struct {
		name  string
		setup func(dir, cfg string)
		want  string
	}{
		{"group-writable configuration", func(_, cfg string) { _ = os.Chmod(cfg, 0o620) }, "is writable by group or others (mode 0620)"},
		{"world-writable state folder", func(dir, _ string) { _ = os.Chmod(filepath.Join(dir, "state"), 0o777) }, "state folder"},
		{"configuration of another user", func(_, cfg string) { _ = os.Chown(cfg, 65534, 65534) }, "belongs to uid 65534"},
		{"group-readable PIN file", func(dir, _ string) { _ = os.Chmod(filepath.Join(dir, "user.pin"), 0o640) }, "mode 0640"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.name == "configuration of another user" && os.Geteuid() != 0 {
				t.Skip("needs root to give the file to another user")
			}
			dir := t.TempDir()
			p := daemonConfig(t, dir, soft, `"*"`)
			c.setup(dir, p)
			out, err := daemontest.Run(t, bin, nil, "--config", p)
			if err == nil || !strings.Contains(out, c.want) {
				t.Fatalf("got %v, want a refusal with %q:\n%s", err, c.want, out)
			}
		})
	}
}
