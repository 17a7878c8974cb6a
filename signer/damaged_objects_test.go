package signer

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/miekg/pkcs11"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/audit"
	softhsmtest "github.com/hsmsigner/hsmsigner/softhsm-test"
)

// newTwoTokenDaemon starts a daemon serving two tokens of one SoftHSM
// configuration: t1 (the first returned) and t2.
func newTwoTokenDaemon(t *testing.T) (*testDaemon, *softhsmtest.Token, *softhsmtest.Token) {
	t.Helper()
	soft1 := softhsmtest.New(t)
	soft2 := softhsmtest.New(t, softhsmtest.WithDir(soft1.Dir), softhsmtest.WithLabel("second"))
	dir := newDaemonDir(t)
	pin2 := filepath.Join(dir, "user2.pin")
	if err := os.WriteFile(pin2, soft2.UserPIN, 0o600); err != nil {
		t.Fatal(err)
	}
	d := newDaemonOn(t, soft1, dir, func(p *daemonParams) {
		p.TokenExtra = fmt.Sprintf("  [[module.token]]\n  name = \"t2\"\n  token = \"label:%s\"\n  pin = \"file:%s\"\n", soft2.Label, pin2)
	})
	return d, soft1, soft2
}

// object is an object as an outside application reads it back.
type object struct {
	class uint
	id    string // hex
	label string
}

// objects reads back every object on the token through PKCS#11.
func (o *outsideApp) objects(t *testing.T) []object {
	t.Helper()
	h := o.session(t)
	if err := o.ctx.FindObjectsInit(h, nil); err != nil {
		t.Fatal(err)
	}
	hs, _, err := o.ctx.FindObjects(h, 1000)
	if ferr := o.ctx.FindObjectsFinal(h); err == nil {
		err = ferr
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []object
	for _, oh := range hs {
		attrs, err := o.ctx.GetAttributeValue(h, oh, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, nil), pkcs11.NewAttribute(pkcs11.CKA_ID, nil), pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil),
		})
		if err != nil {
			t.Fatal(err)
		}
		var class uint
		for i := len(attrs[0].Value) - 1; i >= 0; i-- {
			class = class<<8 | uint(attrs[0].Value[i])
		}
		out = append(out, object{class, hex.EncodeToString(attrs[1].Value), string(attrs[2].Value)})
	}
	slices.SortFunc(out, func(a, b object) int {
		return strings.Compare(fmt.Sprint(a.label, a.id, a.class), fmt.Sprint(b.label, b.id, b.class))
	})
	return out
}

// create makes a token object from tmpl.
func (o *outsideApp) create(t *testing.T, tmpl ...*pkcs11.Attribute) {
	t.Helper()
	if _, err := o.ctx.CreateObject(o.session(t), append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true))); err != nil {
		t.Fatalf("C_CreateObject: %v", err)
	}
}

// destroyClass destroys the objects of class with CKA_ID idHex.
func (o *outsideApp) destroyClass(t *testing.T, class uint, idHex string) {
	t.Helper()
	id, err := hex.DecodeString(idHex)
	if err != nil {
		t.Fatal(err)
	}
	h := o.session(t)
	if err := o.ctx.FindObjectsInit(h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, class), pkcs11.NewAttribute(pkcs11.CKA_ID, id)}); err != nil {
		t.Fatal(err)
	}
	hs, _, err := o.ctx.FindObjects(h, 8)
	if ferr := o.ctx.FindObjectsFinal(h); err == nil {
		err = ferr
	}
	if err != nil || len(hs) == 0 {
		t.Fatalf("objects of class %d with id %s: %d, %v", class, idHex, len(hs), err)
	}
	for _, oh := range hs {
		if err := o.ctx.DestroyObject(h, oh); err != nil {
			t.Fatal(err)
		}
	}
}

// certObject is a certificate object template of a self-signed
// certificate, labelled cn.
func certObject(t *testing.T, cn string) []*pkcs11.Attribute {
	t.Helper()
	cert := softhsmtest.SelfSignedCert(t, cn)
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_CERTIFICATE),
		pkcs11.NewAttribute(pkcs11.CKA_CERTIFICATE_TYPE, pkcs11.CKC_X_509),
		pkcs11.NewAttribute(pkcs11.CKA_SUBJECT, cert.RawSubject),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE, cert.Raw),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, cn),
	}
}

// deleteLines returns the key.delete lines of the audit log: intents
// and outcomes.
func deleteLines(t *testing.T, d *testDaemon) []audit.Record {
	t.Helper()
	var out []audit.Record
	for _, r := range readAudit(t, filepath.Join(d.dir, "audit.jsonl")) {
		if r.Op == "key.delete" {
			out = append(out, r)
		}
	}
	return out
}

