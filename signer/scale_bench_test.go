package signer

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	softhsmtest "github.com/hsmsigner/hsmsigner/softhsm-test"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/state"
)

// scaleSizes are the key counts BenchmarkScale measures at, on one
// token grown from the smallest to the largest.
var scaleSizes = []int{10, 100, 1000}

// BenchmarkScale measures, on one SoftHSM token holding 10, then 100,
// then 1,000 EC P-256 sign keys, each with an active, registered
// certificate of its own member (the fixture is made once per run, keys
// through raw PKCS#11 and records straight into the state; see
// scaleFixture), what an officer and a security server see, each beside
// its raw counterpart in the same run:
//
//   - start: the daemon's start (state, audit log, module, token, login,
//     reconciliation) against a raw listing of the token's keys;
//   - ListKeys over the daemon's socket against the raw listing (one
//     search per key class, one C_GetAttributeValue per object);
//   - ListCerts over the socket against reading every certificate record
//     from the state in process (state.Store.ListCerts);
//   - Sign (each call with the next key, all keys in turn) against raw
//     C_SignInit+C_Sign with the same keys on a session of its own;
//   - GetSigningInfo (each call for the next member) against GetStatus,
//     the socket's floor;
//   - the Go heap and the process's RSS once the daemon has served all
//     of this, the heap after a collection.
//
// Per-call costs are medians of alternating rounds; a sub-benchmark's
// growth metrics compare its per-call cost, over its raw counterpart's,
// with the smallest size's.
func BenchmarkScale(b *testing.B) {
	f := newScaleFixture(b)
	type perCall struct{ sign, info float64 } // daemon/raw at a size
	var base *perCall
	var baseHeap, baseRSS float64
	for _, n := range scaleSizes {
		t0 := time.Now()
		f.grow(b, n)
		b.Logf("fixture: %d keys with certificates in %v", n, time.Since(t0).Round(time.Millisecond))
		b.Run(fmt.Sprintf("keys=%d", n), func(b *testing.B) {
			ctx := context.Background()
			// Start, three times, the median; the raw listing after each
			// start, on a fresh library, is its counterpart.
			var starts, raws []float64
			for range 3 {
				starts = append(starts, f.start(b).Seconds()*1000)
				r := openRawP11(b, f.soft)
				t0 := time.Now()
				got, err := r.listKeys()
				raws = append(raws, time.Since(t0).Seconds()*1000)
				r.close()
				if err != nil || got != n {
					b.Fatalf("raw listing: %d keys, %v", got, err)
				}
			}
			b.ReportMetric(median(starts), "start-ms")
			b.ReportMetric(median(raws), "raw-list-ms")

			r := openRawP11(b, f.soft)
			defer r.close()
			// Listing.
			listMS, rawListMS := compareTimes(5, func() error {
				resp, err := f.listKeys(ctx)
				if err == nil && len(resp.GetKeys()) != n {
					err = fmt.Errorf("ListKeys: %d keys, want %d", len(resp.GetKeys()), n)
				}
				return err
			}, func() error {
				got, err := r.listKeys()
				if err == nil && got != n {
					err = fmt.Errorf("raw listing: %d keys, want %d", got, n)
				}
				return err
			}, b)
			b.ReportMetric(listMS, "ListKeys-ms")
			b.ReportMetric(rawListMS, "raw-ListKeys-ms")
			certMS, rawCertMS := compareTimes(5, func() error {
				resp, err := f.d.client.ListCerts(ctx, &signerv1.ListCertsRequest{})
				if err == nil && len(resp.GetCertificates()) != n {
					err = fmt.Errorf("ListCerts: %d certificates, want %d", len(resp.GetCertificates()), n)
				}
				return err
			}, func() error {
				rs, err := f.d.svc.store.ListCerts(ctx, state.CertFilter{})
				if err == nil && len(rs) != n {
					err = fmt.Errorf("state: %d certificates, want %d", len(rs), n)
				}
				return err
			}, b)
			b.ReportMetric(certMS, "ListCerts-ms")
			b.ReportMetric(rawCertMS, "raw-ListCerts-ms")

			// Per call: every key once untimed (caches warm, handles
			// found), then rounds.
			digest := sha256.Sum256([]byte("scale"))
			ids := make([][]byte, n)
			for i, h := range f.keyIDs[:n] {
				ids[i], _ = hex.DecodeString(h)
			}
			handles := map[string]pkcs11.ObjectHandle{}
			var next, rawNext, infoNext int
			sign := func() error {
				i := next % n
				next++
				_, err := f.d.client.Sign(ctx, &signerv1.SignRequest{Key: &signerv1.SignRequest_KeyId{KeyId: f.keyIDs[i]}, Algorithm: "SHA256withECDSA", Digest: digest[:]})
				return err
			}
			rawSign := func() error {
				i := rawNext % n
				rawNext++
				_, err := r.signWith(handles, ids[i], digest[:])
				return err
			}
			info := func() error {
				i := infoNext % n
				infoNext++
				si, err := f.d.client.GetSigningInfo(ctx, &signerv1.GetSigningInfoRequest{Member: f.members[i]})
				if err == nil && si.GetKeyId() != f.keyIDs[i] {
					err = fmt.Errorf("GetSigningInfo %s: key %s, want %s", f.members[i], si.GetKeyId(), f.keyIDs[i])
				}
				return err
			}
			status := func() error {
				_, err := f.d.client.GetStatus(ctx, &signerv1.GetStatusRequest{})
				return err
			}
			for range n {
				for _, fn := range []func() error{sign, rawSign, info} {
					if err := fn(); err != nil {
						b.Fatal(err)
					}
				}
			}
			const calls = 200
			signUS, rawSignUS, signRatio := comparePerCall(16, calls, sign, rawSign, b)
			infoUS, statusUS, infoRatio := comparePerCall(16, calls, info, status, b)
			b.ReportMetric(signUS, "Sign-us")
			b.ReportMetric(rawSignUS, "raw-Sign-us")
			b.ReportMetric(signRatio, "Sign/raw")
			b.ReportMetric(infoUS, "GetSigningInfo-us")
			b.ReportMetric(statusUS, "GetStatus-us")
			b.ReportMetric(infoRatio, "GetSigningInfo/GetStatus")
			if base == nil {
				base = &perCall{sign: signRatio, info: infoRatio}
			}
			b.ReportMetric(signRatio/base.sign, "Sign-growth")
			b.ReportMetric(infoRatio/base.info, "GetSigningInfo-growth")

			// Memory, once all of it was served.
			runtime.GC()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			heap, rss := float64(ms.HeapAlloc)/(1<<20), rssMB(b)
			goRes := float64(ms.HeapInuse+ms.StackInuse+ms.MSpanInuse+ms.MCacheInuse+ms.GCSys+ms.OtherSys+ms.BuckHashSys) / (1 << 20)
			b.ReportMetric(heap, "heap-MB")
			b.ReportMetric(rss, "rss-MB")
			b.ReportMetric(rss-goRes, "non-go-rss-MB")
			if baseRSS == 0 {
				baseHeap, baseRSS = heap, rss
			}
			b.ReportMetric(heap-baseHeap, "heap-over-10-MB")
			b.ReportMetric(rss-baseRSS, "rss-over-10-MB")
		})
	}
}

