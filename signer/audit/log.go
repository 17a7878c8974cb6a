package audit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
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

// logFile is the part of *os.File the writer uses; tests wrap it to count
// or fail fsyncs.
type logFile interface {
	Write(p []byte) (int, error)
	Sync() error
	Truncate(size int64) error
	Close() error
}

// hooks are test seams; the zero value is production behaviour.
type hooks struct {
	// wrap replaces the log file the writer uses.
	wrap func(logFile) logFile
	// queued is called, with the Log's mutex held, after Append queues a
	// record, with the number of records waiting.
	queued func(n int)
	// headWritten is called after each update of the head file.
	headWritten func(Head)
	// noHead skips the head file after group commits (to measure its cost).
	noHead bool
	// syncHead updates the head file on the writer goroutine, after each
	// group, instead of on the durability goroutine (to measure the
	// difference).
	syncHead bool
}

// pending is a record waiting for the writer.
type pending struct {
	t    time.Time
	body []byte
	done chan error // receives the commit result once
	// checkpoint marks a checkpoint line, whose statement names the line
	// of seq names.
	checkpoint bool
	names      uint64
}

// Log is an open audit log. Its methods are safe for concurrent use.
type Log struct {
	path     string
	headPath string
	opts     Options
	hooks    hooks
	f        logFile
	wake     chan struct{} // capacity 1: records are waiting or Close was called
	done     chan struct{} // closed when the writer has stopped

	// Requests to the durability goroutine, which fsyncs (Buffered) and
	// updates the head file; a newer request replaces an older one.
	dmu   sync.Mutex
	dreq  durable
	dwake chan struct{} // capacity 1: a request is waiting
	dstop chan struct{} // closed by the writer when it stops
	ddone chan struct{} // closed when the durability goroutine has stopped

	mu         sync.Mutex
	queue      []*pending
	committing bool // an Append is committing the queue (Buffered)
	closed     bool
	failed     error  // set once; wraps ErrFailed
	seq        uint64 // last written line, for Head
	hash       string
	// synced is the last line known fsynced, which a checkpoint signs;
	// lastCheckpoint the seq of the last checkpoint line this Log wrote.
	synced         Head
	lastCheckpoint uint64

	// wmu is held by whoever writes: the writer goroutine, or an Append
	// that found no writer busy and commits the queue itself (so the first
	// caller of a group pays no goroutine hand-off). It guards the fields
	// below.
	wmu      sync.Mutex
	wseq     uint64
	whash    string
	wsize    int64 // bytes of complete, acknowledged lines
	buf      []byte
	spare    []*pending
	dirty    bool      // written, no fsync asked for yet (Buffered)
	lastSync time.Time // when the last fsync was asked for (Buffered)
	fileErr  error     // from closing the file

	closeOnce sync.Once
	closeErr  error
}

// Open opens the audit log at path, creating it with mode 0600 if needed
// (its directory must exist), and continues its chain: the next line gets
// the last line's seq + 1 and its SHA-256 as prev.
//
// Open checks the end of the log, not all of it (VerifyFile does that): the
// last line must be a complete record ending in a newline and chain to the
// line before, and the head file must not be ahead of it or disagree with
// it. Otherwise Open runs a full verify and refuses with its *VerifyError
// (wrapping ErrTampered) naming the first bad line; a torn last line after
// a crash is refused too, never dropped. A cut at the end, or a missing
// head file, is accepted only with Options.AcceptCut. Open also refuses a
// path that is a symbolic link or not a regular file, a file writable by
// group or others, and a file another Log holds (ErrInUse).
func Open(ctx context.Context, path string, opts Options) (*Log, error) {
	return open(ctx, path, opts, hooks{})
}

