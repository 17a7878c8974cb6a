package hsm

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/hsmsigner/hsmsigner/hsm/sigalg"
)

func mustAlg(t testing.TB, name string) sigalg.Algorithm {
	t.Helper()
	a, err := ParseAlgorithm(name)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestParseAlgorithm(t *testing.T) {
	tests := []struct {
		in     string
		name   string
		hash   crypto.Hash
		scheme sigalg.Scheme
		jose   string
		curve  string // the curve the name binds
	}{
		{"SHA256withRSA", "SHA256withRSA", crypto.SHA256, sigalg.SchemePKCS1v15, "RS256", ""},
		{"sha384withrsa", "SHA384withRSA", crypto.SHA384, sigalg.SchemePKCS1v15, "RS384", ""},
		{"SHA512withRSA", "SHA512withRSA", crypto.SHA512, sigalg.SchemePKCS1v15, "RS512", ""},
		{"SHA256withRSAandMGF1", "SHA256withRSAandMGF1", crypto.SHA256, sigalg.SchemePSS, "PS256", ""},
		{"SHA512withRSAandMGF1", "SHA512withRSAandMGF1", crypto.SHA512, sigalg.SchemePSS, "PS512", ""},
		{"SHA256withECDSA", "SHA256withECDSA", crypto.SHA256, sigalg.SchemeECDSA, "ES256", ""},
		{"SHA384withECDSA", "SHA384withECDSA", crypto.SHA384, sigalg.SchemeECDSA, "ES384", ""},
		{"RS256", "SHA256withRSA", crypto.SHA256, sigalg.SchemePKCS1v15, "RS256", ""},
		{"ps384", "SHA384withRSAandMGF1", crypto.SHA384, sigalg.SchemePSS, "PS384", ""},
		{"ES256", "SHA256withECDSA", crypto.SHA256, sigalg.SchemeECDSA, "ES256", "P-256"},
		{"es384", "SHA384withECDSA", crypto.SHA384, sigalg.SchemeECDSA, "ES384", "P-384"},
		{"ES512", "SHA512withECDSA", crypto.SHA512, sigalg.SchemeECDSA, "ES512", "P-521"},
	}
	for _, tt := range tests {
		a, err := ParseAlgorithm(tt.in)
		if err != nil {
			t.Errorf("ParseAlgorithm(%q): %v", tt.in, err)
			continue
		}
		if a.Name != tt.name || a.Hash != tt.hash || a.Scheme != tt.scheme || a.JOSE() != tt.jose || a.Curve != tt.curve {
			t.Errorf("ParseAlgorithm(%q) = %+v (%s)", tt.in, a, a.JOSE())
		}
	}
	for _, bad := range []string{"", "SHA1withRSA", "MD5withRSA", "RS1", "ES255", "SHA256withDSA", "HS256", "SHA256withRSAandMGF2"} {
		if _, err := ParseAlgorithm(bad); !errors.Is(err, ErrAlgorithm) {
			t.Errorf("ParseAlgorithm(%q) error = %v, want ErrAlgorithm", bad, err)
		}
	}
}

func TestParseKeySpec(t *testing.T) {
	for in, want := range map[string]KeySpec{"RSA2048": RSA2048, "rsa-3072": RSA3072, "RSA_4096": RSA4096, "EC-P256": ECP256, "p384": ECP384} {
		if got, err := ParseKeySpec(in); err != nil || got != want {
			t.Errorf("ParseKeySpec(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "RSA1024", "ed25519", "EC-P521"} {
		if _, err := ParseKeySpec(bad); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("ParseKeySpec(%q) error = %v", bad, err)
		}
	}
}

// TestSignVerifiedByOpenSSL signs through hsm with every scheme and hash and
// has openssl verify each signature with the public key exported as PEM.
func TestSignVerifiedByOpenSSL(t *testing.T) {
	e := newEnv(t, nil)
	rsaKey := e.genKey(t, RSA2048, "rsa")
	ecKey := e.genKey(t, ECP256, "ec256")
	ec384 := e.genKey(t, ECP384, "ec384")
	dir := t.TempDir()
	tests := []struct {
		alg  string
		key  Key
		opts []string // openssl pkeyutl -pkeyopt values
	}{
		{"SHA256withRSA", rsaKey, []string{"digest:sha256"}},
		{"SHA384withRSA", rsaKey, []string{"digest:sha384"}},
		{"SHA512withRSA", rsaKey, []string{"digest:sha512"}},
		{"SHA256withRSAandMGF1", rsaKey, []string{"digest:sha256", "rsa_padding_mode:pss", "rsa_pss_saltlen:digest", "rsa_mgf1_md:sha256"}},
		{"SHA384withRSAandMGF1", rsaKey, []string{"digest:sha384", "rsa_padding_mode:pss", "rsa_pss_saltlen:digest", "rsa_mgf1_md:sha384"}},
		{"SHA512withRSAandMGF1", rsaKey, []string{"digest:sha512", "rsa_padding_mode:pss", "rsa_pss_saltlen:digest", "rsa_mgf1_md:sha512"}},
		{"SHA256withECDSA", ecKey, []string{"digest:sha256"}},
		{"SHA384withECDSA", ec384, []string{"digest:sha384"}},
		{"SHA512withECDSA", ecKey, []string{"digest:sha512"}},
	}
	for _, tt := range tests {
		t.Run(tt.alg, func(t *testing.T) {
			alg := mustAlg(t, tt.alg)
			msg := []byte("message for " + tt.alg)
			h := alg.Hash.New()
			h.Write(msg)
			digest := h.Sum(nil)
			sig, err := e.tok.Sign(testContext(t), tt.key.ID, alg, digest)
			if err != nil {
				t.Fatalf("Sign: %v", err)
			}
			pubPEM := writePublicPEM(t, dir, tt.key)
			sigFile := filepath.Join(dir, tt.alg+".sig")
			digFile := filepath.Join(dir, tt.alg+".dgst")
			msgFile := filepath.Join(dir, tt.alg+".msg")
			for f, b := range map[string][]byte{sigFile: sig, digFile: digest, msgFile: msg} {
				if err := os.WriteFile(f, b, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			args := []string{"pkeyutl", "-verify", "-pubin", "-inkey", pubPEM, "-in", digFile, "-sigfile", sigFile}
			for _, o := range tt.opts {
				args = append(args, "-pkeyopt", o)
			}
			if out, err := exec.Command("openssl", args...).CombinedOutput(); err != nil {
				t.Fatalf("openssl %v: %v\n%s", args, err, out)
			}
			// And over the message, as a relying party would check it.
			dgst := []string{"dgst", "-" + map[crypto.Hash]string{crypto.SHA256: "sha256", crypto.SHA384: "sha384", crypto.SHA512: "sha512"}[alg.Hash],
				"-verify", pubPEM, "-signature", sigFile}
			if alg.Scheme == sigalg.SchemePSS {
				dgst = append(dgst, "-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:digest")
			}
			dgst = append(dgst, msgFile)
			if out, err := exec.Command("openssl", dgst...).CombinedOutput(); err != nil {
				t.Fatalf("openssl %v: %v\n%s", dgst, err, out)
			}
			// A flipped bit must not verify: the check is real.
			sig[len(sig)/2] ^= 1
			if err := os.WriteFile(sigFile, sig, 0o600); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command("openssl", args...).CombinedOutput(); err == nil {
				t.Fatalf("openssl accepted a corrupted signature:\n%s", out)
			}
		})
	}
}

func writePublicPEM(t testing.TB, dir string, k Key) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(k.Public)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, k.Label+".pub.pem")
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestSignBadInput(t *testing.T) {
	e := newEnv(t, nil)
	rsaKey := e.genKey(t, RSA2048, "rsa")
	ecKey := e.genKey(t, ECP256, "ec")
	tests := []struct {
		name    string
		id      []byte
		alg     string
		digest  []byte
		wantErr error
	}{
		{"digest too short", ecKey.ID, "ES256", make([]byte, 31), ErrDigestLength},
		{"digest too long", rsaKey.ID, "RS256", make([]byte, 33), ErrDigestLength},
		{"SHA-384 digest for SHA-256", rsaKey.ID, "PS256", make([]byte, 48), ErrDigestLength},
		{"empty digest", ecKey.ID, "ES256", nil, ErrDigestLength},
		{"ECDSA with an RSA key", rsaKey.ID, "ES256", make([]byte, 32), ErrAlgorithm},
		{"RSA with an EC key", ecKey.ID, "RS256", make([]byte, 32), ErrAlgorithm},
		{"PSS with an EC key", ecKey.ID, "PS256", make([]byte, 32), ErrAlgorithm},
		{"unknown key", []byte("no-such-key-id!!"), "ES256", make([]byte, 32), ErrKeyNotFound},
		{"empty key id", nil, "ES256", make([]byte, 32), ErrKeyNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sig, err := e.tok.Sign(testContext(t), tt.id, mustAlg(t, tt.alg), tt.digest)
			if !errors.Is(err, tt.wantErr) || sig != nil {
				t.Fatalf("Sign = %x, %v; want %v", sig, err, tt.wantErr)
			}
		})
	}
	if _, err := e.tok.Sign(testContext(t), ecKey.ID, sigalg.Algorithm{}, make([]byte, 32)); !errors.Is(err, ErrAlgorithm) {
		t.Fatalf("zero Algorithm: %v", err)
	}
	e.assertNoLeakedSessions(t)
}

// TestSignWithEndedContextStartsNothing checks that a caller who has
// given up gets no signature and costs the token no operation, even with
// an idle session at hand.
func TestSignWithEndedContextStartsNothing(t *testing.T) {
	e := newEnv(t, nil)
	k := e.genKey(t, ECP256, "ec")
	alg := mustAlg(t, "ES256")
	if _, err := e.tok.Sign(testContext(t), k.ID, alg, digestOf("warm")); err != nil {
		t.Fatal(err) // leaves an idle session in the pool
	}
	cancelled, cancel := context.WithCancel(testContext(t))
	cancel()
	expired, cancel2 := context.WithDeadline(testContext(t), time.Now().Add(-time.Second))
	defer cancel2()
	tests := []struct {
		name string
		ctx  context.Context
		want error
	}{
		{"cancelled", cancelled, context.Canceled},
		{"deadline passed", expired, context.DeadlineExceeded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inits := e.fault.count("SignInit")
			sig, err := e.tok.Sign(tt.ctx, k.ID, alg, digestOf("x"))
			if !errors.Is(err, tt.want) || sig != nil {
				t.Fatalf("Sign = %x, %v; want %v", sig, err, tt.want)
			}
			if n := e.fault.count("SignInit") - inits; n != 0 {
				t.Fatalf("%d C_SignInit calls for a caller who had given up", n)
			}
		})
	}
	e.assertNoLeakedSessions(t)
}

func TestSignBeforeLogin(t *testing.T) {
	e := newEnv(t, nil)
	k := e.genKey(t, ECP256, "ec")
	ctx := testContext(t)
	if err := e.tok.Logout(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := e.tok.Sign(ctx, k.ID, mustAlg(t, "ES256"), digestOf("x")); !errors.Is(err, ErrNotLoggedIn) {
		t.Fatalf("Sign before login: %v; want ErrNotLoggedIn", err)
	}
	if _, err := e.tok.ListKeys(ctx); !errors.Is(err, ErrNotLoggedIn) {
		t.Fatalf("ListKeys before login: %v; want ErrNotLoggedIn", err)
	}
	e.assertNoLeakedSessions(t)
}

func TestSignerCreatesVerifiableCSR(t *testing.T) {
	e := newEnv(t, nil)
	for _, spec := range []KeySpec{RSA2048, ECP256} {
		t.Run(string(spec), func(t *testing.T) {
			k := e.genKey(t, spec, "csr-"+string(spec))
			s, err := e.tok.Signer(testContext(t), k.ID)
			if err != nil {
				t.Fatal(err)
			}
			der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "csr test"}}, s)
			if err != nil {
				t.Fatalf("CreateCertificateRequest through the HSM: %v", err)
			}
			csr, err := x509.ParseCertificateRequest(der)
			if err != nil {
				t.Fatal(err)
			}
			if err := csr.CheckSignature(); err != nil {
				t.Fatalf("CSR signature: %v", err)
			}
			dir := t.TempDir()
			p := filepath.Join(dir, "req.pem")
			if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), 0o600); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command("openssl", "req", "-verify", "-noout", "-in", p).CombinedOutput(); err != nil {
				t.Fatalf("openssl req -verify: %v\n%s", err, out)
			}
		})
	}
}

