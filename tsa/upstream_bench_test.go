package tsa

import (
	"context"
	"crypto"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// benchUpstream serves the openssl TSA over HTTP for a benchmark: a
// failure of openssl is a 500 answer (a handler must not stop the
// benchmark), which the client counts as an error.
type benchUpstream struct {
	srv   *httptest.Server
	calls atomic.Int64
}

func newBenchUpstream(b *testing.B, o *opensslTSA) *benchUpstream {
	u := &benchUpstream{}
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.calls.Add(1)
		resp, err := o.replyErr(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/timestamp-reply")
		_, _ = w.Write(resp)
	}))
	b.Cleanup(u.srv.Close)
	return u
}

// replyErr has openssl answer the request read from body, returning an
// error where reply would stop the test.
func (o *opensslTSA) replyErr(body io.Reader) ([]byte, error) {
	req, err := io.ReadAll(body)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(o.dir, "req")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	q, r := filepath.Join(dir, "q.tsq"), filepath.Join(dir, "r.tsr")
	if err := os.WriteFile(q, req, 0o600); err != nil {
		return nil, err
	}
	if out, err := exec.Command("openssl", "ts", "-reply", "-config", o.conf, "-queryfile", q, "-out", r).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("openssl ts -reply: %w: %s", err, out)
	}
	return os.ReadFile(r)
}

// msPercentile returns the p-th percentile (0..1) of ds in milliseconds;
// it sorts ds.
func msPercentile(ds []time.Duration, p float64) float64 {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	return float64(ds[min(len(ds)-1, int(p*float64(len(ds))))]) / float64(time.Millisecond)
}

// BenchmarkUpstreamBatching sends bursts of 1,000 concurrent Stamp calls
// through the batching upstream client to a loopback TSA made of
// `openssl ts -reply`, for batching windows of 5, 20 and 100 ms, and
// checks every caller's stamp with VerifyStamp. In the same run it
// measures one upstream round trip (a Stamp with batching off: request,
// openssl, verification; the median of five). It reports:
//
//	upstream-calls/1000  upstream calls per burst of 1,000 requests
//	wait-p50-ms, wait-p99-ms   how long a caller waited for its stamp
//	rtt-ms               one upstream round trip, unbatched
//	added-p50-ms, added-p99-ms the wait less one round trip: what batching
//	                     adds (target: within the window)
//	window-ms            the window, to read the others against
//	errors               calls that failed or whose stamp did not verify
//
// Run it with -benchtime 3x (three bursts a window).
func BenchmarkUpstreamBatching(b *testing.B) {
	o := newOpenSSLTSA(b)
	const burst = 1000
	for _, window := range []time.Duration{5 * time.Millisecond, 20 * time.Millisecond, 100 * time.Millisecond} {
		b.Run(fmt.Sprintf("window-%s", window), func(b *testing.B) {
			up := newBenchUpstream(b, o)
			single, err := NewUpstream(UpstreamConfig{URLs: []string{up.srv.URL}, Trust: trustOf(o.testTSA)})
			if err != nil {
				b.Fatal(err)
			}
			defer single.Close()
			batched, err := NewUpstream(UpstreamConfig{URLs: []string{up.srv.URL}, Trust: trustOf(o.testTSA), Window: window, MaxBatch: DefaultMaxBatch})
			if err != nil {
				b.Fatal(err)
			}
			defer batched.Close()
			ctx := context.Background()
			var (
				rtts, waits []time.Duration
				calls       int64
				errs        atomic.Int64
				firstErr    error
				errMu       sync.Mutex
				bursts      int
			)
			fail := func(err error) {
				errs.Add(1)
				errMu.Lock()
				if firstErr == nil {
					firstErr = err
				}
				errMu.Unlock()
			}
			for b.Loop() {
				bursts++
				// One round trip, unbatched, median of five.
				var rtt []time.Duration
				for i := range 5 {
					d := sha256.Sum256(fmt.Appendf(nil, "round trip %d %d", bursts, i))
					t0 := time.Now()
					if _, err := single.Stamp(ctx, crypto.SHA256, d[:]); err != nil {
						b.Fatalf("an unbatched stamp: %v", err)
					}
					rtt = append(rtt, time.Since(t0))
				}
				slices.Sort(rtt)
				rtts = append(rtts, rtt[len(rtt)/2])

				before := up.calls.Load()
				start := make(chan struct{})
				lat := make([]time.Duration, burst)
				var wg sync.WaitGroup
				var ready sync.WaitGroup
				ready.Add(burst)
				for i := range burst {
					wg.Go(func() {
						d := sha256.Sum256(fmt.Appendf(nil, "record %d of burst %d", i, bursts))
						ready.Done()
						<-start
						t0 := time.Now()
						s, err := batched.Stamp(ctx, crypto.SHA256, d[:])
						lat[i] = time.Since(t0)
						if err == nil {
							err = VerifyStamp(s, crypto.SHA256, d[:])
						}
						if err != nil {
							fail(fmt.Errorf("caller %d: %w", i, err))
						}
					})
				}
				ready.Wait()
				close(start)
				wg.Wait()
				calls += up.calls.Load() - before
				waits = append(waits, lat...)
			}
			if n := errs.Load(); n > 0 {
				b.Errorf("%d of %d calls failed; the first: %v", n, bursts*burst, firstErr)
			}
			slices.Sort(rtts)
			rtt := float64(rtts[len(rtts)/2]) / float64(time.Millisecond)
			p50, p99 := msPercentile(waits, 0.50), msPercentile(waits, 0.99)
			b.ReportMetric(float64(calls)/float64(bursts), "upstream-calls/1000")
			b.ReportMetric(p50, "wait-p50-ms")
			b.ReportMetric(p99, "wait-p99-ms")
			b.ReportMetric(rtt, "rtt-ms")
			b.ReportMetric(p50-rtt, "added-p50-ms")
			b.ReportMetric(p99-rtt, "added-p99-ms")
			b.ReportMetric(float64(window)/float64(time.Millisecond), "window-ms")
			b.ReportMetric(float64(errs.Load()), "errors")
		})
	}
}
