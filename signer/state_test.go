package signer

import (
	"bufio"
	"encoding/json"
	"os"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/hsmsigner/hsmsigner/hsm"
	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/audit"
)

func TestRestartKeepsEverything(t *testing.T) {
	d := newDaemon(t)
	a := d.genKey(t, "alpha", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	d.genKey(t, "beta", "RSA2048", signerv1.KeyUsage_KEY_USAGE_AUTH)
	if _, err := d.client.RenameKey(testCtx(t), &signerv1.RenameKeyRequest{KeyId: a.GetId(), Name: "Alpha signing key"}); err != nil {
		t.Fatal(err)
	}
	before, err := d.client.ListKeys(testCtx(t), &signerv1.ListKeysRequest{})
	if err != nil {
		t.Fatal(err)
	}
	seq, _ := d.svc.audit.Head()

	d.restart()

	after, err := d.client.ListKeys(testCtx(t), &signerv1.ListKeysRequest{})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]*signerv1.Key{}
	for _, k := range before.GetKeys() {
		want[k.GetId()] = k
	}
	if len(after.GetKeys()) != 2 {
		t.Fatalf("%d keys after restart, want 2", len(after.GetKeys()))
	}
	for _, k := range after.GetKeys() {
		w := want[k.GetId()]
		if w == nil || k.GetName() != w.GetName() || k.GetUsage() != w.GetUsage() || !k.GetKnown() || k.GetLabel() != w.GetLabel() {
			t.Fatalf("after restart %v, before %v", k, w)
		}
	}
	if got := want[a.GetId()].GetName(); got != "Alpha signing key" {
		t.Fatalf("name %q", got)
	}
	// The key signs after the restart, and the audit chain goes on.
	if _, err := d.client.Sign(testCtx(t), &signerv1.SignRequest{Key: &signerv1.SignRequest_KeyId{KeyId: a.GetId()}, Algorithm: "ES256", Digest: sha("after restart")}); err != nil {
		t.Fatal(err)
	}
	d.stop()
	sum, err := audit.VerifyFile(d.cfg.Server.AuditFile)
	if err != nil {
		t.Fatalf("audit chain across the restart: %v", err)
	}
	if sum.LastSeq != seq+1 {
		t.Fatalf("last seq %d, want %d", sum.LastSeq, seq+1)
	}
}

func TestKeysUnknownToStateAreListed(t *testing.T) {
	d := newDaemon(t)
	known := d.genKey(t, "known", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	// A key made on the token by other software.
	stray, err := d.svc.tokens[0].tok.GenerateKey(testCtx(t), hsm.ECP256, "made-elsewhere")
	if err != nil {
		t.Fatal(err)
	}
	keys, err := d.client.ListKeys(testCtx(t), &signerv1.ListKeysRequest{})
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]bool{}
	for _, k := range keys.GetKeys() {
		found[k.GetId()] = k.GetKnown()
	}
	if len(found) != 2 || !found[known.GetId()] || found[stray.IDHex()] {
		t.Fatalf("listed %v; want the known key as known and the stray one as unknown", found)
	}
	// An unknown key has no usage, so nobody may sign with it...
	_, err = d.client.Sign(testCtx(t), &signerv1.SignRequest{Key: &signerv1.SignRequest_KeyId{KeyId: stray.IDHex()}, Algorithm: "ES256", Digest: sha("x")})
	wantCode(t, err, codes.PermissionDenied, "no recorded usage")
	// ...until an officer records it.
	k, err := d.client.RenameKey(testCtx(t), &signerv1.RenameKeyRequest{KeyId: stray.IDHex(), Name: "adopted", Usage: signerv1.KeyUsage_KEY_USAGE_SIGN})
	if err != nil || !k.GetKnown() {
		t.Fatalf("adopting: %v, %v", k, err)
	}
	if _, err := d.client.Sign(testCtx(t), &signerv1.SignRequest{Key: &signerv1.SignRequest_KeyId{KeyId: stray.IDHex()}, Algorithm: "ES256", Digest: sha("x")}); err != nil {
		t.Fatal(err)
	}
	_, err = d.client.RenameKey(testCtx(t), &signerv1.RenameKeyRequest{KeyId: stray.IDHex(), Usage: signerv1.KeyUsage_KEY_USAGE_AUTH})
	wantCode(t, err, codes.FailedPrecondition, "does not change")
}

func TestAuditLinesForSignAndAdmin(t *testing.T) {
	d := newDaemon(t)
	k := d.genKey(t, "k", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	digest := sha("audited")
	if _, err := d.client.Sign(testCtx(t), &signerv1.SignRequest{Key: &signerv1.SignRequest_KeyId{KeyId: k.GetId()}, Algorithm: "ES256", Digest: digest}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.client.SignBatch(testCtx(t), &signerv1.SignBatchRequest{Key: &signerv1.SignBatchRequest_KeyId{KeyId: k.GetId()}, Algorithm: "ES256", Digests: [][]byte{digest, digest}}); err != nil {
		t.Fatal(err)
	}
	d.stop()
	f, err := os.Open(d.cfg.Server.AuditFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var ops []audit.Record
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r audit.Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatal(err)
		}
		ops = append(ops, r)
	}
	// The key's generation is two lines, its intent and its outcome.
	if len(ops) != 4 || ops[0].Op != "key.generate" || ops[0].Result != ResultIntent || ops[1].Op != "key.generate" ||
		ops[2].Op != "sign" || ops[3].Op != "sign_batch" {
		t.Fatalf("audit ops %+v", ops)
	}
	ops = ops[1:]
	if ops[1].Key != k.GetId() || ops[1].Digest != hexOf(digest) || ops[1].UID != int64(os.Getuid()) || ops[1].PID != int64(os.Getpid()) || ops[1].Result != "ok" {
		t.Fatalf("sign line %+v", ops[1])
	}
	if ops[2].Count != 2 || len(ops[2].Digest) != 64 {
		t.Fatalf("batch line %+v", ops[2])
	}
}
