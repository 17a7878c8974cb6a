package audit

import (
	"fmt"
	"time"
)

// durable is a request to the durability goroutine: fsync the log if
// sync, then write head to the head file.
type durable struct {
	head Head
	sync bool
	set  bool // a request is waiting
}

// makeDurable hands d to the durability goroutine, merged with a request
// it has not taken yet. With hooks.syncHead it does the work itself.
func (l *Log) makeDurable(d durable) {
	if l.hooks.syncHead {
		l.doDurable(d)
		return
	}
	l.dmu.Lock()
	d.sync = d.sync || l.dreq.sync
	l.dreq = d
	l.dmu.Unlock()
	select {
	case l.dwake <- struct{}{}:
	default:
	}
}

// runDurable is the durability goroutine: it fsyncs written records in
// Buffered mode and writes the head file after fsyncs, so that neither
// holds up the next group. It takes only the newest request, so the head
// file may skip groups; it never names a line that is not fsynced.
func (l *Log) runDurable() {
	defer close(l.ddone)
	for {
		stopping := false
		select {
		case <-l.dwake:
		case <-l.dstop:
			stopping = true
		}
		l.dmu.Lock()
		d := l.dreq
		l.dreq = durable{}
		l.dmu.Unlock()
		if d.set {
			l.doDurable(d)
		}
		if stopping {
			return
		}
		if d.set && l.opts.HeadEvery > 0 {
			t := time.NewTimer(l.opts.HeadEvery)
			select {
			case <-t.C:
			case <-l.dstop:
				t.Stop()
			}
		}
	}
}

// doDurable carries out one durability request. While the log has failed,
// the head file is left as it is: after a failed fsync nothing more can be
// claimed durable, and after a failed write the next group brings it up
// to date.
func (l *Log) doDurable(d durable) {
	if d.sync {
		if err := l.f.Sync(); err != nil {
			l.fail(fmt.Errorf("fsync: %w", err), nil, failFsync)
			return
		}
	}
	l.mu.Lock()
	failed := l.failed != nil
	if d.sync && !failed && d.head.Seq > l.synced.Seq {
		l.synced = d.head
	}
	l.mu.Unlock()
	if failed || l.hooks.noHead {
		return
	}
	l.hmu.Lock()
	err := writeHead(l.headPath, d.head)
	l.hmu.Unlock()
	if err != nil {
		l.fail(err, nil, failHead)
		return
	}
	if l.hooks.headWritten != nil {
		l.hooks.headWritten(d.head)
	}
}
