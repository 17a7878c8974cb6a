package signer

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/digitorus/timestamp"

	"github.com/hsmsigner/hsmsigner/hsm"
	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/softhsm-test/devca"
)

// tsaBenchRequest is one RFC 3161 request of the benchmark, with what its
// answer must echo.
type tsaBenchRequest struct {
	der     []byte
	imprint []byte
	nonce   *big.Int
}

// newTSABenchRequests makes n TimeStampReqs over distinct data, each with
// a fresh random 64-bit nonce and certReq set, as digitorus/timestamp's
// CreateRequest makes them.
func newTSABenchRequests(tb testing.TB, n int) []tsaBenchRequest {
	tb.Helper()
	reqs := make([]tsaBenchRequest, n)
	limit := new(big.Int).Lsh(big.NewInt(1), 64)
	for i := range reqs {
		nonce, err := rand.Int(rand.Reader, limit)
		if err != nil {
			tb.Fatal(err)
		}
		data := fmt.Appendf(nil, "time-stamp benchmark record %d", i)
		der, err := timestamp.CreateRequest(bytes.NewReader(data), &timestamp.RequestOptions{Certificates: true, Nonce: nonce})
		if err != nil {
			tb.Fatal(err)
		}
		reqs[i] = tsaBenchRequest{der: der, imprint: sha(string(data)), nonce: nonce}
	}
	return reqs
}

// checkTSAAnswer says why resp is not a granted token for r, or nil.
func checkTSAAnswer(r tsaBenchRequest, resp []byte) error {
	ts, err := timestamp.ParseResponse(resp)
	switch {
	case err != nil:
		return fmt.Errorf("not a granted token: %w", err)
	case !bytes.Equal(ts.HashedMessage, r.imprint):
		return fmt.Errorf("a token for imprint %x, asked %x", ts.HashedMessage, r.imprint)
	case ts.Nonce == nil || ts.Nonce.Cmp(r.nonce) != 0:
		return fmt.Errorf("a token with nonce %v, asked %v", ts.Nonce, r.nonce)
	}
	return nil
}

// latencies holds one latency per call of a benchmark, indexed by call.
type latencies []time.Duration

// percentile returns the p-th percentile (0..1) of the calls made, in
// milliseconds.
func (l latencies) percentile(p float64) float64 {
	s := slices.DeleteFunc(slices.Clone(l), func(d time.Duration) bool { return d == 0 })
	if len(s) == 0 {
		return 0
	}
	slices.Sort(s)
	return float64(s[min(len(s)-1, int(p*float64(len(s))))]) / float64(time.Millisecond)
}

