package xroad

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/hsmsigner/hsmsigner/signer"
	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/client"
	"github.com/hsmsigner/hsmsigner/signer/config"
	"github.com/hsmsigner/hsmsigner/signer/xroad/xroadpb"
	softhsmtest "github.com/hsmsigner/hsmsigner/softhsm-test"
	"github.com/hsmsigner/hsmsigner/softhsm-test/devca"
)

// keystore is an X-Road internal gRPC keystore made as X-Road's
// installer makes it (a self-signed EC P-256 certificate, CN=127.0.0.1,
// SAN DNS:localhost and IP:127.0.0.1, in PKCS#12), with openssl.
type keystore struct {
	p12, envFile string
	cert         tls.Certificate
	pool         *x509.CertPool
}

// newKeystore makes a keystore in dir under password pw.
func newKeystore(t testing.TB, dir, pw string) *keystore {
	t.Helper()
	key, crt, p12 := filepath.Join(dir, "ks.key"), filepath.Join(dir, "ks.crt"), filepath.Join(dir, "xroad-grpc-internal-keystore.p12")
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("openssl", args...).CombinedOutput(); err != nil {
			t.Fatalf("openssl %v: %v\n%s", args, err, out)
		}
	}
	run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", crt,
		"-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-days", "3650")
	run("pkcs12", "-export", "-inkey", key, "-in", crt, "-name", "grpc-internal", "-passout", "pass:"+pw, "-out", p12)
	env := filepath.Join(dir, "xroad-grpc-internal-env.properties")
	props := fmt.Sprintf("XROAD_COMMON_GRPC_INTERNAL_KEYSTORE_PASSWORD=%q\nXROAD_COMMON_GRPC_INTERNAL_TRUSTSTORE_PASSWORD=%q\n", pw, pw)
	if err := os.WriteFile(env, []byte(props), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := tls.LoadX509KeyPair(crt, key)
	if err != nil {
		t.Fatal(err)
	}
	pemCert, _ := os.ReadFile(crt)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pemCert)
	return &keystore{p12: p12, envFile: env, cert: c, pool: pool}
}

// rig is a signerd service on a SoftHSM token, its signer.v1 API on a
// Unix socket for the officer's set-up, a dev CA with its openssl OCSP
// responder, and the X-Road listener on loopback TCP.
type rig struct {
	dir   string
	svc   *signer.Service
	admin *client.Client
	ca    *devca.CA
	ks    *keystore
	xr    *Server
	addr  string
	soft  *softhsmtest.Token
}

const rigConfig = `
[server]
grpc_socket = "%[1]s/run/signer.sock"
http_socket = "%[1]s/run/http.sock"
state_dir = "%[1]s/state"
audit_file = "%[1]s/audit.jsonl"
audit_mode = "sync"
%[6]s

[limits]
%[7]s

[ocsp]
enabled = true

[[module]]
name = "softhsm"
path = "%[2]s"
  [[module.token]]
  name = "t1"
  token = "label:%[3]s"
  pin = "file:%[1]s/user.pin"

[policy]
  [policy.admins]
  uids = [%[4]d]
  [[policy.client]]
  name = "xroad"
  uids = [%[4]d]
  keys = ["*"]
  usages = ["sign"]
  members = ["*"]

[xroad]
listen = "127.0.0.1:5560"
%[5]s
`

// rigOptions change the rig's [xroad] table.
type rigOptions struct {
	// insecure serves without TLS (insecure_loopback) instead of with
	// the rig's keystore.
	insecure bool
	// extra are more keys of the table.
	extra string
	// server are more keys of the [server] table.
	server string
	// limits are the keys of the [limits] table.
	limits string
	// listen is the address the rig's listener is on; empty:
	// 127.0.0.1:0.
	listen string
}

