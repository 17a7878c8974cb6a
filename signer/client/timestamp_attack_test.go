package client_test

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/hsmsigner/hsmsigner/signer/client"
	"github.com/hsmsigner/hsmsigner/tsa"
)

// TestAttackVerifyTimestampHostileInput feeds VerifyTimestamp and
// TokenOf what `signerctl tsa verify` reads from untrusted files: proofs
// with huge or negative indexes and sizes, long or malformed paths, and
// tokens that are garbage, oversized or deeply nested. Each is a clear
// ErrTimestamp, at once, never a panic.
func TestAttackVerifyTimestampHostileInput(t *testing.T) {
	digest := sha256.Sum256([]byte("x"))
	trust := tsa.Trust{Roots: x509.NewCertPool()}
	nested := []byte{0x30, 0}
	for range 30000 {
		nested, _ = asn1.Marshal(asn1.RawValue{Tag: asn1.TagSequence, IsCompound: true, Bytes: nested})
	}
	indefinite := append(bytes.Repeat([]byte{0x30, 0x80}, 200000), bytes.Repeat([]byte{0, 0}, 200000)...)
	hash32 := make([]byte, 32)
	for _, c := range []struct {
		name  string
		token []byte
		proof string // JSON, as in FILE.tsr.proof; "" for none
	}{
		{"huge index", []byte{0x30, 0}, `{"index": 9223372036854775807, "size": 9223372036854775807, "path": []}`},
		{"index past size", []byte{0x30, 0}, `{"index": 5, "size": 5, "path": []}`},
		{"negative index", []byte{0x30, 0}, `{"index": -1, "size": 4, "path": []}`},
		{"zero size", []byte{0x30, 0}, `{"index": 0, "size": 0, "path": []}`},
		{"short path element", []byte{0x30, 0}, `{"index": 0, "size": 2, "path": ["AAEC"]}`},
		{"path too long for the size", []byte{0x30, 0}, func() string {
			b, _ := json.Marshal(client.BatchProof{Index: 0, Size: 2, Path: [][]byte{hash32, hash32, hash32}})
			return string(b)
		}()},
		{"path of 100000 hashes", []byte{0x30, 0}, func() string {
			p := make([][]byte, 100000)
			for i := range p {
				p[i] = hash32
			}
			b, _ := json.Marshal(client.BatchProof{Index: 0, Size: 1 << 40, Path: p})
			return string(b)
		}()},
		{"garbage token", []byte("not DER at all"), ""},
		{"empty token", nil, ""},
		{"nested 30000 deep", nested, ""},
		{"indefinite 200000 deep", indefinite, ""},
		{"8 MiB", append([]byte{0x30, 0x84, 0x00, 0x7f, 0xff, 0xfa}, make([]byte, 8<<20-6)...), ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			var proof *client.BatchProof
			if c.proof != "" {
				proof = &client.BatchProof{}
				if err := json.Unmarshal([]byte(c.proof), proof); err != nil {
					t.Fatal(err)
				}
			}
			start := time.Now()
			tok, err := client.TokenOf(c.token)
			if err == nil {
				_, err = client.VerifyTimestamp(tok, crypto.SHA256, digest[:], proof, trust)
			}
			if !errors.Is(err, client.ErrTimestamp) {
				t.Fatalf("got %v, want ErrTimestamp", err)
			}
			if took := time.Since(start); took > 200*time.Millisecond {
				t.Fatalf("took %s to refuse", took)
			}
		})
	}
}
