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

// TestRegisterKeyMadeOutsideChecksAttributes: an officer records a key
// made outside signerd (`key rename ID NAME --usage sign`) only when its
// attributes, read from the token, make it sign-only; a refused key stays
// unrecorded and `key show` says why (finding 5).
func TestRegisterKeyMadeOutsideChecksAttributes(t *testing.T) {
	d := newDaemon(t)
	tool := newKeyAttrTool(t, d)
	tests := []struct {
		name  string
		id    string
		attrs []string // p11-keyattr gen ATTR=BOOL
		why   string   // in the refusal; empty: recorded
	}{
		{"sign-only but modifiable", "01010101", nil, ""},
		{"may decrypt", "02020202", []string{"decrypt=true"}, "CKA_DECRYPT is true"},
		{"may sign with recovery", "03030303", []string{"sign_recover=true"}, "CKA_SIGN_RECOVER is true"},
		{"may unwrap and derive", "04040404", []string{"unwrap=true", "derive=true"}, "CKA_UNWRAP is true (it can unwrap keys); CKA_DERIVE is true"},
		{"extractable", "05050505", []string{"extractable=true"}, "CKA_EXTRACTABLE is true"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tool.run(t, "gen", append([]string{"--id", tt.id, "--label", "outside-" + tt.id}, tt.attrs...)...)
			k, err := d.client.RenameKey(testCtx(t), &signerv1.RenameKeyRequest{KeyId: tt.id, Name: "adopted", Usage: signerv1.KeyUsage_KEY_USAGE_SIGN})
			if tt.why == "" {
				if err != nil || !k.GetKnown() {
					t.Fatalf("recording a sign-only key: %v, %v", k, err)
				}
				if !k.GetModifiable() || !k.GetCopyable() || len(k.GetAllowedMechanisms()) != 0 || k.GetAttributeProblem() != "" {
					t.Fatalf("a sign-only key made outside shows %v; want modifiable, copyable, no allowed mechanisms, no problem", k)
				}
				if _, err := d.client.Sign(testCtx(t), &signerv1.SignRequest{Key: &signerv1.SignRequest_KeyId{KeyId: tt.id}, Algorithm: "ES256", Digest: sha("x")}); err != nil {
					t.Fatalf("signing with the recorded key: %v", err)
				}
				return
			}
			wantCode(t, err, codes.FailedPrecondition, tt.why)
			shown, err := d.client.GetKey(testCtx(t), &signerv1.GetKeyRequest{KeyId: tt.id})
			if err != nil {
				t.Fatal(err)
			}
			if shown.GetKnown() || !strings.Contains(shown.GetAttributeProblem(), tt.why) {
				t.Fatalf("after the refusal key show says known=%v, attribute problem %q", shown.GetKnown(), shown.GetAttributeProblem())
			}
		})
	}
}

// TestSignRefusedWhenKeyAttributesChange is finding 5's regression test
// for a key whose attributes change under a running daemon: a modifiable
// key made outside signerd and recorded is flipped to CKA_DECRYPT = true
// by another process through PKCS#11. The daemon refuses to sign with it
// (FAILED_PRECONDITION, naming the attribute) within
// hsm.KeyRecheckInterval, and `key show` reads the attributes from the
// token, not from a cache: it shows the change at once, and signing is
// refused from then on.
func TestSignRefusedWhenKeyAttributesChange(t *testing.T) {
	d := newDaemon(t)
	tool := newKeyAttrTool(t, d)
	const id = "0f0f0f0f"
	tool.run(t, "gen", "--id", id, "--label", "flipped")
	if _, err := d.client.RenameKey(testCtx(t), &signerv1.RenameKeyRequest{KeyId: id, Name: "flipped", Usage: signerv1.KeyUsage_KEY_USAGE_SIGN}); err != nil {
		t.Fatal(err)
	}
	sign := func() error {
		_, err := d.client.Sign(testCtx(t), &signerv1.SignRequest{Key: &signerv1.SignRequest_KeyId{KeyId: id}, Algorithm: "ES256", Digest: sha("flip")})
		return err
	}
	if err := sign(); err != nil {
		t.Fatalf("signing before the change: %v", err)
	}
	// waitSign signs until the result is wantRefused, within the bound the
	// daemon promises; any other error fails the test.
	waitSign := func(t *testing.T, wantRefused bool) {
		t.Helper()
		deadline := time.Now().Add(hsm.KeyRecheckInterval + 5*time.Second)
		for {
			err := sign()
			switch {
			case wantRefused && status.Code(err) == codes.FailedPrecondition:
				if !strings.Contains(status.Convert(err).Message(), "CKA_DECRYPT is true") {
					t.Fatalf("refused without saying why: %v", err)
				}
				return
			case !wantRefused && err == nil:
				return
			case err != nil && status.Code(err) != codes.FailedPrecondition:
				t.Fatalf("sign: %v", err)
			case time.Now().After(deadline):
				t.Fatalf("signing still gives %v %s after the change", err, hsm.KeyRecheckInterval+5*time.Second)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	t.Run("refused within the recheck interval", func(t *testing.T) {
		tool.run(t, "set", "--id", id, "decrypt=true")
		waitSign(t, true)
		k, err := d.client.GetKey(testCtx(t), &signerv1.GetKeyRequest{KeyId: id})
		if err != nil {
			t.Fatal(err)
		}
		if !k.GetCanDecrypt() || !strings.Contains(k.GetAttributeProblem(), "CKA_DECRYPT is true") {
			t.Fatalf("key show: can_decrypt %v, attribute problem %q", k.GetCanDecrypt(), k.GetAttributeProblem())
		}
		tool.run(t, "set", "--id", id, "decrypt=false")
		waitSign(t, false)
	})
	t.Run("key show reads the token, and signing follows at once", func(t *testing.T) {
		tool.run(t, "set", "--id", id, "decrypt=true")
		k, err := d.client.GetKey(testCtx(t), &signerv1.GetKeyRequest{KeyId: id})
		if err != nil {
			t.Fatal(err)
		}
		if !k.GetCanDecrypt() || !strings.Contains(k.GetAttributeProblem(), "CKA_DECRYPT is true") {
			t.Fatalf("key show after the change: can_decrypt %v, attribute problem %q; want the token's attributes", k.GetCanDecrypt(), k.GetAttributeProblem())
		}
		wantCode(t, sign(), codes.FailedPrecondition, "CKA_DECRYPT is true")
		list, err := d.client.ListKeys(testCtx(t), &signerv1.ListKeysRequest{})
		if err != nil || len(list.GetKeys()) != 1 || list.GetKeys()[0].GetAttributeProblem() == "" {
			t.Fatalf("key list: %v, %v; want the key with its problem", list, err)
		}
	})
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