func open(ctx context.Context, path string, opts Options, hk hooks) (*Log, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("audit: open %s: %w", path, err)
	}
	dir := filepath.Dir(path)
	switch st, err := os.Stat(dir); {
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("audit: open %s: directory %s does not exist: %w", path, dir, err)
	case err != nil:
		return nil, fmt.Errorf("audit: open %s: %w", path, err)
	case !st.IsDir():
		return nil, fmt.Errorf("audit: open %s: %s is not a directory", path, dir)
	}
	_, lerr := os.Lstat(path)
	existed := lerr == nil
	f, err := os.OpenFile(path, os.O_RDWR|os.O_APPEND|os.O_CREATE|noFollow, 0o600)
	if isSymlinkError(err) {
		return nil, fmt.Errorf("audit: open %s: a symbolic link is refused: %w", path, err)
	}
	if err != nil {
		return nil, fmt.Errorf("audit: open %s: %w", path, err)
	}
	started, locked := false, false
	defer func() {
		if started {
			return
		}
		f.Close()
		if locked && !existed {
			os.Remove(path) // refused: leave no empty log behind
		}
	}()
	if err := lockFile(f); err != nil {
		return nil, fmt.Errorf("audit: open %s: %w", path, err)
	}
	locked = true
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("audit: open %s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("audit: open %s: not a regular file", path)
	}
	if st.Mode().Perm()&0o022 != 0 {
		return nil, fmt.Errorf("audit: open %s: mode %v lets group or others write; chmod 600 it", path, st.Mode().Perm())
	}

	headPath := path + headSuffix
	last, cut, size, err := resume(ctx, f, st.Size(), headPath, opts.AcceptCut)
	if err != nil {
		return nil, fmt.Errorf("audit: open %s: %w", path, err)
	}
	// What was read is now made durable before the head claims it, and
	// the head exists from the start, so that a missing head later means
	// someone removed it.
	if err := f.Sync(); err != nil {
		return nil, fmt.Errorf("audit: open %s: fsync: %w", path, err)
	}
	if err := writeHead(headPath, last); err != nil {
		return nil, fmt.Errorf("audit: open %s: %w", path, err)
	}
	if err := syncDir(dir); err != nil {
		return nil, fmt.Errorf("audit: open %s: fsync directory: %w", path, err)
	}

	var lf logFile = f
	if hk.wrap != nil {
		lf = hk.wrap(f)
	}
	l := &Log{
		path: path, headPath: headPath, opts: opts, hooks: hk, f: lf,
		wake: make(chan struct{}, 1), done: make(chan struct{}),
		dwake: make(chan struct{}, 1), dstop: make(chan struct{}), ddone: make(chan struct{}),
		seq: last.Seq, hash: last.Hash, synced: last,
		wseq: last.Seq, wsize: size, whash: last.Hash,
		lastSync: time.Now(),
	}
	started = true
	go l.run()
	go l.runDurable()
	if cut != "" {
		err := l.Append(ctx, Record{
			UID: int64(os.Getuid()), GID: int64(os.Getgid()), PID: int64(os.Getpid()),
			Op: OpCutAcknowledged, Detail: cut, Result: "ok",
		})
		if err != nil {
			l.Close()
			return nil, fmt.Errorf("audit: open %s: recording the acknowledged cut: %w", path, err)
		}
	}
	return l, nil
}

// resume finds where the chain of the log in f (size bytes) continues. It
// returns the seq and hash of its last line, what was lost when acceptCut
// let it pass a cut, a missing head file or a torn last line, and the size
// of the log it continues (smaller than size after a torn line is cut off;
// its bytes are kept beside the log).
func resume(ctx context.Context, f *os.File, size int64, headPath string, acceptCut bool) (last Head, cut string, newSize int64, err error) {
	last, cut, err = resumeAt(ctx, f, size, headPath, acceptCut)
	var ve *VerifyError
	if !acceptCut || !errors.As(err, &ve) || ve.Reason != ReasonTruncated {
		return last, cut, size, err
	}
	// A torn last line, from a crash in mid-write: keep its bytes in a
	// file of its own, cut them off and continue from the line before.
	off, terr := lastNewline(f, size)
	if terr != nil {
		return Head{}, "", 0, terr
	}
	torn := make([]byte, size-off)
	if _, terr := f.ReadAt(torn, off); terr != nil {
		return Head{}, "", 0, fmt.Errorf("reading the torn line: %w", terr)
	}
	keep := strings.TrimSuffix(headPath, headSuffix) + ".torn-" + time.Now().UTC().Format("20060102T150405Z")
	if terr := os.WriteFile(keep, torn, 0o600); terr != nil {
		return Head{}, "", 0, fmt.Errorf("keeping the torn line: %w", terr)
	}
	if terr := f.Truncate(off); terr != nil {
		return Head{}, "", 0, fmt.Errorf("cutting the torn line off: %w", terr)
	}
	last, cut, err = resumeAt(ctx, f, off, headPath, acceptCut)
	note := fmt.Sprintf("torn last line (%d bytes) cut off, kept in %s", len(torn), keep)
	if cut != "" {
		note += "; " + cut
	}
	return last, note, off, err
}

// lastNewline returns the offset just past the last newline in the first
// size bytes of f, or 0 when there is none.
func lastNewline(f io.ReaderAt, size int64) (int64, error) {
	n := min(size, MaxLineSize+1)
	tail := make([]byte, n)
	if _, err := f.ReadAt(tail, size-n); err != nil {
		return 0, fmt.Errorf("reading the end of the log: %w", err)
	}
	if i := bytes.LastIndexByte(tail, '\n'); i >= 0 {
		return size - n + int64(i) + 1, nil
	}
	if n < size {
		return 0, fmt.Errorf("%w: no line end in the last %d bytes", ErrTampered, n)
	}
	return 0, nil
}

