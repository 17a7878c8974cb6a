package signer

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/internal/coalesce"
	"github.com/hsmsigner/hsmsigner/signer/peercred"
)

// maxStreamInFlight bounds the requests of one SignStream that are signed
// at once. Beyond it the daemon stops reading the stream until one is
// answered, and HTTP/2 flow control holds the caller back.
const maxStreamInFlight = 64

// maxStreamBatch bounds the results sent in one message.
const maxStreamBatch = 64

// errStopping ends the streams of a stopping daemon.
var errStopping = status.Error(codes.Unavailable, "signerd is stopping; requests of this stream that got no answer were not signed")

// SignStream implements signerv1.SignerServer. Each request is admitted
// under the policy in force when it arrives and then handled as a Sign
// call, on its own goroutine, so one slow request does not hold up the
// others. Drain makes the stream answer what it has received and end.
func (s *Service) SignStream(stream signerv1.Signer_SignStreamServer) error {
	ss := &signStream{
		svc:    s,
		stream: stream,
		peer:   callerFrom(stream.Context()).peer,
		work:   make(chan *signerv1.StreamedSign),
	}
	// Results ready together travel in one message. Send is not safe for
	// concurrent use; the Sender never calls it concurrently.
	ss.results = coalesce.New(maxStreamBatch, func(rs []*signerv1.StreamedSignResult) error {
		return stream.Send(&signerv1.SignStreamResponse{Results: rs})
	})
	received := make(chan error, 1)
	go func() { received <- ss.receive() }()
	var err error
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
	work    chan *signerv1.StreamedSign
	workers int // started so far; only receive touches it
	results *coalesce.Sender[*signerv1.StreamedSignResult]

	mu       sync.Mutex
	stopped  bool           // no call is taken any more
	inFlight sync.WaitGroup // calls taken and not yet answered
}

// receive reads requests and hands each call to a worker, starting
// workers as needed up to maxStreamInFlight. It returns nil when the
// caller closes its side of the stream.
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
		calls := m.GetCalls()
		ss.mu.Lock()
		if ss.stopped {
			// Dropped unsigned; the caller learns it from the stream's end.
			ss.mu.Unlock()
			return nil
		}
		ss.inFlight.Add(len(calls))
		ss.mu.Unlock()
		for _, c := range calls {
			select {
			case ss.work <- c:
			default:
				if ss.workers < maxStreamInFlight {
					ss.workers++
					go ss.worker(c)
				} else {
					ss.work <- c
				}
			}
		}
	}
}

// worker answers r and then whatever work it is handed, until receive
// ends.
func (ss *signStream) worker(r *signerv1.StreamedSign) {
	for {
		ss.answer(r)
		ss.inFlight.Done()
		var ok bool
		if r, ok = <-ss.work; !ok {
			return
		}
	}
}

// answer signs r and sends the result with r's id.
func (ss *signStream) answer(r *signerv1.StreamedSign) {
	start := time.Now()
	resp, err := ss.svc.signStreamed(ss.stream.Context(), ss.peer, r)
	ss.svc.metrics.observe("SignStream", status.Code(err), time.Since(start))
	out := &signerv1.StreamedSignResult{Id: r.GetId()}
	if err != nil {
		st := status.Convert(err)
		out.Result = &signerv1.StreamedSignResult_Error{Error: &signerv1.CallError{Code: int32(st.Code()), Message: st.Message()}}
	} else {
		out.Result = &signerv1.StreamedSignResult_Response{Response: resp}
	}
	// A failed Send means the stream is gone; receive sees that too.
	_ = ss.results.Add(out)
}

// signStreamed admits one request of a stream from peer p under the
// policy in force and signs it as Sign does.
func (s *Service) signStreamed(ctx context.Context, p peercred.Peer, r *signerv1.StreamedSign) (*signerv1.SignResponse, error) {
	c := s.callerFor(p)
	if !c.may(needClient) {
		return nil, toStatus(s.refuse(ctx, c, "SignStream"))
	}
	if ms := r.GetTimeoutMs(); ms > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(ms)*time.Millisecond)
		defer cancel()
	}
	resp, err := s.Sign(context.WithValue(ctx, callerKey{}, c), r.GetRequest())
	return resp, toStatus(err)
}

// Drain makes every SignStream answer the requests it has received, take
// no more, and end with UNAVAILABLE. Call it before the gRPC server's
// GracefulStop, which waits for streams to end.
func (s *Service) Drain() { s.drainOnce.Do(func() { close(s.draining) }) }
