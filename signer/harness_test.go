package signer

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"text/template"
	"time"

	"google.golang.org/grpc"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/audit"
	"github.com/hsmsigner/hsmsigner/signer/client"
	"github.com/hsmsigner/hsmsigner/signer/config"
	softhsmtest "github.com/hsmsigner/hsmsigner/softhsm-test"
	"github.com/hsmsigner/hsmsigner/tsa"
)

// testDaemon is a Service served over a real Unix socket on a fresh
// SoftHSM token, with a real bbolt state file and audit log.
type testDaemon struct {
	t      testing.TB
	soft   *softhsmtest.Token
	dir    string
	params daemonParams
	cfg    *config.Config
	svc    *Service
	srv    *grpc.Server
	sock   string
	client *client.Client
	audit  *switchAudit // with SwitchAudit
	// stopOCSP stops the service's OCSP watcher and waits for it.
	stopOCSP func()
}

// switchAudit passes to the daemon's audit log or, while one is set, to
// another: a log that fails, or none, for a test or a benchmark.
type switchAudit struct {
	real auditLog
	alt  atomic.Pointer[auditLog]
}

// set makes l the log in use; nil brings back the real one.
func (s *switchAudit) set(l auditLog) {
	if l == nil {
		s.alt.Store(nil)
		return
	}
	s.alt.Store(&l)
}

func (s *switchAudit) cur() auditLog {
	if p := s.alt.Load(); p != nil {
		return *p
	}
	return s.real
}

func (s *switchAudit) Append(ctx context.Context, r audit.Record) error {
	return s.cur().Append(ctx, r)
}
func (s *switchAudit) Enqueue(r audit.Record) (audit.Ticket, error) { return s.cur().Enqueue(r) }
func (s *switchAudit) Wait(ctx context.Context, t audit.Ticket) error {
	return s.cur().Wait(ctx, t)
}
func (s *switchAudit) Head() (uint64, string) { return s.real.Head() }
func (s *switchAudit) Close() error           { return s.real.Close() }

// daemonParams fill the configuration template.
type daemonParams struct {
	Dir, Module, Label, PINFile, Group string
	PIN                                string // "file:…" or "login"
	UID                                int
	ExtraPolicy                        string // more [[policy.client]] tables
	ClientUsages                       string // the test user's usages, TOML array body
	Members                            string // the test user's members, TOML array body
	MaxBatch, MaxMessage, MaxStreams   int
	AuditMode                          string
	Limits                             string // the [limits] table's keys, TOML
	// OCSP is the [ocsp] table's keys, TOML; tests not about OCSP turn
	// it off, so that their certificates need no responder.
	OCSP string
	// TSA is the [tsa] table's keys, TOML.
	TSA string
	// SwitchAudit puts a switchAudit in front of the audit log, so that a
	// test can swap the log while the daemon serves.
	SwitchAudit bool
	// TSAClock replaces the kernel's clock state for the TSA's guard.
	TSAClock tsa.ClockSource
	// ServerOptions are added after the Service's own (stats handlers,
	// chained interceptors: what a benchmark times a call's stages with).
	ServerOptions []grpc.ServerOption
	// DialOptions are added to the client's.
	DialOptions []grpc.DialOption
	// WrapAudit, when set, wraps the daemon's audit log before it serves.
	WrapAudit func(auditLog) auditLog
	// TokenExtra are more keys of the token's table, TOML.
	TokenExtra string
}

var configTemplate = template.Must(template.New("cfg").Parse(`
[server]
grpc_socket = "{{.Dir}}/run/signer.sock"
http_socket = "{{.Dir}}/run/http.sock"
{{if .Group}}socket_group = "{{.Group}}"
{{end}}state_dir = "{{.Dir}}/state"
audit_file = "{{.Dir}}/audit.jsonl"
audit_mode = "{{.AuditMode}}"
max_batch = {{.MaxBatch}}
max_message_bytes = {{.MaxMessage}}
max_concurrent_streams = {{.MaxStreams}}
{{if .Limits}}
[limits]
{{.Limits}}
{{end}}
[ocsp]
{{.OCSP}}
{{if .TSA}}
[tsa]
{{.TSA}}
{{end}}
[[module]]
name = "softhsm"
path = "{{.Module}}"
  [[module.token]]
  name = "t1"
  token = "label:{{.Label}}"
  pin = "{{.PIN}}"
{{.TokenExtra}}

[policy]
  [policy.admins]
  uids = [{{.UID}}]

  [[policy.client]]
  name = "tester"
  uids = [{{.UID}}]
  keys = ["*"]
  usages = [{{.ClientUsages}}]
  members = [{{.Members}}]
{{.ExtraPolicy}}
`))

