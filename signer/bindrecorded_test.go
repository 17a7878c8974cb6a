package signer

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	grpcstatus "google.golang.org/grpc/status"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/audit"
	"github.com/hsmsigner/hsmsigner/signer/state"
	"github.com/hsmsigner/hsmsigner/softhsm-test/devca"
)

// TestKeysRecordedBeforeBindingsBoundAtStart: a state written by a
// release before bindings has sign keys without a member whose requests
// and certificates name one. At start-up signerd binds each such key to
// every member its records name, with one key.bind audit line per key,
// so that the binding outlives the records: once they are deleted, a rule
// not restricted by member still gets no such key, and a member's rule
// still gets its member's key. A key of two members needs a rule that
// allows both. Keys bound already, and keys no record names a member of,
// are left alone, and a second start binds nothing again.
func TestKeysRecordedBeforeBindingsBoundAtStart(t *testing.T) {
	d := newDaemon(t)
	ca := devca.New(t)
	serial := d.svc.tokens[0].tok.Serial()
	kReq := d.genKey(t, "req-a", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	d.csrFor(t, kReq, "CN=A,C=EE", "")
	kAB := d.genKey(t, "certs-ab", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	certA := d.issue(t, ca, d.csrFor(t, kAB, "CN=A2,C=EE", ""), "sign", devca.Current)
	certB := d.issue(t, ca, d.csrFor(t, kAB, "CN=B2,C=EE", ""), "sign", devca.Current)
	kNone := d.genKey(t, "none", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	kNew := d.genKey(t, "new-a", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	d.csrFor(t, kNew, "CN=A3,C=EE", memberA) // bound the new way
	d.stop()

	// What the old release recorded: the requests and certificates name
	// their member, the key records none.
	ctx := context.Background()
	st, err := state.Open(ctx, filepath.Join(d.cfg.Server.StateDir, StateFile))
	if err != nil {
		t.Fatal(err)
	}
	err = st.Update(ctx, func(tx *state.Tx) error {
		csrs, err := tx.ListCSRs()
		if err != nil {
			return err
		}
		for _, r := range csrs {
			switch r.KeyID {
			case kReq.GetId():
				r.Member = memberA
			case kAB.GetId():
				if err := tx.DeleteCSR(r.ID); err != nil { // answered
					return err
				}
				continue
			}
			if err := tx.PutCSR(r); err != nil {
				return err
			}
		}
		for _, c := range []struct {
			der    []byte
			member string
		}{{certA.Raw, memberA}, {certB.Raw, memberB}} {
			err := tx.PutCert(state.CertRecord{DER: c.der, Token: serial, KeyID: kAB.GetId(), Member: c.member,
				Status: state.StatusRegistered, Active: true, NotBefore: certA.NotBefore.UTC(), NotAfter: certA.NotAfter.UTC()})
			if err != nil {
				return err
			}
		}
		for _, k := range []string{kReq.GetId(), kAB.GetId(), kNone.GetId()} {
			if r, err := tx.GetKey(serial, k); err != nil || r.Member != "" {
				t.Errorf("old key %s: %+v, %v; want a record without a member", k, r, err)
			}
		}
		return nil
	})
	if cerr := st.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}

	lines := d.newAuditLines(t, d.start)
	binds := map[string]audit.Record{}
	for _, r := range lines {
		if r.Op == OpKeyBind {
			if _, twice := binds[r.Key]; twice {
				t.Fatalf("two key.bind lines for key %s", r.Key)
			}
			binds[r.Key] = r
		}
	}
	keys := []struct {
		name    string
		k       *signerv1.Key
		members []string // bound to, after the start
		line    string   // in the key.bind line's detail, or "" for no line
	}{
		{"key of A's old request", kReq, []string{memberA}, `member="` + memberA + `"`},
		{"key of A's and B's old certificates", kAB, []string{memberA, memberB}, `members="` + memberA + "," + memberB + `"`},
		{"key no record names a member of", kNone, nil, ""},
		{"key bound by its request", kNew, []string{memberA}, ""},
	}
	for _, k := range keys {
		rec, err := d.svc.store.GetKey(ctx, serial, k.k.GetId())
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(rec.Members(), k.members) {
			t.Errorf("%s: bound to %q, want %q", k.name, rec.Members(), k.members)
		}
		if got, want := d.boundMember(t, k.k.GetId()), strings.Join(k.members, ", "); got != want {
			t.Errorf("%s: key show says bound to %q, want %q", k.name, got, want)
		}
		line, ok := binds[k.k.GetId()]
		switch {
		case k.line == "" && ok:
			t.Errorf("%s: a key.bind line %+v; want none", k.name, line)
		case k.line != "" && !ok:
			t.Errorf("%s: no key.bind line", k.name)
		case ok && (!strings.Contains(line.Detail, k.line) || line.Token != "t1" || line.Result != "ok"):
			t.Errorf("%s: key.bind line %+v; want token t1, result ok, detail with %s", k.name, line, k.line)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	// The records that named the members go; the bindings stay.
	csrs, err := d.client.ListCSRs(testCtx(t), &signerv1.ListCSRsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range csrs.GetCsrs() {
		if _, err := d.client.DeleteCSR(testCtx(t), &signerv1.DeleteCSRRequest{Id: c.GetId()}); err != nil {
			t.Fatal(err)
		}
	}
	certs, err := d.client.ListCerts(testCtx(t), &signerv1.ListCertsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range certs.GetCertificates() {
		if _, err := d.client.DeleteCert(testCtx(t), &signerv1.CertRef{Hash: c.GetSha256()}); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name    string
		members []string
		allowed []*signerv1.Key
	}{
		{"rule not restricted by member", nil, []*signerv1.Key{kNone}},
		{"rule of member A", []string{memberA}, []*signerv1.Key{kReq, kNew}},
		{"rule of members A and B", []string{memberA, memberB}, []*signerv1.Key{kReq, kAB, kNew}},
		{"rule of every member", []string{"*"}, []*signerv1.Key{kReq, kAB, kNone, kNew}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d.svc.SetPolicy(testPolicy(t, tt.members...))
			for _, k := range keys {
				err := d.signWith(t, k.k.GetId())
				if slices.Contains(tt.allowed, k.k) {
					if err != nil {
						t.Errorf("%s: %v; want a signature", k.name, err)
					}
					continue
				}
				if code := grpcstatus.Code(err); code != codes.PermissionDenied {
					t.Errorf("%s: %v; want PERMISSION_DENIED", k.name, err)
				}
			}
		})
	}

	// A second start binds nothing again.
	d.svc.SetPolicy(d.cfg.Policy)
	lines = d.newAuditLines(t, d.restart)
	for _, r := range lines {
		if r.Op == OpKeyBind {
			t.Fatalf("a key.bind line at the second start: %+v", r)
		}
	}
}
