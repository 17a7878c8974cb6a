package audit

import (
	"errors"
	"fmt"
	"time"
)

// commitQueue commits the queue in groups until it is empty, then ends
// the caller's turn as committer (Buffered). The writer goroutine may
// commit some of the groups meanwhile; that is fine, wmu orders them.
func (l *Log) commitQueue() {
	startTimer := false
	l.wmu.Lock()
	for {
		wasDirty := l.dirty
		l.commitNext()
		startTimer = startTimer || (!wasDirty && l.dirty)
		l.mu.Lock()
		if len(l.queue) == 0 {
			l.committing = false
			l.mu.Unlock()
			break
		}
		l.mu.Unlock()
	}
	l.wmu.Unlock()
	if startTimer {
		l.signal() // the writer arms the fsync timer
	}
}

// signal wakes the writer.
func (l *Log) signal() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// run is the writer goroutine: it commits what Appends queued while
// another commit was under way, fsyncs written records at most FlushEvery
// after they were written (Buffered), and closes the file on Close.
func (l *Log) run() {
	defer close(l.done)
	var timer *time.Timer
	var tick <-chan time.Time // armed while written records await an fsync
	stopTimer := func() {
		if timer != nil {
			timer.Stop()
			tick = nil
		}
	}
	for {
		l.wmu.Lock()
		l.drain()
		l.mu.Lock()
		closing := l.closed && len(l.queue) == 0
		l.mu.Unlock()
		if closing {
			stopTimer()
			l.flush()
			l.wmu.Unlock()
			close(l.dstop)
			<-l.ddone
			l.fileErr = l.f.Close()
			return
		}
		dirty, lastSync := l.dirty, l.lastSync
		l.wmu.Unlock()
		if !dirty {
			stopTimer()
		} else if tick == nil {
			d := max(l.opts.FlushEvery-time.Since(lastSync), 0)
			if timer == nil {
				timer = time.NewTimer(d)
			} else {
				timer.Reset(d)
			}
			tick = timer.C
		}
		select {
		case <-l.wake:
		case <-tick:
			tick = nil
			l.wmu.Lock()
			l.flush()
			l.wmu.Unlock()
		}
	}
}

// drain commits the queued records in groups until the queue is empty.
// The caller holds wmu.
func (l *Log) drain() {
	for l.commitNext() {
	}
}

// commitNext commits the next group of at most MaxBatch queued records and
// reports whether there was one. The caller holds wmu.
func (l *Log) commitNext() bool {
	l.mu.Lock()
	n := min(len(l.queue), l.opts.MaxBatch)
	if n == 0 {
		l.mu.Unlock()
		return false
	}
	batch := append(l.spare[:0], l.queue[:n]...)
	rest := copy(l.queue, l.queue[n:])
	clear(l.queue[rest:])
	l.queue = l.queue[:rest]
	l.mu.Unlock()
	l.commit(batch)
	clear(batch)
	l.spare = batch[:0]
	if l.dirty && time.Since(l.lastSync) >= l.opts.FlushEvery {
		l.flush()
	}
	return true
}

// commit writes a group with one write and, in Sync mode, one fsync, then
// wakes its callers. A checkpoint that would land more than
// CheckpointWindow lines after the line it names is answered with an
// error and left out.
func (l *Log) commit(batch []*pending) {
	kept := batch[:0]
	lastCheckpoint := uint64(0)
	for _, p := range batch {
		if p.checkpoint {
			at := l.wseq + uint64(len(kept)) + 1
			if at-p.names > CheckpointWindow {
				p.done <- errCheckpointStale
				continue
			}
			lastCheckpoint = at
		}
		kept = append(kept, p)
	}
	batch = kept
	if len(batch) == 0 {
		return
	}
	if !l.recover(batch) {
		return
	}
	buf := l.buf[:0]
	seq, hash := l.wseq, l.whash
	for _, p := range batch {
		seq++
		start := len(buf)
		buf = appendLine(buf, p.t, seq, p.body, hash)
		hash = lineHash(buf[start:])
		buf = append(buf, '\n')
	}
	l.buf = buf
	if _, err := l.f.Write(buf); err != nil {
		l.fail(fmt.Errorf("write: %w", err), batch, failWrite)
		return
	}
	if l.opts.Mode == Sync {
		if err := l.f.Sync(); err != nil {
			l.fail(fmt.Errorf("fsync: %w", err), batch, failFsync)
			return
		}
	} else {
		l.dirty = true
	}
	l.wsize += int64(len(buf))
	l.wseq, l.whash = seq, hash
	l.mu.Lock()
	l.seq, l.hash = seq, hash
	if l.opts.Mode == Sync {
		l.synced = Head{Seq: seq, Hash: hash}
	}
	if lastCheckpoint != 0 {
		l.lastCheckpoint = lastCheckpoint
	}
	l.mu.Unlock()
	for _, p := range batch {
		p.done <- nil
	}
	if l.opts.Mode == Sync {
		l.makeDurable(durable{head: Head{Seq: seq, Hash: hash}, set: true})
	}
}

