package hsm

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/miekg/pkcs11"
)

// withSession runs fn on a session from the pool, under the module's read
// lock, and recovers from session, login, handle and device errors: each
// kind of failure is recovered from once per call, and fn is run again.
// fn must be safe to run more than once.
func (t *Token) withSession(ctx context.Context, fn func(s *session) error) error {
	defer t.deliverPINDrops()
	var (
		recovered [classModule + 1]bool
		lastErr   error
	)
	for {
		gen, unlock, err := t.m.rlock()
		if err != nil {
			return err
		}
		s, err := t.acquire(ctx, gen, true)
		if err == nil {
			err = fn(s)
		}
		class := classify(err)
		if class == classLogin && s != nil && !recovered[classLogin] {
			// The token forgot the login (reset, or all sessions closed
			// elsewhere): log in again with the kept PIN on this session.
			recovered[classLogin] = true
			if lerr := t.relogin(s); lerr != nil {
				err, class = lerr, classNone
			} else {
				err = fn(s)
				class = classify(err)
			}
		}
		if s != nil {
			if class == classSession || class == classModule {
				// A broken session usually means the device reset: every
				// session opened before now is suspect.
				t.pool.epoch.Add(1)
				t.pool.drop(t.m.api, s)
			} else {
				t.pool.release(s)
			}
		}
		unlock()
		if class == classNone {
			return t.explainPINExpired(err)
		}
		if recovered[class] {
			lastErr = err
			if class == classHandle || class == classLogin {
				// Handles that turn invalid twice, or a login lost
				// twice: an officer logged the token out meanwhile.
				t.loginMu.Lock()
				var nerr error
				if t.pin == nil {
					nerr = t.notLoggedInLocked()
				}
				t.loginMu.Unlock()
				if nerr != nil {
					return fmt.Errorf("%w (%w)", nerr, lastErr)
				}
			}
			break
		}
		recovered[class] = true
		lastErr = err
		switch class {
		case classLogin:
			return fmt.Errorf("%w: token %q: %w", ErrNotLoggedIn, t.label, err)
		case classHandle:
			t.forgetKeys()
		case classModule:
			if rerr := t.m.failed(gen, err); !errors.Is(rerr, errRetry) {
				return rerr
			}
		}
	}
	return fmt.Errorf("%w: token %q: %w", ErrUnavailable, t.label, lastErr)
}

// acquire returns a session for generation gen: an idle one, or a new one
// while the pool is below its size, or the first one released before the
// context's deadline or the pool's maximum wait. Idle sessions from before
// the last session failure or PIN drop are closed, not reused. A new
// session is logged in with the kept PIN when login is true; with login
// false no PIN is presented. The caller holds the module read lock.
func (t *Token) acquire(ctx context.Context, gen uint64, login bool) (*session, error) {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		var s *session
		select {
		case s = <-t.pool.idle:
		case t.pool.sem <- struct{}{}:
			return t.open(gen, login)
		default:
			if timer == nil {
				t.pool.waits.Add(1)
				timer = time.NewTimer(t.opts.maxWait)
			}
			select {
			case s = <-t.pool.idle:
			case t.pool.sem <- struct{}{}:
				return t.open(gen, login)
			case <-ctx.Done():
				return nil, fmt.Errorf("%w on token %q (%d in use): %w", ErrSessionWait, t.label, t.pool.size, ctx.Err())
			case <-timer.C:
				return nil, fmt.Errorf("%w on token %q: all %d sessions stayed busy for %s", ErrSessionWait, t.label, t.pool.size, t.opts.maxWait)
			}
		}
		if s.gen == gen && s.epoch == t.pool.epoch.Load() {
			return s, nil
		}
		t.pool.drop(t.m.api, s)
	}
}

// open opens a new session; the caller holds a place in the pool, which
// open gives back on failure. When login is true, a new session is logged
// in with the kept PIN when the token is not logged in.
func (t *Token) open(gen uint64, login bool) (*session, error) {
	slot, err := t.findSlotLocked()
	if err != nil {
		<-t.pool.sem
		if errors.Is(err, ErrTokenNotFound) {
			return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		return nil, err
	}
	h, err := t.m.api.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		<-t.pool.sem
		return nil, p11err("C_OpenSession", err)
	}
	s := &session{h: h, gen: gen, epoch: t.pool.epoch.Load()}
	if !login {
		return s, nil
	}
	if err := t.ensureLogin(s); err != nil {
		t.pool.drop(t.m.api, s)
		return nil, err
	}
	return s, nil
}

// pinOp runs op, which presents a PIN to the token (C_Login, C_SetPIN) or
// must present none (C_Logout), exactly once. The session it runs on is first checked with
// C_GetSessionInfo, and a session or module failure of that check is
// recovered from once, as withSession does; but op itself is never run
// again, because the token may have counted the PIN it was given. op
// returns the error for the caller and the PKCS#11 call's own error, which
// decides whether the session is kept. A session opened for op is logged
// in with the kept PIN first only when login is true (ChangePIN, whose old
// PIN is the kept one, so that C_SetPIN runs in the user's session as
// before); Login and Logout present no kept PIN.
func (t *Token) pinOp(ctx context.Context, login bool, op func(s *session) (err, callErr error)) error {
	defer t.deliverPINDrops()
	for attempt := 0; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		gen, unlock, err := t.m.rlock()
		if err != nil {
			return err
		}
		s, err := t.acquire(ctx, gen, login)
		if err == nil {
			if _, serr := t.m.api.GetSessionInfo(s.h); serr != nil {
				err = p11err("C_GetSessionInfo", serr)
			} else {
				opErr, callErr := op(s)
				class := classify(callErr)
				t.settle(s, class)
				unlock()
				if class == classModule {
					// Let the module recover for the calls that follow;
					// op is not run again.
					_ = t.m.failed(gen, callErr)
				}
				return opErr
			}
		}
		class := classify(err)
		if s != nil {
			t.settle(s, class)
		}
		unlock()
		if class != classSession && class != classModule {
			return err
		}
		if attempt > 0 {
			return fmt.Errorf("%w: token %q: %w", ErrUnavailable, t.label, err)
		}
		if class == classModule {
			if rerr := t.m.failed(gen, err); !errors.Is(rerr, errRetry) {
				return rerr
			}
		}
	}
}

// settle gives s back to the pool, or closes it when class says it is
// broken. The caller holds the module read lock.
func (t *Token) settle(s *session, class errorClass) {
	if class == classSession || class == classModule {
		t.pool.epoch.Add(1)
		t.pool.drop(t.m.api, s)
		return
	}
	t.pool.release(s)
}
