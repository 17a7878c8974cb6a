package tsa

import (
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
