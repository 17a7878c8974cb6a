package signer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/audit"
	"github.com/hsmsigner/hsmsigner/signer/config"
	"github.com/hsmsigner/hsmsigner/signer/internal/coalesce"
	"github.com/hsmsigner/hsmsigner/signer/peercred"
)

// maxStreamInFlight bounds the calls of one SignStream taken and not yet
// sent back: being signed, or waiting for the caller to read their
// results. Beyond it the daemon stops reading the stream until a result
// is sent, and HTTP/2 flow control holds the caller back; a caller that
// does not read its results holds at most this many. It is the most
// sessions a token may have, so that calls waiting on one busy token do
// not hold up a client's calls for another.
const maxStreamInFlight = config.MaxSessions

// idleWorker is how long a stream's worker waits for a call before it
// ends; a burst's workers do not outlive it by much.
const idleWorker = time.Second

// maxStreamBatch bounds the results sent in one message.
const maxStreamBatch = 64

// errStopping ends the streams of a stopping daemon.
var errStopping = status.Error(codes.Unavailable, "signerd is stopping; calls of this stream that got no answer were not signed")

// SignStream implements signerv1.SignerServer. Each request is admitted
// under the policy in force when it arrives and then handled as a Sign
// call, on its own goroutine, so one slow request does not hold up the
// others. Drain makes the stream answer what it has received and end.
func (s *Service) SignStream(stream signerv1.Signer_SignStreamServer) error {
	// The peer again from the socket, not from the interceptor's caller:
	// a stream no interceptor admitted is refused, not taken for uid 0.
	peer, err := peercred.FromContext(stream.Context())
	if err != nil {
		return status.Error(codes.Unauthenticated, "no socket credentials: signerd serves Unix sockets only")
	}
	select {
	case <-s.draining:
		return errStopping // takes no call at all
	default:
	}
	ss := &signStream{
		svc:    s,
		stream: stream,
		peer:   peer,
		work:   make(chan streamCall),
		slots:  make(chan struct{}, maxStreamInFlight),
		calls:  map[uint64]context.CancelFunc{},
	}
	// Results ready together travel in one message, after one wait for
	// all their audit lines. Send is not safe for concurrent use; the
	// Sender never calls it concurrently.
	ss.results = coalesce.New(maxStreamBatch, func(rs []streamResult) error {
		out := s.withAudit(stream.Context(), rs)
		for i, r := range rs {
			// Each call with the code it goes out with (an audit failure
			// withholds a signature), timed from when a worker took it
			// up to its audit line written, as a Sign call is timed
			// (its send, which waits on the caller, left out).
			code := codes.OK
			if e := out[i].GetError(); e != nil {
				code = codes.Code(e.GetCode())
			}
			s.metrics.observe("SignStream", code, time.Since(r.start))
		}
		err := stream.Send(&signerv1.SignStreamResponse{Results: out})
		for range rs {
			<-ss.slots
		}
		s.streamHeld.Add(-int64(len(rs)))
		return err
	})
	received := make(chan error, 1)
	go func() { received <- ss.receive() }()
	select {
	case err = <-received:
	case <-s.draining:
		err = errStopping
	}
	// Answer every request taken, and take no more: Send may not be called
	// once this handler has returned.
	ss.mu.Lock()
	ss.stopped = true
	ss.mu.Unlock()
	ss.inFlight.Wait()
	return err
}

// signStream is one SignStream call being served.
type signStream struct {
	svc    *Service
	stream signerv1.Signer_SignStreamServer
	peer   peercred.Peer
	// work hands calls to idle workers; receive closes it when it ends.
	work    chan streamCall
	workers atomic.Int32 // running
	// slots holds a token for each call taken and not yet sent back.
	slots   chan struct{}
	results *coalesce.Sender[streamResult]

	mu       sync.Mutex
	stopped  bool           // no call is taken any more
	inFlight sync.WaitGroup // calls taken and not yet answered
	// calls cancels each call read and not yet answered, by id.
	calls map[uint64]context.CancelFunc
}

// streamCall is a call of a stream with the context it is signed under,
// which ends at its timeout, at the caller's cancel or with the stream.
type streamCall struct {
	call   *signerv1.StreamedSign
	ctx    context.Context
	cancel context.CancelFunc
	dup    bool // its id is in flight already: refused, not registered
}

