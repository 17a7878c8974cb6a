package tsa

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/digitorus/timestamp"
)

// opensslTSA is a TSA made of `openssl ts -reply`, with its key and
// certificate in files.
type opensslTSA struct {
	*testTSA
	conf string
}

func newOpenSSLTSA(t testing.TB) *opensslTSA {
	t.Helper()
	ts := newCriticalEKUTSA(t, "ecdsa")
	keyDER, err := x509.MarshalPKCS8PrivateKey(ts.key)
	if err != nil {
		t.Fatal(err)
	}
	keyPath := filepath.Join(ts.dir, "tsa.key")
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(ts.dir, "serial"), []byte("01\n"), 0o600)
	conf := filepath.Join(ts.dir, "tsa.cnf")
	cnf := fmt.Sprintf(`[ tsa ]
default_tsa = tsa_config
[ tsa_config ]
dir = %s
serial = $dir/serial
signer_cert = $dir/tsa.pem
signer_key = $dir/tsa.key
signer_digest = sha256
default_policy = 1.3.6.1.4.1.99999.1
digests = sha256, sha384, sha512
accuracy = secs:1
ess_cert_id_alg = sha256
ess_cert_id_chain = no
`, ts.dir)
	if err := os.WriteFile(conf, []byte(cnf), 0o600); err != nil {
		t.Fatal(err)
	}
	return &opensslTSA{testTSA: ts, conf: conf}
}

// reply has openssl answer req.
func (o *opensslTSA) reply(t testing.TB, req []byte) []byte {
	t.Helper()
	q, r := filepath.Join(t.TempDir(), "q.tsq"), filepath.Join(t.TempDir(), "r.tsr")
	os.WriteFile(q, req, 0o600)
	out, err := exec.Command("openssl", "ts", "-reply", "-config", o.conf, "-queryfile", q, "-out", r).CombinedOutput()
	if err != nil {
		t.Fatalf("openssl ts -reply: %v\n%s", err, out)
	}
	b, _ := os.ReadFile(r)
	return b
}

// TestVerifyResponse checks tokens from a real openssl TSA and from this
// package's issuer: good ones verify; another imprint, another nonce, an
// untrusted anchor, or a refusal are rejected.
func TestVerifyResponse(t *testing.T) {
	o := newOpenSSLTSA(t)
	digest := sha256.Sum256([]byte("root of the batch"))
	nonce := big.NewInt(424242)
	req, err := (&timestamp.Request{HashAlgorithm: crypto.SHA256, HashedMessage: digest[:], Nonce: nonce, Certificates: true}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(o.ca)
	trust := Trust{Roots: roots}
	ours, _, err := o.issuer(t, syncedClock).Issue(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	otherCA := newCriticalEKUTSA(t, "ecdsa")
	otherRoots := x509.NewCertPool()
	otherRoots.AddCert(otherCA.ca)
	refused, _ := timestamp.CreateErrorResponse(timestamp.Rejection, timestamp.TimeNotAvailable)
	otherDigest := sha256.Sum256([]byte("another root"))
	for _, c := range []struct {
		name   string
		resp   []byte
		digest []byte
		nonce  *big.Int
		trust  Trust
		ok     bool
	}{
		{"openssl TSA", o.reply(t, req), digest[:], nonce, trust, true},
		{"this package's issuer", ours, digest[:], nonce, trust, true},
		{"another imprint", o.reply(t, req), otherDigest[:], nonce, trust, false},
		{"another nonce", o.reply(t, req), digest[:], big.NewInt(7), trust, false},
		{"nonce sent, none in the token", mustReply(t, o, digest[:], nil), digest[:], nonce, trust, false},
		{"untrusted anchor", o.reply(t, req), digest[:], nonce, Trust{Roots: otherRoots}, false},
		{"a refusal", refused, digest[:], nonce, trust, false},
		{"garbage", []byte("garbage"), digest[:], nonce, trust, false},
	} {
		_, err := VerifyResponse(c.resp, crypto.SHA256, c.digest, c.nonce, c.trust)
		if c.ok && err != nil || !c.ok && !errors.Is(err, ErrToken) {
			t.Errorf("%s: %v (want ok=%v)", c.name, err, c.ok)
		}
	}
}

// mustReply has the openssl TSA answer a request for digest with nonce.
func mustReply(t testing.TB, o *opensslTSA, digest []byte, nonce *big.Int) []byte {
	req, err := (&timestamp.Request{HashAlgorithm: crypto.SHA256, HashedMessage: digest, Nonce: nonce, Certificates: true}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return o.reply(t, req)
}
