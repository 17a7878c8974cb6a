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

// PoolStats describes a token's session pool.
type PoolStats struct {
	Size   int   // most sessions the pool opens
	Open   int   // sessions open now
	Idle   int   // open sessions not in use
	Waits  int64 // calls that had to wait for a session
	Logins int64 // re-logins done with the kept PIN
	// LoginAttempts counts every C_Login made as the user, with the kept
	// PIN or an officer's, whatever the token answered.
	LoginAttempts int64
}

// Stats returns the pool's figures.
func (t *Token) Stats() PoolStats {
	return PoolStats{
		Size: t.pool.size, Open: len(t.pool.sem), Idle: len(t.pool.idle),
		Waits: t.pool.waits.Load(), Logins: t.logins.Load(), LoginAttempts: t.loginAttempts.Load(),
	}
}