// receive reads requests and hands each call to a worker, starting
// workers as needed up to maxStreamInFlight. The calls of a message are
// registered, then its cancels applied, then the calls handed out, so a
// cancel sent with its call always wins. It returns nil when the caller
// closes its side of the stream.
func (ss *signStream) receive() error {
	defer close(ss.work)
	for {
		m, err := ss.stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		taken := ss.register(m.GetCalls())
		ss.mu.Lock()
		for _, id := range m.GetCancel() {
			if cancel := ss.calls[id]; cancel != nil {
				cancel()
			}
		}
		ss.mu.Unlock()
		for i, c := range taken {
			if ok, err := ss.dispatch(c); !ok {
				// Dropped unsigned, with the rest of the message; the
				// caller learns it from the stream's end.
				for _, rest := range taken[i:] {
					ss.forget(rest)
				}
				return err
			}
		}
	}
}

// register gives each call its context and records it as in flight. A
// call whose id is in flight already is marked to be refused.
func (ss *signStream) register(calls []*signerv1.StreamedSign) []streamCall {
	taken := make([]streamCall, len(calls))
	ss.mu.Lock()
	defer ss.mu.Unlock()
	for i, c := range calls {
		sc := streamCall{call: c}
		if ms := c.GetTimeoutMs(); ms > 0 {
			sc.ctx, sc.cancel = context.WithTimeout(ss.stream.Context(), time.Duration(ms)*time.Millisecond)
		} else {
			sc.ctx, sc.cancel = context.WithCancel(ss.stream.Context())
		}
		if _, ok := ss.calls[c.GetId()]; ok {
			sc.dup = true
		} else {
			ss.calls[c.GetId()] = sc.cancel
		}
		taken[i] = sc
	}
	return taken
}

// forget ends c's context and removes it from the calls in flight.
func (ss *signStream) forget(c streamCall) {
	c.cancel()
	if c.dup {
		return
	}
	ss.mu.Lock()
	delete(ss.calls, c.call.GetId())
	ss.mu.Unlock()
}

// dispatch takes a slot for c, waiting while maxStreamInFlight calls are
// taken and not sent back, and hands c to a worker. It reports whether it
// did: not once the stream has stopped, nor if the stream ends while it
// waits, which it returns as the error.
func (ss *signStream) dispatch(c streamCall) (bool, error) {
	select {
	case ss.slots <- struct{}{}:
	case <-ss.stream.Context().Done():
		return false, ss.stream.Context().Err()
	}
	ss.mu.Lock()
	if ss.stopped {
		ss.mu.Unlock()
		<-ss.slots
		return false, nil
	}
	ss.svc.streamHeld.Add(1)
	ss.inFlight.Add(1)
	ss.mu.Unlock()
	select {
	case ss.work <- c:
	default:
		if ss.workers.Load() < maxStreamInFlight {
			ss.workers.Add(1)
			go ss.worker(c)
		} else {
			ss.work <- c
		}
	}
	return true, nil
}

// worker answers c and then whatever work it is handed, until receive
// ends or no call comes for idleWorker.
func (ss *signStream) worker(c streamCall) {
	defer ss.workers.Add(-1)
	idle := time.NewTimer(idleWorker)
	defer idle.Stop()
	for {
		ss.answer(c)
		ss.inFlight.Done()
		idle.Reset(idleWorker)
		var ok bool
		select {
		case c, ok = <-ss.work:
			if !ok {
				return
			}
		case <-idle.C:
			return
		}
	}
}

// streamResult is the result of one call of a stream and the ticket of
// its audit line, which must be written before the result is sent.
type streamResult struct {
	res    *signerv1.StreamedSignResult
	ticket audit.Ticket
	queued bool      // ticket holds a queued line
	start  time.Time // when the call was taken up
}