// resumeAt is resume without the torn-line repair.
func resumeAt(ctx context.Context, f *os.File, size int64, headPath string, acceptCut bool) (last Head, cut string, err error) {
	head, herr := readHead(headPath)
	if herr != nil {
		if !acceptCut {
			return Head{}, "", fmt.Errorf("%w; verify the log and set AcceptCut to continue", herr)
		}
		cut = herr.Error()
	}
	last, ok, err := lastLine(f, size)
	if err != nil {
		return Head{}, "", err
	}
	if ok && head != nil && (head.Seq > last.Seq || head.Seq == last.Seq && head.Hash != last.Hash) {
		ok = false
	}
	if !ok {
		sum, err := verify(ctx, io.NewSectionReader(f, 0, size), head, nil)
		var ve *VerifyError
		switch {
		case err == nil:
			return Head{}, "", fmt.Errorf("%w: the end of the log does not chain, yet it verifies", ErrTampered)
		case acceptCut && errors.As(err, &ve) && ve.Reason == ReasonCut:
			return Head{Seq: sum.LastSeq, Hash: sum.LastHash}, ve.Detail, nil
		default:
			return Head{}, "", fmt.Errorf("refusing to continue the log: %w", err)
		}
	}
	if head == nil && herr == nil && last.Seq > 0 {
		if !acceptCut {
			return Head{}, "", fmt.Errorf("%w: head file %s is missing, so lines cut from the end would go unnoticed; verify the log and set AcceptCut to continue",
				ErrTampered, headPath)
		}
		cut = fmt.Sprintf("head file missing; the log ends at seq %d", last.Seq)
	}
	return last, cut, nil
}

// lastLine reads the end of the log in f (size bytes): the seq and hash of
// its last line. ok is false if the end does not look right: no final
// newline, a last line that is not a record, or that does not chain to the
// line before it.
func lastLine(f io.ReaderAt, size int64) (last Head, ok bool, err error) {
	if size == 0 {
		return Head{Hash: ZeroHash}, true, nil
	}
	n := min(size, 2*(MaxLineSize+1))
	tail := make([]byte, n)
	if _, err := f.ReadAt(tail, size-n); err != nil {
		return Head{}, false, fmt.Errorf("reading the end of the log: %w", err)
	}
	whole := n == size // tail starts at the beginning of the file
	if tail[n-1] != '\n' {
		return Head{}, false, nil
	}
	body := tail[:n-1]
	i := bytes.LastIndexByte(body, '\n')
	if i < 0 && !whole {
		return Head{}, false, nil
	}
	line := body[i+1:]
	seq, prev, err := parseLine(line)
	if err != nil {
		return Head{}, false, nil
	}
	last = Head{Seq: seq, Hash: lineHash(line)}
	if i < 0 {
		return last, seq == 1 && prev == ZeroHash, nil
	}
	body = body[:i]
	j := bytes.LastIndexByte(body, '\n')
	if j < 0 && !whole {
		return Head{}, false, nil
	}
	before := body[j+1:]
	pseq, _, err := parseLine(before)
	if err != nil || pseq+1 != seq || lineHash(before) != prev {
		return Head{}, false, nil
	}
	return last, true, nil
}

// Append adds r to the log. It sets r.Time to now if it is zero, and
// always sets r.Seq and r.Prev. The record is queued for the writer, which
// commits every waiting record in one group; Append returns when the group
// is fsynced (Sync) or written (Buffered), or when ctx is done. ctx only
// ends the wait: a queued record is still written, whole, in its turn (or
// at Close). It returns ErrInvalidRecord for a record it refuses,
// ErrClosed after Close, and an error wrapping ErrFailed once a write,
// fsync or head update has failed.
func (l *Log) Append(ctx context.Context, r Record) error {
	t, err := l.Enqueue(r)
	if err != nil {
		return err
	}
	return l.Wait(ctx, t)
}

// Ticket is a record queued by Enqueue, for Wait on the same Log.
type Ticket struct {
	l *Log
	p *pending
}

// ErrNoTicket means Wait was given a Ticket its Log's Enqueue did not
// issue; nothing is known of the record.
var ErrNoTicket = errors.New("audit: wait on a ticket this log did not issue")

