package signer

import (
	"context"
	"crypto"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/audit"
	"github.com/hsmsigner/hsmsigner/signer/config"
)

// clientOnly makes the test user a client only (no longer an admin), with
// a rule for every key of the given usages and every member.
func (d *testDaemon) clientOnly(t *testing.T, usages ...string) {
	t.Helper()
	me := uint32(os.Getuid())
	p, err := config.NewPolicy(config.Admins{UIDs: []uint32{me + 1}}, []config.ClientRule{
		{Name: "everything-but-audit", UIDs: []uint32{me}, Keys: []string{"*"}, Usages: usages, Members: []string{"*"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	d.svc.SetPolicy(p)
}

// TestAttackAuditKeyNotReachableBySignRules: a client whose rule grants
// every key ("*") and every usage but audit reaches the audit key by no
// path: Sign, SignBatch (individual and Merkle), a SignStream call, GetKey.
// A certificate, whose hash a Sign call could name instead of the key,
// cannot be requested for it, and no rename changes a key's usage to or
// from audit. Every refused sign leaves its line.
func TestAttackAuditKeyNotReachableBySignRules(t *testing.T) {
	d := newDaemon(t)
	ctx := testCtx(t)
	auditKey := d.genKey(t, "audit", "EC-P256", signerv1.KeyUsage_KEY_USAGE_AUDIT)
	_, err := d.client.GenerateCSR(ctx, &signerv1.GenerateCSRRequest{KeyId: auditKey.GetId(), Subject: "CN=audit,C=EE", Member: member})
	wantCode(t, err, codes.InvalidArgument, "audit")
	// Nor can an officer turn a sign key into an audit key (whose past
	// signatures over chosen digests would then pass for checkpoints),
	// or the audit key into a sign key.
	signKey := d.genKey(t, "sign", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	for _, tt := range []struct {
		key   *signerv1.Key
		usage signerv1.KeyUsage
	}{{signKey, signerv1.KeyUsage_KEY_USAGE_AUDIT}, {auditKey, signerv1.KeyUsage_KEY_USAGE_SIGN}} {
		_, err := d.client.RenameKey(ctx, &signerv1.RenameKeyRequest{KeyId: tt.key.GetId(), Name: "x", Usage: tt.usage})
		wantCode(t, err, codes.FailedPrecondition, "usage does not change")
	}
	d.clientOnly(t, config.UsageSign, config.UsageAuth, config.UsageTSA)

	digest := sha("hsmsigner audit checkpoint v1\n")
	for _, tt := range []struct {
		name string
		call func() error
	}{
		{"Sign", func() error {
			_, err := d.client.SignerClient.Sign(ctx, signReq(auditKey.GetId(), digest))
			return err
		}},
		{"SignBatch individual", func() error {
			_, err := d.client.SignBatch(ctx, &signerv1.SignBatchRequest{Key: &signerv1.SignBatchRequest_KeyId{KeyId: auditKey.GetId()}, Algorithm: "ES256", Digests: [][]byte{digest}, Mode: signerv1.BatchMode_BATCH_MODE_INDIVIDUAL})
			return err
		}},
		{"SignBatch Merkle", func() error {
			_, err := d.client.SignBatch(ctx, &signerv1.SignBatchRequest{Key: &signerv1.SignBatchRequest_KeyId{KeyId: auditKey.GetId()}, Algorithm: "ES256", Digests: [][]byte{digest, digest}, Mode: signerv1.BatchMode_BATCH_MODE_MERKLE})
			return err
		}},
		{"SignStream", func() error {
			r := roundTrip(t, d.stream(t), 1, signReq(auditKey.GetId(), digest))
			if e := r.GetError(); e != nil {
				return status.Error(codes.Code(e.GetCode()), e.GetMessage())
			}
			return nil
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var err error
			lines := d.newAuditLines(t, func() { err = tt.call() })
			wantCode(t, err, codes.PermissionDenied, "usage audit")
			if len(lines) != 1 || lines[0].Key != auditKey.GetId() || !strings.HasPrefix(lines[0].Result, "PermissionDenied") {
				t.Fatalf("audit lines %+v; want one refusal naming the audit key", lines)
			}
		})
	}
	_, err = d.client.GetKey(ctx, &signerv1.GetKeyRequest{KeyId: auditKey.GetId()})
	wantCode(t, err, codes.PermissionDenied, "usage audit")
}

// TestAttackGetKeyRefusalIsAudited: a client asking GetKey about a key it
// may not use is refused, as GetSigningInfo refuses a member it may not
// sign for; that refusal must leave its audit line too (every refusal
// does), or a client probes keys without a trace.
func TestAttackGetKeyRefusalIsAudited(t *testing.T) {
	d := newDaemon(t)
	auth := d.genKey(t, "auth", "EC-P256", signerv1.KeyUsage_KEY_USAGE_AUTH)
	d.clientOnly(t, config.UsageSign)
	var err error
	lines := d.newAuditLines(t, func() {
		_, err = d.client.GetKey(testCtx(t), &signerv1.GetKeyRequest{KeyId: auth.GetId()})
	})
	wantCode(t, err, codes.PermissionDenied, "usage auth")
	if len(lines) != 1 {
		t.Fatalf("%d audit lines for the refused GetKey, want 1: %+v", len(lines), lines)
	}
	if r := lines[0]; r.Op != "denied" || r.Key != auth.GetId() || r.UID != int64(os.Getuid()) || !strings.HasPrefix(r.Result, "PermissionDenied") {
		t.Fatalf("audit line %+v; want a denied line naming the key", r)
	}
}

// TestAttackStreamDuplicateCallIsAudited: a SignStream call whose id is
// in flight already is refused unsigned; like every refused call it must
// leave its audit line.
func TestAttackStreamDuplicateCallIsAudited(t *testing.T) {
	d := newDaemon(t)
	k := d.genKey(t, "k", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	s := d.stream(t)
	var got map[uint64][]*signerv1.StreamedSignResult
	lines := d.newAuditLines(t, func() {
		if err := s.Send(&signerv1.SignStreamRequest{Calls: []*signerv1.StreamedSign{
			{Id: 7, Request: signReq(k.GetId(), sha("first"))},
			{Id: 7, Request: signReq(k.GetId(), sha("second"))},
		}}); err != nil {
			t.Fatal(err)
		}
		got = recvResults(t, s, 2)
	})
	refused := 0
	for _, r := range got[7] {
		if r.GetError().GetCode() == int32(codes.InvalidArgument) {
			refused++
		}
	}
	if refused != 1 {
		t.Fatalf("results %v; want one call refused", got[7])
	}
	var ok, invalid int
	for _, r := range lines {
		switch {
		case r.Op == "sign" && r.Result == "ok":
			ok++
		case r.Op == "sign" && strings.HasPrefix(r.Result, "InvalidArgument") && strings.Contains(r.Result, "in flight already"):
			invalid++
		}
	}
	if len(lines) != 2 || ok != 1 || invalid != 1 {
		t.Fatalf("audit lines %+v; want one for the signed call and one for the refused one", lines)
	}
}

// hangingCheckpoints passes checkpoints to the real log, with a signer
// that, once hang is set, does not return until released, whatever its
// context says: a PKCS#11 C_Sign on an HSM that stopped answering.
type hangingCheckpoints struct {
	real     checkpointer
	hung     chan struct{} // closed when a signature hangs
	release  chan struct{} // close to let it return
	returned chan struct{} // closed when the hung checkpoint has returned
	once     sync.Once
}

func (h *hangingCheckpoints) Checkpoint(ctx context.Context, r audit.Record, pub crypto.PublicKey, sign audit.SignFunc) (audit.Checkpoint, error) {
	first := false
	hang := func(ctx context.Context, digest []byte) (string, []byte, error) {
		h.once.Do(func() { first = true; close(h.hung) })
		if first {
			<-h.release
		}
		return sign(ctx, digest)
	}
	cp, err := h.real.Checkpoint(ctx, r, pub, hang)
	if first {
		close(h.returned)
	}
	return cp, err
}

// TestAttackHungCheckpointDoesNotHoldUpShutdown: RunCheckpoints gives
// its last checkpoint shutdown_timeout, and signerd waits for it to
// return before it closes the audit log and the modules. A checkpoint
// whose signature hangs in the HSM must not hold the daemon's shutdown
// up past that time.
func TestAttackHungCheckpointDoesNotHoldUpShutdown(t *testing.T) {
	d := newDaemon(t)
	d.genKey(t, "audit", "EC-P256", signerv1.KeyUsage_KEY_USAGE_AUDIT)
	d.cfg.Server.AuditCheckpointInterval = time.Second
	d.cfg.Server.ShutdownTimeout = time.Second
	h := &hangingCheckpoints{real: d.svc.checkpoints, hung: make(chan struct{}), release: make(chan struct{}), returned: make(chan struct{})}
	d.svc.checkpoints = h
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	defer func() { // the HSM answers again: let everything end before the daemon stops
		close(h.release)
		<-h.returned
		<-done
	}()
	go func() {
		defer close(done)
		d.svc.RunCheckpoints(ctx)
	}()
	select {
	case <-h.hung:
	case <-time.After(30 * time.Second):
		t.Fatal("no checkpoint was signed on the interval")
	}
	stop()
	select {
	case <-done:
	case <-time.After(d.cfg.Server.ShutdownTimeout + 10*time.Second):
		t.Fatalf("RunCheckpoints has not returned %s after it was stopped, with a signature hanging in the HSM", d.cfg.Server.ShutdownTimeout+10*time.Second)
	}
}
