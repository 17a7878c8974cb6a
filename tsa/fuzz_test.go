package tsa

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"testing"

	"github.com/digitorus/timestamp"
)

// FuzzIssue feeds the issuer arbitrary requests, seeded with requests
// `openssl ts -query` made (testdata/requests): every answer is a
// TimeStampResp, a token only with no refusal, and nothing panics.
func FuzzIssue(f *testing.F) {
	seeds, _ := filepath.Glob(filepath.Join("testdata", "requests", "*.tsq"))
	if len(seeds) == 0 {
		f.Fatal("no seed requests in testdata/requests")
	}
	for _, p := range seeds {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	ts := newCriticalEKUTSA(f, "ecdsa")
	is := ts.issuer(f, syncedClock)
	f.Fuzz(func(t *testing.T, req []byte) {
		resp, issued, err := is.Issue(context.Background(), req)
		st, _ := status(t, resp)
		var r *Refusal
		switch {
		case err == nil:
			if st != int(timestamp.Granted) || issued == nil {
				t.Fatalf("no refusal, yet status %d", st)
			}
			if _, perr := timestamp.ParseResponse(resp); perr != nil {
				t.Fatalf("a granted answer does not parse: %v", perr)
			}
		case errors.As(err, &r):
			if st != int(timestamp.Rejection) || issued != nil {
				t.Fatalf("refused (%v), yet status %d", err, st)
			}
		default:
			t.Fatalf("neither a token nor a refusal: %v", err)
		}
	})
}

// TestKernelClockReads checks that adjtimex is read without error and
// gives a bound on the clock's error (this machine's kernel may well call
// the clock unsynchronised: no NTP in the VM).
func TestKernelClockReads(t *testing.T) {
	st, err := KernelClock{}.ClockState()
	if err != nil {
		t.Fatal(err)
	}
	if st.MaxError < 0 {
		t.Fatalf("max error %s", st.MaxError)
	}
	t.Logf("kernel clock: synced=%v maxerror=%s", st.Synced, st.MaxError)
}

// upstreamFixture is a request and answers of a real openssl TSA
// (testdata/upstream/gen.sh) with its CA.
type upstreamFixture struct {
	trust   Trust
	digest  []byte
	nonce   *big.Int
	answers [][]byte
}

func loadUpstreamFixture(t testing.TB) upstreamFixture {
	t.Helper()
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join("testdata", "upstream", name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	block, _ := pem.Decode(read("ca.pem"))
	ca, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	req, err := timestamp.ParseRequest(read("req.tsq"))
	if err != nil {
		t.Fatal(err)
	}
	return upstreamFixture{trust: Trust{Roots: roots}, digest: req.HashedMessage, nonce: req.Nonce,
		answers: [][]byte{read("resp.tsr"), read("resp-nononce.tsr")}}
}

// TestOpenSSLAnswersVerify checks the fuzz seeds: the openssl TSA's
// answer verifies for its request, and not with another nonce.
func TestOpenSSLAnswersVerify(t *testing.T) {
	fx := loadUpstreamFixture(t)
	if _, err := VerifyResponse(fx.answers[0], crypto.SHA256, fx.digest, fx.nonce, fx.trust); err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyResponse(fx.answers[0], crypto.SHA256, fx.digest, big.NewInt(1), fx.trust); !errors.Is(err, ErrToken) {
		t.Fatalf("another nonce: %v", err)
	}
}

// FuzzVerifyResponse feeds the upstream verifier arbitrary answers,
// seeded with a real openssl TSA's: it never panics, every refusal wraps
// ErrToken, and an answer it accepts is for the digest asked.
func FuzzVerifyResponse(f *testing.F) {
	fx := loadUpstreamFixture(f)
	for _, a := range fx.answers {
		f.Add(a)
	}
	f.Fuzz(func(t *testing.T, resp []byte) {
		ts, err := VerifyResponse(resp, crypto.SHA256, fx.digest, nil, fx.trust)
		if err != nil {
			if !errors.Is(err, ErrToken) {
				t.Fatalf("a refusal not wrapping ErrToken: %v", err)
			}
			return
		}
		if !bytes.Equal(ts.HashedMessage, fx.digest) {
			t.Fatal("accepted a token for another imprint")
		}
	})
}
