package signer

import (
	"bufio"
	"bytes"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hsmsigner/hsmsigner/hsm"
	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/audit"
	"github.com/hsmsigner/hsmsigner/signer/state"
	softhsmtest "github.com/hsmsigner/hsmsigner/softhsm-test"
)

// keyAttrTool runs p11-keyattr on the daemon's token: PKCS#11 calls made
// by another process, with the user PIN on its standard input, as
// someone holding the PIN can make them beside signerd.
type keyAttrTool struct {
	bin  string
	soft *softhsmtest.Token
}

func newKeyAttrTool(t *testing.T, d *testDaemon) *keyAttrTool {
	t.Helper()
	return &keyAttrTool{bin: softhsmtest.BuildCommand(t, "github.com/hsmsigner/hsmsigner/softhsm-test/cmd/p11-keyattr"), soft: d.soft}
}

// run runs one operation and returns its standard output.
func (k *keyAttrTool) run(t *testing.T, op string, args ...string) string {
	t.Helper()
	cmd := exec.CommandContext(testCtx(t), k.bin, append([]string{"--module", k.soft.ModulePath, "--token-label", k.soft.Label, op}, args...)...)
	cmd.Env = k.soft.Env()
	cmd.Stdin = bytes.NewReader(append(bytes.Clone(k.soft.UserPIN), '\n'))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("p11-keyattr %s %v: %v: %s", op, args, err, stderr.String())
	}
	return stdout.String()
}

// get reads the key pair's attributes through PKCS#11 in the other process.
func (k *keyAttrTool) get(t *testing.T, idHex string) map[string]string {
	t.Helper()
	attrs := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(k.run(t, "get", "--id", idHex)))
	for sc.Scan() {
		name, value, _ := strings.Cut(sc.Text(), "=")
		attrs[name] = value
	}
	return attrs
}

// TestGeneratedKeyShowsItsAttributes: `key show` of a key signerd made
// reports it sign-only, not modifiable, not copyable, restricted to its
// signing mechanisms, and every one of those as PKCS#11 reads it in
// another process (finding 5).
func TestGeneratedKeyShowsItsAttributes(t *testing.T) {
	d := newDaemon(t)
	tool := newKeyAttrTool(t, d)
	tests := []struct {
		alg   string
		mechs []string
		raw   string // allowed_mechanisms as p11-keyattr prints them
	}{
		{"RSA2048", []string{"CKM_RSA_PKCS", "CKM_RSA_PKCS_PSS"}, "0x1,0xd"},
		{"EC-P256", []string{"CKM_ECDSA"}, "0x1041"},
	}
	for _, tt := range tests {
		t.Run(tt.alg, func(t *testing.T) {
			made := d.genKey(t, "shown-"+tt.alg, tt.alg, signerv1.KeyUsage_KEY_USAGE_SIGN)
			k, err := d.client.GetKey(testCtx(t), &signerv1.GetKeyRequest{KeyId: made.GetId()})
			if err != nil {
				t.Fatal(err)
			}
			if !k.GetSensitive() || k.GetExtractable() || k.GetCanDecrypt() || k.GetCanSignRecover() || k.GetModifiable() || k.GetCopyable() ||
				!slices.Equal(k.GetAllowedMechanisms(), tt.mechs) || k.GetAttributeProblem() != "" {
				t.Fatalf("key show: %v", k)
			}
			raw := tool.get(t, k.GetId())
			for name, shown := range map[string]bool{
				"sensitive": k.GetSensitive(), "extractable": k.GetExtractable(), "decrypt": k.GetCanDecrypt(),
				"sign_recover": k.GetCanSignRecover(), "modifiable": k.GetModifiable(), "copyable": k.GetCopyable(),
			} {
				if raw[name] != map[bool]string{true: "true", false: "false"}[shown] {
					t.Errorf("key show says %s=%v; PKCS#11 reads %q", name, shown, raw[name])
				}
			}
			want := map[string]string{"sign": "true", "unwrap": "false", "derive": "false", "always_sensitive": "true",
				"never_extractable": "true", "allowed_mechanisms": tt.raw,
				"public.modifiable": "false", "public.encrypt": "false", "public.wrap": "false", "public.verify": "true"}
			for name, v := range want {
				if raw[name] != v {
					t.Errorf("PKCS#11 reads %s=%q; want %q", name, raw[name], v)
				}
			}
		})
	}
}

// locked are the p11-keyattr gen pairs that make a key as signerd makes
// them: not modifiable, not copyable.
var locked = []string{"modifiable=false", "copyable=false"}

