package signer

import (
	"path/filepath"
	"testing"

	"github.com/hsmsigner/hsmsigner/hsm"
	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
)

// TestReconcileAuditsTokenAndStateDifferences: a key pair made on the token
// without a record (an operation cut short between the HSM and the state)
// and a record whose key pair is gone are each audited once at startup,
// and not again at the next login of the same process.
func TestReconcileAuditsTokenAndStateDifferences(t *testing.T) {
	d := newDaemon(t)
	ctx := testCtx(t)
	tok := d.svc.tokens[0].tok
	orphan, err := tok.GenerateKey(ctx, hsm.ECP256, "orphan")
	if err != nil {
		t.Fatal(err)
	}
	gone := d.genKey(t, "gone", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	goneID, err := parseKeyID(gone.GetId())
	if err != nil {
		t.Fatal(err)
	}
	if err := tok.DeleteKey(ctx, goneID); err != nil {
		t.Fatal(err)
	}
	kept := d.genKey(t, "kept", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)

	d.restart()
	if _, err := d.client.LogoutToken(ctx, &signerv1.LogoutTokenRequest{Token: "t1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.client.LoginToken(ctx, &signerv1.LoginTokenRequest{Token: "t1", Pin: d.soft.UserPIN}); err != nil {
		t.Fatal(err)
	}

	counts := map[string]map[string]int{OpUnrecordedKey: {}, OpMissingKey: {}}
	for _, r := range readAudit(t, filepath.Join(d.dir, "audit.jsonl")) {
		if m, ok := counts[r.Op]; ok {
			m[r.Key]++
			if r.Token != "t1" || r.Result != "ok" {
				t.Errorf("%s line: token %q result %q", r.Op, r.Token, r.Result)
			}
		}
	}
	if got := counts[OpUnrecordedKey]; len(got) != 1 || got[orphan.IDHex()] != 1 {
		t.Errorf("%s lines by key = %v, want one for %s", OpUnrecordedKey, got, orphan.IDHex())
	}
	if got := counts[OpMissingKey]; len(got) != 1 || got[gone.GetId()] != 1 {
		t.Errorf("%s lines by key = %v, want one for %s", OpMissingKey, got, gone.GetId())
	}
	for op, m := range counts {
		if m[kept.GetId()] != 0 {
			t.Errorf("%s names the key that is both recorded and on the token", op)
		}
	}
}
