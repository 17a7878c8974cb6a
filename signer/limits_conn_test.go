package signer

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/grpc/stats"
)

// TestConnScope: a stream context derived from a connection's context
// registers there while it lives and withdraws when it ends; TapCall's
// take and cancelStream end exactly the latest one, timer and all, and
// none other; the connection's end ends the rest, and a context derived
// after it is born ended.
func TestConnScope(t *testing.T) {
	type vkey struct{}
	base := context.WithValue(context.Background(), vkey{}, "conn")
	ctx := connScope{}.TagConn(base, &stats.ConnTagInfo{})
	c, ok := ctx.Value(connScopeKey{}).(*connCtx)
	if !ok || ctx.Value(vkey{}) != "conn" {
		t.Fatalf("TagConn's context: scope %v, value %v; want the scope and the connection's values", ok, ctx.Value(vkey{}))
	}
	registered := func() int {
		c.mu.Lock()
		defer c.mu.Unlock()
		return len(c.funcs)
	}

	// Streams gRPC ends itself withdraw their registrations.
	for range 100 {
		s, cancel := context.WithTimeout(ctx, time.Hour)
		if c.take() == 0 {
			t.Fatal("a stream context registered nothing")
		}
		cancel()
		if s.Err() == nil {
			t.Fatal("cancel did not end the stream context")
		}
	}
	if n := registered(); n != 0 {
		t.Fatalf("%d registrations after 100 streams ended; want 0", n)
	}

	// A live stream, then a refused one: only the refused one ends.
	live, cancelLive := context.WithCancel(ctx)
	defer cancelLive()
	c.take()
	// gRPC drops the cancel of a stream TapCall refuses (what the test is
	// about); it runs only when the test ends.
	refused, cancelRefused := context.WithTimeout(ctx, time.Duration(1<<62))
	defer cancelRefused()
	id := c.take()
	if id == 0 {
		t.Fatal("the refused stream's context registered nothing")
	}
	if again := c.take(); again != 0 {
		t.Fatalf("take twice: %d; want 0 once taken", again)
	}
	c.cancelStream(id)
	if !errors.Is(refused.Err(), context.Canceled) {
		t.Fatalf("the refused stream's context: %v; want canceled", refused.Err())
	}
	if live.Err() != nil || ctx.Err() != nil {
		t.Fatalf("after one refusal: the live stream %v, the connection %v; want neither ended", live.Err(), ctx.Err())
	}
	if n := registered(); n != 1 {
		t.Fatalf("%d registrations with one live stream; want 1", n)
	}

	// The connection ends: so do its streams, and any derived after.
	connScope{}.HandleConn(ctx, &stats.ConnEnd{})
	if !errors.Is(live.Err(), context.Canceled) || !errors.Is(ctx.Err(), context.Canceled) {
		t.Fatalf("after the connection's end: the live stream %v, the connection %v; want both canceled", live.Err(), ctx.Err())
	}
	late, cancelLate := context.WithTimeout(ctx, time.Hour)
	defer cancelLate()
	if late.Err() == nil {
		t.Fatal("a stream context derived after the connection's end is not ended")
	}
	if n := registered(); n != 0 {
		t.Fatalf("%d registrations after the connection's end; want 0", n)
	}
}