func TestSignerOptions(t *testing.T) {
	e := newEnv(t, nil)
	k := e.genKey(t, RSA2048, "rsa")
	s, err := e.tok.Signer(testContext(t), k.ID)
	if err != nil {
		t.Fatal(err)
	}
	d := sha512.Sum384([]byte("pss"))
	for _, salt := range []int{rsa.PSSSaltLengthEqualsHash, rsa.PSSSaltLengthAuto, 48} {
		sig, err := s.Sign(nil, d[:], &rsa.PSSOptions{SaltLength: salt, Hash: crypto.SHA384})
		if err != nil {
			t.Fatalf("PSS salt %d: %v", salt, err)
		}
		if err := rsa.VerifyPSS(k.Public.(*rsa.PublicKey), crypto.SHA384, d[:], sig, &rsa.PSSOptions{SaltLength: 48}); err != nil {
			t.Fatalf("PSS salt %d: %v", salt, err)
		}
	}
	if _, err := s.Sign(nil, d[:], &rsa.PSSOptions{SaltLength: 20, Hash: crypto.SHA384}); !errors.Is(err, ErrAlgorithm) {
		t.Fatalf("PSS with salt 20: %v; want ErrAlgorithm", err)
	}
	if _, err := s.Sign(nil, d[:20], crypto.SHA1); !errors.Is(err, ErrAlgorithm) {
		t.Fatalf("SHA-1: %v; want ErrAlgorithm", err)
	}
}

