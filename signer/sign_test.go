package signer

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/hsmsigner/hsmsigner/hsm/sigalg"
	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/audit"
	"github.com/hsmsigner/hsmsigner/signer/client"
)

func sha(s string) []byte {
	d := sha256.Sum256([]byte(s))
	return d[:]
}

func wantCode(t testing.TB, err error, code codes.Code, contains string) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("error %v: want code %s", err, code)
	}
	if contains != "" && !strings.Contains(status.Convert(err).Message(), contains) {
		t.Fatalf("error %q does not mention %q", status.Convert(err).Message(), contains)
	}
}

func TestSignVerifiedByOpenSSL(t *testing.T) {
	d := newDaemon(t)
	tests := []struct {
		keyAlg, alg string
		opts        []string
	}{
		{"EC-P256", "SHA256withECDSA", nil},
		{"RSA2048", "SHA256withRSA", nil},
		{"RSA2048", "PS256", []string{"-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:digest"}},
		{"EC-P384", "ES384", nil},
	}
	dir := t.TempDir()
	msg := filepath.Join(dir, "msg")
	if err := os.WriteFile(msg, []byte("a message from a security server"), 0o600); err != nil {
		t.Fatal(err)
	}
	for i, tt := range tests {
		t.Run(tt.alg, func(t *testing.T) {
			k := d.genKey(t, fmt.Sprintf("k%d", i), tt.keyAlg, signerv1.KeyUsage_KEY_USAGE_SIGN)
			alg, _ := sigalg.Parse(tt.alg)
			h := alg.Hash.New()
			h.Write([]byte("a message from a security server"))
			resp, err := d.client.Sign(testCtx(t), &signerv1.SignRequest{Key: &signerv1.SignRequest_KeyId{KeyId: k.GetId()}, Algorithm: tt.alg, Digest: h.Sum(nil)})
			if err != nil {
				t.Fatal(err)
			}
			if resp.GetAlgorithm() != alg.Name || resp.GetKeyId() != k.GetId() {
				t.Fatalf("response names %s/%s", resp.GetAlgorithm(), resp.GetKeyId())
			}
			pub := filepath.Join(dir, k.GetId()+".pem")
			sig := filepath.Join(dir, k.GetId()+".sig")
			_ = os.WriteFile(pub, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: k.GetPublicKey()}), 0o600)
			_ = os.WriteFile(sig, resp.GetSignature(), 0o600)
			args := append([]string{"dgst", "-" + strings.ToLower(strings.ReplaceAll(alg.Hash.String(), "-", "")), "-verify", pub, "-signature", sig}, tt.opts...)
			args = append(args, msg)
			if out, err := exec.Command("openssl", args...).CombinedOutput(); err != nil {
				t.Fatalf("openssl %v: %v\n%s", args, err, out)
			}
		})
	}
}

func TestSignBatch(t *testing.T) {
	d := newDaemon(t)
	for _, keyAlg := range []string{"EC-P256", "RSA2048"} {
		t.Run(keyAlg, func(t *testing.T) {
			k := d.genKey(t, "batch-"+keyAlg, keyAlg, signerv1.KeyUsage_KEY_USAGE_SIGN)
			pub, err := x509.ParsePKIXPublicKey(k.GetPublicKey())
			if err != nil {
				t.Fatal(err)
			}
			alg := map[string]string{"EC-P256": "SHA256withECDSA", "RSA2048": "SHA256withRSAandMGF1"}[keyAlg]
			a, _ := sigalg.Parse(alg)
			var digests [][]byte
			for i := range 37 {
				digests = append(digests, sha(fmt.Sprint("message ", i)))
			}
			ind, err := d.client.SignBatch(testCtx(t), &signerv1.SignBatchRequest{Key: &signerv1.SignBatchRequest_KeyId{KeyId: k.GetId()}, Algorithm: alg, Digests: digests})
			if err != nil {
				t.Fatal(err)
			}
			if len(ind.GetSignatures()) != len(digests) {
				t.Fatalf("%d signatures for %d digests", len(ind.GetSignatures()), len(digests))
			}
			for i, sig := range ind.GetSignatures() {
				if err := sigalg.Verify(pub, a, digests[i], sig); err != nil {
					t.Fatalf("signature %d: %v", i, err)
				}
			}
			mk, err := d.client.SignBatch(testCtx(t), &signerv1.SignBatchRequest{Key: &signerv1.SignBatchRequest_KeyId{KeyId: k.GetId()}, Algorithm: alg, Digests: digests, Mode: signerv1.BatchMode_BATCH_MODE_MERKLE})
			if err != nil {
				t.Fatal(err)
			}
			if len(mk.GetProofs()) != len(digests) || len(mk.GetSignatures()) != 0 || mk.GetTreeSize() != uint32(len(digests)) {
				t.Fatalf("merkle reply: %d proofs, %d signatures, size %d", len(mk.GetProofs()), len(mk.GetSignatures()), mk.GetTreeSize())
			}
			for i, p := range mk.GetProofs() {
				if err := client.VerifyBatchItem(pub, mk, digests[i], p); err != nil {
					t.Fatalf("item %d: %v", i, err)
				}
			}
			// Another digest, another item's proof, a forged root: refused.
			if err := client.VerifyBatchItem(pub, mk, sha("not in the batch"), mk.GetProofs()[3]); !errors.Is(err, client.ErrBatchProof) {
				t.Fatalf("a digest outside the batch verified: %v", err)
			}
			if err := client.VerifyBatchItem(pub, mk, digests[3], mk.GetProofs()[4]); !errors.Is(err, client.ErrBatchProof) {
				t.Fatalf("a proof for another item verified: %v", err)
			}
			forged := proto.Clone(mk).(*signerv1.SignBatchResponse)
			forged.Root = sha("forged root")
			if err := client.VerifyBatchItem(pub, forged, digests[0], mk.GetProofs()[0]); !errors.Is(err, client.ErrBatchProof) {
				t.Fatalf("a forged root verified: %v", err)
			}
		})
	}
}