// TestDamagedObjectsWithoutPrivateKey: on two tokens, public key and
// certificate objects without CKA_ID, and the public key and certificate
// of a key whose private key object is gone, are listed by key list as
// damaged (under no-id, and under the orphan's id), reported by
// reconciliation, and removed by the officer: "no-id@t1" only on t1,
// "no-id" on the others, the orphan by its id. Every deletion has an
// intent and an outcome line naming the objects destroyed; what the
// tokens hold afterwards, read through PKCS#11, is the whole keys and
// their certificate, untouched. Before the fix none of them was listed,
// and key delete answered NotFound for each.
func TestDamagedObjectsWithoutPrivateKey(t *testing.T) {
	d, soft1, soft2 := newTwoTokenDaemon(t)
	ctx := testCtx(t)
	whole := d.genKey(t, "whole", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	orphan := d.genKey(t, "orphan", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	o1, o2 := newOutsideApp(t, soft1), newOutsideApp(t, soft2)
	wholeID, err := hex.DecodeString(whole.GetId())
	if err != nil {
		t.Fatal(err)
	}
	o1.create(t, append(certObject(t, "whole"), pkcs11.NewAttribute(pkcs11.CKA_ID, wholeID))...)
	o1.destroyClass(t, pkcs11.CKO_PRIVATE_KEY, orphan.GetId())
	pk, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pub := func(label string) []*pkcs11.Attribute {
		raw, err := pk.PublicKey.Bytes()
		if err != nil {
			t.Fatal(err)
		}
		return []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
			pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, []byte{6, 8, 0x2a, 0x86, 0x48, 0xce, 0x3d, 3, 1, 7}),
			pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, append([]byte{4, byte(len(raw))}, raw...)),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		}
	}
	o1.create(t, pub("stray-public-1")...)
	o1.create(t, certObject(t, "stray-cert-1")...)
	o2.create(t, pub("stray-public-2")...)
	d.restart() // as after the crash

	list, err := d.client.ListKeys(ctx, &signerv1.ListKeysRequest{})
	if err != nil {
		t.Fatalf("ListKeys: %v", err)
	}
	type entry struct{ id, token, label string }
	got := map[entry]*signerv1.Key{}
	for _, k := range list.GetKeys() {
		got[entry{k.GetId(), k.GetToken(), k.GetLabel()}] = k
	}
	tests := []struct {
		entry
		problem string // in AttributeProblem; empty: none
	}{
		{entry{whole.GetId(), "t1", "whole"}, ""},
		{entry{orphan.GetId(), "t1", "orphan"}, "no private key object"},
		{entry{NoIDKeyRef, "t1", "stray-public-1"}, "public key object without CKA_ID"},
		{entry{NoIDKeyRef, "t1", "stray-cert-1"}, "certificate object without CKA_ID"},
		{entry{NoIDKeyRef, "t2", "stray-public-2"}, "public key object without CKA_ID"},
	}
	if len(got) != len(tests) {
		t.Errorf("listed %d entries, want %d: %v", len(got), len(tests), list.GetKeys())
	}
	for _, tc := range tests {
		k := got[tc.entry]
		switch {
		case k == nil:
			t.Errorf("%+v is not listed", tc.entry)
		case tc.problem == "" && k.GetAttributeProblem() != "",
			tc.problem != "" && !strings.Contains(k.GetAttributeProblem(), "damaged object: ") || !strings.Contains(k.GetAttributeProblem(), tc.problem):
			t.Errorf("%+v: attribute problem %q, want one with %q", tc.entry, k.GetAttributeProblem(), tc.problem)
		case tc.problem != "" && (len(k.GetAlgorithms()) != 0 || len(k.GetPublicKey()) != 0):
			t.Errorf("%+v: damaged, but algorithms %v, public key %d bytes", tc.entry, k.GetAlgorithms(), len(k.GetPublicKey()))
		}
	}
	reported := map[string]int{}
	for _, r := range readAudit(t, filepath.Join(d.dir, "audit.jsonl")) {
		if r.Op == OpDamagedKey || r.Op == OpUnrecordedKey {
			reported[r.Op+" "+r.Token+" "+r.Key]++
		}
	}
	wantReported := map[string]int{
		OpDamagedKey + " t1 " + orphan.GetId(): 1,
		OpDamagedKey + " t1 " + NoIDKeyRef:     1,
		OpDamagedKey + " t2 " + NoIDKeyRef:     1,
	}
	if fmt.Sprint(reported) != fmt.Sprint(wantReported) {
		t.Errorf("reconciliation lines %v, want %v", reported, wantReported)
	}

	// The whole key is not damage, on either token.
	if _, err := d.client.DeleteKey(ctx, &signerv1.DeleteKeyRequest{KeyId: whole.GetId() + "@t2"}); status.Code(err) != codes.NotFound {
		t.Errorf("deleting the whole key on the token that does not hold it: %v, want NotFound", err)
	}
	steps := []struct {
		ref     string
		token   string
		destroy []string // in the outcome line
	}{
		{NoIDKeyRef + "@t1", "t1", []string{`public key "stray-public-1" without CKA_ID`, `certificate "stray-cert-1" without CKA_ID`}},
		{NoIDKeyRef, "t2", []string{`public key "stray-public-2" without CKA_ID`}},
		{orphan.GetId(), "t1", []string{`public key "orphan" id ` + orphan.GetId()}},
	}
	for _, st := range steps {
		before := len(deleteLines(t, d))
		if _, err := d.client.DeleteKey(ctx, &signerv1.DeleteKeyRequest{KeyId: st.ref}); err != nil {
			t.Fatalf("key delete %s: %v", st.ref, err)
		}
		lines := deleteLines(t, d)[before:]
		if len(lines) != 2 || lines[0].Result != ResultIntent || lines[1].Result != "ok" || lines[1].Token != st.token || lines[1].Key != st.ref {
			t.Errorf("key delete %s: lines %+v, want an intent and an ok outcome on %s", st.ref, lines, st.token)
			continue
		}
		for _, want := range st.destroy {
			if !strings.Contains(lines[1].Detail, want) {
				t.Errorf("key delete %s: outcome detail %q does not name %s", st.ref, lines[1].Detail, want)
			}
		}
	}
	if _, err := d.client.DeleteKey(ctx, &signerv1.DeleteKeyRequest{KeyId: NoIDKeyRef}); status.Code(err) != codes.NotFound {
		t.Errorf("key delete %s again: %v, want NotFound", NoIDKeyRef, err)
	}
	want1 := []object{
		{pkcs11.CKO_CERTIFICATE, whole.GetId(), "whole"},
		{pkcs11.CKO_PUBLIC_KEY, whole.GetId(), "whole"},
		{pkcs11.CKO_PRIVATE_KEY, whole.GetId(), "whole"},
	}
	if got := o1.objects(t); !slices.Equal(got, want1) {
		t.Errorf("t1 holds %+v, want %+v", got, want1)
	}
	if got := o2.objects(t); len(got) != 0 {
		t.Errorf("t2 holds %+v, want nothing", got)
	}
	list, err = d.client.ListKeys(ctx, &signerv1.ListKeysRequest{})
	if err != nil || len(list.GetKeys()) != 1 || list.GetKeys()[0].GetAttributeProblem() != "" {
		t.Errorf("after the deletions: %v, %v; want the whole key alone", list.GetKeys(), err)
	}
}

