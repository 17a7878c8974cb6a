package hsm

import (
	"errors"
	"testing"

	"github.com/miekg/pkcs11"
)

// carryNoMechanisms makes e's module unable to hand over a non-empty
// CKA_ALLOWED_MECHANISMS, as p11-kit's RPC 0.24 (Debian 12) is.
func carryNoMechanisms(e *testEnv) {
	e.fault.mu.Lock()
	e.fault.uncarried[pkcs11.CKA_ALLOWED_MECHANISMS] = true
	e.fault.mu.Unlock()
}

// TestGenerateKeyThroughAModuleThatCannotReadMechanisms: the module takes
// CKA_ALLOWED_MECHANISMS but answers DEVICE_ERROR when it is read back
// (p11-kit-client.so of Debian 12). The key is made again without the
// list, as for a module that refuses it, and signs; the module is not
// taken for failed and initialised again.
func TestGenerateKeyThroughAModuleThatCannotReadMechanisms(t *testing.T) {
	e := newEnv(t, nil)
	carryNoMechanisms(e)
	gen := e.mod.Info().Generation
	k, err := e.tok.GenerateKey(testContext(t), ECP256, "through-rpc")
	if err != nil {
		t.Fatalf("GenerateKey: %v", err)
	}
	if len(k.Attrs.AllowedMechanisms) != 0 || k.Attrs.MechanismsUnreadable {
		t.Fatalf("key attributes %+v; want a key made without CKA_ALLOWED_MECHANISMS", k.Attrs)
	}
	signOK(t, e.tok, k, "signs")
	if got := e.mod.Info().Generation; got != gen {
		t.Fatalf("module generation %d, was %d: an attribute the module cannot carry was taken for a failed device", got, gen)
	}
	e.assertNoLeakedSessions(t)
}

// TestKeyWithUnreadableMechanismsIsRefused: a key that has a list the
// module cannot hand over is refused (its restriction is unknown) with
// ErrKeyAttributes, not reported as an HSM gone.
func TestKeyWithUnreadableMechanismsIsRefused(t *testing.T) {
	e := newEnv(t, nil)
	k := e.genKey(t, ECP256, "restricted")
	if len(k.Attrs.AllowedMechanisms) == 0 {
		t.Fatal("SoftHSM made the key without CKA_ALLOWED_MECHANISMS: the test needs a restricted key")
	}
	carryNoMechanisms(e)
	gen := e.mod.Info().Generation
	got, err := e.tok.KeyByID(testContext(t), k.ID)
	if err != nil {
		t.Fatalf("KeyByID: %v", err)
	}
	if !got.Attrs.MechanismsUnreadable || !errors.Is(got.AttributeProblem(), ErrKeyAttributes) {
		t.Fatalf("attributes %+v, problem %v; want unreadable mechanisms, refused", got.Attrs, got.AttributeProblem())
	}
	if _, err := e.tok.Sign(testContext(t), k.ID, mustAlg(t, "ES256"), digestOf("x")); !errors.Is(err, ErrKeyAttributes) {
		t.Fatalf("Sign: %v; want ErrKeyAttributes", err)
	}
	if g := e.mod.Info().Generation; g != gen {
		t.Fatalf("module generation %d, was %d", g, gen)
	}
	e.assertNoLeakedSessions(t)
}
