package ocsp

import (
	"context"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	xocsp "golang.org/x/crypto/ocsp"
)

// rssBytes reads the process's resident set size from /proc.
func rssBytes(b *testing.B) float64 {
	b.Helper()
	raw, err := os.ReadFile("/proc/self/status")
	if err != nil {
		b.Fatal(err)
	}
	for _, l := range strings.Split(string(raw), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, err := strconv.ParseFloat(f[1], 64)
			if err != nil {
				b.Fatal(err)
			}
			return kb * 1024
		}
	}
	b.Fatal("no VmRSS in /proc/self/status")
	return 0
}

// BenchmarkThousandCertificates watches 1,000 certificates against a
// local responder (responses made in advance, so the responder costs
// little) and reports the time of one refresh cycle of all of them
// (target < 10 s) and the memory the watcher holds for them: the heap in
// use and the resident set grown from before the watcher was made to
// after its first cycle, with the cycle's garbage returned to the system
// (target < 10 MB).
func BenchmarkThousandCertificates(b *testing.B) {
	const n = 1000
	ca := newRoot(b, "CA")
	r := newResponder(b, ca)
	var subjects []Subject
	ready := map[string][]byte{}
	for range n {
		c := newLeaf(b, "member", ca, r.URL())
		subjects = append(subjects, Subject{c, ca.cert})
		ready[c.SerialNumber.String()] = respond(b, c, ca, answer{status: xocsp.Good}, nil)
	}
	r.setHandler(func(w http.ResponseWriter, _ *http.Request, req []byte) {
		parsed, err := xocsp.ParseRequest(req)
		if err != nil {
			w.Write(xocsp.MalformedRequestErrorResponse)
			return
		}
		w.Header().Set("Content-Type", "application/ocsp-response")
		w.Write(ready[parsed.SerialNumber.String()])
	})
	for b.Loop() {
		debug.FreeOSMemory()
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		rssBefore := rssBytes(b)
		w, err := NewWatcher(&fixedSource{subjects: subjects}, nil, Options{StartSpread: time.Hour})
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- w.Run(ctx) }()
		<-w.Ready()
		start := time.Now()
		if err := w.RefreshNow(ctx); err != nil {
			b.Fatal(err)
		}
		cycle := time.Since(start)
		for _, s := range w.Statuses() {
			if !s.Usable {
				b.Fatalf("%s not usable after the cycle: %s", s.Subject, s.Reason)
			}
		}
		debug.FreeOSMemory() // what the cycle's garbage took is returned, what the watcher holds stays
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		b.ReportMetric(cycle.Seconds(), "s/cycle")
		b.ReportMetric(float64(int64(after.HeapAlloc)-int64(before.HeapAlloc))/(1<<20), "heap-MB")
		b.ReportMetric((rssBytes(b)-rssBefore)/(1<<20), "rss-growth-MB")
		cancel()
		<-done
		runtime.KeepAlive(w)
	}
}
