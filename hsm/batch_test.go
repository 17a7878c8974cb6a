package hsm

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
	"testing"

	"github.com/miekg/pkcs11"
)

func batchDigests(n int) [][]byte {
	ds := make([][]byte, n)
	for i := range ds {
		ds[i] = digestOf(fmt.Sprint("batch ", i))
	}
	return ds
}

func TestSignMany(t *testing.T) {
	e := newEnv(t, nil)
	ec := e.genKey(t, ECP256, "ec")
	rk := e.genKey(t, RSA2048, "rsa")
	ds := batchDigests(20)
	sigs, err := e.tok.SignMany(testContext(t), ec.ID, mustAlg(t, "ES256"), ds)
	if err != nil {
		t.Fatal(err)
	}
	for i, sig := range sigs {
		if !ecdsa.VerifyASN1(ec.Public.(*ecdsa.PublicKey), ds[i], sig) {
			t.Fatalf("signature %d does not verify", i)
		}
	}
	sigs, err = e.tok.SignMany(testContext(t), rk.ID, mustAlg(t, "PS256"), ds)
	if err != nil {
		t.Fatal(err)
	}
	for i, sig := range sigs {
		if err := rsa.VerifyPSS(rk.Public.(*rsa.PublicKey), crypto.SHA256, ds[i], sig, nil); err != nil {
			t.Fatalf("signature %d: %v", i, err)
		}
	}
	e.assertNoLeakedSessions(t)
}

func TestSignManyBadDigestSignsNothing(t *testing.T) {
	e := newEnv(t, nil)
	k := e.genKey(t, ECP256, "ec")
	ds := batchDigests(5)
	ds[3] = ds[3][:31]
	before := e.fault.count("Sign")
	if _, err := e.tok.SignMany(testContext(t), k.ID, mustAlg(t, "ES256"), ds); !errors.Is(err, ErrDigestLength) {
		t.Fatalf("SignMany with a short digest: %v; want ErrDigestLength", err)
	}
	if e.fault.count("Sign") != before {
		t.Fatal("a batch with a bad digest reached C_Sign")
	}
	if _, err := e.tok.SignMany(testContext(t), k.ID, mustAlg(t, "RS256"), batchDigests(2)); !errors.Is(err, ErrAlgorithm) {
		t.Fatalf("RSA algorithm with an EC key: %v", err)
	}
}

func TestSignManyResumesAfterSessionFailure(t *testing.T) {
	e := newEnv(t, nil)
	k := e.genKey(t, ECP256, "ec")
	ds := batchDigests(30)
	e.fault.mu.Lock()
	e.fault.onCall = func(name string) {
		if name == "Sign" && e.fault.count("Sign") == 10 {
			e.fault.failNext("SignInit", pkcs11.CKR_SESSION_HANDLE_INVALID, 1)
		}
	}
	e.fault.mu.Unlock()
	before := e.fault.count("Sign")
	sigs, err := e.tok.SignMany(testContext(t), k.ID, mustAlg(t, "ES256"), ds)
	if err != nil {
		t.Fatalf("SignMany with a session failing mid-batch: %v", err)
	}
	for i, sig := range sigs {
		if !ecdsa.VerifyASN1(k.Public.(*ecdsa.PublicKey), ds[i], sig) {
			t.Fatalf("signature %d does not verify", i)
		}
	}
	if got := e.fault.count("Sign") - before; got != len(ds) {
		t.Fatalf("%d C_Sign calls for %d digests: the batch did not resume where it stopped", got, len(ds))
	}
	e.assertNoLeakedSessions(t)
}

func TestECDSADER(t *testing.T) {
	tests := []struct {
		name string
		rs   []byte
	}{
		{"plain", append(bytes.Repeat([]byte{0x11}, 32), bytes.Repeat([]byte{0x22}, 32)...)},
		{"high bits set", append(bytes.Repeat([]byte{0xff}, 32), bytes.Repeat([]byte{0x80}, 32)...)},
		{"leading zeros", append(append([]byte{0, 0, 0x01}, make([]byte, 29)...), append([]byte{0, 0x80}, bytes.Repeat([]byte{1}, 30)...)...)},
		{"P-521 size", append(append([]byte{0x01}, bytes.Repeat([]byte{0xee}, 65)...), append([]byte{0x00, 0xff}, bytes.Repeat([]byte{0x7f}, 64)...)...)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			der, err := ecdsaDER(tt.rs)
			if err != nil {
				t.Fatal(err)
			}
			var sig struct{ R, S *big.Int }
			rest, err := asn1.Unmarshal(der, &sig)
			if err != nil || len(rest) != 0 {
				t.Fatalf("not DER: %v", err)
			}
			half := len(tt.rs) / 2
			if sig.R.Cmp(new(big.Int).SetBytes(tt.rs[:half])) != 0 || sig.S.Cmp(new(big.Int).SetBytes(tt.rs[half:])) != 0 {
				t.Fatalf("r, s = %x, %x", sig.R, sig.S)
			}
			// Exactly what encoding/asn1 makes of the same integers.
			want, _ := asn1.Marshal(sig)
			if !bytes.Equal(der, want) {
				t.Fatalf("DER %x, want %x", der, want)
			}
		})
	}
	for _, bad := range [][]byte{nil, {1, 2, 3}, make([]byte, 64), make([]byte, 200)} {
		if _, err := ecdsaDER(bad); err == nil {
			t.Errorf("ecdsaDER(%x) accepted", bad)
		}
	}
}