func TestConcurrentSigning(t *testing.T) {
	e := newEnv(t, nil, WithPoolSize(3))
	keys := []Key{e.genKey(t, RSA2048, "rsa"), e.genKey(t, ECP256, "ec")}
	var wg sync.WaitGroup
	errs := make(chan error, 16*40)
	for g := range 16 {
		wg.Go(func() {
			for i := range 40 {
				k := keys[(g+i)%2]
				alg, _ := ParseAlgorithm(map[KeyType]string{KeyRSA: "PS256", KeyEC: "ES256"}[k.Type])
				d := digestOf(string(rune(g*1000 + i)))
				sig, err := e.tok.Sign(context.Background(), k.ID, alg, d)
				switch {
				case err != nil:
					errs <- err
				case k.Type == KeyEC && !ecdsa.VerifyASN1(k.Public.(*ecdsa.PublicKey), d, sig):
					errs <- errors.New("ECDSA signature does not verify")
				case k.Type == KeyRSA && rsa.VerifyPSS(k.Public.(*rsa.PublicKey), crypto.SHA256, d, sig, nil) != nil:
					errs <- errors.New("PSS signature does not verify")
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if st := e.tok.Stats(); st.Open > 3 {
		t.Fatalf("pool opened %d sessions, size 3", st.Open)
	}
	e.assertNoLeakedSessions(t)
}

func TestSessionWaitHonoursContext(t *testing.T) {
	e := newEnv(t, nil, WithPoolSize(1), WithMaxWait(time.Minute))
	k := e.genKey(t, ECP256, "ec")
	// Hold the only session.
	gen, unlock, err := e.mod.rlock()
	if err != nil {
		t.Fatal(err)
	}
	held, err := e.tok.acquire(context.Background(), gen, true)
	unlock()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	_, err = e.tok.Sign(ctx, k.ID, mustAlg(t, "ES256"), digestOf("x"))
	if !errors.Is(err, ErrSessionWait) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Sign with every session busy: %v; want ErrSessionWait and DeadlineExceeded", err)
	}
	if e.tok.Stats().Waits != 1 {
		t.Fatalf("waits = %d, want 1", e.tok.Stats().Waits)
	}
	e.tok.pool.release(held)
	signOK(t, e.tok, k, "after")
	e.assertNoLeakedSessions(t)
}

func TestSessionWaitBoundedWithoutDeadline(t *testing.T) {
	e := newEnv(t, nil, WithPoolSize(1), WithMaxWait(20*time.Millisecond))
	k := e.genKey(t, ECP256, "ec")
	gen, unlock, err := e.mod.rlock()
	if err != nil {
		t.Fatal(err)
	}
	held, err := e.tok.acquire(context.Background(), gen, true)
	unlock()
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.tok.Sign(context.Background(), k.ID, mustAlg(t, "ES256"), digestOf("x"))
	if !errors.Is(err, ErrSessionWait) {
		t.Fatalf("Sign with every session busy and no deadline: %v; want ErrSessionWait", err)
	}
	e.tok.pool.release(held)
	e.assertNoLeakedSessions(t)
}
