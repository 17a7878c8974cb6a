package client

import (
	"context"
	"errors"
	"io"
	"math"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/internal/coalesce"
)

// Sign signs one digest. Calls share one long-lived SignStream, which
// spares each of them the cost of a new HTTP/2 stream; each is still
// admitted, signed and audited by the daemon as a Sign call, and fails
// alone. The context's deadline bounds the wait and travels to the
// daemon. Calls with call options, calls made while the connection is not
// up yet, calls to a daemon without SignStream, and requests larger than
// any well-formed one (which the daemon may refuse as too large, ending
// the stream they travel on) use the Sign method.
func (c *Client) Sign(ctx context.Context, req *signerv1.SignRequest, opts ...grpc.CallOption) (*signerv1.SignResponse, error) {
	if len(opts) == 0 && c.conn.GetState() == connectivity.Ready && proto.Size(req) <= maxStreamedRequest {
		resp, err := c.streams.sign(ctx, req)
		if !errors.Is(err, errNoSignStream) {
			return resp, err
		}
	}
	return c.SignerClient.Sign(ctx, req, opts...)
}

// maxStreamedRequest is the largest Sign request sent on the shared
// stream. A well-formed one (a key id or certificate hash, an algorithm
// name, a digest of at most 64 bytes) is under 200 bytes.
const maxStreamedRequest = 512

// maxStreamBatch bounds the calls sent in one message: 64 of the largest
// streamed requests stay far below any message size limit a daemon
// accepts (at least 64 KiB).
const maxStreamBatch = 64

// retryStreamAfter is how long a client whose daemon had no SignStream
// uses Sign calls before it tries a stream again.
const retryStreamAfter = time.Minute

// errNoSignStream means the daemon does not know SignStream; the request
// was not signed.
var errNoSignStream = errors.New("the daemon has no SignStream")

// signStreams keeps the stream a Client's Sign calls share, and opens a
// new one when it ends.
type signStreams struct {
	api signerv1.SignerClient

	mu  sync.Mutex
	cur *signStream // nil: none open
	// unaryUntil: the daemon had no SignStream; Sign calls until then
	// (a daemon may be upgraded under a long-lived client).
	unaryUntil time.Time
	closing    bool
}

// signStream is one open SignStream and the calls waiting on it.
type signStream struct {
	stream signerv1.Signer_SignStreamClient
	cancel context.CancelFunc
	// out sends the calls and cancels that queue up during a send in one
	// message.
	out *coalesce.Sender[outgoing]

	mu      sync.Mutex
	nextID  uint64
	pending map[uint64]chan streamResult // nil once the stream has ended
	err     error                        // why it ended
}

type streamResult struct {
	resp *signerv1.SignResponse
	err  error
}

// outgoing is a call to send, or the id of a call its caller gave up on.
type outgoing struct {
	call   *signerv1.StreamedSign // nil for a cancel
	cancel uint64
}

// sign sends req on the shared stream and waits for its answer or ctx.
func (m *signStreams) sign(ctx context.Context, req *signerv1.SignRequest) (*signerv1.SignResponse, error) {
	if err := ctx.Err(); err != nil {
		return nil, status.FromContextError(err).Err()
	}
	var timeoutMS uint32
	if dl, ok := ctx.Deadline(); ok {
		// Rounded up, and at least 1: the daemon must not give up before
		// the caller does, and the caller's context says when it has.
		left := max(time.Until(dl), time.Millisecond)
		timeoutMS = uint32(min((left+time.Millisecond-1)/time.Millisecond, math.MaxUint32))
	}
	var (
		st *signStream
		id uint64
		ch chan streamResult
	)
	// A stream that ended between open and add is replaced once.
	for attempt := 0; ; attempt++ {
		var err error
		if st, err = m.open(); err != nil {
			return nil, err
		}
		if id, ch, err = st.add(); err == nil {
			break
		} else if attempt == 1 {
			return nil, err
		}
	}
	// A failed send ends the stream; the receiver then fails every call
	// waiting on it with the stream's status. The request is copied: it
	// may be encoded by another caller's send after this one has returned
	// (its context ended), and the caller may reuse it by then.
	_ = st.out.Add(outgoing{call: &signerv1.StreamedSign{Id: id, Request: proto.CloneOf(req), TimeoutMs: timeoutMS}})
	select {
	case r := <-ch:
		return r.resp, r.err
	case <-ctx.Done():
		if st.remove(id) {
			// Still unanswered: the daemon need not sign it. (Past its
			// deadline the daemon gives up by itself, but a cancel
			// costs little and reaches it sooner.)
			_ = st.out.Add(outgoing{cancel: id})
		}
		return nil, status.FromContextError(ctx.Err()).Err()
	}
}

