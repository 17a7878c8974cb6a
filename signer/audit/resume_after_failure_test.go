package audit

import (
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
)

// TestLogResumesAfterAFailure fails the log's writes in three ways and
// then lets them work again: after a write that failed half way (its
// partial group cut off) and after a head file that could not be
// replaced, the next Append succeeds and the chain goes on without a gap
// or a doubled line; after a failed fsync the log stays failed, since the
// kernel may have dropped the pages it had called clean.
func TestLogResumesAfterAFailure(t *testing.T) {
	errDisk := errors.New("no space left")
	tests := []struct {
		name    string
		resumes bool
		// breakIt makes the next write fail; mend undoes it.
		breakIt, mend func(t *testing.T, path string, p *probeFile, broken *atomic.Bool)
	}{
		{"short write", true,
			func(t *testing.T, _ string, _ *probeFile, broken *atomic.Bool) { broken.Store(true) },
			func(t *testing.T, _ string, _ *probeFile, broken *atomic.Bool) { broken.Store(false) }},
		{"head file cannot be replaced", true,
			func(t *testing.T, path string, _ *probeFile, _ *atomic.Bool) {
				// A directory where the new head is written: open(2) fails.
				if err := os.Mkdir(path+headSuffix+tmpSuffix, 0o700); err != nil {
					t.Fatal(err)
				}
			},
			func(t *testing.T, path string, _ *probeFile, _ *atomic.Bool) {
				if err := os.Remove(path + headSuffix + tmpSuffix); err != nil {
					t.Fatal(err)
				}
			}},
		{"fsync fails", false,
			func(t *testing.T, _ string, p *probeFile, broken *atomic.Bool) { broken.Store(true) },
			func(t *testing.T, _ string, _ *probeFile, broken *atomic.Bool) { broken.Store(false) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.log")
			var broken atomic.Bool
			p := &probeFile{}
			if tt.name == "fsync fails" {
				p.beforeSync = func(int64) error {
					if broken.Load() {
						return errDisk
					}
					return nil
				}
			} else {
				p.write = func(f logFile, b []byte) (int, error) {
					if broken.Load() {
						n, _ := f.Write(b[:len(b)/2])
						return n, errDisk
					}
					return f.Write(b)
				}
			}
			hk := probe(p)
			headWritten := make(chan Head, 16)
			hk.syncHead = true // the head file is written before Append returns
			hk.headWritten = func(h Head) { headWritten <- h }
			l, err := open(t.Context(), path, Options{}, hk)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			ok := 0
			for i := range 2 {
				if err := l.Append(t.Context(), sampleRecord(i)); err != nil {
					t.Fatal(err)
				}
				ok++
			}
			for h := range headWritten { // the head file is up to date
				if h.Seq == uint64(ok) {
					break
				}
			}
			tt.breakIt(t, path, p, &broken)
			failures := 0
			for i := range 3 {
				err := l.Append(t.Context(), sampleRecord(10+i))
				if tt.name == "head file cannot be replaced" && i == 0 {
					// The line is written and fsynced; its head update fails.
					if err != nil {
						t.Fatalf("append whose head update fails: %v", err)
					}
					ok++
					continue
				}
				if !errors.Is(err, ErrFailed) {
					t.Fatalf("append %d while broken: %v, want ErrFailed", i, err)
				}
				failures++
			}
			if failures == 0 {
				t.Fatal("nothing failed")
			}
			tt.mend(t, path, p, &broken)
			for i := range 2 {
				err := l.Append(t.Context(), sampleRecord(20+i))
				if !tt.resumes {
					if !errors.Is(err, ErrFailed) {
						t.Fatalf("append after a failed fsync: %v, want ErrFailed", err)
					}
					continue
				}
				if err != nil {
					t.Fatalf("append %d after the fault is gone: %v", i, err)
				}
				ok++
			}
			cerr := l.Close()
			if tt.resumes && cerr != nil {
				t.Fatalf("close after recovery: %v", cerr)
			}
			sum, err := VerifyFile(path)
			if err != nil {
				t.Fatalf("verify: %v", err)
			}
			if sum.Lines != ok {
				t.Fatalf("%d lines for %d acknowledged appends", sum.Lines, ok)
			}
			if tt.resumes && (sum.Head == nil || sum.Head.Seq != uint64(ok)) {
				t.Fatalf("head %+v after recovery, want seq %d", sum.Head, ok)
			}
		})
	}
}
