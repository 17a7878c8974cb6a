package signer

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hsmsigner/hsmsigner/hsm"
	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/audit"
)

// runParallel calls fn n times from g goroutines and returns the rate.
func runParallel(g, n int, fn func(i int) error) (float64, error) {
	var next atomic.Int64
	var wg sync.WaitGroup
	var firstErr atomic.Pointer[error]
	start := time.Now()
	for range g {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := fn(i); err != nil {
					firstErr.CompareAndSwap(nil, &err)
					return
				}
			}
		})
	}
	wg.Wait()
	if p := firstErr.Load(); p != nil {
		return 0, *p
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

// benchRounds is how many rounds compareRates alternates in the
// benchmarks.
const benchRounds = 16

// compareRates measures two rates in rounds, alternating which goes first
// so that a drift of the machine's speed weighs on both alike, and
// returns their means and the median of the per-round ratios a/b, which
// a round disturbed by a neighbour on the machine does not move.
func compareRates(rounds int, a, b func() (float64, error)) (meanA, meanB, ratio float64, err error) {
	ratios := make([]float64, 0, rounds)
	for i := range rounds {
		var ra, rb float64
		if i%2 == 0 {
			if ra, err = a(); err == nil {
				rb, err = b()
			}
		} else {
			if rb, err = b(); err == nil {
				ra, err = a()
			}
		}
		if err != nil {
			return 0, 0, 0, err
		}
		meanA += ra / float64(rounds)
		meanB += rb / float64(rounds)
		ratios = append(ratios, ra/rb)
	}
	slices.Sort(ratios)
	ratio = ratios[rounds/2]
	if rounds%2 == 0 {
		ratio = (ratios[rounds/2-1] + ratios[rounds/2]) / 2
	}
	return meanA, meanB, ratio, nil
}

// BenchmarkDaemonVsRaw signs through the daemon's socket and, in the same
// run, in-process through hsm on the same token at the same parallelism,
// and reports both rates and their ratio (daemon/raw). Modes: single Sign
// calls, SignBatch of 64 (individual), and Merkle batches of 64 against
// raw single signatures.
func BenchmarkDaemonVsRaw(b *testing.B) {
	for _, tc := range []struct {
		keyAlg, alg string
		batch       int
		merkle      bool
		auditMode   string
	}{
		{"EC-P256", "SHA256withECDSA", 1, false, "buffered"},
		{"EC-P256", "SHA256withECDSA", 64, false, "buffered"},
		{"RSA2048", "SHA256withRSA", 1, false, "buffered"},
		{"RSA2048", "SHA256withRSA", 64, true, "buffered"},
		{"EC-P256", "SHA256withECDSA", 1, false, "sync"},
	} {
		for _, g := range []int{2, 8} {
			mode := "single"
			switch {
			case tc.merkle:
				mode = fmt.Sprintf("merkle%d", tc.batch)
			case tc.batch > 1:
				mode = fmt.Sprintf("batch%d", tc.batch)
			}
			// No '=' in names: they become folder names, and SoftHSM's
			// configuration cannot hold a path with '='.
			name := fmt.Sprintf("%s/%s/audit-%s/g%d", tc.alg, mode, tc.auditMode, g)
			b.Run(name, func(b *testing.B) {
				d := newDaemon(b, func(p *daemonParams) { p.AuditMode = tc.auditMode })
				k := d.genKey(b, "bench", tc.keyAlg, signerv1.KeyUsage_KEY_USAGE_SIGN)
				id, _ := hex.DecodeString(k.GetId())
				alg, _ := hsm.ParseAlgorithm(tc.alg)
				tok := d.svc.tokens[0].tok
				digests := make([][]byte, tc.batch)
				for i := range digests {
					digests[i] = sha(fmt.Sprint(i))
				}
				ctx := context.Background()
				daemon := func(int) error {
					if tc.batch == 1 {
						_, err := d.client.Sign(ctx, &signerv1.SignRequest{Key: &signerv1.SignRequest_KeyId{KeyId: k.GetId()}, Algorithm: tc.alg, Digest: digests[0]})
						return err
					}
					mode := signerv1.BatchMode_BATCH_MODE_INDIVIDUAL
					if tc.merkle {
						mode = signerv1.BatchMode_BATCH_MODE_MERKLE
					}
					_, err := d.client.SignBatch(ctx, &signerv1.SignBatchRequest{Key: &signerv1.SignBatchRequest_KeyId{KeyId: k.GetId()}, Algorithm: tc.alg, Digests: digests, Mode: mode})
					return err
				}
				raw := func(int) error {
					if tc.batch == 1 || tc.merkle {
						_, err := tok.Sign(ctx, id, alg, digests[0])
						return err
					}
					_, err := tok.SignMany(ctx, id, alg, digests)
					return err
				}
				// Calls per round: enough to take a measurable time.
				calls := max(b.N/benchRounds, 50)
				rawCalls := calls
				if tc.merkle {
					rawCalls = calls * 4 // a raw signature is 64 times cheaper per digest
				}
				perRaw := float64(tc.batch) // digests per raw call
				if tc.merkle {
					perRaw = 1 // against raw single signatures
				}
				b.ResetTimer()
				dRate, rRate, ratio, err := compareRates(benchRounds,
					func() (float64, error) {
						r, err := runParallel(g, calls, daemon)
						return r * float64(tc.batch), err
					},
					func() (float64, error) {
						r, err := runParallel(g, rawCalls, raw)
						return r * perRaw, err
					})
				if err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(dRate, "daemon-digests/s")
				b.ReportMetric(rRate, "raw-digests/s")
				b.ReportMetric(ratio, "daemon/raw")
			})
		}
	}
}

// discardAudit is the audit log switched off, for measuring what the audit
// costs; it is never used outside this benchmark.
type discardAudit struct{}

func (discardAudit) Append(context.Context, audit.Record) error { return nil }
func (discardAudit) Enqueue(audit.Record) (audit.Ticket, error) { return audit.Ticket{}, nil }
func (discardAudit) Wait(context.Context, audit.Ticket) error   { return nil }
func (discardAudit) Head() (uint64, string)                     { return 0, "" }
func (discardAudit) Close() error                               { return nil }

// BenchmarkAuditCost signs through the daemon's socket with the audit log
// on (buffered, the default) and off, alternating in one run in rounds of
// b.N/benchRounds calls each, and reports:
//
//	audit-on-calls/s, audit-off-calls/s  calls per second of each, the mean
//	                                 of the rounds' rates
//	on/off                           the median of the rounds' on/off rates
//	on-cpu-us/call, off-cpu-us/call  CPU time of the whole process (client,
//	                                 daemon and SoftHSM: all threads) per call
//	off/on-cpu                       CPU per call off over on: what the audit
//	                                 costs in CPU, which load from other
//	                                 processes hardly moves
//
// Cases: single ECDSA P-256 and RSA-2048 calls at 2 and 8 callers, and
// ECDSA SignBatch of 64 (one audit line per call). ECDSA single calls are
// where the audit weighs most: their signature is the cheapest.
func BenchmarkAuditCost(b *testing.B) {
	for _, tc := range []struct {
		keyAlg, alg string
		batch       int
	}{
		{"EC-P256", "ES256", 1},
		{"RSA2048", "SHA256withRSA", 1},
		{"EC-P256", "ES256", 64},
	} {
		for _, g := range []int{2, 8} {
			mode := "single"
			if tc.batch > 1 {
				mode = fmt.Sprintf("batch%d", tc.batch)
			}
			b.Run(fmt.Sprintf("%s/%s/g%d", tc.alg, mode, g), func(b *testing.B) {
				d := newDaemon(b, func(p *daemonParams) { p.AuditMode = "buffered"; p.SwitchAudit = true })
				k := d.genKey(b, "bench", tc.keyAlg, signerv1.KeyUsage_KEY_USAGE_SIGN)
				ctx := context.Background()
				digests := make([][]byte, tc.batch)
				for i := range digests {
					digests[i] = sha(fmt.Sprint("audit cost ", i))
				}
				sign := func(int) error {
					if tc.batch == 1 {
						_, err := d.client.Sign(ctx, &signerv1.SignRequest{Key: &signerv1.SignRequest_KeyId{KeyId: k.GetId()}, Algorithm: tc.alg, Digest: digests[0]})
						return err
					}
					_, err := d.client.SignBatch(ctx, &signerv1.SignBatchRequest{Key: &signerv1.SignBatchRequest_KeyId{KeyId: k.GetId()}, Algorithm: tc.alg, Digests: digests})
					return err
				}
				calls := max(b.N/benchRounds, 50)
				var cpuOn, cpuOff time.Duration
				with := func(log auditLog, cpu *time.Duration) func() (float64, error) {
					return func() (float64, error) {
						d.audit.set(log)
						before, err := processCPU()
						if err != nil {
							return 0, err
						}
						rate, err := runParallel(g, calls, sign)
						after, cerr := processCPU()
						*cpu += after - before
						return rate, errors.Join(err, cerr)
					}
				}
				b.ResetTimer()
				on, off, ratio, err := compareRates(benchRounds, with(nil, &cpuOn), with(discardAudit{}, &cpuOff))
				d.audit.set(nil)
				if err != nil {
					b.Fatal(err)
				}
				perCall := func(cpu time.Duration) float64 {
					return float64(cpu.Microseconds()) / float64(calls*benchRounds)
				}
				b.ReportMetric(on, "audit-on-calls/s")
				b.ReportMetric(off, "audit-off-calls/s")
				b.ReportMetric(ratio, "on/off")
				b.ReportMetric(perCall(cpuOn), "on-cpu-us/call")
				b.ReportMetric(perCall(cpuOff), "off-cpu-us/call")
				b.ReportMetric(perCall(cpuOff)/perCall(cpuOn), "off/on-cpu")
			})
		}
	}
}

// processCPU returns the CPU time this process has used so far, user and
// system, over all its threads.
func processCPU() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, fmt.Errorf("getrusage: %w", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}