// newRig starts the rig.
func newRig(t testing.TB, o rigOptions) *rig {
	t.Helper()
	soft := softhsmtest.New(t)
	dir := t.TempDir()
	for _, d := range []string{"run", "state"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o750); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "user.pin"), soft.UserPIN, 0o600); err != nil {
		t.Fatal(err)
	}
	r := &rig{dir: dir, ks: newKeystore(t, dir, "ks-pass-42"), soft: soft}
	xroadTable := fmt.Sprintf("keystore = %q\nkeystore_password = \"file:%s\"", r.ks.p12, r.ks.envFile)
	if o.insecure {
		xroadTable = "insecure_loopback = true"
	}
	xroadTable += "\n" + o.extra
	doc := fmt.Sprintf(rigConfig, dir, soft.ModulePath, soft.Label, os.Getuid(), xroadTable, o.server, o.limits)
	path := filepath.Join(dir, "signerd.toml")
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	r.svc, err = signer.New(ctx, cfg, signer.Options{Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	l, err := signer.ListenUnix(ctx, cfg.Server.GRPCSocket, "")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(r.svc.ServerOptions()...)
	signerv1.RegisterSignerServer(gs, r.svc)
	go func() { _ = gs.Serve(l) }()
	ocspCtx, stopOCSP := context.WithCancel(ctx)
	ocspDone := make(chan struct{})
	go func() { defer close(ocspDone); r.svc.RunOCSP(ocspCtx) }()
	if r.admin, err = client.Dial(cfg.Server.GRPCSocket); err != nil {
		t.Fatal(err)
	}
	if r.xr, err = New(ctx, r.svc, cfg.XRoad, Options{}); err != nil {
		t.Fatalf("xroad.New: %v", err)
	}
	listen := o.listen
	if listen == "" {
		listen = "127.0.0.1:0"
	}
	tl, err := net.Listen("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	r.addr = tl.Addr().String()
	go func() { _ = r.xr.Serve(tl) }()
	t.Cleanup(func() {
		r.xr.Stop()
		r.admin.Close()
		gs.Stop()
		stopOCSP()
		<-ocspDone
		if err := r.svc.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	r.ca = devca.New(t)
	return r
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// signCert gives member a registered, active sign certificate for a new
// key of alg, with the dev CA's chain; it returns the key id and the
// certificate.
func (r *rig) signCert(t testing.TB, label, alg, member string) (string, *x509.Certificate) {
	t.Helper()
	k, err := r.admin.GenerateKey(ctxT(t), &signerv1.GenerateKeyRequest{Token: "t1", Label: label, Algorithm: alg, Usage: signerv1.KeyUsage_KEY_USAGE_SIGN})
	if err != nil {
		t.Fatal(err)
	}
	csr, err := r.admin.GenerateCSR(ctxT(t), &signerv1.GenerateCSRRequest{KeyId: k.GetId(), Subject: "CN=" + label + ",O=Agency,C=EE", Member: member})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(csr.GetCsr())
	cert, err := r.ca.Sign(ctxT(t), b.Bytes, devca.UsageSign, devca.Current)
	if err != nil {
		t.Fatal(err)
	}
	var chain []byte
	for _, c := range append([]*x509.Certificate{cert}, r.ca.Chain()...) {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	imp, err := r.admin.ImportCert(ctxT(t), &signerv1.ImportCertRequest{Certificate: chain})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.admin.SetCertStatus(ctxT(t), &signerv1.SetCertStatusRequest{Hash: imp.GetSha256(), Status: signerv1.CertStatus_CERT_STATUS_REGISTERED}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.admin.ActivateCert(ctxT(t), &signerv1.CertRef{Hash: imp.GetSha256()}); err != nil {
		t.Fatal(err)
	}
	return k.GetId(), cert
}

// refreshOCSP fetches the certificate's OCSP response now, once the
// watcher has learnt of it.
func (r *rig) refreshOCSP(t testing.TB, cert *x509.Certificate) {
	t.Helper()
	sum := fmt.Sprintf("%x", sha256Of(cert.Raw))
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := r.admin.RefreshOCSP(ctxT(t), &signerv1.RefreshOCSPRequest{CertHash: sum})
		if err == nil && len(st.GetCertificates()) == 1 && st.GetCertificates()[0].GetUsable() {
			return
		}
		if time.Now().After(deadline) || (err != nil && status.Code(err) != codes.NotFound) {
			t.Fatalf("RefreshOCSP: %v %v", st, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// xroadConn dials the X-Road listener as X-Road's proxy does: TLS with
// the keystore's certificate, trusting only the keystore, checking the
// server against 127.0.0.1.
func (r *rig) xroadConn(t testing.TB, tc *tls.Config) *grpc.ClientConn {
	t.Helper()
	if tc == nil {
		tc = &tls.Config{Certificates: []tls.Certificate{r.ks.cert}, RootCAs: r.ks.pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
	}
	return r.dial(t, credentials.NewTLS(tc))
}

// dial dials the X-Road listener with creds.
func (r *rig) dial(t testing.TB, creds credentials.TransportCredentials) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(r.addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// codedOf returns the CodedExceptionProto in an X-Road error, or nil.
func codedOf(err error) *xroadpb.CodedExceptionProto {
	for _, d := range status.Convert(err).Details() {
		if c, ok := d.(*xroadpb.CodedExceptionProto); ok {
			return c
		}
	}
	return nil
}
