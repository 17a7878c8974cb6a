package hsm

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/hsmsigner/hsmsigner/hsm/sigalg"
	softhsmtest "github.com/hsmsigner/hsmsigner/softhsm-test"
)

// BenchmarkSign compares signing through the pool (Token.Sign) with raw
// C_SignInit+C_Sign on dedicated sessions, measured in the same run so that
// the ratios survive a noisy machine.
//
// Each sub-benchmark, named <algorithm>/g=<goroutines>, pushes b.N
// signatures through each of:
//
//   - raw: g goroutines, each with its own session opened directly through
//     the module's api (logged in: the login is the token's, shared by the
//     application's sessions), signing with the same mechanism and data as
//     the pool;
//   - pool: g goroutines calling Token.Sign, with the pool at its default
//     size (the CPU count) and the token's default options, which verify
//     every signature, RSA and ECDSA (the -noverify cases turn that off; the
//     -pool8 cases give the pool 8 sessions);
//   - raw1 (g > 1 only): one goroutine on one raw session.
//
// Work is handed out by an atomic counter to exactly g goroutines (not
// b.RunParallel, whose goroutine count follows GOMAXPROCS). The paths take
// turns in short rounds (64 signatures, or 16 per goroutine if that is
// more), forward then backward (raw, pool, raw1 / raw1, pool, raw), so that a
// drift of the machine's speed weighs the same on each, and each ratio is
// the median of the ratios measured within a round, so that a burst of
// load from another process spoils a few rounds, not the result. Reported
// metrics:
//
//	raw-sig/s, pool-sig/s, raw1-sig/s  signatures per second of each path, over
//	                                   all rounds
//	pool/raw                           pool rate over raw rate at g goroutines
//	pool/raw1                          pool rate at g over raw single-session rate
//	raw/raw1                           how much parallelism the machine gave raw
//	                                   signing in this run: the ceiling of pool/raw1
//	raw-cpu-us/sig, pool-cpu-us/sig    CPU time (Go and C, all threads) per signature
//	pool/raw-cpu                       raw CPU per signature over pool CPU per
//	                                   signature: the pool's cost in CPU, which
//	                                   load from other processes hardly moves
//	raw-vcsw/sig, pool-vcsw/sig        voluntary context switches per signature
//	                                   (threads parking and waking)
//	ns/op                              wall time per signature through the pool
//
// On a machine shared with other work, wall-clock ratios at g=8 also
// measure how much CPU the kernel gives 8 runnable threads (raw: 8
// sessions) against 2 (pool: CPU-count sessions); pool/raw-cpu does not.
//
// The module is opened without the fault-injecting wrapper the tests use:
// its mutex would serialise every call of both paths.
//
// Run: go test -run '^$' -bench BenchmarkSign -benchtime 2000x ./hsm/
func BenchmarkSign(b *testing.B) {
	all := []int{1, 2, 8}
	cases := []struct {
		name  string
		spec  KeySpec
		alg   string
		topts []TokenOption
		gs    []int
	}{
		{"RSA2048-PKCS1", RSA2048, "SHA256withRSA", nil, all},
		{"RSA2048-PKCS1-noverify", RSA2048, "SHA256withRSA", []TokenOption{WithVerify(false)}, all},
		{"RSA2048-PSS", RSA2048, "SHA256withRSAandMGF1", nil, all},
		{"ECDSA-P256", ECP256, "SHA256withECDSA", nil, all},
		{"ECDSA-P256-noverify", ECP256, "SHA256withECDSA", []TokenOption{WithVerify(false)}, all},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			be := newBenchEnv(b, c.spec, c.topts...)
			alg := mustAlg(b, c.alg)
			for _, g := range c.gs {
				b.Run("g="+strconv.Itoa(g), func(b *testing.B) { be.compare(b, alg, g) })
			}
		})
	}
}

// benchEnv is a logged-in token with one key, shared by the sub-benchmarks
// of one algorithm.
type benchEnv struct {
	mod     *Module
	tok     *Token
	key     Key
	slot    uint
	digests [][]byte
}

func newBenchEnv(b *testing.B, spec KeySpec, topts ...TokenOption) *benchEnv {
	b.Helper()
	soft := softhsmtest.New(b)
	ctx := testContext(b)
	m, err := OpenModule(ctx, soft.ModulePath)
	if err != nil {
		b.Fatalf("OpenModule: %v", err)
	}
	b.Cleanup(func() {
		if err := m.Close(); err != nil {
			b.Errorf("Module.Close: %v", err)
		}
	})
	tok, err := m.Token(ctx, TokenSelector{Label: soft.Label}, topts...)
	if err != nil {
		b.Fatalf("Token: %v", err)
	}
	if err := tok.Login(ctx, soft.UserPIN); err != nil {
		b.Fatalf("Login: %v", err)
	}
	key, err := tok.GenerateKey(ctx, spec, "bench")
	if err != nil {
		b.Fatalf("GenerateKey: %v", err)
	}
	gen, unlock, err := m.rlock()
	if err != nil {
		b.Fatal(err)
	}
	slot, err := tok.findSlotLocked()
	unlock()
	if err != nil || gen != tok.slotGen {
		b.Fatalf("token slot: %v (generation %d, slot's %d)", err, gen, tok.slotGen)
	}
	be := &benchEnv{mod: m, tok: tok, key: key, slot: slot}
	for i := range 64 {
		be.digests = append(be.digests, digestOf(fmt.Sprint("bench digest ", i)))
	}
	return be
}

