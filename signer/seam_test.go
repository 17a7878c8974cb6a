package signer_test

import (
	"bufio"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hsmsigner/hsmsigner/signer"
	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/audit"
	"github.com/hsmsigner/hsmsigner/signer/peercred"
	"github.com/hsmsigner/hsmsigner/softhsm-test/devca"
)

// stampKeys is what the throwaway feature below consumes from signer,
// declared where it is used, as tsa/ and ocsp/ declare theirs.
type stampKeys interface {
	CertificatesOf(ctx context.Context, usage string) ([]signer.KeyCertificate, error)
	KeySigner(ctx context.Context, a signer.Actor, keyID, usage string) (crypto.Signer, error)
}

// stamper is a throwaway in-process feature, shaped as the time-stamping
// authority will be: it finds the active certificate of its usage and
// signs a message's digest with that certificate's key.
type stamper struct{ keys stampKeys }

type stamp struct {
	digest, sig []byte
	cert        signer.KeyCertificate
}

func (st stamper) stamp(ctx context.Context, msg []byte) (stamp, error) {
	certs, err := st.keys.CertificatesOf(ctx, signer.UsageTSA)
	if err != nil {
		return stamp{}, err
	}
	if len(certs) == 0 {
		return stamp{}, errors.New("no active tsa certificate")
	}
	s, err := st.keys.KeySigner(ctx, signer.Actor{Op: "tsa.sign"}, certs[0].KeyID, signer.UsageTSA)
	if err != nil {
		return stamp{}, err
	}
	d := sha256.Sum256(msg)
	sig, err := s.Sign(rand.Reader, d[:], crypto.SHA256)
	if err != nil {
		return stamp{}, err
	}
	return stamp{digest: d[:], sig: sig, cert: certs[0]}, nil
}

func seamCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// auditLines reads the audit log's lines of op.
func auditLines(t *testing.T, path, op string) []audit.Record {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []audit.Record
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var r audit.Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("audit line %q: %v", sc.Text(), err)
		}
		if r.Op == op {
			out = append(out, r)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// tsaKeyWithCert makes a tsa key, has the dev CA certify it, and imports
// and activates the certificate with its chain.
func tsaKeyWithCert(t *testing.T, d signer.SeamDaemon) (*signerv1.Key, *devca.CA) {
	t.Helper()
	ctx := seamCtx(t)
	k, err := d.Client.GenerateKey(ctx, &signerv1.GenerateKeyRequest{Token: "t1", Label: "tsa", Algorithm: "EC-P256", Usage: signerv1.KeyUsage_KEY_USAGE_TSA})
	if err != nil {
		t.Fatal(err)
	}
	r, err := d.Client.GenerateCSR(ctx, &signerv1.GenerateCSRRequest{KeyId: k.GetId(), Subject: "CN=tsa,O=Agency,C=EE", DnsNames: []string{"tsa.example.test"}})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(r.GetCsr())
	ca := devca.New(t)
	cert, err := ca.Sign(ctx, b.Bytes, "tsa", devca.Current)
	if err != nil {
		t.Fatal(err)
	}
	var chain [][]byte
	for _, c := range ca.Chain() {
		chain = append(chain, c.Raw)
	}
	imp, err := d.Client.ImportCert(ctx, &signerv1.ImportCertRequest{Certificate: cert.Raw, Chain: chain})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Client.ActivateCert(ctx, &signerv1.CertRef{Hash: imp.GetSha256()}); err != nil {
		t.Fatal(err)
	}
	return k, ca
}

// TestSeamFeatureSignsAudited: a feature outside package signer finds the
// active certificate of its usage, signs through the crypto.Signer it
// gets, the signature verifies (crypto/ecdsa and openssl) against the
// certificate, which chains to the CA, and one audit line of the
// feature's op names the key and the digest.
func TestSeamFeatureSignsAudited(t *testing.T) {
	d := signer.NewSeamDaemon(t)
	k, ca := tsaKeyWithCert(t, d)
	ctx := seamCtx(t)

	st, err := stamper{keys: d.Service}.stamp(ctx, []byte("a document to stamp"))
	if err != nil {
		t.Fatalf("stamp: %v", err)
	}
	if st.cert.KeyID != k.GetId() || len(st.cert.Chain) != 2 || st.cert.Token != "t1" {
		t.Fatalf("certificate of key %s on %q with %d chain elements; want key %s on t1 with 2", st.cert.KeyID, st.cert.Token, len(st.cert.Chain), k.GetId())
	}
	inter := x509.NewCertPool()
	inter.AddCert(st.cert.Chain[0])
	if _, err := st.cert.Certificate.Verify(x509.VerifyOptions{Roots: ca.Pool(), Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageTimeStamping}}); err != nil {
		t.Fatalf("the certificate does not chain to the CA: %v", err)
	}
	pub, ok := st.cert.Certificate.PublicKey.(*ecdsa.PublicKey)
	if !ok || !ecdsa.VerifyASN1(pub, st.digest, st.sig) {
		t.Fatal("the signature does not verify with the certificate's key")
	}

	// openssl, independently of Go.
	dir := t.TempDir()
	pubDER, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{
		"pub.pem": pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}),
		"msg":     []byte("a document to stamp"),
		"sig":     st.sig,
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command("openssl", "dgst", "-sha256", "-verify", filepath.Join(dir, "pub.pem"), "-signature", filepath.Join(dir, "sig"), filepath.Join(dir, "msg")).CombinedOutput(); err != nil {
		t.Fatalf("openssl dgst -verify: %v\n%s", err, out)
	}

	lines := auditLines(t, d.AuditFile, "tsa.sign")
	if len(lines) != 1 {
		t.Fatalf("%d audit lines of op tsa.sign, want 1: %+v", len(lines), lines)
	}
	l := lines[0]
	if l.Key != k.GetId() || l.Token != "t1" || l.Digest != hex.EncodeToString(st.digest) || l.Result != "ok" || l.Detail != "SHA256withECDSA" ||
		l.UID != int64(os.Getuid()) || l.PID != int64(os.Getpid()) {
		t.Fatalf("audit line %+v; want the key, token t1, the digest, SHA256withECDSA, ok, the daemon's uid and pid", l)
	}
}