// flush asks for an fsync of the records written so far (Buffered).
func (l *Log) flush() {
	if !l.dirty {
		return
	}
	l.dirty = false
	l.lastSync = time.Now()
	l.makeDurable(durable{head: Head{Seq: l.wseq, Hash: l.whash}, sync: true, set: true})
}

// failure says what failed, and so whether the log may recover from it.
type failure int

const (
	// failWrite: write(2) of a group failed (a full disk, a file size
	// limit, an I/O error). The partial group is cut off again; when that
	// works the file holds whole, acknowledged lines only, and the next
	// Append tries again.
	failWrite failure = iota
	// failHead: the head file could not be replaced. The log itself is
	// whole; the next Append first writes the head file again.
	failHead
	// failFsync: an fsync failed. The kernel may have dropped written
	// pages while calling them clean, so no later fsync can vouch for
	// them: the log accepts nothing more until it is opened again (which
	// verifies its end).
	failFsync
)

// fail makes the log refuse records and answers the group being committed
// and every queued record with the error. A write that failed has its
// unacknowledged group cut off the file again, so that no partial line is
// left behind. After a failed write (its group cut off) or head update,
// the next record tries again (see recover); after a failed fsync, or a
// partial group that could not be cut off, the log stays failed.
func (l *Log) fail(err error, batch []*pending, what failure) {
	recoverable := what != failFsync
	if what != failHead {
		if terr := l.f.Truncate(l.wsize); terr != nil {
			err = errors.Join(err, fmt.Errorf("removing the partial group: %w", terr))
			recoverable = false
		}
	}
	l.mu.Lock()
	if l.failed == nil {
		l.failed = fmt.Errorf("%w: %s: %w", ErrFailed, l.path, err)
		l.recoverable = recoverable
	} else if !recoverable {
		l.recoverable = false
	}
	if what == failHead {
		l.headStale = true
	}
	failed := l.failed
	queued := l.queue
	l.queue = nil
	l.mu.Unlock()
	for _, p := range batch {
		p.done <- failed
	}
	for _, p := range queued {
		p.done <- failed
	}
}

// recover is called before a group is written. When the log failed in a
// way it may recover from, it redoes what failed (the head file) and
// clears the failure; it reports whether the group may be written, and
// otherwise has answered the group with the error. The caller holds wmu.
func (l *Log) recover(batch []*pending) bool {
	l.mu.Lock()
	failed, recoverable, headStale, synced := l.failed, l.recoverable, l.headStale, l.synced
	l.mu.Unlock()
	if failed == nil {
		return true
	}
	if !recoverable {
		for _, p := range batch {
			p.done <- failed
		}
		return false
	}
	if headStale {
		l.hmu.Lock()
		err := writeHead(l.headPath, synced)
		l.hmu.Unlock()
		if err != nil {
			l.fail(err, batch, failHead)
			return false
		}
	}
	l.mu.Lock()
	if l.failed == failed {
		l.failed, l.recoverable, l.headStale = nil, false, false
	}
	failed = l.failed
	l.mu.Unlock()
	if failed != nil { // failed again meanwhile (the durability goroutine)
		for _, p := range batch {
			p.done <- failed
		}
		return false
	}
	return true
}