// compareTimes runs a and b in rounds, alternating which goes first, and
// returns the median wall time of each in milliseconds.
func compareTimes(rounds int, a, b func() error, tb testing.TB) (aMS, bMS float64) {
	tb.Helper()
	var as, bs []float64
	timed := func(fn func() error) float64 {
		t0 := time.Now()
		if err := fn(); err != nil {
			tb.Fatal(err)
		}
		return time.Since(t0).Seconds() * 1000
	}
	for i := range rounds {
		if i%2 == 0 {
			as = append(as, timed(a))
			bs = append(bs, timed(b))
		} else {
			bs = append(bs, timed(b))
			as = append(as, timed(a))
		}
	}
	return median(as), median(bs)
}

// comparePerCall runs calls of a, then of b (alternating which goes
// first), for rounds rounds and returns the mean microseconds per call of
// each and the median of the rounds' ratios a/b.
func comparePerCall(rounds, calls int, a, b func() error, tb testing.TB) (aUS, bUS, ratio float64) {
	tb.Helper()
	run := func(fn func() error) float64 {
		t0 := time.Now()
		for range calls {
			if err := fn(); err != nil {
				tb.Fatal(err)
			}
		}
		return time.Since(t0).Seconds() * 1e6 / float64(calls)
	}
	var ratios []float64
	for i := range rounds {
		var x, y float64
		if i%2 == 0 {
			x = run(a)
			y = run(b)
		} else {
			y = run(b)
			x = run(a)
		}
		aUS += x / float64(rounds)
		bUS += y / float64(rounds)
		ratios = append(ratios, x/y)
	}
	return aUS, bUS, median(ratios)
}

