package signer

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hsmsigner/hsmsigner/hsm/sigalg"
	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
)

// FuzzParseCertInput feeds the certificate import's parser (what
// `signerctl cert import` and ImportCert carry from outside) any bytes:
// it never panics; what it accepts is one or more certificates found in
// the input; an input with a PEM private key is refused as such; and no
// error repeats more than a few bytes of the input.
func FuzzParseCertInput(f *testing.F) {
	der := selfSignedDER(f)
	pemCert := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyDER, _ := x509.MarshalPKCS8PrivateKey(mustECKey(f))
	f.Add(der)
	f.Add(pemCert)
	f.Add(append(append([]byte{}, pemCert...), pemCert...))
	f.Add(append(append([]byte{}, pemCert...), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})...))
	f.Add(keyDER)
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
	f.Add([]byte("-----BEGIN X-----\n-----END X-----\n"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		certs, err := parseCertInput(data)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			if bytes.Contains(data, []byte("PRIVATE KEY-----")) && !errors.Is(err, errPrivateKey) {
				t.Fatalf("input with a PEM private key refused for another reason: %v", err)
			}
			// The only input an error may repeat is a PEM block's type
			// (quoted, at most a line): never a body.
			if len(err.Error()) > 1024 {
				t.Fatalf("error of %d bytes: it repeats the input", len(err.Error()))
			}
			return
		}
		if len(certs) == 0 {
			t.Fatal("accepted with no certificate")
		}
		for _, c := range certs {
			if !bytes.Contains(data, c.Raw) && !bytes.Contains(pemBodies(data), c.Raw) {
				t.Fatal("a certificate accepted that is not in the input")
			}
		}
	})
}

// pemBodies returns the decoded bodies of the PEM blocks in data, joined.
func pemBodies(data []byte) []byte {
	var out []byte
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return out
		}
		out = append(out, b.Bytes...)
	}
}

// FuzzSignRequest sends the daemon's Sign any key id, certificate hash,
// algorithm and digest through the real gRPC socket and SoftHSM token:
// a refusal is InvalidArgument, NotFound, PermissionDenied or
// FailedPrecondition with a message, never Internal, Unknown or
// Unavailable (a crash); an answer is a signature by the key asked for,
// with the algorithm asked for, over a digest of that algorithm's length,
// that verifies.
func FuzzSignRequest(f *testing.F) {
	d := newDaemon(f)
	ec := d.genKey(f, "fuzz-ec", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	pubs := map[string]any{}
	for _, k := range []*signerv1.Key{ec} {
		pub, err := x509.ParsePKIXPublicKey(k.GetPublicKey())
		if err != nil {
			f.Fatal(err)
		}
		pubs[k.GetId()] = pub
	}
	f.Add(ec.GetId(), "", "ES256", make([]byte, 32))
	f.Add(ec.GetId(), "", "SHA384withECDSA", make([]byte, 48))
	f.Add(ec.GetId(), "", "SHA256withRSA", make([]byte, 32))
	f.Add(ec.GetId(), "", "ES256", make([]byte, 31))
	f.Add(strings.ToUpper(ec.GetId()), "", "ES256", make([]byte, 32))
	f.Add("zz", "", "ES256", make([]byte, 32))
	f.Add("", strings.Repeat("ab", 32), "ES256", make([]byte, 32))
	f.Add(strings.Repeat("0", 600), "", "ES256", make([]byte, 32))
	f.Add(ec.GetId(), "", strings.Repeat("A", 300), make([]byte, 32))
	f.Fuzz(func(t *testing.T, keyID, certHash, alg string, digest []byte) {
		if !utf8.ValidString(keyID) || !utf8.ValidString(certHash) || !utf8.ValidString(alg) {
			return // protobuf strings are UTF-8: no client can send these (gRPC refuses them before signerd)
		}
		req := &signerv1.SignRequest{Algorithm: alg, Digest: digest}
		if certHash != "" {
			req.Key = &signerv1.SignRequest_CertHash{CertHash: certHash}
		} else {
			req.Key = &signerv1.SignRequest_KeyId{KeyId: keyID}
		}
		resp, err := d.client.Sign(testCtx(t), req)
		if err != nil {
			st := status.Convert(err)
			switch st.Code() {
			case codes.InvalidArgument, codes.NotFound, codes.PermissionDenied, codes.FailedPrecondition:
			default:
				t.Fatalf("Sign(%q, %q, %q, %d bytes): %v", keyID, certHash, alg, len(digest), err)
			}
			if st.Message() == "" {
				t.Fatal("a refusal without a message")
			}
			return
		}
		pub, ok := pubs[resp.GetKeyId()]
		if !ok {
			t.Fatalf("signed with key %q, not one of the token's", resp.GetKeyId())
		}
		if certHash == "" {
			want, _ := hex.DecodeString(keyID)
			if got, _ := hex.DecodeString(resp.GetKeyId()); !bytes.Equal(got, want) {
				t.Fatalf("asked key %q, signed with %q", keyID, resp.GetKeyId())
			}
		}
		a, err := sigalg.Parse(alg)
		if err != nil {
			t.Fatalf("signed with algorithm %q that does not parse: %v", alg, err)
		}
		if a.Name != resp.GetAlgorithm() || len(digest) != a.Hash.Size() {
			t.Fatalf("asked %q over %d bytes, answered %q", alg, len(digest), resp.GetAlgorithm())
		}
		if err := sigalg.Verify(pub, a, digest, resp.GetSignature()); err != nil {
			t.Fatalf("the signature does not verify: %v", err)
		}
	})
}

func selfSignedDER(tb testing.TB) []byte {
	k := mustECKey(tb)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "fuzz seed"},
		NotBefore:    time.Unix(1700000000, 0),
		NotAfter:     time.Unix(1900000000, 0),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		tb.Fatal(err)
	}
	return der
}

func mustECKey(tb testing.TB) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return k
}
