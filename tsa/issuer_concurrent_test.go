package tsa

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"fmt"
	"math/big"
	"sync"
	"testing"

	"github.com/digitorus/timestamp"
)

// TestIssueConcurrently issues tokens from eight goroutines at once, as
// signerd's HTTP handlers do: each is a granted token for its own
// imprint and nonce with a serial of its own, and under -race no data
// race is found (the read-back of a token made must not go through
// digitorus/pkcs7's Parse, whose ber2der writes a package variable).
func TestIssueConcurrently(t *testing.T) {
	for _, kind := range []string{"ecdsa", "rsa"} {
		t.Run(kind, func(t *testing.T) {
			is := newCriticalEKUTSA(t, kind).issuer(t, syncedClock)
			const goroutines, each = 8, 10
			var (
				wg      sync.WaitGroup
				mu      sync.Mutex
				serials = map[string]bool{}
				errs    = make(chan error, goroutines*each)
			)
			for g := range goroutines {
				wg.Go(func() {
					for i := range each {
						d := sha256.Sum256(fmt.Appendf(nil, "record %d/%d", g, i))
						nonce := big.NewInt(int64(g*each + i + 1))
						req, err := (&timestamp.Request{HashAlgorithm: crypto.SHA256, HashedMessage: d[:], Nonce: nonce, Certificates: i%2 == 0}).Marshal()
						if err != nil {
							errs <- err
							return
						}
						_, issued, err := is.Issue(context.Background(), req)
						switch {
						case err != nil:
							errs <- err
							return
						case !bytes.Equal(issued.Imprint, d[:]) || issued.Hash != crypto.SHA256 || issued.Nonce.Cmp(nonce) != 0 || !issued.Policy.Equal(testPolicy):
							errs <- fmt.Errorf("issued %v for imprint %x nonce %v", issued, d, nonce)
							return
						}
						mu.Lock()
						serials[issued.Serial.String()] = true
						mu.Unlock()
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			if len(serials) != goroutines*each {
				t.Fatalf("%d distinct serials for %d tokens", len(serials), goroutines*each)
			}
		})
	}
}
