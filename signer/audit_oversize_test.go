package signer

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/audit"
)

// auditLines reads the daemon's audit log, one record a line.
func (d *testDaemon) auditLines(t testing.TB) []audit.Record {
	t.Helper()
	data, err := os.ReadFile(d.cfg.Server.AuditFile)
	if err != nil {
		t.Fatal(err)
	}
	var out []audit.Record
	for _, line := range bytes.Split(bytes.TrimSuffix(data, []byte("\n")), []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		var r audit.Record
		if err := json.Unmarshal(line, &r); err != nil {
			t.Fatalf("audit line %s: %v", line, err)
		}
		out = append(out, r)
	}
	return out
}

// newAuditLines runs call and returns the audit lines it added.
func (d *testDaemon) newAuditLines(t testing.TB, call func()) []audit.Record {
	t.Helper()
	before := len(d.auditLines(t))
	call()
	return d.auditLines(t)[before:]
}

// counter reads a counter of the daemon's registry by name; a counter
// that is not registered fails the test.
func (d *testDaemon) counter(t testing.TB, name string) float64 {
	t.Helper()
	mfs, err := d.svc.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("no counter %s", name)
	return 0
}

// hashedField is the form the audit log gives a field too long to write:
// the SHA-256 and length of its text.
func hashedField(v string) string {
	sum := sha256.Sum256([]byte(v))
	return fmt.Sprintf("sha256:%s len=%d", hex.EncodeToString(sum[:]), len(v))
}

// TestOversizedRefusalIsAudited is issue 9, finding 3: a refused call
// whose request carries a huge field left no audit line, so a caller
// could probe keys and members it may not use without a trace. Each
// refusal now adds exactly one line, naming the field's hash and length.
func TestOversizedRefusalIsAudited(t *testing.T) {
	d := newDaemon(t, func(p *daemonParams) { p.Members = `"EE/GOV/1"` })
	// A key the tester may not sign with: its usage is not granted.
	forbidden := d.genKey(t, "forbidden", "EC-P256", signerv1.KeyUsage_KEY_USAGE_AUTH)
	huge := bytes.Repeat([]byte{0xd1}, 40<<10)
	for _, tt := range []struct {
		name string
		sign func() error
	}{
		{"Sign", func() error {
			_, err := d.client.SignerClient.Sign(testCtx(t), signReq(forbidden.GetId(), huge))
			return err
		}},
		{"SignStream", func() error {
			_, err := d.client.Sign(testCtx(t), signReq(forbidden.GetId(), huge))
			return err
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var err error
			lines := d.newAuditLines(t, func() { err = tt.sign() })
			wantCode(t, err, codes.PermissionDenied, "may not sign with key")
			if len(lines) != 1 {
				t.Fatalf("%d audit lines for one refusal, want 1: %+v", len(lines), lines)
			}
			r := lines[0]
			if r.Op != "sign" || r.Key != forbidden.GetId() || !strings.HasPrefix(r.Result, "PermissionDenied") {
				t.Fatalf("audit line %+v", r)
			}
			if want := hashedField(hex.EncodeToString(huge)); r.Digest != want {
				t.Fatalf("digest written as %.100q, want %q", r.Digest, want)
			}
		})
	}
	t.Run("GetSigningInfo", func(t *testing.T) {
		member := "EE/GOV/" + strings.Repeat("m", 40<<10)
		var err error
		lines := d.newAuditLines(t, func() {
			_, err = d.client.GetSigningInfo(testCtx(t), &signerv1.GetSigningInfoRequest{Member: member})
		})
		wantCode(t, err, codes.PermissionDenied, "may not sign for member")
		if len(lines) != 1 {
			t.Fatalf("%d audit lines for one refusal, want 1", len(lines))
		}
		r := lines[0]
		if want := hashedField("GetSigningInfo member=" + member); r.Op != "denied" || r.Detail != want {
			t.Fatalf("audit line %+v; want detail %q", r, want)
		}
		if !strings.HasPrefix(r.Result, "sha256:") || len(r.Result) > 1024 {
			t.Fatalf("result %.100q: the member in the error text is not bounded", r.Result)
		}
	})
	t.Run("unknown huge key id", func(t *testing.T) {
		id := strings.Repeat("ab", 40<<10)
		var err error
		lines := d.newAuditLines(t, func() {
			_, err = d.client.SignerClient.Sign(testCtx(t), signReq(id, sha("x")))
		})
		wantCode(t, err, codes.InvalidArgument, "key id")
		if len(lines) != 1 || lines[0].Key != hashedField(id) {
			t.Fatalf("audit lines %+v", lines)
		}
	})
	if _, err := audit.VerifyFile(d.cfg.Server.AuditFile); err != nil {
		t.Fatal(err)
	}
}

// TestRefusalStaysRefusedWhenAuditFails: a refusal whose audit line
// cannot be written is still a refusal, and the failure shows in the
// metrics.
func TestRefusalStaysRefusedWhenAuditFails(t *testing.T) {
	d := newDaemon(t, func(p *daemonParams) { p.SwitchAudit = true })
	forbidden := d.genKey(t, "forbidden", "EC-P256", signerv1.KeyUsage_KEY_USAGE_AUTH)
	tests := []struct {
		name string
		log  failingAudit
		sign func() error
	}{
		{"Sign call", failingAudit{}, func() error {
			_, err := d.client.SignerClient.Sign(testCtx(t), signReq(forbidden.GetId(), sha("x")))
			return err
		}},
		{"stream, queueing fails", failingAudit{}, func() error {
			_, err := d.client.Sign(testCtx(t), signReq(forbidden.GetId(), sha("x")))
			return err
		}},
		{"stream, commit fails", failingAudit{atCommit: true}, func() error {
			_, err := d.client.Sign(testCtx(t), signReq(forbidden.GetId(), sha("x")))
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := d.counter(t, "signerd_audit_failures_total")
			d.audit.set(tt.log)
			err := tt.sign()
			d.audit.set(nil)
			wantCode(t, err, codes.PermissionDenied, "may not sign with key")
			if got := d.counter(t, "signerd_audit_failures_total"); got != before+1 {
				t.Fatalf("signerd_audit_failures_total went from %v to %v; want one more", before, got)
			}
		})
	}
}