// rawSession is a session opened beside the pool, with the key's handle.
type rawSession struct {
	h   pkcs11.SessionHandle
	key pkcs11.ObjectHandle
}

// openRaw opens n sessions directly through the module's api, checks that
// they share the token's login, finds the private key on each, and closes
// them when the benchmark ends.
func (be *benchEnv) openRaw(b *testing.B, n int) []rawSession {
	b.Helper()
	api := be.mod.api
	out := make([]rawSession, 0, n)
	b.Cleanup(func() {
		for _, s := range out {
			if err := api.CloseSession(s.h); err != nil {
				b.Errorf("C_CloseSession: %v", err)
			}
		}
	})
	for range n {
		h, err := api.OpenSession(be.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
		if err != nil {
			b.Fatalf("C_OpenSession: %v", err)
		}
		out = append(out, rawSession{h: h})
		si, err := api.GetSessionInfo(h)
		if err != nil || si.State != pkcs11.CKS_RW_USER_FUNCTIONS {
			b.Fatalf("raw session not logged in: state %d, %v", si.State, err)
		}
		if err := api.FindObjectsInit(h, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_ID, be.key.ID),
		}); err != nil {
			b.Fatalf("C_FindObjectsInit: %v", err)
		}
		hs, _, err := api.FindObjects(h, 2)
		if ferr := api.FindObjectsFinal(h); err == nil {
			err = ferr
		}
		if err != nil || len(hs) != 1 {
			b.Fatalf("finding the key on a raw session: %d handles, %v", len(hs), err)
		}
		out[len(out)-1].key = hs[0]
	}
	return out
}

// rawSign makes one signature on s exactly as the pool does, minus the
// pool: same mechanism, same data, no verification, no DER encoding.
func (be *benchEnv) rawSign(s rawSession, alg sigalg.Algorithm, digest []byte) error {
	mech, data := mechanism(alg, digest)
	if err := be.mod.api.SignInit(s.h, mech, s.key); err != nil {
		return p11err("C_SignInit", err)
	}
	_, err := be.mod.api.Sign(s.h, data)
	return p11err("C_Sign", err)
}

// benchPath is one way of signing, timed over the rounds.
type benchPath struct {
	name    string
	workers int
	op      func(worker, i int) error
	elapsed time.Duration
	cpu     time.Duration // CPU time of the whole process, Go and C
	vcsw    int64         // voluntary context switches of the process
	done    int
	rates   []float64 // signatures per second in each round
}

// compare runs b.N signatures through each path and reports the rates and
// ratios.
func (be *benchEnv) compare(b *testing.B, alg sigalg.Algorithm, g int) {
	raws := be.openRaw(b, g)
	ctx := context.Background()
	raw := &benchPath{name: "raw", workers: g, op: func(w, i int) error {
		return be.rawSign(raws[w], alg, be.digests[i%len(be.digests)])
	}}
	pool := &benchPath{name: "pool", workers: g, op: func(_, i int) error {
		_, err := be.tok.Sign(ctx, be.key.ID, alg, be.digests[i%len(be.digests)])
		return err
	}}
	paths := []*benchPath{raw, pool}
	raw1 := raw
	if g > 1 {
		raw1 = &benchPath{name: "raw1", workers: 1, op: raw.op} // worker 0 only
		paths = append(paths, raw1)
	}
	// Warm up: the pool opens its sessions and caches the key handle.
	for _, p := range paths {
		if _, err := runWorkers(p.workers, 4*p.workers, p.op); err != nil {
			b.Fatalf("warm-up %s: %v", p.name, err)
		}
	}
	rounds := max(1, b.N/max(64, 16*g))
	b.ResetTimer()
	for r := range rounds {
		n := b.N / rounds
		if r < b.N%rounds {
			n++
		}
		order := slices.Clone(paths)
		if r%2 == 1 {
			slices.Reverse(order)
		}
		for _, p := range order {
			cpu0, vcsw0 := processUsage(b)
			d, err := runWorkers(p.workers, n, p.op)
			if err != nil {
				b.Fatalf("%s: %v", p.name, err)
			}
			cpu1, vcsw1 := processUsage(b)
			p.cpu += cpu1 - cpu0
			p.vcsw += vcsw1 - vcsw0
			p.elapsed += d
			p.done += n
			p.rates = append(p.rates, float64(n)/d.Seconds())
		}
	}
	b.StopTimer()
	rate := func(p *benchPath) float64 { return float64(p.done) / p.elapsed.Seconds() }
	b.ReportMetric(rate(raw), "raw-sig/s")
	b.ReportMetric(rate(pool), "pool-sig/s")
	b.ReportMetric(rate(raw1), "raw1-sig/s")
	b.ReportMetric(medianRatio(pool, raw), "pool/raw")
	b.ReportMetric(medianRatio(pool, raw1), "pool/raw1")
	b.ReportMetric(medianRatio(raw, raw1), "raw/raw1")
	cpuPerSig := func(p *benchPath) float64 { return float64(p.cpu.Microseconds()) / float64(p.done) }
	b.ReportMetric(cpuPerSig(raw), "raw-cpu-us/sig")
	b.ReportMetric(cpuPerSig(pool), "pool-cpu-us/sig")
	b.ReportMetric(cpuPerSig(raw)/cpuPerSig(pool), "pool/raw-cpu")
	b.ReportMetric(float64(raw.vcsw)/float64(raw.done), "raw-vcsw/sig")
	b.ReportMetric(float64(pool.vcsw)/float64(pool.done), "pool-vcsw/sig")
	b.ReportMetric(float64(pool.elapsed.Nanoseconds())/float64(pool.done), "ns/op")
}