func TestSignBadInput(t *testing.T) {
	d := newDaemon(t, func(p *daemonParams) { p.MaxBatch = 8; p.MaxMessage = 64 << 10 })
	ec := d.genKey(t, "ec", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	auth := d.genKey(t, "auth", "EC-P256", signerv1.KeyUsage_KEY_USAGE_AUTH)
	sign := func(id, alg string, digest []byte) error {
		_, err := d.client.Sign(testCtx(t), &signerv1.SignRequest{Key: &signerv1.SignRequest_KeyId{KeyId: id}, Algorithm: alg, Digest: digest})
		return err
	}
	batch := func(id string, n, size int) error {
		ds := make([][]byte, n)
		for i := range ds {
			ds[i] = make([]byte, size)
		}
		_, err := d.client.SignBatch(testCtx(t), &signerv1.SignBatchRequest{Key: &signerv1.SignBatchRequest_KeyId{KeyId: id}, Algorithm: "ES256", Digests: ds})
		return err
	}
	tests := []struct {
		name     string
		call     func() error
		code     codes.Code
		contains string
	}{
		{"unknown key", func() error { return sign("00112233445566778899aabbccddeeff", "ES256", sha("x")) }, codes.NotFound, "key not found"},
		{"malformed key id", func() error { return sign("not-hex", "ES256", sha("x")) }, codes.InvalidArgument, "not hex"},
		{"no key", func() error { return sign("", "ES256", sha("x")) }, codes.InvalidArgument, "key_id"},
		{"short digest", func() error { return sign(ec.GetId(), "ES256", sha("x")[:20]) }, codes.InvalidArgument, "32-byte digest"},
		{"SHA-384 length for SHA-256", func() error { return sign(ec.GetId(), "ES256", make([]byte, 48)) }, codes.InvalidArgument, "digest"},
		{"RSA algorithm on an EC key", func() error { return sign(ec.GetId(), "SHA256withRSA", sha("x")) }, codes.InvalidArgument, "RSA key"},
		{"unknown algorithm", func() error { return sign(ec.GetId(), "SHA1withRSA", sha("x")) }, codes.InvalidArgument, "unknown algorithm"},
		{"auth key where the policy allows sign only", func() error { return sign(auth.GetId(), "ES256", sha("x")) }, codes.PermissionDenied, "usage auth"},
		{"batch too long", func() error { return batch(ec.GetId(), 9, 32) }, codes.ResourceExhausted, "at most 8"},
		{"empty batch", func() error { return batch(ec.GetId(), 0, 32) }, codes.InvalidArgument, "empty batch"},
		{"bad digest in batch", func() error { return batch(ec.GetId(), 3, 31) }, codes.InvalidArgument, "digest 0"},
		{"oversized message", func() error { return sign(ec.GetId(), "ES256", make([]byte, 100<<10)) }, codes.ResourceExhausted, "larger than max"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { wantCode(t, tt.call(), tt.code, tt.contains) })
	}
	// Every refusal that reached the daemon was audited, the malformed key
	// id's too, and the chain holds (the oversized message is refused by
	// gRPC before the daemon sees it).
	sum, err := audit.VerifyFile(d.cfg.Server.AuditFile)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Lines < 2+len(tests)-1 {
		t.Fatalf("%d audit lines for %d calls", sum.Lines, len(tests)+2)
	}
}

func TestTokenNotLoggedIn(t *testing.T) {
	d := newDaemon(t, func(p *daemonParams) { p.PIN = "login" })
	_, err := d.client.GenerateKey(testCtx(t), &signerv1.GenerateKeyRequest{Token: "t1", Label: "k", Algorithm: "EC-P256", Usage: signerv1.KeyUsage_KEY_USAGE_SIGN})
	wantCode(t, err, codes.FailedPrecondition, "not logged in")
	keys, err := d.client.ListKeys(testCtx(t), &signerv1.ListKeysRequest{})
	if err != nil {
		t.Fatal(err)
	}
	// The skipped token is named as signerd.toml names it, with what to do.
	if why, ok := keys.GetSkippedTokens()["t1"]; !ok || !strings.Contains(why, "signerctl token login t1") {
		t.Fatalf("ListKeys did not report the token as skipped with what to do: %v", keys)
	}
	// Wrong PIN: the reply names the token as signerd.toml does and says
	// what the token reports of the tries left (flags, never a count).
	_, err = d.client.LoginToken(testCtx(t), &signerv1.LoginTokenRequest{Token: "t1", Pin: []byte("wrong-pin")})
	wantCode(t, err, codes.FailedPrecondition, "PIN incorrect")
	if msg := status.Convert(err).Message(); !strings.HasPrefix(msg, "token t1: ") || !strings.Contains(msg, "tries left are low") ||
		!strings.Contains(msg, "never how many are left") || strings.Contains(msg, "wrong-pin") {
		t.Fatalf("wrong-PIN reply %q: want the token's name, the tries status and never the PIN", msg)
	}
	tok, err := d.client.GetToken(testCtx(t), &signerv1.GetTokenRequest{Token: "t1"})
	if err != nil || !tok.GetPin().GetCountLow() || tok.GetLoggedIn() {
		t.Fatalf("token after a wrong PIN: %v, %v", tok, err)
	}
	tok, err = d.client.LoginToken(testCtx(t), &signerv1.LoginTokenRequest{Token: "t1", Pin: d.soft.UserPIN})
	if err != nil || !tok.GetLoggedIn() {
		t.Fatalf("login: %v, %v", tok, err)
	}
	k := d.genKey(t, "k", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	if _, err := d.client.LogoutToken(testCtx(t), &signerv1.LogoutTokenRequest{Token: "t1"}); err != nil {
		t.Fatal(err)
	}
	_, err = d.client.Sign(testCtx(t), &signerv1.SignRequest{Key: &signerv1.SignRequest_KeyId{KeyId: k.GetId()}, Algorithm: "ES256", Digest: sha("x")})
	wantCode(t, err, codes.FailedPrecondition, "not logged in")
	// The audit never holds the PIN.
	b, err := os.ReadFile(d.cfg.Server.AuditFile)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), "wrong-pin") || strings.Contains(string(b), string(d.soft.UserPIN)) {
		t.Fatal("a PIN reached the audit log")
	}
}