// newDaemon starts a daemon on a fresh token, logged in from a PIN file.
func newDaemon(t testing.TB, edit ...func(*daemonParams)) *testDaemon {
	t.Helper()
	return newDaemonOn(t, softhsmtest.New(t), newDaemonDir(t), edit...)
}

// newDaemonDir makes a daemon directory with its run and state folders.
func newDaemonDir(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	for _, d := range []string{"run", "state"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o750); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// newDaemonOn starts a daemon on soft, with its state and audit log in dir
// (made by newDaemonDir, possibly holding a state file already).
func newDaemonOn(t testing.TB, soft *softhsmtest.Token, dir string, edit ...func(*daemonParams)) *testDaemon {
	t.Helper()
	pinFile := filepath.Join(dir, "user.pin")
	if err := os.WriteFile(pinFile, soft.UserPIN, 0o600); err != nil {
		t.Fatal(err)
	}
	d := &testDaemon{t: t, soft: soft, dir: dir, params: daemonParams{
		Dir: dir, Module: soft.ModulePath, Label: soft.Label, PINFile: pinFile, PIN: "file:" + pinFile,
		UID: os.Getuid(), ClientUsages: `"sign"`, Members: `"*"`, MaxBatch: 4096, MaxMessage: 4 << 20, MaxStreams: 256, AuditMode: "sync",
		OCSP: "enabled = false",
	}}
	for _, e := range edit {
		e(&d.params)
	}
	d.start()
	return d
}

func (d *testDaemon) writeConfig() string {
	var b bytes.Buffer
	if err := configTemplate.Execute(&b, d.params); err != nil {
		d.t.Fatal(err)
	}
	path := filepath.Join(d.dir, "signerd.toml")
	if err := os.WriteFile(path, b.Bytes(), 0o600); err != nil {
		d.t.Fatal(err)
	}
	return path
}

// start opens the service and serves it on the socket.
func (d *testDaemon) start() {
	t := d.t
	t.Helper()
	cfg, err := config.Load(d.writeConfig())
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	d.cfg = cfg
	ctx := context.Background()
	svc, err := New(ctx, cfg, Options{Version: "test", TSAClock: d.params.TSAClock})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	l, err := ListenUnix(ctx, cfg.Server.GRPCSocket, cfg.Server.SocketGroup)
	if err != nil {
		svc.Close()
		t.Fatalf("ListenUnix: %v", err)
	}
	if d.params.SwitchAudit {
		d.audit = &switchAudit{real: svc.audit}
		svc.audit = d.audit
	}
	if d.params.WrapAudit != nil {
		svc.audit = d.params.WrapAudit(svc.audit)
	}
	srv := grpc.NewServer(append(svc.ServerOptions(), d.params.ServerOptions...)...)
	signerv1.RegisterSignerServer(srv, svc)
	go func() { _ = srv.Serve(l) }()
	c, err := client.Dial(cfg.Server.GRPCSocket, d.params.DialOptions...)
	if err != nil {
		t.Fatal(err)
	}
	ocspCtx, cancel := context.WithCancel(ctx)
	ocspDone := make(chan struct{})
	go func() {
		defer close(ocspDone)
		svc.RunOCSP(ocspCtx)
	}()
	d.stopOCSP = func() { cancel(); <-ocspDone }
	d.svc, d.srv, d.sock, d.client = svc, srv, cfg.Server.GRPCSocket, c
	t.Cleanup(d.stop)
}

// stop stops serving and closes the service; it may be called twice.
func (d *testDaemon) stop() {
	if d.svc == nil {
		return
	}
	d.client.Close()
	d.srv.Stop()
	d.stopOCSP()
	if err := d.svc.Close(); err != nil {
		d.t.Errorf("Service.Close: %v", err)
	}
	d.svc = nil
}

// restart stops and starts the daemon on the same token, state and audit
// log.
func (d *testDaemon) restart() {
	d.stop()
	d.start()
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// genKey generates a key through the API.
func (d *testDaemon) genKey(t testing.TB, label, alg string, usage signerv1.KeyUsage) *signerv1.Key {
	t.Helper()
	k, err := d.client.GenerateKey(testCtx(t), &signerv1.GenerateKeyRequest{Token: "t1", Label: label, Algorithm: alg, Usage: usage})
	if err != nil {
		t.Fatalf("GenerateKey %s: %v", label, err)
	}
	return k
}
