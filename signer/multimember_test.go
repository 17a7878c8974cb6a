package signer

import (
	"os"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/config"
	"github.com/hsmsigner/hsmsigner/signer/state"
	"github.com/hsmsigner/hsmsigner/softhsm-test/devca"
)

// recordOldCert records cert for key k and member as a release before
// bindings did: the certificate names the member, the key stays unbound.
func (d *testDaemon) recordOldCert(t *testing.T, k *signerv1.Key, member string, ca *devca.CA) {
	t.Helper()
	c := d.issue(t, ca, d.csrFor(t, k, "CN="+strings.ReplaceAll(member, "/", "-")+",C=EE", ""), "sign", devca.Current)
	err := d.svc.store.PutCert(testCtx(t), state.CertRecord{DER: c.Raw, Token: d.svc.tokens[0].tok.Serial(), KeyID: k.GetId(),
		Member: member, Status: state.StatusRegistered, Active: true, NotBefore: c.NotBefore.UTC(), NotAfter: c.NotAfter.UTC()})
	if err != nil {
		t.Fatal(err)
	}
}

// testPolicy is the test user as admin and as a client of sign keys of
// members (none: a rule not restricted by member).
func testPolicy(t *testing.T, members ...string) *config.Policy {
	t.Helper()
	me := uint32(os.Getuid())
	p, err := config.NewPolicy(config.Admins{UIDs: []uint32{me}}, []config.ClientRule{
		{Name: "tester", UIDs: []uint32{me}, Keys: []string{"*"}, Usages: []string{UsageSign}, Members: members},
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestKeyOfSeveralMembersNeedsEveryMember: a key whose certificates name
// members A and B (recorded by a release before bindings were) serves
// both: a signature with it verifies under either member's certificate.
// A client may sign with it only when its rule allows every member the
// key is bound to; a rule allowing A alone, or B alone, is refused
// PERMISSION_DENIED and the refusal audited with the key.
func TestKeyOfSeveralMembersNeedsEveryMember(t *testing.T) {
	d := newDaemon(t)
	ca := devca.New(t)
	k := d.genKey(t, "ab", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	d.recordOldCert(t, k, memberA, ca)
	d.recordOldCert(t, k, memberB, ca)
	d.svc.forgetKeyRefs()
	tests := []struct {
		name    string
		members []string
		want    codes.Code
	}{
		{"member A alone", []string{memberA}, codes.PermissionDenied},
		{"member B alone", []string{memberB}, codes.PermissionDenied},
		{"members A and B", []string{memberA, memberB}, codes.OK},
		{"every member", []string{"*"}, codes.OK},
		{"no member", nil, codes.PermissionDenied},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d.svc.SetPolicy(testPolicy(t, tt.members...))
			var err error
			lines := d.newAuditLines(t, func() { err = d.signWith(t, k.GetId()) })
			if tt.want == codes.OK {
				if err != nil {
					t.Fatalf("sign: %v", err)
				}
				return
			}
			wantCode(t, err, tt.want, "")
			if len(lines) != 1 || lines[0].Op != "sign" || lines[0].Key != k.GetId() || !strings.HasPrefix(lines[0].Result, "PermissionDenied") {
				t.Fatalf("audit lines %+v; want one sign line for key %s, PermissionDenied", lines, k.GetId())
			}
		})
	}
}