// BenchmarkTSAVsRaw measures, in one run, the built-in TSA's tokens per
// second through POST /tsa on the daemon's HTTP Unix socket against raw
// C_Sign through hsm on the same SoftHSM token with the same key, at the
// same concurrency, alternating the two in benchRounds rounds (see
// compareRates). Each request is a real RFC 3161 TimeStampReq (certReq
// set, its own nonce); each answer is checked to be a granted token
// echoing the request's imprint and nonce, after its round, so that the
// check does not weigh on the rate. It reports:
//
//	tokens/s             tokens issued per second through /tsa
//	raw-signs/s          raw C_Sign per second with the TSA key
//	tsa/raw              the median of the rounds' ratios (target >= 0.8)
//	tsa-p50-ms, tsa-p99-ms  the latency of a /tsa call
//	raw-p50-ms, raw-p99-ms  the latency of a raw signature
//
// Cases: an ECDSA P-256 and an RSA-2048 TSA key, at 2 and 8 callers; the
// audit log buffered, signerd's default.
func BenchmarkTSAVsRaw(b *testing.B) {
	for _, tc := range []struct{ keyAlg, alg string }{
		{"EC-P256", "SHA256withECDSA"},
		{"RSA2048", "SHA256withRSA"},
	} {
		for _, g := range []int{2, 8} {
			b.Run(fmt.Sprintf("%s/g%d", tc.keyAlg, g), func(b *testing.B) {
				d := newDaemon(b, func(p *daemonParams) {
					p.ClientUsages = `"sign", "tsa"`
					p.TSA = tsaOn
					p.AuditMode = "buffered"
				})
				ca := devca.New(b)
				k := d.genKey(b, "tsa", tc.keyAlg, signerv1.KeyUsage_KEY_USAGE_TSA)
				cert := d.issue(b, ca, d.csrFor(b, k, "CN=Bench TSA,O=Agency,C=EE", ""), "tsa", devca.Current)
				imp, err := d.client.ImportCert(testCtx(b), &signerv1.ImportCertRequest{Certificate: pemOf(cert, ca.Intermediate, ca.Root)})
				if err != nil {
					b.Fatal(err)
				}
				if _, err := d.client.ActivateCert(testCtx(b), &signerv1.CertRef{Hash: imp.GetSha256()}); err != nil {
					b.Fatal(err)
				}
				hc := d.serveHTTP(b)
				// As a client with g callers would: keep g connections.
				hc.Transport.(*http.Transport).MaxIdleConnsPerHost = g

				id, _ := hex.DecodeString(k.GetId())
				alg, err := hsm.ParseAlgorithm(tc.alg)
				if err != nil {
					b.Fatal(err)
				}
				tok := d.hsmToken()
				ctx := context.Background()

				calls := max(b.N/benchRounds, 50)
				total := calls * benchRounds
				reqs := newTSABenchRequests(b, total)
				// The first answer must be a token before anything is timed.
				if resp, err := postTSA(ctx, hc, reqs[0].der); err != nil {
					b.Fatal(err)
				} else if err := checkTSAAnswer(reqs[0], resp); err != nil {
					b.Fatalf("the TSA does not issue: %v", err)
				}

				answers := make([][]byte, total)
				tsaLat, rawLat := make(latencies, total), make(latencies, total)
				var tsaNext, rawNext atomic.Int64
				var failures atomic.Int64
				var firstFailure error
				var failMu sync.Mutex
				fail := func(err error) {
					failures.Add(1)
					failMu.Lock()
					if firstFailure == nil {
						firstFailure = err
					}
					failMu.Unlock()
				}
				tsaRound := func() (float64, error) {
					base := int(tsaNext.Add(int64(calls))) - calls
					rate, err := runParallel(g, calls, func(i int) error {
						j := base + i
						t0 := time.Now()
						resp, err := postTSA(ctx, hc, reqs[j].der)
						tsaLat[j] = time.Since(t0)
						if err != nil {
							fail(err)
						}
						answers[j] = resp
						return nil
					})
					// Checked after the round: parsing is the client's
					// work, not the TSA's.
					for j := base; j < base+calls; j++ {
						if answers[j] == nil {
							continue
						}
						if err := checkTSAAnswer(reqs[j], answers[j]); err != nil {
							fail(fmt.Errorf("request %d: %w", j, err))
						}
						answers[j] = nil
					}
					return rate, err
				}
				rawRound := func() (float64, error) {
					base := int(rawNext.Add(int64(calls))) - calls
					return runParallel(g, calls, func(i int) error {
						j := base + i
						t0 := time.Now()
						_, err := tok.Sign(ctx, id, alg, reqs[j].imprint)
						rawLat[j] = time.Since(t0)
						return err
					})
				}
				b.ResetTimer()
				tsaRate, rawRate, ratio, err := compareRates(benchRounds, tsaRound, rawRound)
				if err != nil {
					b.Fatal(err)
				}
				if n := failures.Load(); n > 0 {
					b.Errorf("%d of %d answers were not granted tokens; the first: %v", n, total, firstFailure)
				}
				b.ReportMetric(tsaRate, "tokens/s")
				b.ReportMetric(rawRate, "raw-signs/s")
				b.ReportMetric(ratio, "tsa/raw")
				b.ReportMetric(tsaLat.percentile(0.50), "tsa-p50-ms")
				b.ReportMetric(tsaLat.percentile(0.99), "tsa-p99-ms")
				b.ReportMetric(rawLat.percentile(0.50), "raw-p50-ms")
				b.ReportMetric(rawLat.percentile(0.99), "raw-p99-ms")
				b.ReportMetric(float64(failures.Load()), "failures")
			})
		}
	}
}

// postTSA sends one TimeStampReq to POST /tsa and returns the answer.
func postTSA(ctx context.Context, hc *http.Client, req []byte) ([]byte, error) {
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://signerd/tsa", bytes.NewReader(req))
	if err != nil {
		return nil, err
	}
	hr.Header.Set("Content-Type", "application/timestamp-query")
	resp, err := hc.Do(hr)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("POST /tsa: %s: %s", resp.Status, bytes.TrimSpace(body))
	}
	return body, nil
}