// wantAuditedRefusal checks that lines hold a line of op whose result is
// FailedPrecondition and names each of whys.
func wantAuditedRefusal(t *testing.T, lines []audit.Record, op string, whys ...string) {
	t.Helper()
	for _, r := range lines {
		if r.Op != op || !strings.HasPrefix(r.Result, codes.FailedPrecondition.String()+": ") {
			continue
		}
		missing := false
		for _, w := range whys {
			missing = missing || !strings.Contains(r.Result, w)
		}
		if !missing {
			return
		}
	}
	t.Fatalf("no %s line with a FailedPrecondition result naming %q among %+v", op, whys, lines)
}

// TestRegisterKeyMadeOutsideChecksAttributes: an officer records a key
// made outside signerd (`key rename ID NAME --usage sign`) only when its
// attributes, read from the token, make it private, sensitive and never
// anything else since it was made, sign-only, not modifiable, not
// copyable, and RSA of 2048 bits or more (or EC). A refused key stays
// unrecorded, the refusal is FAILED_PRECONDITION with the reason and is
// audited, and `key show` says why. Each key's attributes are read back
// through PKCS#11 by another process first (finding 5 and its review).
func TestRegisterKeyMadeOutsideChecksAttributes(t *testing.T) {
	d := newDaemon(t)
	tool := newKeyAttrTool(t, d)
	tests := []struct {
		name  string
		id    string
		gen   []string          // p11-keyattr gen flags and ATTR=BOOL
		copy  []string          // when set, the key recorded is a copy to copyID made with these ATTR=BOOL
		token map[string]string // what PKCS#11 reads on the key recorded
		why   []string          // in the refusal; empty: recorded
	}{
		{name: "sign-only and locked", id: "01010101", gen: locked,
			token: map[string]string{"modifiable": "false", "copyable": "false", "private": "true", "always_sensitive": "true", "never_extractable": "true"}},
		{name: "sign-only, locked, RSA 2048", id: "01020102", gen: append([]string{"--rsa-bits", "2048"}, locked...), token: map[string]string{"modifiable": "false"}},
		{name: "as earlier releases made them", id: "0a0a0a0a", gen: []string{"sign_recover=true"},
			token: map[string]string{"modifiable": "true", "copyable": "true", "sign_recover": "true"},
			why:   []string{"CKA_SIGN_RECOVER is true", "CKA_MODIFIABLE is true", "CKA_COPYABLE is true"}},
		{name: "modifiable", id: "0b0b0b0b", gen: []string{"copyable=false"}, token: map[string]string{"modifiable": "true", "copyable": "false"},
			why: []string{"CKA_MODIFIABLE is true"}},
		{name: "copyable", id: "0c0c0c0c", gen: []string{"modifiable=false"}, token: map[string]string{"modifiable": "false", "copyable": "true"},
			why: []string{"CKA_COPYABLE is true"}},
		{name: "not private", id: "0d0d0d0d", gen: append([]string{"private=false"}, locked...), token: map[string]string{"private": "false"},
			why: []string{"CKA_PRIVATE is false"}},
		{name: "RSA 1024", id: "0e0e0e0e", gen: append([]string{"--rsa-bits", "1024"}, locked...), token: map[string]string{"modifiable": "false", "copyable": "false"},
			why: []string{"the RSA modulus has 1024 bits (at least 2048 are required)"}},
		{name: "once readable", id: "10101010", gen: []string{"sensitive=false"}, copy: []string{"sensitive=true", "modifiable=false"},
			token: map[string]string{"sensitive": "true", "always_sensitive": "false", "modifiable": "false"},
			why:   []string{"CKA_ALWAYS_SENSITIVE is false"}},
		{name: "once extractable", id: "11111111", gen: []string{"extractable=true"}, copy: []string{"extractable=false", "modifiable=false"},
			token: map[string]string{"extractable": "false", "never_extractable": "false", "modifiable": "false"},
			why:   []string{"CKA_NEVER_EXTRACTABLE is false"}},
		{name: "may decrypt", id: "02020202", gen: append([]string{"decrypt=true"}, locked...), token: map[string]string{"decrypt": "true"}, why: []string{"CKA_DECRYPT is true"}},
		{name: "may sign with recovery", id: "03030303", gen: append([]string{"sign_recover=true"}, locked...), token: map[string]string{"sign_recover": "true"},
			why: []string{"CKA_SIGN_RECOVER is true"}},
		{name: "may unwrap and derive", id: "04040404", gen: append([]string{"unwrap=true", "derive=true"}, locked...), token: map[string]string{"unwrap": "true", "derive": "true"},
			why: []string{"CKA_UNWRAP is true (it can unwrap keys); CKA_DERIVE is true"}},
		{name: "extractable", id: "05050505", gen: append([]string{"extractable=true"}, locked...), token: map[string]string{"extractable": "true"},
			why: []string{"CKA_EXTRACTABLE is true"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := tt.id
			tool.run(t, "gen", append([]string{"--id", id, "--label", "outside-" + id}, tt.gen...)...)
			if tt.copy != nil {
				id = "c0" + tt.id
				tool.run(t, "copy", append([]string{"--id", tt.id, "--new-id", id}, tt.copy...)...)
			}
			raw := tool.get(t, id)
			for name, v := range tt.token {
				if raw[name] != v {
					t.Fatalf("PKCS#11 reads %s=%q on the key; the case needs %q", name, raw[name], v)
				}
			}
			var k *signerv1.Key
			var err error
			lines := d.newAuditLines(t, func() {
				k, err = d.client.RenameKey(testCtx(t), &signerv1.RenameKeyRequest{KeyId: id, Name: "adopted", Usage: signerv1.KeyUsage_KEY_USAGE_SIGN})
			})
			if len(tt.why) == 0 {
				if err != nil || !k.GetKnown() {
					t.Fatalf("recording a sign-only key: %v, %v", k, err)
				}
				if k.GetModifiable() || k.GetCopyable() || len(k.GetAllowedMechanisms()) != 0 || k.GetAttributeProblem() != "" {
					t.Fatalf("a sign-only key made outside shows %v; want not modifiable, not copyable, no allowed mechanisms, no problem", k)
				}
				alg := "ES256"
				if k.GetType() == "RSA" {
					alg = "PS256"
				}
				if _, err := d.client.Sign(testCtx(t), &signerv1.SignRequest{Key: &signerv1.SignRequest_KeyId{KeyId: id}, Algorithm: alg, Digest: sha("x")}); err != nil {
					t.Fatalf("signing with the recorded key: %v", err)
				}
				return
			}
			for _, w := range tt.why {
				wantCode(t, err, codes.FailedPrecondition, w)
			}
			wantAuditedRefusal(t, lines, "key.rename", tt.why...)
			shown, err := d.client.GetKey(testCtx(t), &signerv1.GetKeyRequest{KeyId: id})
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tt.why {
				if shown.GetKnown() || !strings.Contains(shown.GetAttributeProblem(), w) {
					t.Fatalf("after the refusal key show says known=%v, attribute problem %q; want %q", shown.GetKnown(), shown.GetAttributeProblem(), w)
				}
			}
		})
	}
}

