package signer

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// rawH2 is a connection to the daemon's socket spoken to frame by frame,
// as a misbehaving client would.
type rawH2 struct {
	t    *testing.T
	conn net.Conn
	fr   *http2.Framer
	wmu  sync.Mutex // the framer's writes
}

// dialRaw connects to sock and, when preface is set, sends the client
// preface and an empty SETTINGS frame.
func dialRaw(t *testing.T, sock string, preface bool) *rawH2 {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	// A guard only: each test waits for the event it names, well before.
	if err := c.SetDeadline(time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	r := &rawH2{t: t, conn: c, fr: http2.NewFramer(c, c)}
	r.fr.ReadMetaHeaders = hpack.NewDecoder(64<<10, nil)
	if preface {
		// A write that fails because the daemon closed the connection
		// (beyond connections_per_uid) shows in the next read.
		if _, err := io.WriteString(c, http2.ClientPreface); err == nil {
			_ = r.fr.WriteSettings()
		}
	}
	return r
}

// write writes frames under the write lock.
func (r *rawH2) write(f func(*http2.Framer) error) {
	r.t.Helper()
	r.wmu.Lock()
	defer r.wmu.Unlock()
	if err := f(r.fr); err != nil {
		r.t.Fatalf("writing a frame: %v", err)
	}
}

// headers encodes a gRPC call's request headers for method, with extra
// metadata fields.
func grpcHeaders(method string, extra ...hpack.HeaderField) []byte {
	var b bytes.Buffer
	enc := hpack.NewEncoder(&b)
	for _, f := range append([]hpack.HeaderField{
		{Name: ":method", Value: "POST"},
		{Name: ":scheme", Value: "http"},
		{Name: ":path", Value: method},
		{Name: ":authority", Value: "localhost"},
		{Name: "content-type", Value: "application/grpc"},
		{Name: "te", Value: "trailers"},
	}, extra...) {
		_ = enc.WriteField(f)
	}
	return b.Bytes()
}

// startCall opens stream id with method's headers (in one HEADERS frame).
func (r *rawH2) startCall(id uint32, method string, extra ...hpack.HeaderField) {
	r.t.Helper()
	block := grpcHeaders(method, extra...)
	r.write(func(fr *http2.Framer) error {
		return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndHeaders: true})
	})
}

// frameEvent is what the daemon sent: a frame, or the end of the
// connection.
type frameEvent struct {
	frame http2.Frame
	err   error // io.EOF or a reset once the daemon closed the connection
}

// readUntil reads frames until match accepts one or the connection ends;
// it answers PINGs and SETTINGS as a client does. It returns the matched
// frame, or nil and the read error.
func (r *rawH2) readUntil(match func(http2.Frame) bool) (http2.Frame, error) {
	for {
		f, err := r.fr.ReadFrame()
		if err != nil {
			return nil, err
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				// A failed write (the daemon closing) shows in the next read.
				r.wmu.Lock()
				_ = r.fr.WriteSettingsAck()
				r.wmu.Unlock()
			}
		}
		if match(f) {
			return f, nil
		}
	}
}

// closedByPeer reports whether err is how a read ends on a connection the
// daemon closed.
func closedByPeer(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false
	}
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, syscall.ECONNRESET)
}

// wellBehaved is a client that keeps signing, one call after another,
// until stopped; it counts the calls that succeeded and keeps the first
// that failed.
type wellBehaved struct {
	ok     atomic.Int64
	mu     sync.Mutex
	err    error
	cancel context.CancelFunc
	done   chan struct{}
}

// keepSigning starts a well-behaved client on d's own client (its one
// connection), alternating unary and streamed Sign calls with key keyID.
func keepSigning(t *testing.T, d *testDaemon, keyID string) *wellBehaved {
	t.Helper()
	ctx, cancel := context.WithCancel(testCtx(t))
	w := &wellBehaved{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for i := 0; ctx.Err() == nil; i++ {
			var err error
			if i%2 == 0 {
				_, err = d.client.SignerClient.Sign(ctx, signReq(keyID, sha("well-behaved")))
			} else {
				_, err = d.client.Sign(ctx, signReq(keyID, sha("well-behaved")))
			}
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				w.mu.Lock()
				if w.err == nil {
					w.err = err
				}
				w.mu.Unlock()
				return
			}
			w.ok.Add(1)
		}
	}()
	t.Cleanup(w.stopNow)
	return w
}

func (w *wellBehaved) stopNow() { w.cancel(); <-w.done }

// check stops the client and fails t unless every call of it succeeded
// and at least min did.
func (w *wellBehaved) check(t *testing.T, min int64) {
	t.Helper()
	w.stopNow()
	if w.err != nil {
		t.Fatalf("the well-behaved client's call failed: %v", w.err)
	}
	if n := w.ok.Load(); n < min {
		t.Fatalf("the well-behaved client had %d calls answered, want at least %d", n, min)
	}
}

// waitCalls waits until the well-behaved client has had n more calls
// answered than when called.
func (w *wellBehaved) waitCalls(t *testing.T, n int64) {
	t.Helper()
	base := w.ok.Load()
	waitFor(t, "the well-behaved client's calls", func() bool {
		w.mu.Lock()
		err := w.err
		w.mu.Unlock()
		if err != nil {
			t.Fatalf("the well-behaved client's call failed: %v", err)
		}
		return w.ok.Load() >= base+n
	})
}