// processUsage returns the user and system CPU time the process has used,
// in all its threads (Go code and the module's C code alike), and its
// voluntary context switches.
func processUsage(b *testing.B) (time.Duration, int64) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatalf("getrusage: %v", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), ru.Nvcsw
}

// medianRatio returns the median over the rounds of a's rate over b's.
func medianRatio(a, b *benchPath) float64 {
	rs := make([]float64, len(a.rates))
	for i := range rs {
		rs[i] = a.rates[i] / b.rates[i]
	}
	slices.Sort(rs)
	if len(rs)%2 == 1 {
		return rs[len(rs)/2]
	}
	return (rs[len(rs)/2-1] + rs[len(rs)/2]) / 2
}

// runWorkers runs op for i = 0..n-1 on exactly workers goroutines, which
// take the next i from an atomic counter, and returns the wall time and the
// first error.
func runWorkers(workers, n int, op func(worker, i int) error) (time.Duration, error) {
	var (
		next atomic.Int64
		wg   sync.WaitGroup
		errs = make(chan error, workers)
	)
	start := time.Now()
	for w := range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := op(w, i); err != nil {
					errs <- fmt.Errorf("signature %d on worker %d: %w", i, w, err)
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errs)
	return elapsed, <-errs
}

// BenchmarkSignAfterIdle measures what a signature costs when the signing
// thread has just slept, as a daemon's does between calls, against one
// signed right after the last, as in a benchmark loop. Rounds of 64
// signatures alternate: back to back ("busy"), and each after a sleep of
// 50 µs or what the kernel makes of it ("after-idle"), timing only
// Token.Sign; b.N counts the signatures of each. It reports the mean time
// of a signature in each and their ratio; on the 2-core development VM a
// signature after a sleep takes about twice as long, which bounds what any
// service that signs on request can reach against a raw signing loop.
//
// Run: go test -run '^$' -bench BenchmarkSignAfterIdle -benchtime 2000x ./hsm/
func BenchmarkSignAfterIdle(b *testing.B) {
	for _, c := range []struct {
		name string
		spec KeySpec
		alg  string
	}{
		{"ECDSA-P256", ECP256, "SHA256withECDSA"},
		{"RSA2048-PKCS1", RSA2048, "SHA256withRSA"},
	} {
		b.Run(c.name, func(b *testing.B) {
			be := newBenchEnv(b, c.spec)
			alg := mustAlg(b, c.alg)
			ctx := testContext(b)
			var busy, idle time.Duration
			var n int
			sign := func(pause time.Duration) time.Duration {
				if pause > 0 {
					time.Sleep(pause)
				}
				start := time.Now()
				if _, err := be.tok.Sign(ctx, be.key.ID, alg, be.digests[n%len(be.digests)]); err != nil {
					b.Fatal(err)
				}
				return time.Since(start)
			}
			b.ResetTimer()
			for n < b.N {
				k := min(64, b.N-n)
				for range k {
					busy += sign(0)
				}
				for range k {
					idle += sign(50 * time.Microsecond)
				}
				n += k
			}
			b.ReportMetric(float64(busy.Microseconds())/float64(n), "busy-us/sig")
			b.ReportMetric(float64(idle.Microseconds())/float64(n), "after-idle-us/sig")
			b.ReportMetric(float64(idle)/float64(busy), "after-idle/busy")
		})
	}
}
