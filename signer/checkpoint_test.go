package signer

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"errors"
	"os"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/audit"
)

// TestCheckpointWithTheHSMAuditKey: the service signs checkpoints with the
// key of usage audit, through the token, and a verifier needs only its
// public key. A missing, ambiguous or unusable key is refused, logged and
// counted, and never blocks signing.
func TestCheckpointWithTheHSMAuditKey(t *testing.T) {
	d := newDaemon(t)
	ctx := testCtx(t)
	signKey := d.genKey(t, "k", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	sign := func() {
		t.Helper()
		if _, err := d.client.Sign(ctx, signReq(signKey.GetId(), sha("x"))); err != nil {
			t.Fatal(err)
		}
	}
	failures := func() float64 { return d.counter(t, "signerd_audit_checkpoint_failures_total") }
	wantRefused := func(contains string) {
		t.Helper()
		before := failures()
		lines := d.newAuditLines(t, func() {
			if _, err := d.svc.Checkpoint(ctx); err == nil || !strings.Contains(err.Error(), contains) {
				t.Fatalf("Checkpoint: %v; want an error about %q", err, contains)
			}
		})
		if len(lines) != 0 {
			t.Fatalf("a refused checkpoint wrote %+v", lines)
		}
		if failures() != before+1 {
			t.Fatal("the failed checkpoint was not counted")
		}
	}

	sign()
	wantRefused("no key has usage audit")

	ecAudit := d.genKey(t, "audit", "EC-P256", signerv1.KeyUsage_KEY_USAGE_AUDIT)
	if ecAudit.GetUsage() != signerv1.KeyUsage_KEY_USAGE_AUDIT {
		t.Fatalf("usage %v", ecAudit.GetUsage())
	}
	// A client rule with key "*" but not usage audit cannot reach it.
	_, err := d.client.Sign(ctx, signReq(ecAudit.GetId(), sha("forged checkpoint")))
	wantCode(t, err, codes.PermissionDenied, "usage audit")

	var cp audit.Checkpoint
	lines := d.newAuditLines(t, func() {
		if cp, err = d.svc.Checkpoint(ctx); err != nil {
			t.Fatal(err)
		}
	})
	if len(lines) != 1 || lines[0].Op != audit.OpCheckpoint || lines[0].Key != ecAudit.GetId() || lines[0].Token != "t1" ||
		lines[0].UID != int64(os.Getuid()) || lines[0].Checkpoint == nil || lines[0].Checkpoint.Algorithm != "SHA256withECDSA" {
		t.Fatalf("checkpoint lines %+v", lines)
	}
	if st, err := audit.ParseStatement(cp.Statement); err != nil || st.Seq != lines[0].Seq-1 || lines[0].Checkpoint.Statement != cp.Statement || !bytes.Equal(lines[0].Checkpoint.Signature, cp.Signature) {
		t.Fatalf("checkpoint %+v (%v) for line %+v", st, err, lines[0])
	}
	if d.counter(t, "signerd_audit_checkpoints_total") != 1 {
		t.Fatal("the checkpoint was not counted")
	}
	if _, err := d.svc.Checkpoint(ctx); !errors.Is(err, audit.ErrNothingToCheckpoint) {
		t.Fatalf("a second checkpoint with no line between: %v", err)
	}
	sign()

	// Two audit keys: which one is for the configuration to say.
	rsaAudit := d.genKey(t, "audit2", "RSA2048", signerv1.KeyUsage_KEY_USAGE_AUDIT)
	wantRefused("2 keys have usage audit")
	d.cfg.Server.AuditCheckpointKey = signKey.GetId()
	wantRefused("has usage \"sign\"")
	d.cfg.Server.AuditCheckpointKey = rsaAudit.GetId()
	if _, err := d.svc.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	sign()

	// Token logged out: refused, and signing goes on once it is back.
	if _, err := d.client.LogoutToken(ctx, &signerv1.LogoutTokenRequest{Token: "t1"}); err != nil {
		t.Fatal(err)
	}
	wantRefused("not logged in")
	if _, err := d.client.LoginToken(ctx, &signerv1.LoginTokenRequest{Token: "t1", Pin: d.soft.UserPIN}); err != nil {
		t.Fatal(err)
	}
	sign()
	if _, err := d.svc.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}

	// Verified with the public keys only, no HSM.
	pubs := []crypto.PublicKey{}
	for _, k := range []*signerv1.Key{ecAudit, rsaAudit} {
		pub, err := x509.ParsePKIXPublicKey(k.GetPublicKey())
		if err != nil {
			t.Fatal(err)
		}
		pubs = append(pubs, pub)
	}
	sum, err := audit.VerifyFileWith(d.cfg.Server.AuditFile, audit.VerifyOptions{Keys: pubs})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Checkpoints != 3 || sum.AnchoredSeq != sum.LastSeq-1 {
		t.Fatalf("summary %+v; want 3 checkpoints, every line but the last checkpoint's own anchored", sum)
	}
	if _, err := audit.VerifyFileWith(d.cfg.Server.AuditFile, audit.VerifyOptions{Keys: pubs[:1]}); !errors.Is(err, audit.ErrTampered) {
		t.Fatalf("the RSA checkpoint verified with the EC key alone: %v", err)
	}
}

// TestAuditKeyOnlyForRulesThatGrantIt: a rule that names usage audit may
// sign with the audit key (and so could forge checkpoints).
func TestAuditKeyOnlyForRulesThatGrantIt(t *testing.T) {
	d := newDaemon(t, func(p *daemonParams) { p.ClientUsages = `"sign", "audit"` })
	k := d.genKey(t, "audit", "EC-P256", signerv1.KeyUsage_KEY_USAGE_AUDIT)
	if _, err := d.client.Sign(testCtx(t), signReq(k.GetId(), sha("x"))); err != nil {
		t.Fatalf("a rule granting usage audit: %v", err)
	}
}
