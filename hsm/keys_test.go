package hsm

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rsa"
	"errors"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/pkcs11"

	softhsmtest "github.com/hsmsigner/hsmsigner/softhsm-test"
)

func TestGenerateKeyAttributes(t *testing.T) {
	e := newEnv(t, nil)
	tests := []struct {
		spec  KeySpec
		typ   KeyType
		bits  int
		curve string
	}{
		{RSA2048, KeyRSA, 2048, ""},
		{RSA3072, KeyRSA, 3072, ""},
		{RSA4096, KeyRSA, 4096, ""},
		{ECP256, KeyEC, 256, "P-256"},
		{ECP384, KeyEC, 384, "P-384"},
	}
	for _, tt := range tests {
		t.Run(string(tt.spec), func(t *testing.T) {
			k := e.genKey(t, tt.spec, "key-"+string(tt.spec))
			if len(k.ID) != 16 {
				t.Errorf("CKA_ID has %d bytes, want 16", len(k.ID))
			}
			if k.Type != tt.typ || k.Bits != tt.bits || k.Curve != tt.curve || k.Label != "key-"+string(tt.spec) {
				t.Errorf("key = %+v", k)
			}
			switch p := k.Public.(type) {
			case *rsa.PublicKey:
				if p.N.BitLen() != tt.bits || p.E != 65537 {
					t.Errorf("RSA public key %d bits, e=%d", p.N.BitLen(), p.E)
				}
			case *ecdsa.PublicKey:
				if p.Curve.Params().Name != tt.curve {
					t.Errorf("curve %s", p.Curve.Params().Name)
				}
			default:
				t.Errorf("public key type %T", k.Public)
			}
			want := KeyAttributes{Private: true, Sensitive: true, AlwaysSensitive: true, NeverExtractable: true, Sign: true,
				AllowedMechanisms: signMechanisms(tt.typ)}
			if !reflect.DeepEqual(k.Attrs, want) {
				t.Errorf("private key attributes %+v, want %+v", k.Attrs, want)
			}
			if err := k.AttributeProblem(); err != nil {
				t.Errorf("AttributeProblem: %v", err)
			}
			e.assertObjectAttrs(t, k.ID, tt.typ)
		})
	}
}

// assertObjectAttrs reads every attribute of the key pair that makes it
// sign-only back through PKCS#11, with C_GetAttributeValue on a session of
// its own (rawSession), independent of the package's own parsing.
func (e *testEnv) assertObjectAttrs(t *testing.T, id []byte, kt KeyType) {
	t.Helper()
	ctx, h := e.rawSession(t)
	for _, tc := range []struct {
		class uint
		want  map[uint]bool
	}{
		{pkcs11.CKO_PRIVATE_KEY, map[uint]bool{pkcs11.CKA_TOKEN: true, pkcs11.CKA_PRIVATE: true, pkcs11.CKA_SENSITIVE: true,
			pkcs11.CKA_ALWAYS_SENSITIVE: true, pkcs11.CKA_EXTRACTABLE: false, pkcs11.CKA_NEVER_EXTRACTABLE: true,
			pkcs11.CKA_SIGN: true, pkcs11.CKA_SIGN_RECOVER: false, pkcs11.CKA_DECRYPT: false, pkcs11.CKA_UNWRAP: false,
			pkcs11.CKA_DERIVE: false, pkcs11.CKA_MODIFIABLE: false, pkcs11.CKA_COPYABLE: false, pkcs11.CKA_DESTROYABLE: true}},
		{pkcs11.CKO_PUBLIC_KEY, map[uint]bool{pkcs11.CKA_TOKEN: true, pkcs11.CKA_PRIVATE: false, pkcs11.CKA_VERIFY: true,
			pkcs11.CKA_ENCRYPT: false, pkcs11.CKA_WRAP: false, pkcs11.CKA_MODIFIABLE: false}},
	} {
		obj := rawFind(t, ctx, h, tc.class, id)
		var q []*pkcs11.Attribute
		for a := range tc.want {
			q = append(q, pkcs11.NewAttribute(a, nil))
		}
		got, err := ctx.GetAttributeValue(h, obj, q)
		if err != nil {
			t.Fatalf("class %d: C_GetAttributeValue: %v", tc.class, err)
		}
		for _, a := range got {
			if len(a.Value) != 1 {
				t.Errorf("class %d attribute 0x%x has %d bytes, want a CK_BBOOL", tc.class, a.Type, len(a.Value))
			} else if v := a.Value[0] == 1; v != tc.want[a.Type] {
				t.Errorf("class %d attribute 0x%x = %v, want %v", tc.class, a.Type, v, tc.want[a.Type])
			}
		}
	}
	priv := rawFind(t, ctx, h, pkcs11.CKO_PRIVATE_KEY, id)
	got, err := ctx.GetAttributeValue(h, priv, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ALLOWED_MECHANISMS, nil)})
	if err != nil {
		t.Fatalf("C_GetAttributeValue(CKA_ALLOWED_MECHANISMS): %v", err)
	}
	want := map[KeyType][]uint{KeyRSA: {pkcs11.CKM_RSA_PKCS, pkcs11.CKM_RSA_PKCS_PSS}, KeyEC: {pkcs11.CKM_ECDSA}}[kt]
	if mechs := rawMechanisms(got[0].Value); !slices.Equal(mechs, want) {
		t.Errorf("CKA_ALLOWED_MECHANISMS = %#x, want %#x", mechs, want)
	}
	// The private value cannot be read.
	for _, secret := range []uint{pkcs11.CKA_PRIVATE_EXPONENT, pkcs11.CKA_VALUE, pkcs11.CKA_PRIME_1} {
		if v, err := ctx.GetAttributeValue(h, priv, []*pkcs11.Attribute{pkcs11.NewAttribute(secret, nil)}); err == nil && len(v) == 1 && len(v[0].Value) > 0 {
			t.Errorf("secret attribute 0x%x readable from the token", secret)
		}
	}
}