// signBoth signs with id by Sign and by SignBatch (individual and Merkle)
// and returns the three errors.
func signBoth(t *testing.T, d *testDaemon, id string) []error {
	t.Helper()
	_, err := d.client.Sign(testCtx(t), &signerv1.SignRequest{Key: &signerv1.SignRequest_KeyId{KeyId: id}, Algorithm: "ES256", Digest: sha("one")})
	errs := []error{err}
	for _, mode := range []signerv1.BatchMode{signerv1.BatchMode_BATCH_MODE_INDIVIDUAL, signerv1.BatchMode_BATCH_MODE_MERKLE} {
		_, err := d.client.SignBatch(testCtx(t), &signerv1.SignBatchRequest{Key: &signerv1.SignBatchRequest_KeyId{KeyId: id}, Algorithm: "ES256",
			Digests: [][]byte{sha("a"), sha("b"), sha("c")}, Mode: mode})
		errs = append(errs, err)
	}
	return errs
}

// TestKeyFromEarlierReleaseRefused: a key that an earlier release made and
// recorded (modifiable, copyable, CKA_SIGN_RECOVER true) is refused for
// single and batch signing with FAILED_PRECONDITION naming each attribute,
// every refusal is audited, and `key show` says why: the officer replaces
// it (the README's upgrade note).
func TestKeyFromEarlierReleaseRefused(t *testing.T) {
	d := newDaemon(t)
	tool := newKeyAttrTool(t, d)
	const id = "e0e0e0e0"
	tool.run(t, "gen", "--id", id, "--label", "earlier", "sign_recover=true")
	raw := tool.get(t, id)
	if raw["modifiable"] != "true" || raw["copyable"] != "true" || raw["sign_recover"] != "true" || raw["allowed_mechanisms"] != "" {
		t.Fatalf("PKCS#11 reads %v; want the key as earlier releases made it", raw)
	}
	now := time.Now().UTC()
	if err := d.svc.store.CreateKey(testCtx(t), state.KeyRecord{Token: d.svc.tokens[0].tok.Serial(), ID: id, Label: "earlier", Name: "earlier",
		Usage: UsageSign, Spec: "EC-P256", CreatedAt: now, UpdatedAt: now}); err != nil {
		t.Fatal(err)
	}
	whys := []string{"CKA_SIGN_RECOVER is true", "CKA_MODIFIABLE is true", "CKA_COPYABLE is true"}
	var errs []error
	lines := d.newAuditLines(t, func() { errs = signBoth(t, d, id) })
	for _, err := range errs {
		for _, w := range whys {
			wantCode(t, err, codes.FailedPrecondition, w)
		}
	}
	wantAuditedRefusal(t, lines, "sign", whys...)
	wantAuditedRefusal(t, lines, "sign_batch", whys...)
	k, err := d.client.GetKey(testCtx(t), &signerv1.GetKeyRequest{KeyId: id})
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range whys {
		if !k.GetKnown() || !strings.Contains(k.GetAttributeProblem(), w) {
			t.Fatalf("key show: known %v, attribute problem %q; want %q", k.GetKnown(), k.GetAttributeProblem(), w)
		}
	}
}

