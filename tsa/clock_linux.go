package tsa

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// Linux's adjtimex status bit and state (linux/timex.h).
const (
	staUnsync = 0x0040
	timeError = 5
)

// KernelClock reads the clock's state with adjtimex(2), changing nothing.
type KernelClock struct{}

// ClockState implements ClockSource.
func (KernelClock) ClockState() (ClockState, error) {
	var tx unix.Timex // modes 0: read only
	state, err := unix.Adjtimex(&tx)
	if err != nil {
		return ClockState{}, fmt.Errorf("adjtimex: %w", err)
	}
	return ClockState{
		Synced:   tx.Status&staUnsync == 0 && state != timeError,
		MaxError: time.Duration(tx.Maxerror) * time.Microsecond,
	}, nil
}