// answer signs c, or refuses it when its id was in flight already, takes
// it off the calls in flight, and queues its result for sending.
func (ss *signStream) answer(c streamCall) {
	start := time.Now()
	var (
		resp   *signerv1.SignResponse
		ticket audit.Ticket
		queued bool
		err    error
	)
	if c.dup {
		err = fmt.Errorf("%w: call id %d is in flight already on this stream", ErrInvalid, c.call.GetId())
		ticket, queued = ss.svc.auditRefusedStreamed(c.ctx, ss.peer, c.call.GetRequest(), err)
		err = toStatus(err)
	} else {
		resp, ticket, queued, err = ss.svc.signStreamed(c.ctx, ss.peer, c.call)
	}
	// Answered: no longer in flight, before its result can go out (and
	// its id come back in a new call).
	ss.forget(c)
	res := &signerv1.StreamedSignResult{Id: c.call.GetId()}
	if err != nil {
		res.Result = callError(err)
	} else {
		res.Result = &signerv1.StreamedSignResult_Response{Response: resp}
	}
	// A failed Send means the stream is gone; receive sees that too.
	_ = ss.results.Add(streamResult{res: res, ticket: ticket, queued: queued, start: start})
}

func callError(err error) *signerv1.StreamedSignResult_Error {
	st := status.Convert(err)
	return &signerv1.StreamedSignResult_Error{Error: &signerv1.CallError{Code: int32(st.Code()), Message: st.Message()}}
}

// withAudit waits for the audit lines of results about to be sent, all
// in one commit, and withholds each signature whose line could not be
// written.
func (s *Service) withAudit(ctx context.Context, rs []streamResult) []*signerv1.StreamedSignResult {
	out := make([]*signerv1.StreamedSignResult, len(rs))
	for i, r := range rs {
		out[i] = r.res
		if !r.queued {
			continue
		}
		if aerr := s.audit.Wait(context.WithoutCancel(ctx), r.ticket); aerr != nil {
			var err error
			if e := r.res.GetError(); e != nil {
				err = status.Error(codes.Code(e.GetCode()), e.GetMessage())
			}
			if withheld := s.auditFailure("sign", err, aerr); err == nil {
				out[i] = &signerv1.StreamedSignResult{Id: r.res.GetId(), Result: callError(toStatus(withheld))}
			}
		}
	}
	return out
}

// signStreamed admits one call of a stream from peer p under the policy
// in force, counts it among the uid's calls while it is signed, puts its
// key id in its one spelling, and signs it as Sign does, under ctx, the
// call's own context. Its audit line is queued, not yet written: queued
// says whether ticket holds it. A refusal beyond the uid's
// refusals_per_second gets no line; it is counted for the uid's summary.
func (s *Service) signStreamed(ctx context.Context, p peercred.Peer, r *signerv1.StreamedSign) (_ *signerv1.SignResponse, _ audit.Ticket, queued bool, _ error) {
	done, err := s.limits.startCall(p)
	if err != nil {
		return nil, audit.Ticket{}, false, toStatus(err)
	}
	defer done()
	c := s.callerFor(p)
	if !c.mayCall(signerv1.Signer_SignStream_FullMethodName) {
		return nil, audit.Ticket{}, false, s.refuseOrCount(ctx, c, "SignStream")
	}
	if given, err := normalizeKeyID(r.GetRequest()); err != nil {
		return nil, audit.Ticket{}, false, toStatus(s.refuseKeyID(ctx, c, "SignStream", given, err))
	}
	var line queuedLine
	resp, err := handle(ctx, s, c, linePlan{counted: true, queue: &line}, signRecord(r.GetRequest()),
		func(rec *audit.Record) (*signerv1.SignResponse, error) { return s.sign(ctx, c, r.GetRequest(), rec) })
	return resp, line.ticket, line.queued, toStatus(err)
}

// auditRefusedStreamed queues the audit line of a call of a stream from
// peer p that was refused, with err, before it was admitted or signed.
// queued says whether ticket holds it; a line that could not be queued
// is logged and counted, and the call stays refused.
func (s *Service) auditRefusedStreamed(ctx context.Context, p peercred.Peer, r *signerv1.SignRequest, err error) (ticket audit.Ticket, queued bool) {
	var line queuedLine
	_ = s.writeLine(ctx, s.callerFor(p), linePlan{queue: &line}, signRecord(r), err)
	return line.ticket, line.queued
}

// Drain makes every SignStream answer the requests it has received, take
// no more, and end with UNAVAILABLE. Call it before the gRPC server's
// GracefulStop, which waits for streams to end.
func (s *Service) Drain() { s.drainOnce.Do(func() { close(s.draining) }) }