// open returns the shared stream, opening one when there is none.
func (m *signStreams) open() (*signStream, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case time.Now().Before(m.unaryUntil):
		return nil, errNoSignStream
	case m.closing:
		return nil, status.Error(codes.Canceled, "the client is closed")
	case m.cur != nil:
		return m.cur, nil
	}
	// The stream lives until it fails or the client is closed, not as
	// long as the call that happens to open it.
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := m.api.SignStream(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	st := &signStream{stream: stream, cancel: cancel, pending: map[uint64]chan streamResult{}}
	st.out = coalesce.New(maxStreamBatch, func(items []outgoing) error {
		m := &signerv1.SignStreamRequest{}
		for _, o := range items {
			if o.call != nil {
				m.Calls = append(m.Calls, o.call)
			} else {
				m.Cancel = append(m.Cancel, o.cancel)
			}
		}
		err := stream.Send(m)
		if err != nil {
			cancel()
		}
		return err
	})
	m.cur = st
	go m.receive(st)
	return st, nil
}

// receive hands each response to its waiting call until the stream ends,
// then fails the calls still waiting.
func (m *signStreams) receive(st *signStream) {
	for {
		resp, err := st.stream.Recv()
		if err != nil {
			m.ended(st, err)
			return
		}
		for _, r := range resp.GetResults() {
			st.mu.Lock()
			ch := st.pending[r.GetId()]
			delete(st.pending, r.GetId())
			st.mu.Unlock()
			if ch == nil {
				continue // its caller gave up
			}
			if e := r.GetError(); e != nil {
				ch <- streamResult{err: status.Error(codes.Code(e.GetCode()), e.GetMessage())}
			} else {
				ch <- streamResult{resp: r.GetResponse()}
			}
		}
	}
}

// ended forgets st and fails its waiting calls with why it ended.
func (m *signStreams) ended(st *signStream, err error) {
	switch {
	case status.Code(err) == codes.Unimplemented:
		// Refused before any request was read: safe to send them again as
		// Sign calls.
		err = errNoSignStream
	case errors.Is(err, io.EOF):
		err = status.Error(codes.Unavailable, "the daemon ended the sign stream")
	}
	m.mu.Lock()
	if m.cur == st {
		m.cur = nil
	}
	if errors.Is(err, errNoSignStream) {
		m.unaryUntil = time.Now().Add(retryStreamAfter)
	}
	m.mu.Unlock()
	st.cancel()
	st.mu.Lock()
	pending := st.pending
	st.pending, st.err = nil, err
	st.mu.Unlock()
	for _, ch := range pending {
		ch <- streamResult{err: err}
	}
}

// add registers a call on st and returns its id and the channel its
// answer comes on, or why st can take no more.
func (st *signStream) add() (uint64, chan streamResult, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.pending == nil {
		return 0, nil, st.err
	}
	st.nextID++
	ch := make(chan streamResult, 1)
	st.pending[st.nextID] = ch
	return st.nextID, ch, nil
}

// remove forgets a call whose caller gave up, and reports whether it
// was still waiting for its answer on a live stream.
func (st *signStream) remove(id uint64) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	_, waiting := st.pending[id]
	delete(st.pending, id)
	return waiting
}

// close ends the shared stream; later calls fail.
func (m *signStreams) close() {
	m.mu.Lock()
	m.closing = true
	st := m.cur
	m.mu.Unlock()
	if st != nil {
		st.cancel()
	}
}