func median(vs []float64) float64 {
	s := slices.Clone(vs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// rssMB reads the process's resident set size from /proc/self/status.
func rssMB(tb testing.TB) float64 {
	tb.Helper()
	raw, err := os.ReadFile("/proc/self/status")
	if err != nil {
		tb.Fatal(err)
	}
	for line := range strings.Lines(string(raw)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			if err != nil {
				tb.Fatal(err)
			}
			return kb / 1024
		}
	}
	tb.Fatal("no VmRSS in /proc/self/status")
	return 0
}

// keygenBatch is how many keys BenchmarkKeygenScale makes on each path
// per round.
const keygenBatch = 50

// BenchmarkKeygenScale generates 1,000 EC P-256 keys through the
// daemon's socket (GenerateKey, as `signerctl key generate` calls it:
// the pair made and read back, its label checked free on the token, the
// record committed, two audit lines) and, in the same run, 1,000 raw
// C_GenerateKeyPair calls with the same templates on a second SoftHSM
// token, in alternating rounds of 50 so that both tokens grow alike. It
// reports the total seconds of each and the per-key milliseconds of the
// first and last rounds, where the token holds 0 and 950 keys.
func BenchmarkKeygenScale(b *testing.B) {
	const total = 1000
	// Both tokens behind one SOFTHSM2_CONF, made before the daemon loads
	// the module: a process initialises the module once, and SoftHSM
	// finds its tokens at C_Initialize.
	rawFix := newScaleFixture(b)
	d := newDaemonOn(b, softhsmtest.New(b, softhsmtest.WithDir(rawFix.soft.Dir), softhsmtest.WithLabel("keygen-daemon")), newDaemonDir(b))
	r := openRawP11(b, rawFix.soft)
	defer r.close()
	ctx := context.Background()
	var daemonS, rawS, firstD, lastD, firstR, lastR float64
	made := 0
	daemonRound := func() float64 {
		t0 := time.Now()
		for i := range keygenBatch {
			if _, err := d.client.GenerateKey(ctx, &signerv1.GenerateKeyRequest{Token: "t1", Label: fmt.Sprintf("gen-%d", made+i),
				Algorithm: "EC-P256", Usage: signerv1.KeyUsage_KEY_USAGE_SIGN}); err != nil {
				b.Fatal(err)
			}
		}
		return time.Since(t0).Seconds()
	}
	rawRound := func() float64 {
		t0 := time.Now()
		for i := range keygenBatch {
			id := sha256.Sum256(fmt.Appendf(nil, "raw/%d", made+i))
			if _, err := r.genEC(id[:16], fmt.Sprintf("gen-%d", made+i)); err != nil {
				b.Fatal(err)
			}
		}
		return time.Since(t0).Seconds()
	}
	b.ResetTimer()
	for round := 0; made < total; round++ {
		var ds, rs float64
		if round%2 == 0 {
			ds, rs = daemonRound(), rawRound()
		} else {
			rs, ds = rawRound(), daemonRound()
		}
		if round == 0 {
			firstD, firstR = ds, rs
		}
		lastD, lastR = ds, rs
		daemonS += ds
		rawS += rs
		made += keygenBatch
	}
	b.StopTimer()
	b.ReportMetric(daemonS, "daemon-s/1000")
	b.ReportMetric(rawS, "raw-C_GenerateKeyPair-s/1000")
	b.ReportMetric(daemonS/rawS, "daemon/raw")
	b.ReportMetric(firstD*1000/keygenBatch, "daemon-first-ms/key")
	b.ReportMetric(lastD*1000/keygenBatch, "daemon-last-ms/key")
	b.ReportMetric(firstR*1000/keygenBatch, "raw-first-ms/key")
	b.ReportMetric(lastR*1000/keygenBatch, "raw-last-ms/key")
}