// Enqueue queues r as Append does, without waiting: the record is
// committed in its turn, and Wait says when it is. A caller that has many
// records to wait for, such as a stream sending several results in one
// message, enqueues each and waits for them together, which takes one
// write. Every ticket must be waited for once, before the operation it
// records is acknowledged.
func (l *Log) Enqueue(r Record) (Ticket, error) {
	if r.Time.IsZero() {
		r.Time = time.Now()
	}
	body, err := encodeBody(&r)
	if err != nil {
		return Ticket{}, err
	}
	return l.queue1(&pending{t: r.Time, body: body, done: make(chan error, 1)})
}

// enqueue queues the checkpoint record r, whose statement names the line
// of seq names.
func (l *Log) enqueue(r Record, names uint64) (Ticket, error) {
	if r.Time.IsZero() {
		r.Time = time.Now()
	}
	body, err := encodeAnyBody(&r)
	if err != nil {
		return Ticket{}, err
	}
	return l.queue1(&pending{t: r.Time, body: body, done: make(chan error, 1), checkpoint: true, names: names})
}

// queue1 queues p for the writer.
func (l *Log) queue1(p *pending) (Ticket, error) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return Ticket{}, ErrClosed
	}
	if l.failed != nil {
		err := l.failed
		l.mu.Unlock()
		return Ticket{}, err
	}
	l.queue = append(l.queue, p)
	if l.hooks.queued != nil {
		l.hooks.queued(len(l.queue))
	}
	l.mu.Unlock()
	if l.opts.Mode == Sync {
		l.signal()
	}
	return Ticket{l: l, p: p}, nil
}

// Wait returns when t's record is fsynced (Sync) or written (Buffered),
// with the error of its commit, or when ctx is done; see Append.
//
// Buffered: the waiter that finds no other committing commits the queue
// itself, in groups of one write(2) each, until it is empty, with no
// hand-off to the writer goroutine; waiters that come meanwhile find
// their record in its groups, and are woken together. (In Sync mode the
// fsync stays on the writer goroutine, so that ctx can end the wait.)
func (l *Log) Wait(ctx context.Context, t Ticket) error {
	if t.l != l || t.p == nil {
		return ErrNoTicket
	}
	select {
	case err := <-t.p.done:
		return err
	default:
	}
	if l.opts.Mode == Buffered {
		l.mu.Lock()
		if l.committing {
			l.mu.Unlock()
		} else {
			l.committing = true
			l.mu.Unlock()
			l.commitQueue()
		}
	}
	select {
	case err := <-t.p.done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("audit: stopped waiting, the record stays queued: %w", ctx.Err())
	}
}

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

// Head returns the seq and hash of the last line written (and, in Sync
// mode, fsynced): 0 and ZeroHash for an empty log.
func (l *Log) Head() (seq uint64, hash string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.seq, l.hash
}

// Close writes every record queued before it, fsyncs the log, updates the
// head file, stops the writer and closes the file. Later Appends return
// ErrClosed. It returns the error that made the log fail, if one did; later
// calls return the same result.
func (l *Log) Close() error {
	l.closeOnce.Do(func() {
		l.mu.Lock()
		l.closed = true
		l.mu.Unlock()
		l.signal()
		<-l.done
		l.mu.Lock()
		failed := l.failed
		l.mu.Unlock()
		l.closeErr = errors.Join(failed, l.fileErr)
	})
	return l.closeErr
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
		l.fail(fmt.Errorf("write: %w", err), batch, true)
		return
	}
	if l.opts.Mode == Sync {
		if err := l.f.Sync(); err != nil {
			l.fail(fmt.Errorf("fsync: %w", err), batch, true)
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

// doDurable carries out one durability request. Once the log has failed,
// the head file is left as it is: after a failed fsync nothing more can be
// claimed durable.
func (l *Log) doDurable(d durable) {
	if d.sync {
		if err := l.f.Sync(); err != nil {
			l.fail(fmt.Errorf("fsync: %w", err), nil, false)
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
	if err := writeHead(l.headPath, d.head); err != nil {
		l.fail(err, nil, false)
		return
	}
	if l.hooks.headWritten != nil {
		l.hooks.headWritten(d.head)
	}
}

// fail makes the log refuse everything from now on and answers the group
// being committed and every queued record with the error. With undo, the
// unacknowledged group is cut off the file again, so that no partial line
// is left behind.
func (l *Log) fail(err error, batch []*pending, undo bool) {
	if undo {
		if terr := l.f.Truncate(l.wsize); terr != nil {
			err = errors.Join(err, fmt.Errorf("removing the partial group: %w", terr))
		}
	}
	l.mu.Lock()
	if l.failed == nil {
		l.failed = fmt.Errorf("%w: %s: %w", ErrFailed, l.path, err)
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
