package signer

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
)

// TestKeyDestroyedBehindTheDaemon: a key pair destroyed by another
// process holding the PIN (a vendor tool, another node) while signerd has
// it resolved and its handle cached fails at C_SignInit with an invalid
// handle. Each call is answered NOT_FOUND, key not found on the token
// (not INTERNAL or UNAVAILABLE), audited with the key, and the key leaves
// the daemon's key cache.
func TestKeyDestroyedBehindTheDaemon(t *testing.T) {
	d := newDaemon(t)
	tool := newKeyAttrTool(t, d)
	tests := []struct{ keyAlg, alg string }{
		{"EC-P256", "ES256"},
		{"RSA2048", "RS256"},
	}
	for _, tt := range tests {
		t.Run(tt.keyAlg, func(t *testing.T) {
			k := d.genKey(t, "gone-"+tt.keyAlg, tt.keyAlg, signerv1.KeyUsage_KEY_USAGE_SIGN)
			id := k.GetId()
			sign := func() error {
				_, err := d.client.Sign(testCtx(t), &signerv1.SignRequest{Key: &signerv1.SignRequest_KeyId{KeyId: id}, Algorithm: tt.alg, Digest: sha("gone")})
				return err
			}
			batch := func() error {
				_, err := d.client.SignBatch(testCtx(t), &signerv1.SignBatchRequest{Key: &signerv1.SignBatchRequest_KeyId{KeyId: id}, Algorithm: tt.alg, Digests: [][]byte{sha("a"), sha("b")}})
				return err
			}
			// Signed once: the daemon's cache and the token's handle cache
			// both hold the key, so the next call goes straight to
			// C_SignInit with the cached handle.
			if err := sign(); err != nil {
				t.Fatal(err)
			}
			if !d.keyCached(id) {
				t.Fatal("the key is not in the daemon's cache after a signature")
			}
			tool.run(t, "destroy", "--id", id)
			calls := []struct {
				name, op string
				call     func() error
			}{{"Sign", "sign", sign}, {"Sign again", "sign", sign}, {"SignBatch", "sign_batch", batch}}
			for _, c := range calls {
				var err error
				lines := d.newAuditLines(t, func() { err = c.call() })
				wantCode(t, err, codes.NotFound, "key not found")
				if msg := status.Convert(err).Message(); !strings.Contains(msg, "on token") {
					t.Fatalf("%s: %q does not name the token", c.name, msg)
				}
				if len(lines) != 1 || lines[0].Op != c.op || lines[0].Key != id || !strings.HasPrefix(lines[0].Result, "NotFound") {
					t.Fatalf("%s: audit lines %+v; want one %s line for key %s, NotFound", c.name, lines, c.op, id)
				}
				if d.keyCached(id) {
					t.Fatalf("%s: the destroyed key stays in the daemon's cache", c.name)
				}
			}
		})
	}
}

// keyCached reports whether the daemon's key cache holds key id.
func (d *testDaemon) keyCached(id string) bool {
	d.svc.keysMu.RLock()
	defer d.svc.keysMu.RUnlock()
	return d.svc.keys[id] != nil
}