// TestPkcs11ToolSeesSignOnlyKeys has OpenSC's pkcs11-tool list the objects,
// as an officer would check them.
func TestPkcs11ToolSeesSignOnlyKeys(t *testing.T) {
	e := newEnv(t, nil)
	e.genKey(t, RSA2048, "tool-rsa")
	e.genKey(t, ECP256, "tool-ec")
	// pkcs11-tool reads the PIN from the environment (env:NAME), never argv.
	out, err := e.soft.PKCS11Tool(testContext(t), "--login", "--pin", "env:"+softhsmtest.UserPINEnv, "--list-objects", "--type", "privkey")
	if err != nil {
		t.Fatalf("pkcs11-tool: %v\n%s", err, out)
	}
	text := string(out)
	blocks := regexp.MustCompile(`(?m)^Private Key Object`).Split(text, -1)[1:]
	if len(blocks) != 2 {
		t.Fatalf("pkcs11-tool lists %d private keys, want 2:\n%s", len(blocks), text)
	}
	for _, b := range blocks {
		usage := regexp.MustCompile(`Usage:\s*(.*)`).FindStringSubmatch(b)
		access := regexp.MustCompile(`Access:\s*(.*)`).FindStringSubmatch(b)
		if usage == nil || access == nil {
			t.Fatalf("no Usage/Access lines:\n%s", b)
		}
		if strings.TrimSpace(usage[1]) != "sign" {
			t.Errorf("usage %q, want sign only:\n%s", usage[1], b)
		}
		for _, w := range []string{"sensitive", "always sensitive", "never extractable"} {
			if !strings.Contains(access[1], w) {
				t.Errorf("access %q lacks %q", access[1], w)
			}
		}
		if strings.Contains(access[1], " extractable") && !strings.Contains(access[1], "never extractable") {
			t.Errorf("access %q: extractable", access[1])
		}
	}
}

func TestKeyLookupAndList(t *testing.T) {
	e := newEnv(t, nil)
	ctx := testContext(t)
	a := e.genKey(t, ECP256, "alpha")
	b := e.genKey(t, RSA2048, "beta")
	keys, err := e.tok.ListKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 2 {
		t.Fatalf("ListKeys = %d keys, want 2", len(keys))
	}
	for _, k := range keys {
		want := map[string]Key{"alpha": a, "beta": b}[k.Label]
		if !bytes.Equal(k.ID, want.ID) {
			t.Errorf("listed %q with id %x, want %x", k.Label, k.ID, want.ID)
		}
	}
	tests := []struct {
		name    string
		find    func() (Key, error)
		want    []byte
		wantErr error
	}{
		{"by id", func() (Key, error) { return e.tok.KeyByID(ctx, a.ID) }, a.ID, nil},
		{"by label", func() (Key, error) { return e.tok.KeyByLabel(ctx, "beta") }, b.ID, nil},
		{"by URI object", func() (Key, error) { return e.tok.KeyByURI(ctx, "pkcs11:token="+e.soft.Label+";object=alpha") }, a.ID, nil},
		{"by URI id", func() (Key, error) { return e.tok.KeyByURI(ctx, "pkcs11:id="+pctEncode(b.ID)) }, b.ID, nil},
		{"URI id and wrong label", func() (Key, error) { return e.tok.KeyByURI(ctx, "pkcs11:object=alpha;id="+pctEncode(b.ID)) }, nil, ErrKeyNotFound},
		{"URI of another token", func() (Key, error) { return e.tok.KeyByURI(ctx, "pkcs11:token=other;object=alpha") }, nil, ErrKeyNotFound},
		{"URI naming no key", func() (Key, error) { return e.tok.KeyByURI(ctx, "pkcs11:token="+e.soft.Label) }, nil, ErrInvalidURI},
		{"unknown id", func() (Key, error) { return e.tok.KeyByID(ctx, []byte{1, 2, 3}) }, nil, ErrKeyNotFound},
		{"unknown label", func() (Key, error) { return e.tok.KeyByLabel(ctx, "gamma") }, nil, ErrKeyNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := tt.find()
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("error %v, want %v", err, tt.wantErr)
			}
			if !bytes.Equal(k.ID, tt.want) {
				t.Fatalf("found id %x, want %x", k.ID, tt.want)
			}
		})
	}
}

