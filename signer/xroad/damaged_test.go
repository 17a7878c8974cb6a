package xroad

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/miekg/pkcs11"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/xroad/xroadpb"
)

// damage leaves on the rig's token, as a crash would, an EC private key
// object with an id and without its public key object (whose id it
// returns) and a public key object without CKA_ID labelled label,
// through an outside PKCS#11 application (the library is shared with the
// daemon, whose login covers it).
func (r *rig) damage(t *testing.T, label string) string {
	t.Helper()
	p := pkcs11.New(r.soft.ModulePath)
	if p == nil {
		t.Fatal("cannot load the SoftHSM library")
	}
	if err := p.Initialize(); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
		t.Fatal(err)
	}
	slots, err := p.GetSlotList(true)
	if err != nil {
		t.Fatal(err)
	}
	var h pkcs11.SessionHandle
	found := false
	for _, s := range slots {
		if ti, err := p.GetTokenInfo(s); err == nil && strings.TrimSpace(ti.SerialNumber) == r.soft.Serial {
			if h, err = p.OpenSession(s, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION); err != nil {
				t.Fatal(err)
			}
			found = true
		}
	}
	if !found {
		t.Fatalf("token %s not found", r.soft.Serial)
	}
	defer func() { _ = p.CloseSession(h) }()
	pk, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := pk.PublicKey.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	params := []byte{6, 8, 0x2a, 0x86, 0x48, 0xce, 0x3d, 3, 1, 7} // P-256
	id := []byte(rand.Text())[:16]
	for _, tmpl := range [][]*pkcs11.Attribute{{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, "half"),
		pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, params),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE, pk.D.FillBytes(make([]byte, 32))),
	}, {
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, params),
		pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, append([]byte{4, byte(len(raw))}, raw...)),
	}} {
		if _, err := p.CreateObject(h, append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true))); err != nil {
			t.Fatal(err)
		}
	}
	return hex.EncodeToString(id)
}

// TestDamagedKeysAreNotOfferedToXRoad: X-Road's token listings (ListTokens,
// GetTokenById, GetTokenByKey) show a damaged key with an id as not
// available, and leave out damaged objects without an id (they have no
// id X-Road could name them by); the whole key beside them stays
// available. Before the fix the damaged key was listed as available, and
// the id-less object as a key with id "no-id".
func TestDamagedKeysAreNotOfferedToXRoad(t *testing.T) {
	r := newRig(t, rigOptions{})
	cc := r.xroadConn(t, nil)
	tokens := xroadpb.NewTokenServiceClient(cc)
	ctx := ctxT(t)
	gen := func(label string) string {
		k, err := r.admin.GenerateKey(ctx, &signerv1.GenerateKeyRequest{Token: "t1", Label: label, Algorithm: "EC-P256", Usage: signerv1.KeyUsage_KEY_USAGE_SIGN})
		if err != nil {
			t.Fatal(err)
		}
		return k.GetId()
	}
	whole := gen("whole")
	half := r.damage(t, "interrupted")
	// The signer lists all three, two of them damaged.
	kl, err := r.admin.ListKeys(ctx, &signerv1.ListKeysRequest{})
	if err != nil || len(kl.GetKeys()) != 3 {
		t.Fatalf("signer ListKeys: %v, %v; want three entries", kl.GetKeys(), err)
	}
	listings := map[string]func(context.Context) (*xroadpb.TokenInfoProto, error){
		"ListTokens": func(ctx context.Context) (*xroadpb.TokenInfoProto, error) {
			lt, err := tokens.ListTokens(ctx, &xroadpb.Empty{})
			if err != nil || len(lt.GetTokens()) != 1 {
				return nil, errors.Join(err, errors.New("not one token"))
			}
			return lt.GetTokens()[0], nil
		},
		"GetTokenById": func(ctx context.Context) (*xroadpb.TokenInfoProto, error) {
			return tokens.GetTokenById(ctx, &xroadpb.GetTokenByIdReq{TokenId: "t1"})
		},
		"GetTokenByKey": func(ctx context.Context) (*xroadpb.TokenInfoProto, error) {
			return tokens.GetTokenByKey(ctx, &xroadpb.GetTokenByKeyIdReq{KeyId: half})
		},
	}
	for name, list := range listings {
		t.Run(name, func(t *testing.T) {
			ti, err := list(ctx)
			if err != nil {
				t.Fatal(err)
			}
			available := map[string]bool{}
			for _, ki := range ti.GetKeyInfo() {
				available[ki.GetId()] = ki.GetAvailable()
			}
			want := map[string]bool{whole: true, half: false}
			if len(available) != len(want) || len(ti.GetKeyInfo()) != len(want) {
				t.Errorf("keys listed to X-Road: %v, want %v", available, want)
			}
			for id, a := range want {
				if got, ok := available[id]; !ok || got != a {
					t.Errorf("key %s: listed %v, available %v; want available %v", id, ok, got, a)
				}
			}
		})
	}
	if _, err := tokens.GetTokenByKey(ctx, &xroadpb.GetTokenByKeyIdReq{KeyId: "no-id"}); codedOf(err) == nil {
		t.Errorf("GetTokenByKey of no-id: %v, want a coded KeyNotFound", err)
	}
}
