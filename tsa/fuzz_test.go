package tsa

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/digitorus/timestamp"
)

// FuzzIssue feeds the issuer arbitrary requests, seeded with requests
// `openssl ts -query` made (testdata/requests): every answer is a
// TimeStampResp, a token only with no refusal, and nothing panics.
func FuzzIssue(f *testing.F) {
	seeds, _ := filepath.Glob(filepath.Join("testdata", "requests", "*.tsq"))
	if len(seeds) == 0 {
		f.Fatal("no seed requests in testdata/requests")
	}
	for _, p := range seeds {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	ts := newCriticalEKUTSA(f, "ecdsa")
	is := ts.issuer(f, syncedClock)
	f.Fuzz(func(t *testing.T, req []byte) {
		resp, issued, err := is.Issue(context.Background(), req)
		st, _ := status(t, resp)
		var r *Refusal
		switch {
		case err == nil:
			if st != int(timestamp.Granted) || issued == nil {
				t.Fatalf("no refusal, yet status %d", st)
			}
			if _, perr := timestamp.ParseResponse(resp); perr != nil {
				t.Fatalf("a granted answer does not parse: %v", perr)
			}
		case errors.As(err, &r):
			if st != int(timestamp.Rejection) || issued != nil {
				t.Fatalf("refused (%v), yet status %d", err, st)
			}
		default:
			t.Fatalf("neither a token nor a refusal: %v", err)
		}
	})
}

// TestKernelClockReads checks that adjtimex is read without error and
// gives a bound on the clock's error (this machine's kernel may well call
// the clock unsynchronised: no NTP in the VM).
func TestKernelClockReads(t *testing.T) {
	st, err := KernelClock{}.ClockState()
	if err != nil {
		t.Fatal(err)
	}
	if st.MaxError < 0 {
		t.Fatalf("max error %s", st.MaxError)
	}
	t.Logf("kernel clock: synced=%v maxerror=%s", st.Synced, st.MaxError)
}