func pctEncode(b []byte) string {
	var sb strings.Builder
	for _, c := range b {
		sb.WriteString("%")
		sb.WriteString(strings.ToUpper(string("0123456789abcdef"[c>>4]) + string("0123456789abcdef"[c&15])))
	}
	return sb.String()
}

func TestGenerateKeyBadInput(t *testing.T) {
	e := newEnv(t, nil)
	ctx := testContext(t)
	e.genKey(t, ECP256, "taken")
	tests := []struct {
		name    string
		spec    KeySpec
		label   string
		wantErr error
	}{
		{"label in use", ECP256, "taken", ErrKeyExists},
		{"label in use, other type", RSA2048, "taken", ErrKeyExists},
		{"empty label", ECP256, "", ErrInvalidArgument},
		{"control character", ECP256, "a\nb", ErrInvalidArgument},
		{"unknown spec", KeySpec("DSA1024"), "x", ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := e.tok.GenerateKey(ctx, tt.spec, tt.label); !errors.Is(err, tt.wantErr) {
				t.Fatalf("GenerateKey: %v, want %v", err, tt.wantErr)
			}
		})
	}
	keys, err := e.tok.ListKeys(ctx)
	if err != nil || len(keys) != 1 {
		t.Fatalf("after refused generations: %d keys, %v; want the one key", len(keys), err)
	}
	if n := e.countObjects(t); n != 2 {
		t.Fatalf("%d key objects on the token, want 2 (no orphans)", n)
	}
}

func TestGenerateSameLabelConcurrently(t *testing.T) {
	e := newEnv(t, nil)
	var wg sync.WaitGroup
	results := make(chan error, 4)
	for range 4 {
		wg.Go(func() {
			_, err := e.tok.GenerateKey(context.Background(), ECP256, "race")
			results <- err
		})
	}
	wg.Wait()
	close(results)
	ok, exists := 0, 0
	for err := range results {
		switch {
		case err == nil:
			ok++
		case errors.Is(err, ErrKeyExists):
			exists++
		default:
			t.Errorf("unexpected error: %v", err)
		}
	}
	if ok != 1 || exists != 3 {
		t.Fatalf("%d generated, %d refused; want 1 and 3", ok, exists)
	}
}

func TestGenerateKeyFailureLeavesNothing(t *testing.T) {
	e := newEnv(t, nil)
	e.fault.failNext("GenerateKeyPair", pkcs11.CKR_DEVICE_MEMORY, 2)
	_, err := e.tok.GenerateKey(testContext(t), ECP256, "doomed")
	if err == nil {
		t.Fatal("GenerateKey succeeded although the device failed twice")
	}
	if n := e.countObjects(t); n != 0 {
		t.Fatalf("%d objects left after a failed generation", n)
	}
	e.assertNoLeakedSessions(t)
}

// countObjects counts key and certificate objects on the token.
func (e *testEnv) countObjects(t *testing.T) int {
	t.Helper()
	n := 0
	err := e.tok.withSession(testContext(t), func(s *session) error {
		n = 0
		for _, c := range []uint{pkcs11.CKO_PRIVATE_KEY, pkcs11.CKO_PUBLIC_KEY, pkcs11.CKO_CERTIFICATE} {
			hs, err := e.tok.find(s, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, c)}, 1000)
			if err != nil {
				return err
			}
			n += len(hs)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestDeleteKeyInUse(t *testing.T) {
	e := newEnv(t, nil, WithPoolSize(2))
	k := e.genKey(t, RSA2048, "busy")
	keep := e.genKey(t, ECP256, "kept")
	started := make(chan struct{})
	var wg sync.WaitGroup
	results := make(chan error, 2)
	for range 2 {
		wg.Go(func() {
			signed := 0
			for range 100000 {
				_, err := e.tok.Sign(context.Background(), k.ID, mustAlg(t, "RS256"), digestOf("busy"))
				if err != nil {
					results <- err
					return
				}
				signed++
				if signed == 5 {
					started <- struct{}{}
				}
			}
			results <- errors.New("the key was never deleted")
		})
	}
	<-started
	<-started
	if err := e.tok.DeleteKey(testContext(t), k.ID); err != nil {
		t.Fatalf("DeleteKey while signing: %v", err)
	}
	wg.Wait()
	close(results)
	for err := range results {
		if !errors.Is(err, ErrKeyNotFound) {
			t.Errorf("a signer ended with %v; want ErrKeyNotFound", err)
		}
	}
	if _, err := e.tok.KeyByID(testContext(t), k.ID); !errors.Is(err, ErrKeyNotFound) {
		t.Fatalf("KeyByID after delete: %v", err)
	}
	if err := e.tok.DeleteKey(testContext(t), k.ID); !errors.Is(err, ErrKeyNotFound) {
		t.Fatalf("second DeleteKey: %v; want ErrKeyNotFound", err)
	}
	if n := e.countObjects(t); n != 2 {
		t.Fatalf("%d objects on the token, want the 2 of the kept key", n)
	}
	signOK(t, e.tok, keep, "the other key still works")
	e.assertNoLeakedSessions(t)
}
