package signer

import (
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hsmsigner/hsmsigner/signer/audit"
	"github.com/hsmsigner/hsmsigner/signer/config"
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
	})
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
		done, err := l.startCall(uid)
		if err != nil {
			t.Fatalf("uid %d: %v", uid, err)
		}
		dones = append(dones, done)
	}
	if _, err := l.openConn(maxTrackedUIDs); !errors.Is(err, ErrLimit) {
		t.Fatalf("a new uid with the table full of busy ones: %v, want ErrLimit", err)
	}
	// Once one is idle, there is room again.
	dones[0]()
	release, err := l.openConn(maxTrackedUIDs)
	if err != nil {
		t.Fatalf("a new uid once another is idle: %v", err)
	}
	release()
	for _, done := range dones[1:] {
		done()
	}
	// Idle uids are forgotten at the next sweep; a uid that owes a summary
	// line or has spent a refusal token is kept until it has neither.
	if !l.refusalLine(7, "denied") {
		t.Fatal("the first refusal of a uid got no line")
	}
	for range cfg.RefusalBurst + 1 {
		l.refusalLine(8, "denied")
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
	if _, err := l.startCall(9); err != nil {
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