// TestSignRefusedWhenKeyIsReplaced: a key recorded in signerd is destroyed
// by another process through PKCS#11 and made again under its id, as
// earlier releases made keys (modifiable). The daemon refuses single and
// batch signing with it (FAILED_PRECONDITION, naming the attribute, each
// refusal audited) within hsm.KeyRecheckInterval, and `key show` reads the
// new key's attributes from the token.
func TestSignRefusedWhenKeyIsReplaced(t *testing.T) {
	d := newDaemon(t)
	tool := newKeyAttrTool(t, d)
	const id = "0f0f0f0f"
	tool.run(t, "gen", append([]string{"--id", id, "--label", "replaced"}, locked...)...)
	if _, err := d.client.RenameKey(testCtx(t), &signerv1.RenameKeyRequest{KeyId: id, Name: "replaced", Usage: signerv1.KeyUsage_KEY_USAGE_SIGN}); err != nil {
		t.Fatal(err)
	}
	for i, err := range signBoth(t, d, id) {
		if err != nil {
			t.Fatalf("signing (%d) before the key was replaced: %v", i, err)
		}
	}
	tool.run(t, "destroy", "--id", id)
	tool.run(t, "gen", "--id", id, "--label", "replaced")
	if raw := tool.get(t, id); raw["modifiable"] != "true" {
		t.Fatalf("PKCS#11 reads %v; want the new key modifiable", raw)
	}
	const why = "CKA_MODIFIABLE is true"
	deadline := time.Now().Add(hsm.KeyRecheckInterval + 5*time.Second)
	for {
		var errs []error
		lines := d.newAuditLines(t, func() { errs = signBoth(t, d, id) })
		refused := 0
		for _, err := range errs {
			switch {
			case status.Code(err) == codes.FailedPrecondition:
				wantCode(t, err, codes.FailedPrecondition, why)
				refused++
			case err != nil:
				t.Fatalf("signing with the replaced key: %v", err)
			}
		}
		if refused == len(errs) {
			wantAuditedRefusal(t, lines, "sign", why)
			wantAuditedRefusal(t, lines, "sign_batch", why)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("signing with the replaced key still gives %v %s after it was replaced", errs, hsm.KeyRecheckInterval+5*time.Second)
		}
		time.Sleep(50 * time.Millisecond)
	}
	k, err := d.client.GetKey(testCtx(t), &signerv1.GetKeyRequest{KeyId: id})
	if err != nil {
		t.Fatal(err)
	}
	if !k.GetModifiable() || !strings.Contains(k.GetAttributeProblem(), why) {
		t.Fatalf("key show: modifiable %v, attribute problem %q; want the token's attributes", k.GetModifiable(), k.GetAttributeProblem())
	}
}

// TestSignJOSENameOnAnotherCurve: ES384 names P-384 (RFC 7518) and is
// refused with INVALID_ARGUMENT on a P-256 key; the X-Road name
// SHA384withECDSA binds no curve and signs with it (finding 8).
func TestSignJOSENameOnAnotherCurve(t *testing.T) {
	d := newDaemon(t)
	k := d.genKey(t, "p256", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	digest := make([]byte, 48)
	_, err := d.client.Sign(testCtx(t), &signerv1.SignRequest{Key: &signerv1.SignRequest_KeyId{KeyId: k.GetId()}, Algorithm: "ES384", Digest: digest})
	wantCode(t, err, codes.InvalidArgument, "ES384 needs a P-384 key")
	_, err = d.client.SignBatch(testCtx(t), &signerv1.SignBatchRequest{Key: &signerv1.SignBatchRequest_KeyId{KeyId: k.GetId()}, Algorithm: "ES512", Digests: [][]byte{make([]byte, 64)}})
	wantCode(t, err, codes.InvalidArgument, "ES512 needs a P-521 key")
	if _, err := d.client.Sign(testCtx(t), &signerv1.SignRequest{Key: &signerv1.SignRequest_KeyId{KeyId: k.GetId()}, Algorithm: "SHA384withECDSA", Digest: digest}); err != nil {
		t.Fatalf("SHA384withECDSA on a P-256 key, as X-Road signs: %v", err)
	}
}
