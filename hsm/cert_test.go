package hsm

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// selfSigned makes a self-signed CA certificate for key k, signed on the
// token through Token.Signer.
func (e *testEnv) selfSigned(t *testing.T, k Key, cn string) *x509.Certificate {
	t.Helper()
	s, err := e.tok.Signer(testContext(t), k.ID)
	if err != nil {
		t.Fatalf("Signer: %v", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"hsmsigner test"}},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, s.Public(), s)
	if err != nil {
		t.Fatalf("CreateCertificate through the HSM: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	if err := cert.CheckSignatureFrom(cert); err != nil {
		t.Fatalf("self-signature made by the HSM: %v", err)
	}
	return cert
}

// certsByID lists the token's certificates and groups their DER by CKA_ID
// (hex), checking each listed certificate parses to what the token holds.
func (e *testEnv) certsByID(t *testing.T) map[string][]CertObject {
	t.Helper()
	certs, err := e.tok.Certificates(testContext(t))
	if err != nil {
		t.Fatalf("Certificates: %v", err)
	}
	out := map[string][]CertObject{}
	for _, c := range certs {
		k := Key{ID: c.ID}
		out[k.IDHex()] = append(out[k.IDHex()], c)
	}
	return out
}

// opensslParses has `openssl x509` read der (as read back from the token)
// and returns its subject line; it also has openssl check the self-signature.
func opensslParses(t *testing.T, der []byte) string {
	t.Helper()
	dir := t.TempDir()
	derFile := filepath.Join(dir, "cert.der")
	pemFile := filepath.Join(dir, "cert.pem")
	if err := os.WriteFile(derFile, der, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("openssl", "x509", "-inform", "DER", "-in", derFile, "-noout", "-subject", "-nameopt", "RFC2253").CombinedOutput()
	if err != nil {
		t.Fatalf("openssl x509 cannot parse the certificate read back: %v\n%s", err, out)
	}
	if err := os.WriteFile(pemFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if vout, err := exec.Command("openssl", "verify", "-check_ss_sig", "-CAfile", pemFile, pemFile).CombinedOutput(); err != nil {
		t.Fatalf("openssl verify of the self-signed certificate: %v\n%s", err, vout)
	}
	return strings.TrimSpace(string(out))
}

func TestCertificateLifecycle(t *testing.T) {
	e := newEnv(t, nil)
	ctx := testContext(t)
	rsaKey := e.genKey(t, RSA2048, "cert-rsa")
	ecKey := e.genKey(t, ECP256, "cert-ec")
	rsaCert := e.selfSigned(t, rsaKey, "rsa member")
	ecCert := e.selfSigned(t, ecKey, "ec member")

	// Stored twice, each certificate is one object, created the first
	// time only.
	for i := range 2 {
		created, err := e.tok.StoreCertificate(ctx, rsaKey.ID, "cert-rsa", rsaCert)
		if err != nil || created != (i == 0) {
			t.Fatalf("StoreCertificate(rsa), time %d: created %t, %v; want created %t", i+1, created, err, i == 0)
		}
		created, err = e.tok.StoreCertificate(ctx, ecKey.ID, "cert-ec", ecCert)
		if err != nil || created != (i == 0) {
			t.Fatalf("StoreCertificate(ec), time %d: created %t, %v; want created %t", i+1, created, err, i == 0)
		}
	}
	byID := e.certsByID(t)
	if len(byID) != 2 || len(byID[rsaKey.IDHex()]) != 1 || len(byID[ecKey.IDHex()]) != 1 {
		t.Fatalf("after storing each certificate twice: %d ids, rsa %d, ec %d objects; want 1 each",
			len(byID), len(byID[rsaKey.IDHex()]), len(byID[ecKey.IDHex()]))
	}
	for _, tt := range []struct {
		key   Key
		cert  *x509.Certificate
		label string
		cn    string
	}{{rsaKey, rsaCert, "cert-rsa", "rsa member"}, {ecKey, ecCert, "cert-ec", "ec member"}} {
		got := byID[tt.key.IDHex()][0]
		if !bytes.Equal(got.ID, tt.key.ID) {
			t.Errorf("certificate CKA_ID %x, want the key's %x", got.ID, tt.key.ID)
		}
		if got.Label != tt.label {
			t.Errorf("certificate label %q, want %q", got.Label, tt.label)
		}
		if !bytes.Equal(got.Cert.Raw, tt.cert.Raw) {
			t.Errorf("certificate %q read back differs from the one stored", tt.label)
		}
		if !got.Cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(tt.key.Public) {
			t.Errorf("certificate %q does not hold the key's public key", tt.label)
		}
		if subj := opensslParses(t, got.Cert.Raw); !strings.Contains(subj, "CN="+tt.cn) {
			t.Errorf("openssl reads subject %q, want CN=%s", subj, tt.cn)
		}
	}

	// A renewed certificate for the same key is a second object.
	renewed := e.selfSigned(t, rsaKey, "rsa member renewed")
	if _, err := e.tok.StoreCertificate(ctx, rsaKey.ID, "cert-rsa", renewed); err != nil {
		t.Fatalf("StoreCertificate(renewed): %v", err)
	}
	if n := len(e.certsByID(t)[rsaKey.IDHex()]); n != 2 {
		t.Fatalf("rsa key has %d certificates after renewal, want 2", n)
	}

	// DeleteKey takes the key's certificates with it, and only those.
	if err := e.tok.DeleteKey(ctx, rsaKey.ID); err != nil {
		t.Fatalf("DeleteKey: %v", err)
	}
	byID = e.certsByID(t)
	if len(byID[rsaKey.IDHex()]) != 0 {
		t.Fatalf("DeleteKey left %d certificates of the key", len(byID[rsaKey.IDHex()]))
	}
	if len(byID[ecKey.IDHex()]) != 1 {
		t.Fatalf("DeleteKey of another key removed the EC certificate")
	}
	if _, err := e.tok.KeyByID(ctx, rsaKey.ID); !errors.Is(err, ErrKeyNotFound) {
		t.Fatalf("KeyByID after DeleteKey: %v, want ErrKeyNotFound", err)
	}

	// Certificates are public objects: listed without a login too.
	if err := e.tok.Logout(ctx); err != nil {
		t.Fatal(err)
	}
	if n := len(e.certsByID(t)[ecKey.IDHex()]); n != 1 {
		t.Fatalf("after logout %d EC certificates listed, want 1", n)
	}
	if err := e.tok.Login(ctx, e.soft.UserPIN); err != nil {
		t.Fatal(err)
	}

	// DeleteCertificate removes the certificate, not the key.
	if err := e.tok.DeleteCertificate(ctx, ecCert.Raw); err != nil {
		t.Fatalf("DeleteCertificate: %v", err)
	}
	if n := len(e.certsByID(t)); n != 0 {
		t.Fatalf("%d certificates left after DeleteCertificate, want 0", n)
	}
	if _, err := e.tok.KeyByID(ctx, ecKey.ID); err != nil {
		t.Fatalf("the key went with its certificate: %v", err)
	}
	e.assertNoLeakedSessions(t)
}

func TestDeleteCertificateUnknown(t *testing.T) {
	e := newEnv(t, nil)
	ctx := testContext(t)
	k := e.genKey(t, ECP256, "ec")
	stored := e.selfSigned(t, k, "stored")
	other := e.selfSigned(t, k, "never stored")
	if _, err := e.tok.StoreCertificate(ctx, k.ID, "ec", stored); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		der  []byte
	}{
		{"never stored", other.Raw},
		{"not a certificate", []byte("not a certificate")},
		{"empty", nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := e.tok.DeleteCertificate(ctx, tt.der); !errors.Is(err, ErrCertNotFound) {
				t.Fatalf("DeleteCertificate: %v, want ErrCertNotFound", err)
			}
		})
	}
	if n := len(e.certsByID(t)[k.IDHex()]); n != 1 {
		t.Fatalf("the stored certificate is gone after failed deletes: %d left", n)
	}
	if err := e.tok.DeleteCertificate(ctx, stored.Raw); err != nil {
		t.Fatal(err)
	}
	if err := e.tok.DeleteCertificate(ctx, stored.Raw); !errors.Is(err, ErrCertNotFound) {
		t.Fatalf("second DeleteCertificate: %v, want ErrCertNotFound", err)
	}
	e.assertNoLeakedSessions(t)
}

func TestStoreCertificateBadInput(t *testing.T) {
	e := newEnv(t, nil)
	ctx := testContext(t)
	k := e.genKey(t, ECP256, "ec")
	other := e.genKey(t, ECP256, "other")
	cert := e.selfSigned(t, k, "c")
	for _, tt := range []struct {
		name    string
		id      []byte
		cert    *x509.Certificate
		wantErr error
	}{
		{"no id", nil, cert, ErrInvalidArgument},
		{"no certificate", k.ID, nil, ErrInvalidArgument},
		{"another key's id", other.ID, cert, ErrInvalidArgument},
		{"an id of no key", []byte{1, 2, 3}, cert, ErrKeyNotFound},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := e.tok.StoreCertificate(ctx, tt.id, "x", tt.cert); !errors.Is(err, tt.wantErr) {
				t.Fatalf("StoreCertificate: %v, want %v", err, tt.wantErr)
			}
		})
	}
	if n := len(e.certsByID(t)); n != 0 {
		t.Fatalf("refused StoreCertificate calls left %d certificates", n)
	}
}
