package signer

import (
	"os"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/config"
	"github.com/hsmsigner/hsmsigner/softhsm-test/devca"
)

// TestRefusalByCertHashNamesTheKey: a sign request that names a
// certificate hash instead of a key, and is refused (the caller may not
// use the certificate's key, or the certificate is not active), leaves an
// audit line that names the certificate's key and token, on every sign
// path (Sign, a SignStream call, SignBatch).
func TestRefusalByCertHashNamesTheKey(t *testing.T) {
	d := newDaemon(t)
	ca := devca.New(t)
	k := d.genKey(t, "b", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	active := d.activeRegistered(t, d.issue(t, ca, d.csrFor(t, k, "CN=B,C=EE", memberB), "sign", devca.Current), memberB)
	inactive := d.activeRegistered(t, d.issue(t, ca, d.csrFor(t, k, "CN=B2,C=EE", memberB), "sign", devca.Current), memberB)
	if _, err := d.client.DeactivateCert(testCtx(t), &signerv1.CertRef{Hash: inactive}); err != nil {
		t.Fatal(err)
	}
	me := uint32(os.Getuid())
	policyFor := func(members ...string) *config.Policy {
		p, err := config.NewPolicy(config.Admins{UIDs: []uint32{me}}, []config.ClientRule{
			{Name: "tester", UIDs: []uint32{me}, Keys: []string{"*"}, Usages: []string{UsageSign}, Members: members},
		})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	// The connection is up, so d.client.Sign goes over the shared stream.
	if _, err := d.client.GetStatus(testCtx(t), &signerv1.GetStatusRequest{}); err != nil {
		t.Fatal(err)
	}
	unary := func(hash string) (string, error) {
		_, err := d.client.SignerClient.Sign(testCtx(t), &signerv1.SignRequest{Key: &signerv1.SignRequest_CertHash{CertHash: hash}, Algorithm: "ES256", Digest: sha("x")})
		return "sign", err
	}
	streamed := func(hash string) (string, error) {
		_, err := d.client.Sign(testCtx(t), &signerv1.SignRequest{Key: &signerv1.SignRequest_CertHash{CertHash: hash}, Algorithm: "ES256", Digest: sha("x")})
		return "sign", err
	}
	batch := func(hash string) (string, error) {
		_, err := d.client.SignBatch(testCtx(t), &signerv1.SignBatchRequest{Key: &signerv1.SignBatchRequest_CertHash{CertHash: hash}, Algorithm: "ES256", Digests: [][]byte{sha("x")}})
		return "sign_batch", err
	}
	tests := []struct {
		name    string
		members []string
		hash    string
		call    func(string) (string, error)
		code    codes.Code
	}{
		{"Sign, another member's certificate", []string{memberA}, active, unary, codes.PermissionDenied},
		{"SignStream, another member's certificate", []string{memberA}, active, streamed, codes.PermissionDenied},
		{"SignBatch, another member's certificate", []string{memberA}, active, batch, codes.PermissionDenied},
		{"Sign, inactive certificate", []string{memberB}, inactive, unary, codes.FailedPrecondition},
		{"SignStream, inactive certificate", []string{memberB}, inactive, streamed, codes.FailedPrecondition},
		{"SignBatch, inactive certificate", []string{memberB}, inactive, batch, codes.FailedPrecondition},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d.svc.SetPolicy(policyFor(tt.members...))
			var op string
			var err error
			lines := d.newAuditLines(t, func() { op, err = tt.call(tt.hash) })
			wantCode(t, err, tt.code, "")
			if len(lines) != 1 || lines[0].Op != op || !strings.HasPrefix(lines[0].Result, tt.code.String()) {
				t.Fatalf("audit lines %+v; want one %s line, %s", lines, op, tt.code)
			}
			if lines[0].Key != k.GetId() || lines[0].Token != "t1" {
				t.Fatalf("the refusal's line names key %q on token %q; want %s on t1", lines[0].Key, lines[0].Token, k.GetId())
			}
		})
	}
}