// TestSeamRefusals: the seam refuses what Sign would, audits the refusal
// under the feature's op, and withholds a signature whose line cannot be
// written.
func TestSeamRefusals(t *testing.T) {
	d := signer.NewSeamDaemon(t)
	k, _ := tsaKeyWithCert(t, d)
	ctx := seamCtx(t)
	stranger := peercred.Peer{UID: 4242, GID: 4242, PID: 1}
	tests := []struct {
		name    string
		actor   signer.Actor
		key     string
		usage   string
		want    error
		audited bool // a line of the actor's op says why
	}{
		{"another usage", signer.Actor{Op: "feature.wrong_usage"}, k.GetId(), signer.UsageSign, signer.ErrPermission, true},
		{"a peer the policy does not name", signer.Actor{Op: "feature.stranger", Peer: &stranger}, k.GetId(), signer.UsageTSA, signer.ErrPermission, true},
		{"no op", signer.Actor{}, k.GetId(), signer.UsageTSA, signer.ErrInvalid, false},
		{"not a key id", signer.Actor{Op: "feature.bad_id"}, "zz", signer.UsageTSA, signer.ErrInvalid, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := d.Service.KeySigner(ctx, tt.actor, tt.key, tt.usage)
			if s != nil || !errors.Is(err, tt.want) {
				t.Fatalf("KeySigner = %v, %v; want %v", s, err, tt.want)
			}
			if !tt.audited {
				return
			}
			lines := auditLines(t, d.AuditFile, tt.actor.Op)
			if len(lines) != 1 || lines[0].Result == "ok" || !strings.Contains(lines[0].Result, err.Error()) {
				t.Fatalf("audit lines of %s: %+v; want one refusal saying %q", tt.actor.Op, lines, err)
			}
		})
	}

	t.Run("audit failure withholds the signature", func(t *testing.T) {
		s, err := d.Service.KeySigner(ctx, signer.Actor{Op: "feature.no_audit"}, k.GetId(), signer.UsageTSA)
		if err != nil {
			t.Fatal(err)
		}
		d.FailAudit(true)
		defer d.FailAudit(false)
		digest := sha256.Sum256([]byte("x"))
		sig, err := s.Sign(rand.Reader, digest[:], crypto.SHA256)
		if sig != nil || !errors.Is(err, signer.ErrAudit) {
			t.Fatalf("Sign = %x, %v; want no signature and ErrAudit", sig, err)
		}
	})
}

// TestSeamCertificateChangesNotify: a feature that registered with
// OnCertificatesChanged is told of each import, activation, deactivation
// and deletion, after it is committed (CertificatesOf already answers the
// new set when the feature is told).
func TestSeamCertificateChangesNotify(t *testing.T) {
	d := signer.NewSeamDaemon(t)
	ctx := seamCtx(t)
	type seen struct{ active int }
	notes := make(chan seen, 16)
	d.Service.OnCertificatesChanged(func() {
		certs, err := d.Service.CertificatesOf(context.Background(), signer.UsageTSA)
		if err != nil {
			t.Errorf("CertificatesOf in the notification: %v", err)
		}
		notes <- seen{active: len(certs)}
	})
	next := func(what string) seen {
		t.Helper()
		select {
		case n := <-notes:
			return n
		case <-time.After(10 * time.Second):
			t.Fatalf("no notification after %s", what)
			return seen{}
		}
	}
	k, _ := tsaKeyWithCert(t, d) // import, then activate
	if n := next("import"); n.active != 0 {
		t.Fatalf("after import: %d active certificates seen, want 0", n.active)
	}
	if n := next("activation"); n.active != 1 {
		t.Fatalf("after activation: %d active certificates seen, want 1", n.active)
	}
	certs, err := d.Service.CertificatesOf(ctx, signer.UsageTSA)
	if err != nil || len(certs) != 1 {
		t.Fatalf("CertificatesOf: %v, %v", certs, err)
	}
	if _, err := d.Client.DeactivateCert(ctx, &signerv1.CertRef{Hash: certs[0].SHA256}); err != nil {
		t.Fatal(err)
	}
	if n := next("deactivation"); n.active != 0 {
		t.Fatalf("after deactivation: %d active certificates seen, want 0", n.active)
	}
	if _, err := d.Client.DeleteKey(ctx, &signerv1.DeleteKeyRequest{KeyId: k.GetId(), Force: true}); err != nil {
		t.Fatal(err)
	}
	next("deletion of the key with its certificate")
}
