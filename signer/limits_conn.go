package signer

import (
	"context"
	"sync"
	"time"

	"google.golang.org/grpc/stats"
)

// connScope gives each connection of the gRPC server a context of its own
// (TagConn), from which gRPC derives the contexts of the connection's
// streams, so that TapCall can end the context of a stream it refuses.
//
// gRPC derives a stream's context before it asks the InTapHandle, with
// a timer when the call has a deadline (grpc-timeout), and when the
// handle refuses the stream it drops the stream without ending that
// context (grpc-go's operateHeaders does not call the stream's cancel on
// that path). Its timer then stays in the runtime until the deadline
// passes: about 270 bytes for each refused call, for as long as the
// deadline the caller chose (up to 99999999 hours), whether or not the
// connection is closed. A uid at calls_per_uid could grow the daemon
// without bound by sending header frames.
//
// The connection's context implements AfterFunc, so each stream context
// derived from it registers its cancellation here instead of in a
// goroutine or a parent's list. gRPC's reader goroutine derives a
// stream's context and asks TapCall in the same call, with no other
// stream's context derived from the connection's in between, so the
// registration TapCall takes (take) is the one of the stream it is
// asked about; it checks that the stream's context is the one that ended.
// A stream gRPC ends itself withdraws its registration (stop). When the
// connection ends, every registration left is run.
type connScope struct{}

// connScopeKey finds a connection's connCtx from any context below it.
type connScopeKey struct{}

// TagConn implements stats.Handler: ctx becomes the connection's own.
func (connScope) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return &connCtx{Context: ctx, done: make(chan struct{}), funcs: map[uint64]func(){}}
}

// HandleConn implements stats.Handler: at the connection's end its
// context ends, and with it any stream context still registered.
func (connScope) HandleConn(ctx context.Context, s stats.ConnStats) {
	if _, ok := s.(*stats.ConnEnd); !ok {
		return
	}
	if c, ok := ctx.Value(connScopeKey{}).(*connCtx); ok {
		c.end()
	}
}

// TagRPC implements stats.Handler.
func (connScope) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }

// HandleRPC implements stats.Handler.
func (connScope) HandleRPC(context.Context, stats.RPCStats) {}

// connCtx is a connection's context: the one gRPC gave, made cancelable
// through AfterFunc (see connScope).
type connCtx struct {
	context.Context
	done chan struct{}

	mu    sync.Mutex
	err   error             // context.Canceled once ended or while ending one stream
	next  uint64            // the id of the next registration
	last  uint64            // the latest registration TapCall has not taken, or 0
	funcs map[uint64]func() // the registrations still in force
	ended bool
}

// Done implements context.Context: closed when the connection ends.
func (c *connCtx) Done() <-chan struct{} { return c.done }

// Err implements context.Context. It is also what a stream's context
// ended through cancelStream reports as its parent's error.
func (c *connCtx) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Deadline implements context.Context: a connection has none.
func (c *connCtx) Deadline() (time.Time, bool) { return time.Time{}, false }

// Value implements context.Context.
func (c *connCtx) Value(key any) any {
	if key == (connScopeKey{}) {
		return c
	}
	return c.Context.Value(key)
}

// AfterFunc registers f, which ends a context derived from c (see
// context.AfterFunc's afterFuncer); the stop it returns withdraws it.
func (c *connCtx) AfterFunc(f func()) (stop func() bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ended {
		// The context package checked Done just before; run it as the
		// context package would, outside the caller's lock.
		go f()
		return func() bool { return false }
	}
	c.next++
	id := c.next
	c.funcs[id] = f
	c.last = id
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.last == id {
			c.last = 0
		}
		if _, ok := c.funcs[id]; !ok {
			return false
		}
		delete(c.funcs, id)
		return true
	}
}

// take returns the latest registration not yet taken, and forgets that it
// is the latest: it is the one of the stream TapCall is asked about, if
// that stream's context registered one.
func (c *connCtx) take() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	id := c.last
	c.last = 0
	return id
}

// cancelStream ends the stream context of registration id, as an ended
// connection would, but only that one.
func (c *connCtx) cancelStream(id uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f, ok := c.funcs[id]
	if !ok || c.ended {
		return
	}
	delete(c.funcs, id)
	// f reads c.Err() for the error the stream's context ends with; it
	// ends only that context (and those below it), without calling stop.
	c.err = context.Canceled
	c.mu.Unlock()
	f()
	c.mu.Lock()
	if !c.ended {
		c.err = nil
	}
}

// end ends the connection's context and every stream context still
// registered.
func (c *connCtx) end() {
	c.mu.Lock()
	if c.ended {
		c.mu.Unlock()
		return
	}
	c.ended, c.err = true, context.Canceled
	funcs := c.funcs
	c.funcs = map[uint64]func(){}
	close(c.done)
	c.mu.Unlock()
	for _, f := range funcs {
		f()
	}
}
