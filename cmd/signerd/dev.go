package main

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/template"
	"time"

	"github.com/spf13/cobra"

	"github.com/hsmsigner/hsmsigner/signer"
	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/audit"
	"github.com/hsmsigner/hsmsigner/signer/client"
	"github.com/hsmsigner/hsmsigner/signer/config"
	softhsmtest "github.com/hsmsigner/hsmsigner/softhsm-test"
	"github.com/hsmsigner/hsmsigner/softhsm-test/devca"
)

// devTokenLabel is the label of dev mode's SoftHSM token.
const devTokenLabel = "signer-dev"

func newDevCommand(flags *daemonFlags) *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run on a throwaway SoftHSM token under a local folder (for trying it out; never for production)",
		Long: `dev makes (once) a SoftHSM token, its PINs and a configuration under --dir,
starts signerd with its sockets in DIR/run, logs the token in, generates a demo
signing key if there is none, and prints the signerctl commands to try.
The user who runs it is admin and client. Run it again to pick up where you left off.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkSourceCheckout(); err != nil {
				return err
			}
			if err := harden(); err != nil {
				return err
			}
			configPath, err := prepareDev(cmd.Context(), dir)
			if err != nil {
				return err
			}
			return runDaemon(cmd.Context(), configPath, *flags, devReady)
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "signer-dev", "folder for the token, PINs, state, audit log, sockets and configuration")
	return cmd
}

// checkSourceCheckout refuses dev mode in a binary built away from its
// source (the Debian package's, built with -trimpath): the development CA
// is softhsm-test/dev-ca.sh of the checkout, found through the source
// path compiled in. It is checked before anything is made under --dir.
func checkSourceCheckout() error {
	if _, err := devca.ScriptPath(); err != nil {
		return fmt.Errorf("signerd dev runs from a source checkout only (its development CA is the checkout's softhsm-test/dev-ca.sh): "+
			"in a clone of hsmsigner run `make dev` or `go run ./cmd/signerd dev`; an installed signerd runs with --config /etc/signerd/signerd.toml: %w", err)
	}
	return nil
}

// prepareDev makes the dev folder, token and configuration if they are not
// there yet, points SoftHSM at the token, and returns the config path.
func prepareDev(ctx context.Context, dir string) (string, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	for _, d := range []string{dir, filepath.Join(dir, "state"), filepath.Join(dir, "softhsm")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return "", fmt.Errorf("dev folder: %w", err)
		}
	}
	if err := os.MkdirAll(filepath.Join(dir, "run"), 0o750); err != nil {
		return "", fmt.Errorf("dev folder: %w", err)
	}
	module, err := softhsmtest.ModulePath()
	if err != nil {
		return "", err
	}
	pinFile := filepath.Join(dir, "user.pin")
	softDir := filepath.Join(dir, "softhsm")
	confPath := filepath.Join(softDir, "softhsm2.conf")
	if _, err := os.Stat(confPath); errors.Is(err, fs.ErrNotExist) {
		userPIN, soPIN := randomPIN(), randomPIN()
		if _, err := softhsmtest.Create(ctx, softDir, devTokenLabel, userPIN, soPIN); err != nil {
			return "", fmt.Errorf("making the dev token: %w", err)
		}
		if err := os.WriteFile(pinFile, userPIN, 0o600); err != nil {
			return "", err
		}
		if err := os.WriteFile(filepath.Join(dir, "so.pin"), soPIN, 0o600); err != nil {
			return "", err
		}
		clear(userPIN)
		clear(soPIN)
	} else if err != nil {
		return "", err
	}
	// SoftHSM reads its configuration at C_Initialize, from here.
	if err := os.Setenv(softhsmtest.ConfEnv, confPath); err != nil {
		return "", err
	}
	// The dev CA certifies the TSA key; its root is the trust anchor of
	// the upstream mode, which asks dev mode's own TSA.
	ca, err := devca.Init(ctx, filepath.Join(dir, "ca"))
	if err != nil {
		return "", fmt.Errorf("making the dev CA: %w", err)
	}
	configPath := filepath.Join(dir, "signerd.toml")
	if _, err := os.Stat(configPath); errors.Is(err, fs.ErrNotExist) {
		if err := writeDevConfig(ctx, configPath, dir, module, pinFile, ca.RootPEM); err != nil {
			return "", err
		}
	}
	return configPath, nil
}

// devTSAPort is the port dev mode's TSA listens on, when it is free.
const devTSAPort = "3180"

// devTSAListen returns 127.0.0.1:3180, or a free loopback port when that
// one is taken.
func devTSAListen(ctx context.Context) (string, error) {
	for _, addr := range []string{"127.0.0.1:" + devTSAPort, "127.0.0.1:0"} {
		l, err := (&net.ListenConfig{}).Listen(ctx, "tcp", addr)
		if err != nil {
			continue
		}
		addr = l.Addr().String()
		l.Close()
		return addr, nil
	}
	return "", errors.New("no free loopback TCP port for the dev TSA")
}

func randomPIN() []byte {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return []byte(hex.EncodeToString(b))
}

// devConfigTemplate is dev mode's configuration.
const devConfigTemplate = `# signerd dev configuration, written by "signerd dev". For trying it out only:
# the token's PINs are in files beside this one.
[server]
grpc_socket = "{{.Dir}}/run/signer.sock"
http_socket = "{{.Dir}}/run/http.sock"
state_dir = "{{.Dir}}/state"
audit_file = "{{.Dir}}/audit.jsonl"
log_level = "info"
# The audit log's head is signed with the "audit" key that dev mode
# generates, every 10 s when lines were added (production default: 5m).
audit_checkpoint_interval = "10s"