// TestDeleteOfASharedIDNamesTheToken: a key id that names a whole key on
// one token and damaged objects on another is not deleted by "key delete
// ID" (which, before the fix, deleted the whole key, though the officer
// was shown the damage), but refused, naming both tokens; "ID@TOKEN"
// deletes the damaged objects on that token alone, and the whole key
// keeps signing.
func TestDeleteOfASharedIDNamesTheToken(t *testing.T) {
	d, soft1, soft2 := newTwoTokenDaemon(t)
	ctx := testCtx(t)
	whole := d.genKey(t, "whole", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	id, err := hex.DecodeString(whole.GetId())
	if err != nil {
		t.Fatal(err)
	}
	o1, o2 := newOutsideApp(t, soft1), newOutsideApp(t, soft2)
	pk, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := pk.PublicKey.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	o2.create(t,
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
		pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, []byte{6, 8, 0x2a, 0x86, 0x48, 0xce, 0x3d, 3, 1, 7}),
		pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, append([]byte{4, byte(len(raw))}, raw...)),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, "copy"),
	)
	before := o1.objects(t)

	_, err = d.client.DeleteKey(ctx, &signerv1.DeleteKeyRequest{KeyId: whole.GetId()})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "t2") || !strings.Contains(err.Error(), whole.GetId()+"@t1") {
		t.Fatalf("key delete of an id on two tokens: %v; want FailedPrecondition naming t2 and %s@t1", err, whole.GetId())
	}
	if got := o1.objects(t); !slices.Equal(got, before) {
		t.Fatalf("the refused delete changed t1: %+v, was %+v", got, before)
	}
	if _, err := d.client.DeleteKey(ctx, &signerv1.DeleteKeyRequest{KeyId: strings.ToUpper(whole.GetId()) + "@t2"}); err != nil {
		t.Fatalf("key delete %s@t2: %v", whole.GetId(), err)
	}
	if got := o2.objects(t); len(got) != 0 {
		t.Errorf("t2 holds %+v after the delete, want nothing", got)
	}
	if got := o1.objects(t); !slices.Equal(got, before) {
		t.Errorf("deleting on t2 changed t1: %+v, was %+v", got, before)
	}
	if _, err := d.client.Sign(ctx, &signerv1.SignRequest{Key: &signerv1.SignRequest_KeyId{KeyId: whole.GetId()}, Algorithm: "ES256", Digest: make([]byte, 32)}); err != nil {
		t.Errorf("the whole key after the damage beside it was deleted: %v", err)
	}
	lines := deleteLines(t, d)
	if n := len(lines); n < 2 || lines[n-1].Key != whole.GetId()+"@t2" || lines[n-1].Token != "t2" || lines[n-1].Result != "ok" {
		t.Errorf("the last key.delete lines %+v, want an ok outcome for %s@t2 on t2", lines, whole.GetId())
	}
}
