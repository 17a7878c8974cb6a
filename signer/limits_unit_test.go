package signer

import (
	"errors"

	dto "github.com/prometheus/client_model/go"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hsmsigner/hsmsigner/signer/audit"
	"github.com/hsmsigner/hsmsigner/signer/config"
	"github.com/hsmsigner/hsmsigner/signer/peercred"
)

// TestLimitsForgetIdleUIDs: the limits keep a uid only while it holds or
// owes something, so that uids that come and go leave nothing behind; a
// new uid is refused only while the table is full of busy ones.
func TestLimitsForgetIdleUIDs(t *testing.T) {
	cfg := config.DefaultLimits()
	var mu sync.Mutex
	var written []audit.Record
	l := newUIDLimits(cfg, slog.New(slog.DiscardHandler), func(r audit.Record) error {
		mu.Lock()
		defer mu.Unlock()
		written = append(written, r)
		return nil
	}, nil)
	defer l.close()
	var clock atomic.Int64
	clock.Store(time.Now().UnixNano())
	l.now = func() time.Time { return time.Unix(0, clock.Load()) } // before any uid: the sweeper starts with the first
	size := func() int {
		l.mu.Lock()
		defer l.mu.Unlock()
		return len(l.uids)
	}
	// Busy uids fill the table; one more is refused.
	var dones []func()
	for uid := range uint32(maxTrackedUIDs) {
		done, err := l.startCall(peercred.Peer{UID: uid})
		if err != nil {
			t.Fatalf("uid %d: %v", uid, err)
		}
		dones = append(dones, done)
	}
	if _, err := l.openConn(peercred.Peer{UID: maxTrackedUIDs}); !errors.Is(err, ErrLimit) {
		t.Fatalf("a new uid with the table full of busy ones: %v, want ErrLimit", err)
	}
	// Once one is idle, there is room again.
	dones[0]()
	release, err := l.openConn(peercred.Peer{UID: maxTrackedUIDs})
	if err != nil {
		t.Fatalf("a new uid once another is idle: %v", err)
	}
	release()
	for _, done := range dones[1:] {
		done()
	}
	// Idle uids are forgotten at the next sweep; a uid that owes a summary
	// line or has spent a refusal token is kept until it has neither.
	if !l.refusalLine(peercred.Peer{UID: 7}, "denied") {
		t.Fatal("the first refusal of a uid got no line")
	}
	for range cfg.RefusalBurst + 1 {
		l.refusalLine(peercred.Peer{UID: 8}, "denied")
	}
	l.summarise()
	if n := size(); n != 2 {
		t.Fatalf("%d uids kept after the sweep; want 2 (tokens spent)", n)
	}
	mu.Lock()
	if len(written) != 1 || written[0].UID != 8 || written[0].Count != 1 || written[0].Op != OpDeniedSummary {
		t.Fatalf("summary lines %+v; want one for uid 8 counting 1", written)
	}
	mu.Unlock()
	if _, err := l.startCall(peercred.Peer{UID: 9}); err != nil {
		t.Fatal(err)
	}
	// A second later uid 7's bucket is full again, not uid 8's.
	clock.Add(int64(time.Second))
	l.summarise()
	if n := size(); n != 2 {
		t.Fatalf("%d uids kept a second later; want 2 (uid 8's bucket not full again, 9 busy)", n)
	}
	clock.Add(int64(time.Minute))
	l.summarise()
	if n := size(); n != 1 {
		t.Fatalf("%d uids kept once the buckets are full again; want 1 (uid 9 holds a call)", n)
	}
}

// TestLimitsTableFullAdmitsPeersThePolicyNames: with the table of uids
// full of busy ones, a peer the policy does not name is refused and
// counted, while one it names (by uid or by primary gid) is kept beyond
// the bound and held to its own limits; once the busy uids are idle, the
// table shrinks back to the bound.
func TestLimitsTableFullAdmitsPeersThePolicyNames(t *testing.T) {
	const bound = 3
	const namedUID, namedGID = 1000, 2000
	known := func(p peercred.Peer) bool { return p.UID == namedUID || p.GID == namedGID }
	cfg := config.DefaultLimits()
	cfg.CallsPerUID = 2
	l := newUIDLimitsBounded(cfg, slog.New(slog.DiscardHandler), func(audit.Record) error { return nil }, known, bound)
	defer l.close()
	var clock atomic.Int64
	clock.Store(time.Now().UnixNano())
	l.now = func() time.Time { return time.Unix(0, clock.Load()) } // before any uid: the sweeper starts with the first
	size := func() int {
		l.mu.Lock()
		defer l.mu.Unlock()
		return len(l.uids)
	}
	var dones []func()
	for uid := range uint32(bound) {
		done, err := l.startCall(peercred.Peer{UID: 500 + uid, GID: 500 + uid})
		if err != nil {
			t.Fatalf("uid %d below the bound: %v", 500+uid, err)
		}
		dones = append(dones, done)
	}
	tests := []struct {
		name string
		peer peercred.Peer
		want error
	}{
		{"unknown uid", peercred.Peer{UID: 600, GID: 600}, ErrLimit},
		{"uid the policy names", peercred.Peer{UID: namedUID, GID: 600}, nil},
		{"gid the policy names", peercred.Peer{UID: 601, GID: namedGID}, nil},
		{"another unknown uid", peercred.Peer{UID: 602, GID: 602}, ErrLimit},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := int(testutilCounter(t, l, limitUIDs))
			done, err := l.startCall(tt.peer)
			if !errors.Is(err, tt.want) {
				t.Fatalf("startCall: %v, want %v", err, tt.want)
			}
			release, cerr := l.openConn(tt.peer)
			if !errors.Is(cerr, tt.want) {
				t.Fatalf("openConn: %v, want %v", cerr, tt.want)
			}
			if tt.want != nil {
				if got := int(testutilCounter(t, l, limitUIDs)); got != before+2 {
					t.Fatalf("signerd_limit_exceeded_total{limit=uids} went from %d to %d, want +2", before, got)
				}
				return
			}
			dones = append(dones, done, release)
			// Kept, so held to its own limits: calls_per_uid is 2.
			second, err := l.startCall(tt.peer)
			if err != nil {
				t.Fatalf("second call: %v", err)
			}
			dones = append(dones, second)
			if _, err := l.startCall(tt.peer); !errors.Is(err, ErrLimit) {
				t.Fatalf("third call of a named peer: %v, want ErrLimit (calls_per_uid 2)", err)
			}
		})
	}
	if n := size(); n != bound+2 {
		t.Fatalf("%d uids kept; want %d: the bound and the two named peers", n, bound+2)
	}
	for _, done := range dones {
		done()
	}
	clock.Add(int64(time.Hour)) // every bucket full again
	l.summarise()
	if n := size(); n != 0 {
		t.Fatalf("%d uids kept once all are idle; want 0", n)
	}
}

// testutilCounter reads signerd_limit_exceeded_total{limit=name} of l.
func testutilCounter(t *testing.T, l *uidLimits, name string) float64 {
	t.Helper()
	var m dto.Metric
	if err := l.exceeded.WithLabelValues(name).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