# The built-in RFC 3161 TSA, signing with the "tsa" key dev mode makes
# (certified by the dev CA in {{.Dir}}/ca). THE CLOCK GUARD IS OFF here:
# development machines often have no NTP, and a production TSA must refuse
# (timeNotAvailable) while the kernel calls the clock unsynchronised.
# 2.999.1 is an example policy OID (ITU-T X.660's example arc).
[tsa]
enabled = true
policy = "2.999.1"
require_synced_clock = false
listen = "{{.TSAListen}}"

  # The upstream mode asks external TSAs; in dev mode, its own TSA over
  # TCP, batching what arrives within 20 ms into one stamp.
  [tsa.upstream]
  urls = ["http://{{.TSAListen}}/tsa"]
  trust_anchors = ["{{.CARoot}}"]
  batch_window = "20ms"

# What one uid may take of the daemon (the production defaults).
[limits]
connections_per_uid = 64
calls_per_uid = 4096
refusals_per_second = 10
refusal_burst = 50
refusal_summary_interval = "10s"
login_attempts_per_minute = 5

# OCSP (the production defaults): a certificate is offered by signing-info
# only with a fresh, verified "good" OCSP response from its responder. The
# dev CA's responder: go run ./softhsm-test/cmd/dev-ocsp --ca dev-ca
[ocsp]
enabled = true
freshness = "1h"

[[module]]
name = "softhsm"
path = "{{.Module}}"

  [[module.token]]
  name = "dev"
  token = "label:{{.Label}}"
  pin = "file:{{.PINFile}}"

[policy]
  [policy.admins]
  uids = [{{.UID}}]

  [[policy.client]]
  name = "you"
  uids = [{{.UID}}]
  keys = ["*"]
  usages = ["sign", "auth", "tsa"]
  members = ["*"]
`

func writeDevConfig(ctx context.Context, path, dir, module, pinFile, caRoot string) error {
	tmpl, err := template.New("dev").Parse(devConfigTemplate)
	if err != nil {
		return err
	}
	listen, err := devTSAListen(ctx)
	if err != nil {
		return err
	}
	var b strings.Builder
	err = tmpl.Execute(&b, map[string]string{
		"Dir": dir, "Module": module, "Label": devTokenLabel, "PINFile": pinFile, "UID": strconv.Itoa(os.Getuid()),
		"TSAListen": listen, "CARoot": caRoot,
	})
	if err != nil {
		return err
	}
	if _, err := config.Parse([]byte(b.String()), path); err != nil {
		return fmt.Errorf("dev configuration: %w", err)
	}
	return os.WriteFile(path, []byte(b.String()), 0o600)
}

// devReady generates the demo and audit keys through the daemon's own
// socket, as the officer would, signs a first audit checkpoint so the log
// can be verified with the audit key at once, and prints what to try.
func devReady(ctx context.Context, cfg *config.Config, svc *signer.Service) error {
	c, err := client.Dial(cfg.Server.GRPCSocket)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	keys, err := c.ListKeys(ctx, &signerv1.ListKeysRequest{})
	if err != nil {
		return err
	}
	keyID, auditKeyID := "", ""
	for _, k := range keys.GetKeys() {
		switch k.GetLabel() {
		case "demo":
			keyID = k.GetId()
		case "audit":
			auditKeyID = k.GetId()
		}
	}
	for _, want := range []struct {
		id    *string
		label string
		usage signerv1.KeyUsage
		name  string
	}{
		{&keyID, "demo", signerv1.KeyUsage_KEY_USAGE_SIGN, "demo signing key"},
		{&auditKeyID, "audit", signerv1.KeyUsage_KEY_USAGE_AUDIT, "signs the audit log's checkpoints"},
	} {
		if *want.id != "" {
			continue
		}
		k, err := c.GenerateKey(ctx, &signerv1.GenerateKeyRequest{Token: "dev", Label: want.label, Algorithm: "EC-P256", Usage: want.usage, Name: want.name})
		if err != nil {
			return fmt.Errorf("generating the %s key: %w", want.label, err)
		}
		*want.id = k.GetId()
	}
	tsaKeyID, err := devTSAKey(ctx, c, keys.GetKeys(), filepath.Join(filepath.Dir(cfg.Server.AuditFile), "ca"))
	if err != nil {
		return fmt.Errorf("the dev TSA key: %w", err)
	}
	// A first checkpoint now, not only after the first interval: the log
	// is anchored before the newcomer runs audit verify --pub.
	if _, err := svc.Checkpoint(ctx); err != nil && !errors.Is(err, audit.ErrNothingToCheckpoint) {
		return fmt.Errorf("signing the first audit checkpoint: %w", err)
	}
	fmt.Fprintf(os.Stderr, `
