package signer

import (
	"context"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc/codes"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/audit"
)

// appendsThenFails passes the first n appends to the real log and fails
// every one after: a disk that fills up in the middle of a change.
type appendsThenFails struct {
	auditLog
	left atomic.Int32
}

func (a *appendsThenFails) Append(ctx context.Context, r audit.Record) error {
	if a.left.Add(-1) < 0 {
		return errDiskGone
	}
	return a.auditLog.Append(ctx, r)
}

// hasKeyLabelled reports whether the token holds a key pair with label.
func hasKeyLabelled(t *testing.T, d *testDaemon, label string) bool {
	t.Helper()
	keys, err := d.svc.tokens[0].tok.ListKeys(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if k.Label == label {
			return true
		}
	}
	return false
}

// TestAdminChangeBetweenIntentAndOutcome: an admin change writes its
// intent before it touches the HSM and its outcome after, paired by one op
// id; a change whose intent cannot be written touches nothing; a change
// whose outcome cannot be written still has its intent in the log, which
// names what it was about to make.
func TestAdminChangeBetweenIntentAndOutcome(t *testing.T) {
	d := newDaemon(t, func(p *daemonParams) { p.SwitchAudit = true })
	ctx := testCtx(t)
	logPath := filepath.Join(d.dir, "audit.jsonl")

	k := d.genKey(t, "paired", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	var intent, outcome *audit.Record
	for _, r := range readAudit(t, logPath) {
		if r.Op != "key.generate" {
			continue
		}
		if r.Result == ResultIntent {
			intent = &r
		} else {
			outcome = &r
		}
	}
	if intent == nil || outcome == nil {
		t.Fatalf("key.generate lines: intent %v, outcome %v; want both", intent, outcome)
	}
	opID := func(r *audit.Record) string {
		_, id, ok := strings.Cut(r.Detail, "op=")
		if !ok || len(id) != 16 {
			t.Fatalf("line %d has no op id: %q", r.Seq, r.Detail)
		}
		return id
	}
	switch {
	case intent.Seq >= outcome.Seq:
		t.Errorf("intent at seq %d, outcome at %d: the intent must come first", intent.Seq, outcome.Seq)
	case opID(intent) != opID(outcome):
		t.Errorf("intent op id %s, outcome %s", opID(intent), opID(outcome))
	case !strings.Contains(intent.Detail, `label="paired"`):
		t.Errorf("intent detail %q does not name the label", intent.Detail)
	case outcome.Key != k.GetId() || outcome.Result != "ok":
		t.Errorf("outcome key %q result %q, want %s ok", outcome.Key, outcome.Result, k.GetId())
	}

	// The intent cannot be written: nothing is made.
	d.audit.set(failingAudit{})
	_, err := d.client.GenerateKey(ctx, &signerv1.GenerateKeyRequest{Token: "t1", Label: "never", Algorithm: "EC-P256", Usage: signerv1.KeyUsage_KEY_USAGE_SIGN})
	wantCode(t, err, codes.Unavailable, "nothing was changed")
	if hasKeyLabelled(t, d, "never") {
		t.Error("a key was generated although its intent line was not written")
	}

	// The intent is written, the outcome is not: the change is withheld,
	// and the log names what it was about.
	cut := &appendsThenFails{auditLog: d.audit.real}
	cut.left.Store(1)
	d.audit.set(cut)
	_, err = d.client.GenerateKey(ctx, &signerv1.GenerateKeyRequest{Token: "t1", Label: "half", Algorithm: "EC-P256", Usage: signerv1.KeyUsage_KEY_USAGE_SIGN})
	wantCode(t, err, codes.Unavailable, "")
	d.audit.set(nil)
	found := false
	for _, r := range readAudit(t, logPath) {
		if r.Op == "key.generate" && r.Result == ResultIntent && strings.Contains(r.Detail, `label="half"`) {
			found = true
		}
	}
	if !found {
		t.Error("no intent line names the change whose outcome line failed")
	}
}
