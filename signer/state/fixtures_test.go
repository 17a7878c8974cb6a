package state_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"math/big"
	"path/filepath"
	"testing"
	"time"

	"github.com/hsmsigner/hsmsigner/signer/state"
)

// openStore opens a fresh state file in a temporary directory and closes it
// when the test ends.
func openStore(t *testing.T) (*state.Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := state.Open(context.Background(), path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s, path
}

// newCert returns a real self-signed certificate (DER) with the given common
// name, and its validity.
func newCert(t *testing.T, cn string) (der []byte, notBefore, notAfter time.Time) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	notBefore = time.Now().UTC().Truncate(time.Second)
	notAfter = notBefore.Add(365 * 24 * time.Hour)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	der, err = x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return der, notBefore, notAfter
}

// newCSR returns a real PKCS#10 request (DER).
func newCSR(t *testing.T, cn string) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// seqDER returns a small DER SEQUENCE holding n. The store checks only that
// a certificate is one DER SEQUENCE, so these stand in where a test needs
// many certificates with chosen hashes.
func seqDER(t *testing.T, n int) []byte {
	t.Helper()
	der, err := asn1.Marshal(struct{ N int }{n})
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// collidingDERs returns two DER values whose SHA-256 hex digests share the
// first 8 hex digits, found by a deterministic birthday search.
func collidingDERs(t *testing.T) (a, b []byte) {
	t.Helper()
	seen := make(map[string]int)
	for n := 0; n < 1<<20; n++ {
		der := seqDER(t, n)
		sum := sha256.Sum256(der)
		p := hex.EncodeToString(sum[:4])
		if m, ok := seen[p]; ok {
			return seqDER(t, m), der
		}
		seen[p] = n
	}
	t.Fatal("no 32-bit prefix collision in 2^20 tries")
	return nil, nil
}

func sha256Hex(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }
func sha1Hex(b []byte) string   { s := sha1.Sum(b); return hex.EncodeToString(s[:]) }