signerd is ready (dev mode: a throwaway SoftHSM token, not for production).
  gRPC socket: %[1]s
  demo key:    %[2]s (EC P-256, usage sign)
  audit key:   %[4]s (EC P-256, signs the audit log's checkpoints)
  TSA key:     %[5]s (EC P-256, usage tsa, certified by the dev CA in %[6]s)
  TSA:         POST /tsa on %[7]s and http://%[8]s/tsa
               CLOCK GUARD OFF (dev mode): tokens whatever the clock says

In another terminal, try:
  export SIGNER_SOCKET=%[1]s
  go run ./cmd/signerctl status
  go run ./cmd/signerctl key list
  echo -n 'hello' > hello.txt
  go run ./cmd/signerctl sign --key %[2]s --alg SHA256withECDSA --in hello.txt --out hello.sig
  go run ./cmd/signerctl key show %[2]s --public-pem > demo.pub.pem
  openssl dgst -sha256 -verify demo.pub.pem -signature hello.sig hello.txt
  go run ./cmd/signerctl key show %[4]s --public-pem > audit.pem
  go run ./cmd/signerctl audit verify --pub audit.pem %[3]s
  go run ./cmd/signerctl tsa stamp --in hello.txt --out hello.tsr
  openssl ts -verify -in hello.tsr -data hello.txt -CAfile %[6]s/root.pem
  go run ./cmd/signerctl tsa status

Stop with Ctrl-C.
`, cfg.Server.GRPCSocket, keyID, cfg.Server.AuditFile, auditKeyID, tsaKeyID, filepath.Join(filepath.Dir(cfg.Server.AuditFile), "ca"), cfg.Server.HTTPSocket, cfg.TSA.Listen)
	return nil
}

// devTSAKey makes dev mode's TSA key and has the dev CA in caDir certify
// it for time-stamping (extendedKeyUsage timeStamping, critical), unless
// a key labelled "tsa" has an active certificate already; it returns the
// key's id.
func devTSAKey(ctx context.Context, c *client.Client, keys []*signerv1.Key, caDir string) (string, error) {
	id := ""
	for _, k := range keys {
		if k.GetLabel() == "tsa" {
			id = k.GetId()
		}
	}
	if id == "" {
		k, err := c.GenerateKey(ctx, &signerv1.GenerateKeyRequest{Token: "dev", Label: "tsa", Algorithm: "EC-P256", Usage: signerv1.KeyUsage_KEY_USAGE_TSA, Name: "dev TSA key"})
		if err != nil {
			return "", err
		}
		id = k.GetId()
	}
	certs, err := c.ListCerts(ctx, &signerv1.ListCertsRequest{KeyId: id})
	if err != nil {
		return "", err
	}
	for _, ct := range certs.GetCertificates() {
		if ct.GetActive() && time.Now().Before(ct.GetNotAfter().AsTime()) {
			return id, nil
		}
	}
	ca, err := devca.Init(ctx, caDir)
	if err != nil {
		return "", err
	}
	csr, err := c.GenerateCSR(ctx, &signerv1.GenerateCSRRequest{KeyId: id, Subject: "CN=signerd dev TSA,O=hsmsigner dev,C=EE"})
	if err != nil {
		return "", err
	}
	blk, _ := pem.Decode(csr.GetCsr())
	if blk == nil {
		return "", errors.New("signerd gave a CSR that is not PEM")
	}
	cert, err := ca.Sign(ctx, blk.Bytes, devca.UsageTSA, devca.Current)
	if err != nil {
		return "", err
	}
	var chain []byte
	for _, x := range []*x509.Certificate{cert, ca.Intermediate, ca.Root} {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: x.Raw})...)
	}
	imp, err := c.ImportCert(ctx, &signerv1.ImportCertRequest{Certificate: chain})
	if err != nil {
		return "", err
	}
	if _, err := c.ActivateCert(ctx, &signerv1.CertRef{Hash: imp.GetSha256()}); err != nil {
		return "", err
	}
	return id, nil
}
