package audit

import (
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkAppend appends typical sign records from 1, 8 and 64 goroutines
// at once, in Sync and Buffered mode; in Sync mode also with the head file
// updated inline by the writer, and without head file, to show what the
// head costs. It reports appends/s and records per fsync. The log is in the test's
// temporary directory: point TMPDIR at the disk the appliance will use.
func BenchmarkAppend(b *testing.B) {
	for _, mode := range []Mode{Sync, Buffered} {
		for _, g := range []int{1, 8, 64} {
			b.Run(fmt.Sprintf("%v/goroutines=%d", mode, g), func(b *testing.B) {
				benchAppend(b, mode, g, hooks{})
			})
			if mode == Sync {
				b.Run(fmt.Sprintf("%v-headinline/goroutines=%d", mode, g), func(b *testing.B) {
					benchAppend(b, mode, g, hooks{syncHead: true})
				})
				b.Run(fmt.Sprintf("%v-head50ms/goroutines=%d", mode, g), func(b *testing.B) {
					benchAppendOpts(b, Options{Mode: mode, HeadEvery: 50 * time.Millisecond}, g, hooks{})
				})
				b.Run(fmt.Sprintf("%v-nohead/goroutines=%d", mode, g), func(b *testing.B) {
					benchAppend(b, mode, g, hooks{noHead: true})
				})
			}
		}
	}
}

func benchAppend(b *testing.B, mode Mode, goroutines int, variant hooks) {
	benchAppendOpts(b, Options{Mode: mode}, goroutines, variant)
}

func benchAppendOpts(b *testing.B, opts Options, goroutines int, variant hooks) {
	p := &probeFile{}
	hk := probe(p)
	hk.noHead, hk.syncHead = variant.noHead, variant.syncHead
	l, err := open(b.Context(), filepath.Join(b.TempDir(), "audit.log"), opts, hk)
	if err != nil {
		b.Fatal(err)
	}
	r := sampleRecord(0)
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	for range goroutines {
		wg.Go(func() {
			for next.Add(1) <= int64(b.N) {
				if err := l.Append(b.Context(), r); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	if err := l.Close(); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "appends/s")
	if s := p.syncs.Load(); s > 0 {
		b.ReportMetric(float64(b.N)/float64(s), "records/fsync")
	}
}
