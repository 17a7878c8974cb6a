package audit

import (
	"fmt"
	"time"
)

// Mode says when Append returns.
type Mode int

const (
	// Sync makes Append return once its group is written and fsynced: an
	// acknowledged record survives a crash. The default.
	Sync Mode = iota
	// Buffered makes Append return once its group is written with
	// write(2); the log is fsynced at most every Options.FlushEvery and at
	// Close. A crash of the machine (not of the process) can lose the
	// records of the last FlushEvery and leave a torn last line.
	Buffered
)

// String returns "sync" or "buffered".
func (m Mode) String() string {
	switch m {
	case Sync:
		return "sync"
	case Buffered:
		return "buffered"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// Defaults for zero Options fields.
const (
	DefaultMaxBatch   = 1024
	DefaultFlushEvery = 50 * time.Millisecond
)

// Options tune a Log. The zero value is usable.
type Options struct {
	// MaxBatch is the most records committed in one group; 0 means
	// DefaultMaxBatch.
	MaxBatch int
	// Mode says when Append returns; the zero value is Sync.
	Mode Mode
	// FlushEvery is the longest time a written record waits for its fsync
	// in Buffered mode; 0 means DefaultFlushEvery.
	FlushEvery time.Duration
	// HeadEvery is the least time between two updates of the head file;
	// 0 means after every group commit. Each update costs an fsync and a
	// rename; spacing them out saves that work under load, but a crash
	// followed by a cut of the lines written since the last update goes
	// unseen. Close always brings the head file up to date.
	HeadEvery time.Duration
	// AcceptCut lets Open continue a log that ends before its head file
	// (lines were cut from the end), whose head file is missing or
	// unreadable, or whose last line is torn (a crash in mid-write: the
	// torn bytes are kept in <path>.torn-<time> and cut off). It is for a
	// PKI officer who has verified the log and
	// acknowledges the loss: Open then appends a line with Op
	// OpCutAcknowledged, this process's uid, gid and pid, and a Detail
	// saying what was lost, so the acknowledgement is itself audited. Any
	// other damage is still refused. Without a cut it has no effect.
	AcceptCut bool
}

// withDefaults fills zero fields and checks the rest.
func (o Options) withDefaults() (Options, error) {
	if o.MaxBatch <= 0 {
		o.MaxBatch = DefaultMaxBatch
	}
	if o.FlushEvery <= 0 {
		o.FlushEvery = DefaultFlushEvery
	}
	if o.Mode != Sync && o.Mode != Buffered {
		return o, fmt.Errorf("audit: unknown mode %v", o.Mode)
	}
	return o, nil
}
