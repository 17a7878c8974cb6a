package tsa

import (
	"errors"
	"fmt"
	"sync"
	"time"
)

// ClockState is what the kernel says of the system clock.
type ClockState struct {
	// Synced is false while the kernel flags the clock unsynchronised
	// (STA_UNSYNC), as it does until NTP has disciplined it.
	Synced bool
	// MaxError is the kernel's bound on the clock's error.
	MaxError time.Duration
}

// ClockSource reports the clock's state; the kernel's on Linux
// (KernelClock), an injected one in tests.
type ClockSource interface {
	ClockState() (ClockState, error)
}

// ClockSourceFunc adapts a function to ClockSource.
type ClockSourceFunc func() (ClockState, error)

// ClockState calls f.
func (f ClockSourceFunc) ClockState() (ClockState, error) { return f() }

// Guard is the clock guard: it says whether time can be trusted now. One
// Guard outlives the Issuers made over it, so that a step of the clock
// seen by one is not forgotten when the certificate changes. It is safe
// for concurrent use.
type Guard struct {
	clock    ClockSource
	accuracy time.Duration
	skip     bool
	steps    *stepDetector
	now      func() time.Time
}

// NewGuard returns the guard of cfg (its Accuracy and SkipClockCheck)
// over clock; nil means the kernel's clock.
func NewGuard(clock ClockSource, cfg Config) *Guard {
	if clock == nil {
		clock = KernelClock{}
	}
	return &Guard{clock: clock, accuracy: cfg.accuracy(), skip: cfg.SkipClockCheck, steps: newStepDetector(time.Now()), now: time.Now}
}

// Off reports whether the guard was turned off (Config.SkipClockCheck).
func (g *Guard) Off() bool { return g.skip }

// GuardState is what the guard knows of the clock, for a status report.
type GuardState struct {
	// Off: the guard was turned off and lets every token through.
	Off bool
	// Clock is the kernel's word on the clock, when it could be read.
	Clock ClockState
	// ReadError says why the clock's state could not be read.
	ReadError string
	// Stepped is the largest step of the wall clock seen since start.
	Stepped time.Duration
	// Problem says why tokens are refused (timeNotAvailable) now; "" when
	// they are issued (or the guard is off).
	Problem string
}

// State reports what the guard knows now.
func (g *Guard) State() GuardState {
	st := GuardState{Off: g.skip}
	cs, err := g.clock.ClockState()
	if err != nil {
		st.ReadError = err.Error()
	} else {
		st.Clock = cs
	}
	if perr := g.problem(cs, err); perr != nil && !g.skip {
		st.Problem = perr.Error()
	}
	g.steps.mu.Lock()
	st.Stepped = g.steps.stepped
	g.steps.mu.Unlock()
	return st
}

// Ready reports why a token would be refused with timeNotAvailable now,
// or nil: the clock unsynchronised, its error beyond the accuracy, or a
// step since start. A guard that is off is always ready.
func (g *Guard) Ready() error {
	if g.skip {
		return nil
	}
	cs, err := g.clock.ClockState()
	return g.problem(cs, err)
}

func (g *Guard) problem(cs ClockState, err error) error {
	switch {
	case err != nil:
		return fmt.Errorf("cannot read the clock's state: %w", err)
	case !cs.Synced:
		return errors.New("the kernel reports the clock unsynchronised (STA_UNSYNC): is NTP running?")
	case cs.MaxError > g.accuracy:
		return fmt.Errorf("the kernel's bound on the clock's error, %s, exceeds the accuracy %s", cs.MaxError, g.accuracy)
	}
	return g.steps.check(g.now(), g.accuracy)
}

// stepDetector notices a step of the wall clock: the wall clock's
// elapsed time drifts from the monotonic clock's only when the wall clock
// is set (NTP's slewing moves both alike).
type stepDetector struct {
	ref time.Time // with its monotonic reading

	mu      sync.Mutex
	stepped time.Duration // the largest step seen, 0 if none
}

func newStepDetector(now time.Time) *stepDetector { return &stepDetector{ref: now} }

// check reports an error when the wall clock has been stepped by more than
// tolerance since the detector was made. now must carry a monotonic
// reading (time.Now does).
func (d *stepDetector) check(now time.Time, tolerance time.Duration) error {
	wall := now.Round(0).Sub(d.ref.Round(0)) // Round(0) strips the monotonic reading
	mono := now.Sub(d.ref)
	return d.observe(wall-mono, tolerance)
}

// observe records a step of size step (either sign) and refuses once the
// largest step seen exceeds tolerance: a step is not forgotten, since the
// times issued around it cannot be ordered.
func (d *stepDetector) observe(step, tolerance time.Duration) error {
	if step < 0 {
		step = -step
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.stepped = max(d.stepped, step)
	if d.stepped > tolerance {
		return fmt.Errorf("the clock was stepped by %s since %s; check the time and restart signerd",
			d.stepped.Round(time.Millisecond), d.ref.UTC().Format(time.RFC3339))
	}
	return nil
}
