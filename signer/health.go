package signer

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
)

// ErrHealthCheckBusy means the previous health check has not returned:
// a PKCS#11 call that hangs cannot be cancelled, so no second one is
// started beside it.
var ErrHealthCheckBusy = errors.New("the previous health check is still waiting for the HSM")

// healthCheck lets one check run at a time.
type healthCheck struct {
	running atomic.Bool
	// stall, set by tests only, runs before the check asks the tokens:
	// it stands for an HSM call that does not return.
	stall func()
}

// CheckHealth reports whether the daemon can sign now, as far as it can
// tell without signing: every module is initialised and every logged-in
// token answers C_GetTokenInfo before ctx ends. A check whose HSM call
// does not return stays running in the background, and later checks fail
// with ErrHealthCheckBusy until it returns: a hung HSM is reported for as
// long as it hangs (signerd stops pinging systemd's watchdog).
func (s *Service) CheckHealth(ctx context.Context) error {
	if !s.health.running.CompareAndSwap(false, true) {
		return ErrHealthCheckBusy
	}
	done := make(chan error, 1)
	stall := s.health.stall
	go func() {
		defer s.health.running.Store(false)
		if stall != nil {
			stall()
		}
		done <- s.checkTokens(context.WithoutCancel(ctx))
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("the HSM did not answer in time: %w", ctx.Err())
	}
}

func (s *Service) checkTokens(ctx context.Context) error {
	for _, m := range s.modules {
		if err := m.mod.Check(); err != nil {
			return fmt.Errorf("module %s is not ready: %w", m.name, err)
		}
	}
	for _, t := range s.tokens {
		if !t.tok.LoggedIn() {
			continue
		}
		if _, err := t.tok.Info(ctx); err != nil {
			return fmt.Errorf("token %s: %w", t.name, err)
		}
	}
	return nil
}
