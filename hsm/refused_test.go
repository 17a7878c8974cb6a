package hsm

import (
	"errors"
	"strings"
	"testing"

	"github.com/miekg/pkcs11"
)

// TestSignKeyFunctionNotPermitted checks what a sign answers when the
// token refuses C_SignInit or C_Sign with KEY_FUNCTION_NOT_PERMITTED, as
// SoftHSM does while another session destroys the private key: the key is
// looked up again by CKA_ID, and a key gone is ErrKeyNotFound, a key still
// there ErrKeyAttributes with the reason, never the bare PKCS#11 error
// (which the daemon answers as INTERNAL).
func TestSignKeyFunctionNotPermitted(t *testing.T) {
	e := newEnv(t, nil)
	alg := mustAlg(t, "ES256")
	tests := []struct {
		name string
		call string // the call refused
		// meanwhile runs when the refused call is made, before it answers.
		meanwhile func(t *testing.T, k Key)
		want      error
		wantText  string
	}{
		{
			name: "SignInit, key destroyed", call: "SignInit",
			meanwhile: func(t *testing.T, k Key) { deleteKeyOK(t, e, k) },
			want:      ErrKeyNotFound,
		},
		{
			name: "Sign, key destroyed", call: "Sign",
			meanwhile: func(t *testing.T, k Key) { deleteKeyOK(t, e, k) },
			want:      ErrKeyNotFound,
		},
		{
			name: "SignInit, key there, attributes hold", call: "SignInit",
			meanwhile: func(*testing.T, Key) {},
			want:      ErrKeyAttributes, wantText: "CKR_KEY_FUNCTION_NOT_PERMITTED",
		},
		{
			name: "SignInit, key there, attributes changed", call: "SignInit",
			meanwhile: func(*testing.T, Key) { e.fault.report(pkcs11.CKA_DECRYPT, []byte{1}) },
			want:      ErrKeyAttributes, wantText: "CKA_DECRYPT is true",
		},
		{
			name: "Sign, key there, attributes changed", call: "Sign",
			meanwhile: func(*testing.T, Key) { e.fault.report(pkcs11.CKA_SIGN, []byte{0}) },
			want:      ErrKeyAttributes, wantText: "CKA_SIGN is false",
		},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := e.genKey(t, ECP256, "refused-"+string(rune('a'+i)))
			signOK(t, e.tok, k, "the handle is cached")
			t.Cleanup(func() {
				e.fault.mu.Lock()
				e.fault.onCall = nil
				e.fault.mu.Unlock()
				e.fault.report(pkcs11.CKA_DECRYPT, nil)
				e.fault.report(pkcs11.CKA_SIGN, nil)
			})
			e.fault.mu.Lock()
			e.fault.onCall = func(name string) {
				if name != tt.call {
					return
				}
				e.fault.mu.Lock()
				e.fault.onCall = nil
				e.fault.mu.Unlock()
				tt.meanwhile(t, k)
			}
			e.fault.mu.Unlock()
			e.fault.failNext(tt.call, pkcs11.CKR_KEY_FUNCTION_NOT_PERMITTED, 1)
			sig, err := e.tok.Sign(testContext(t), k.ID, alg, digestOf("refused"))
			if sig != nil || !errors.Is(err, tt.want) {
				t.Fatalf("Sign after C_%s answered KEY_FUNCTION_NOT_PERMITTED = %x, %v; want %v", tt.call, sig, err, tt.want)
			}
			if !strings.Contains(err.Error(), tt.wantText) {
				t.Fatalf("Sign = %v; want the reason %q", err, tt.wantText)
			}
			e.assertNoLeakedSessions(t)
		})
	}
}

// deleteKeyOK deletes k from the token or fails the test.
func deleteKeyOK(t *testing.T, e *testEnv, k Key) {
	t.Helper()
	if err := e.tok.DeleteKey(testContext(t), k.ID); err != nil {
		t.Fatalf("DeleteKey: %v", err)
	}
}

// TestListKeysSkipsAKeyDeletedMeanwhile checks that a key deleted by
// another session while ListKeys reads it (its private key found, its
// public key gone by the time it is looked up) is left out of the list,
// not turned into a failure of the whole listing.
func TestListKeysSkipsAKeyDeletedMeanwhile(t *testing.T) {
	e := newEnv(t, nil)
	gone := e.genKey(t, ECP256, "deleted-meanwhile")
	kept := e.genKey(t, ECP256, "kept")
	// Cold, as after a login: ListKeys looks the public keys up (one
	// search for them all) instead of taking them from the cache.
	e.tok.forgetKeys()
	finds := 0
	t.Cleanup(func() {
		e.fault.mu.Lock()
		e.fault.onCall = nil
		e.fault.mu.Unlock()
	})
	e.fault.mu.Lock()
	e.fault.onCall = func(name string) {
		if name != "FindObjectsInit" {
			return
		}
		// The first search lists the private keys; the next one looks for
		// their public keys: delete a key just before.
		if finds++; finds != 2 {
			return
		}
		e.fault.mu.Lock()
		e.fault.onCall = nil
		e.fault.mu.Unlock()
		deleteKeyOK(t, e, gone)
	}
	e.fault.mu.Unlock()
	keys, err := e.tok.ListKeys(testContext(t))
	if err != nil {
		t.Fatalf("ListKeys with a key deleted meanwhile: %v", err)
	}
	var ids []string
	for _, k := range keys {
		ids = append(ids, k.IDHex())
	}
	if len(keys) != 1 || keys[0].IDHex() != kept.IDHex() {
		t.Fatalf("ListKeys = %v, want only the kept key %s (deleted: %s)", ids, kept.IDHex(), gone.IDHex())
	}
}
