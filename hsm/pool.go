package hsm

import (
	"iter"
	"sync/atomic"

	"github.com/miekg/pkcs11"
)

// session is one open PKCS#11 session of a token's pool.
type session struct {
	h     pkcs11.SessionHandle
	gen   uint64 // module generation it was opened in
	epoch uint64 // pool epoch it was opened in
}

// pool holds a token's sessions. sem has one element per open session;
// idle holds the open sessions not in use. A session is used by one
// goroutine at a time.
type pool struct {
	size  int
	sem   chan struct{}
	idle  chan *session
	waits atomic.Int64
	// epoch grows at each session failure; idle sessions from an older
	// epoch are closed instead of reused.
	epoch atomic.Uint64
}

func (p *pool) init(size int) {
	p.size = size
	p.sem = make(chan struct{}, size)
	p.idle = make(chan *session, size)
}

// release puts a healthy session back.
func (p *pool) release(s *session) {
	p.idle <- s
}

// drop closes a broken session and frees its place.
func (p *pool) drop(api p11, s *session) {
	_ = api.CloseSession(s.h)
	<-p.sem
}

// forgetAll frees every place without closing: the library was finalized
// and the handles mean nothing any more. No session may be in use.
func (p *pool) forgetAll() {
	for {
		select {
		case <-p.idle:
			<-p.sem
		default:
			return
		}
	}
}

// drain yields and frees every idle session. No session may be in use.
func (p *pool) drain() iter.Seq[*session] {
	return func(yield func(*session) bool) {
		for {
			select {
			case s := <-p.idle:
				<-p.sem
				if !yield(s) {
					return
				}
			default:
				return
			}
		}
	}
}
