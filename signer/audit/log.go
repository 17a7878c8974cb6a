package audit

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"
)

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
	hmu   sync.Mutex    // held while the head file is replaced
	ddone chan struct{} // closed when the durability goroutine has stopped

	mu         sync.Mutex
	queue      []*pending
	committing bool // an Append is committing the queue (Buffered)
	closed     bool
	failed     error // wraps ErrFailed; cleared when the log recovers
	// recoverable says the log may recover from failed (see recover);
	// headStale that the head file must be written again first.
	recoverable bool
	headStale   bool
	seq         uint64 // last written line, for Head
	hash        string
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

// Append adds r to the log. It sets r.Time to now if it is zero, and
// always sets r.Seq and r.Prev. The record is queued for the writer, which
// commits every waiting record in one group; Append returns when the group
// is fsynced (Sync) or written (Buffered), or when ctx is done. ctx only
// ends the wait: a queued record is still written, whole, in its turn (or
// at Close). It returns ErrInvalidRecord for a record it refuses,
// ErrClosed after Close, and an error wrapping ErrFailed when a write,
// fsync or head update failed. After a failed write (whose partial group
// is cut off again) or head update, the next Append tries again, so that
// the log resumes once the disk takes writes again; after a failed fsync
// it accepts nothing more until it is opened again.
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
	if l.failed != nil && !l.recoverable {
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