func TestConcurrentAdminsSameLabel(t *testing.T) {
	d := newDaemon(t)
	const n = 6
	var wg sync.WaitGroup
	codesSeen := make(chan codes.Code, n)
	ids := make(chan string, n)
	for range n {
		wg.Go(func() {
			k, err := d.client.GenerateKey(testCtx(t), &signerv1.GenerateKeyRequest{Token: "t1", Label: "same", Algorithm: "EC-P256", Usage: signerv1.KeyUsage_KEY_USAGE_SIGN})
			codesSeen <- status.Code(err)
			if err == nil {
				ids <- k.GetId()
			}
		})
	}
	wg.Wait()
	close(codesSeen)
	close(ids)
	count := map[codes.Code]int{}
	for c := range codesSeen {
		count[c]++
	}
	if count[codes.OK] != 1 || count[codes.AlreadyExists] != n-1 {
		t.Fatalf("results %v; want one OK and the rest ALREADY_EXISTS", count)
	}
	id := <-ids
	deleted := make(chan codes.Code, n)
	for range n {
		wg.Go(func() {
			_, err := d.client.DeleteKey(testCtx(t), &signerv1.DeleteKeyRequest{KeyId: id})
			deleted <- status.Code(err)
		})
	}
	wg.Wait()
	close(deleted)
	count = map[codes.Code]int{}
	for c := range deleted {
		count[c]++
	}
	if count[codes.OK] != 1 || count[codes.NotFound] != n-1 {
		t.Fatalf("concurrent deletes: %v; want one OK and the rest NOT_FOUND", count)
	}
	keys, err := d.client.ListKeys(testCtx(t), &signerv1.ListKeysRequest{})
	if err != nil || len(keys.GetKeys()) != 0 {
		t.Fatalf("keys left: %v, %v", keys.GetKeys(), err)
	}
}
