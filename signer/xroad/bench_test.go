package xroad

import (
	"context"
	"crypto"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/xroad/xroadpb"
)

// xroadBenchRounds is how many alternating rounds make one figure; the
// median of their ratios is reported.
const xroadBenchRounds = 8

// BenchmarkXRoadVsUnix signs with the same key through X-Road's
// KeyService/Sign over loopback TCP and mutual TLS, and through
// signer.v1 Sign over the Unix socket, alternating in rounds in one run,
// at 2 and 8 callers, and reports both rates and their ratio
// (xroad/unix; the target is 0.9 or more).
//
// Run: go test -run '^$' -bench BenchmarkXRoadVsUnix -benchtime 4000x ./signer/xroad/
func BenchmarkXRoadVsUnix(b *testing.B) {
	for _, tc := range []struct{ keyAlg, alg string }{{"EC-P256", "SHA256withECDSA"}, {"RSA2048", "SHA256withRSA"}} {
		for _, g := range []int{2, 8} {
			b.Run(fmt.Sprintf("%s/g%d", tc.alg, g), func(b *testing.B) {
				r := newRig(b, rigOptions{})
				k, err := r.admin.GenerateKey(context.Background(), &signerv1.GenerateKeyRequest{Token: "t1", Label: "bench", Algorithm: tc.keyAlg, Usage: signerv1.KeyUsage_KEY_USAGE_SIGN})
				if err != nil {
					b.Fatal(err)
				}
				h := crypto.SHA256.New()
				h.Write([]byte("bench"))
				digest := h.Sum(nil)
				keys := xroadpb.NewKeyServiceClient(r.xroadConn(b, nil))
				ctx := context.Background()
				xroadSign := func() error {
					_, err := keys.Sign(ctx, &xroadpb.SignReq{KeyId: k.GetId(), SignatureAlgorithmId: tc.alg, Digest: digest})
					return err
				}
				unixSign := func() error {
					_, err := r.admin.Sign(ctx, &signerv1.SignRequest{Key: &signerv1.SignRequest_KeyId{KeyId: k.GetId()}, Algorithm: tc.alg, Digest: digest})
					return err
				}
				// Warm both connections up.
				if err := xroadSign(); err != nil {
					b.Fatal(err)
				}
				if err := unixSign(); err != nil {
					b.Fatal(err)
				}
				calls := max(b.N/xroadBenchRounds, 50)
				var ratios []float64
				var xr, ux float64
				b.ResetTimer()
				for range xroadBenchRounds {
					x, err := runCallers(g, calls, xroadSign)
					if err != nil {
						b.Fatal(err)
					}
					u, err := runCallers(g, calls, unixSign)
					if err != nil {
						b.Fatal(err)
					}
					xr, ux = xr+x, ux+u
					ratios = append(ratios, x/u)
				}
				slices.Sort(ratios)
				b.ReportMetric(xr/xroadBenchRounds, "xroad-signs/s")
				b.ReportMetric(ux/xroadBenchRounds, "unix-signs/s")
				b.ReportMetric(ratios[len(ratios)/2], "xroad/unix")
			})
		}
	}
}

// runCallers makes n calls of fn across g goroutines and returns the
// rate and the first error.
func runCallers(g, n int, fn func() error) (float64, error) {
	var next atomic.Int64
	var first atomic.Value
	var wg sync.WaitGroup
	start := time.Now()
	for range g {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				if err := fn(); err != nil {
					first.CompareAndSwap(nil, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err, ok := first.Load().(error); ok {
		return 0, err
	}
	return float64(n) / time.Since(start).Seconds(), nil
}
