package audit

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestConcurrentAppendsChain(t *testing.T) {
	const goroutines, each = 16, 250
	path := filepath.Join(t.TempDir(), "audit.log")

	// Where fsync costs nothing (tmpfs) there is nothing to group. So each
	// fsync is held until every appender not waiting on it has queued its
	// next record, as on a disk slower than its callers.
	var active atomic.Int64 // appenders not yet done
	active.Store(goroutines)
	var inGroup atomic.Int64 // records in the group being fsynced
	changed := make(chan struct{}, 1)
	notify := func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	var l *Log
	p := &probeFile{
		write: func(f logFile, b []byte) (int, error) {
			inGroup.Store(int64(bytes.Count(b, []byte("\n"))))
			return f.Write(b)
		},
		beforeSync: func(int64) error {
			for {
				l.mu.Lock()
				queued := int64(len(l.queue))
				l.mu.Unlock()
				if queued >= active.Load()-inGroup.Load() {
					return nil
				}
				<-changed
			}
		},
	}
	hk := probe(p)
	hk.queued = func(int) { notify() }
	l, err := open(t.Context(), path, Options{}, hk)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			defer func() {
				active.Add(-1)
				notify()
			}()
			for i := range each {
				r := sampleRecord(i)
				r.Detail = fmt.Sprintf("g%d-%d", g, i)
				if err := l.Append(t.Context(), r); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	const total = goroutines * each
	sum, err := VerifyFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Lines != total || sum.LastSeq != total {
		t.Fatalf("summary %+v, want %d lines", sum, total)
	}
	seen := make(map[string]bool)
	for i, line := range readLines(t, path) {
		if !json.Valid(line) {
			t.Fatalf("line %d is not valid JSON: %s", i+1, line)
		}
		var r Record
		if err := json.Unmarshal(line, &r); err != nil {
			t.Fatalf("line %d: %v", i+1, err)
		}
		if r.Seq != uint64(i+1) {
			t.Fatalf("line %d has seq %d", i+1, r.Seq)
		}
		if r.Time.Location() != time.UTC || r.Time.IsZero() {
			t.Fatalf("line %d: time %v not set in UTC", i+1, r.Time)
		}
		if seen[r.Detail] {
			t.Fatalf("record %s written twice", r.Detail)
		}
		seen[r.Detail] = true
	}
	if len(seen) != total {
		t.Fatalf("%d distinct records, want %d", len(seen), total)
	}
	syncs := p.syncs.Load()
	t.Logf("%d appends from %d goroutines: %d fsyncs, %d writes (%.1f records per group)",
		total, goroutines, syncs, p.writes.Load(), float64(total)/float64(syncs))
	if syncs*4 > total {
		t.Errorf("%d fsyncs for %d appends: records are not grouped", syncs, total)
	}
	if seq, hash := readHeadT(t, path); seq != total || hash != sum.LastHash {
		t.Errorf("head file (%d, %s), want (%d, %s)", seq, hash, total, sum.LastHash)
	}
}

// readHeadT reads the head file of the log at path.
func readHeadT(t *testing.T, path string) (uint64, string) {
	t.Helper()
	h, err := readHead(path + headSuffix)
	if err != nil || h == nil {
		t.Fatalf("head file: %v, %v", h, err)
	}
	return h.Seq, h.Hash
}

// TestGroupCommitGroups holds the writer inside the first fsync until a
// known number of records wait, then checks that they go out in as few
// groups as MaxBatch allows: one write and one fsync each.
func TestGroupCommitGroups(t *testing.T) {
	tests := []struct {
		name     string
		maxBatch int
		waiting  int
		groups   int64 // after the first one
	}{
		{"one group", 0, 64, 1},
		{"MaxBatch splits", 16, 64, 4},
		{"MaxBatch remainder", 16, 70, 5},
		{"MaxBatch 1", 1, 10, 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := t.Context()
			path := filepath.Join(t.TempDir(), "audit.log")
			entered, release, allQueued := make(chan struct{}), make(chan struct{}), make(chan struct{})
			p := &probeFile{beforeSync: func(n int64) error {
				if n == 1 {
					close(entered)
					<-release
				}
				return nil
			}}
			hk := probe(p)
			hk.queued = func(n int) {
				if n == tt.waiting {
					close(allQueued)
				}
			}
			l, err := open(ctx, path, Options{MaxBatch: tt.maxBatch}, hk)
			if err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			errs := make(chan error, tt.waiting+1)
			wg.Go(func() { errs <- l.Append(ctx, sampleRecord(0)) })
			<-entered // the writer holds the first record's group in fsync
			for i := range tt.waiting {
				wg.Go(func() { errs <- l.Append(ctx, sampleRecord(i+1)) })
			}
			<-allQueued
			close(release)
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Fatal(err)
				}
			}
			if got := p.syncs.Load(); got != 1+tt.groups {
				t.Errorf("%d fsyncs for %d appends, want %d", got, tt.waiting+1, 1+tt.groups)
			}
			if got := p.writes.Load(); got != 1+tt.groups {
				t.Errorf("%d writes for %d appends, want %d", got, tt.waiting+1, 1+tt.groups)
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			if sum, err := VerifyFile(path); err != nil || sum.Lines != tt.waiting+1 {
				t.Fatalf("verify: %+v, %v", sum, err)
			}
		})
	}
}

func TestRestartContinuesChain(t *testing.T) {
	for _, mode := range []Mode{Sync, Buffered} {
		t.Run(mode.String(), func(t *testing.T) {
			ctx := t.Context()
			path := filepath.Join(t.TempDir(), "audit.log")
			var seq uint64
			var hash string
			for session := range 3 {
				l, err := Open(ctx, path, Options{Mode: mode})
				if err != nil {
					t.Fatalf("session %d: %v", session, err)
				}
				if s, h := l.Head(); s != seq || (session > 0 && h != hash) {
					t.Fatalf("session %d starts at (%d, %s), want (%d, %s)", session, s, h, seq, hash)
				}
				for i := range 5 {
					if err := l.Append(ctx, sampleRecord(i)); err != nil {
						t.Fatal(err)
					}
				}
				seq, hash = l.Head()
				if err := l.Close(); err != nil {
					t.Fatal(err)
				}
				if hs, hh := readHeadT(t, path); hs != seq || hh != hash {
					t.Fatalf("head file after close (%d, %s), want (%d, %s)", hs, hh, seq, hash)
				}
			}
			sum, err := VerifyFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if sum.Lines != 15 || sum.LastSeq != 15 || sum.LastHash != hash || sum.Head == nil || sum.Head.Seq != 15 {
				t.Fatalf("summary %+v, want 15 lines ending in %s", sum, hash)
			}
		})
	}
}

func TestNewLogIsEmptyAndPrivate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := Open(t.Context(), path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if seq, hash := l.Head(); seq != 0 || hash != ZeroHash {
		t.Errorf("Head of a new log (%d, %s)", seq, hash)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{path, path + headSuffix} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", p, st.Mode().Perm())
		}
	}
	sum, err := VerifyFile(path)
	if err != nil || sum.Lines != 0 || sum.LastHash != ZeroHash || sum.Head == nil || sum.Head.Seq != 0 {
		t.Fatalf("verify a new log: %+v, %v", sum, err)
	}
}

// tamper is a change to a log of 10 lines (and its head file) with the
// VerifyError it must produce.
type tamper struct {
	name    string
	change  func(t testing.TB, lines [][]byte) [][]byte
	head    func(h string) string // changes the head file's content
	torn    int                   // cut this many bytes off the end of the file
	line    int
	reason  Reason
	missing uint64
	// atEnd: the damage is at the end of the log, where Open looks.
	atEnd bool
}

// tampers cover every kind of damage Verify reports.
var tampers = []tamper{
	{name: "edit result of line 4 (hide a refusal)", change: func(t testing.TB, l [][]byte) [][]byte {
		l[3] = mustReplace(t, l[3], `"result":"caller may not use key"`, `"result":"ok"`)
		return l
	}, line: 4, reason: ReasonEdited},
	{name: "edit key of line 1", change: func(t testing.TB, l [][]byte) [][]byte {
		l[0] = mustReplace(t, l[0], `"key":"a1b2c3"`, `"key":"a1b2c4"`)
		return l
	}, line: 1, reason: ReasonEdited},
	{name: "edit digest of last line", change: func(t testing.TB, l [][]byte) [][]byte {
		l[9] = mustReplace(t, l[9], `0a"`, `0b"`)
		return l
	}, line: 10, reason: ReasonEdited, atEnd: true},
	{name: "edit op of line 9", change: func(t testing.TB, l [][]byte) [][]byte {
		l[8] = mustReplace(t, l[8], `"op":"sign"`, `"op":"sing"`)
		return l
	}, line: 9, reason: ReasonEdited, atEnd: true},
	{name: "edit seq of line 4", change: func(t testing.TB, l [][]byte) [][]byte {
		l[3] = mustReplace(t, l[3], `"seq":4,`, `"seq":40,`)
		return l
	}, line: 4, reason: ReasonEdited},
	{name: "edit prev of line 1", change: func(t testing.TB, l [][]byte) [][]byte {
		l[0] = mustReplace(t, l[0], `"prev":"0`, `"prev":"1`)
		return l
	}, line: 1, reason: ReasonEdited},
	{name: "delete line 4", change: func(t testing.TB, l [][]byte) [][]byte {
		return append(l[:3], l[4:]...)
	}, line: 4, reason: ReasonRemoved, missing: 1},
	{name: "delete lines 4 to 6", change: func(t testing.TB, l [][]byte) [][]byte {
		return append(l[:3], l[6:]...)
	}, line: 4, reason: ReasonRemoved, missing: 3},
	{name: "delete line 1", change: func(t testing.TB, l [][]byte) [][]byte {
		return l[1:]
	}, line: 1, reason: ReasonRemoved, missing: 1},
	{name: "delete line 9", change: func(t testing.TB, l [][]byte) [][]byte {
		return append(l[:8], l[9])
	}, line: 9, reason: ReasonRemoved, missing: 1, atEnd: true},
	{name: "swap lines 4 and 5", change: func(t testing.TB, l [][]byte) [][]byte {
		l[3], l[4] = l[4], l[3]
		return l
	}, line: 4, reason: ReasonReordered},
	{name: "swap lines 9 and 10", change: func(t testing.TB, l [][]byte) [][]byte {
		l[8], l[9] = l[9], l[8]
		return l
	}, line: 9, reason: ReasonReordered, atEnd: true},
	{name: "move line 3 to the end", change: func(t testing.TB, l [][]byte) [][]byte {
		return append(append(l[:2:2], l[3:]...), l[2])
	}, line: 3, reason: ReasonReordered},
	{name: "repeat line 4", change: func(t testing.TB, l [][]byte) [][]byte {
		return append(l[:4:4], append([][]byte{l[3]}, l[4:]...)...)
	}, line: 5, reason: ReasonReordered},
	{name: "cut the last 2 lines", change: func(t testing.TB, l [][]byte) [][]byte {
		return l[:8]
	}, line: 9, reason: ReasonCut, missing: 2, atEnd: true},
	{name: "cut every line", change: func(t testing.TB, l [][]byte) [][]byte {
		return nil
	}, line: 1, reason: ReasonCut, missing: 10, atEnd: true},
	{name: "truncate the last line mid-line", torn: 40, line: 10, reason: ReasonTruncated, atEnd: true},
	{name: "truncate line 6 mid-line", change: func(t testing.TB, l [][]byte) [][]byte {
		return append(l[:5], l[5][:20])
	}, torn: 1, line: 6, reason: ReasonTruncated, atEnd: true},
	{name: "drop only the final newline", torn: 1, line: 10, reason: ReasonTruncated, atEnd: true},
	{name: "insert a line that is not JSON", change: func(t testing.TB, l [][]byte) [][]byte {
		return append(l[:2:2], append([][]byte{[]byte("hello")}, l[2:]...)...)
	}, line: 3, reason: ReasonMalformed},
	{name: "remove the pid of line 5", change: func(t testing.TB, l [][]byte) [][]byte {
		l[4] = mustReplace(t, l[4], `"pid":4242,`, ``)
		return l
	}, line: 5, reason: ReasonMalformed},
	{name: "empty line after line 7", change: func(t testing.TB, l [][]byte) [][]byte {
		return append(l[:7:7], append([][]byte{{}}, l[7:]...)...)
	}, line: 8, reason: ReasonMalformed},
	{name: "overlong line 2", change: func(t testing.TB, l [][]byte) [][]byte {
		l[1] = mustReplace(t, l[1], `"result":"ok"`, `"result":"`+strings.Repeat("x", MaxLineSize)+`"`)
		return l
	}, line: 2, reason: ReasonMalformed},
	{name: "head file names another hash", head: func(h string) string {
		i := strings.Index(h, `"hash":"`) + len(`"hash":"`)
		flipped := "0"
		if h[i] == '0' {
			flipped = "1"
		}
		return h[:i] + flipped + h[i+1:]
	}, line: 10, reason: ReasonEdited, atEnd: true},
	{name: "head file ahead", head: func(h string) string {
		return strings.Replace(h, `"seq":10`, `"seq":13`, 1)
	}, line: 11, reason: ReasonCut, missing: 3, atEnd: true},
}

// applyTamper writes a 10-line log and damages it as tt says; it returns
// the log's path.
func applyTamper(t *testing.T, tt tamper) string {
	t.Helper()
	path := writeLog(t, 10)
	if tt.change != nil {
		lines := tt.change(t, readLines(t, path))
		if err := os.WriteFile(path, joinLines(lines), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if tt.torn > 0 {
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(path, st.Size()-int64(tt.torn)); err != nil {
			t.Fatal(err)
		}
	}
	if tt.head != nil {
		h, err := os.ReadFile(path + headSuffix)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path+headSuffix, []byte(tt.head(string(h))), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return path
}

// checkVerifyError checks that err is the VerifyError tt expects.
func checkVerifyError(t *testing.T, err error, tt tamper) {
	t.Helper()
	if !errors.Is(err, ErrTampered) {
		t.Fatalf("error %v does not wrap ErrTampered", err)
	}
	var ve *VerifyError
	if !errors.As(err, &ve) {
		t.Fatalf("error %v is not a *VerifyError", err)
	}
	if ve.Line != tt.line || ve.Reason != tt.reason || ve.Missing != tt.missing {
		t.Fatalf("got line %d, %s, %d missing (%v); want line %d, %s, %d missing",
			ve.Line, ve.Reason, ve.Missing, err, tt.line, tt.reason, tt.missing)
	}
	t.Log(err)
}

func TestOpenRefusesDamagedLog(t *testing.T) {
	// Open checks the end of the log; damage in the middle is VerifyFile's
	// to find.
	for _, tt := range tampers {
		if !tt.atEnd {
			continue
		}
		t.Run(tt.name, func(t *testing.T) {
			path := applyTamper(t, tt)
			before, _ := os.ReadFile(path)
			headBefore, _ := os.ReadFile(path + headSuffix)
			l, err := Open(t.Context(), path, Options{})
			if err == nil {
				l.Close()
				t.Fatal("Open accepted a damaged log")
			}
			checkVerifyError(t, err, tt)
			after, _ := os.ReadFile(path)
			headAfter, _ := os.ReadFile(path + headSuffix)
			if !bytes.Equal(before, after) || !bytes.Equal(headBefore, headAfter) {
				t.Error("refused Open changed the log or its head file")
			}
		})
	}
}

func TestOpenRefusesMissingOrBadHead(t *testing.T) {
	tests := []struct {
		name string
		head []byte // nil: remove the head file
	}{
		{"missing", nil},
		{"not JSON", []byte("garbage\n")},
		{"bad hash", []byte(`{"seq":3,"hash":"xyz"}` + "\n")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeLog(t, 3)
			var err error
			if tt.head == nil {
				err = os.Remove(path + headSuffix)
			} else {
				err = os.WriteFile(path+headSuffix, tt.head, 0o600)
			}
			if err != nil {
				t.Fatal(err)
			}
			l, err := Open(t.Context(), path, Options{})
			if err == nil {
				l.Close()
				t.Fatal("Open accepted a log without a usable head file")
			}
			if !errors.Is(err, ErrTampered) || !strings.Contains(err.Error(), "AcceptCut") {
				t.Fatalf("error %v: want ErrTampered and a hint at AcceptCut", err)
			}

			// An officer's acknowledgement lets it continue, on the record.
			l, err = Open(t.Context(), path, Options{AcceptCut: true})
			if err != nil {
				t.Fatal(err)
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			lines := readLines(t, path)
			var r Record
			if err := json.Unmarshal(lines[len(lines)-1], &r); err != nil {
				t.Fatal(err)
			}
			if len(lines) != 4 || r.Op != OpCutAcknowledged || !strings.Contains(r.Detail, "head file") {
				t.Fatalf("%d lines, last %+v", len(lines), r)
			}
			if _, err := VerifyFile(path); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestOpenAcceptCut(t *testing.T) {
	cut := tampers[slicesIndex(tampers, "cut the last 2 lines")]
	path := applyTamper(t, cut)
	l, err := Open(t.Context(), path, Options{AcceptCut: true})
	if err != nil {
		t.Fatal(err)
	}
	seq, hash := l.Head()
	if err := l.Append(t.Context(), sampleRecord(0)); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	lines := readLines(t, path)
	if len(lines) != 10 || seq != 9 {
		t.Fatalf("%d lines, head seq %d after the acknowledgement; want 10 and 9", len(lines), seq)
	}
	var r Record
	if err := json.Unmarshal(lines[8], &r); err != nil {
		t.Fatal(err)
	}
	if r.Op != OpCutAcknowledged || r.Seq != 9 || r.Result != "ok" || r.PID != int64(os.Getpid()) ||
		!strings.Contains(r.Detail, "seq 10") || !strings.Contains(r.Detail, "last 2 lines") {
		t.Fatalf("acknowledgement line %+v", r)
	}
	if got := lineHash(lines[8]); got != hash {
		t.Fatalf("Head hash %s, the acknowledgement line hashes to %s", hash, got)
	}
	sum, err := VerifyFile(path)
	if err != nil || sum.Lines != 10 {
		t.Fatalf("verify after acknowledged cut: %+v, %v", sum, err)
	}

	// A torn last line (a crash in mid-write, or a cut in mid-line) is
	// accepted too: its bytes are kept beside the log, the line is cut
	// off, and the acknowledgement says so.
	torn := applyTamper(t, tampers[slicesIndex(tampers, "truncate the last line mid-line")])
	before, err := os.ReadFile(torn)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Open(t.Context(), torn, Options{}); !errors.Is(err, ErrTampered) {
		t.Fatalf("Open of a torn log without AcceptCut: %v", err)
	}
	l, err = Open(t.Context(), torn, Options{AcceptCut: true})
	if err != nil {
		t.Fatalf("AcceptCut on a torn log: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	kept, _ := filepath.Glob(torn + ".torn-*")
	if len(kept) != 1 {
		t.Fatalf("torn bytes kept in %v; want one file", kept)
	}
	tornBytes, _ := os.ReadFile(kept[0])
	if len(tornBytes) == 0 || !bytes.HasSuffix(before, tornBytes) || bytes.Contains(tornBytes, []byte("\n")) {
		t.Fatalf("kept %q, not the torn end of the log", tornBytes)
	}
	if _, err := VerifyFile(torn); err != nil {
		t.Fatalf("verify after the torn line was cut off: %v", err)
	}
	tl := readLines(t, torn)
	if err := json.Unmarshal(tl[len(tl)-1], &r); err != nil || r.Op != OpCutAcknowledged || !strings.Contains(r.Detail, "torn last line") {
		t.Fatalf("acknowledgement %+v, %v", r, err)
	}

	// An undamaged log gets no extra line.
	clean := writeLog(t, 3)
	l, err = Open(t.Context(), clean, Options{AcceptCut: true})
	if err != nil {
		t.Fatal(err)
	}
	if seq, _ := l.Head(); seq != 3 {
		t.Fatalf("AcceptCut on an intact log wrote a line: head seq %d", seq)
	}
	l.Close()
}

func slicesIndex(ts []tamper, name string) int {
	for i, tt := range ts {
		if tt.name == name {
			return i
		}
	}
	panic("no tamper " + name)
}

func TestOpenRefusesBadPaths(t *testing.T) {
	dir := t.TempDir()
	notDir := filepath.Join(dir, "file")
	if err := os.WriteFile(notDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	open := filepath.Join(dir, "open.log")
	held, err := Open(t.Context(), open, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	target := writeLog(t, 1)
	link := filepath.Join(dir, "link.log")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	wide := filepath.Join(dir, "wide.log")
	if err := os.WriteFile(wide, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(wide, 0o620); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name   string
		path   string
		is     error
		substr string
	}{
		{"missing parent directory", filepath.Join(dir, "nope", "audit.log"), fs.ErrNotExist, "directory " + filepath.Join(dir, "nope") + " does not exist"},
		{"parent is a file", filepath.Join(notDir, "audit.log"), nil, "is not a directory"},
		{"held by another Log", open, ErrInUse, "in use"},
		{"symbolic link", link, nil, "symbolic link"},
		{"group-writable", wide, nil, "chmod 600"},
		{"a directory", dir, nil, dir},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, err := Open(t.Context(), tt.path, Options{})
			if err == nil {
				l.Close()
				t.Fatal("Open succeeded")
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("error %v does not wrap %v", err, tt.is)
			}
			if !strings.Contains(err.Error(), tt.substr) {
				t.Errorf("error %q does not say %q", err, tt.substr)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(dir, "nope")); !errors.Is(err, fs.ErrNotExist) {
		t.Error("Open created the missing directory")
	}
}

func TestAppendAfterClose(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := Open(t.Context(), path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Append(t.Context(), sampleRecord(0)); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Append(t.Context(), sampleRecord(1)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Append after Close: %v, want ErrClosed", err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if sum, err := VerifyFile(path); err != nil || sum.Lines != 1 {
		t.Fatalf("verify: %+v, %v", sum, err)
	}
}

func TestAppendRefusesInvalidRecord(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := Open(t.Context(), path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ok := sampleRecord(0)
	tests := []struct {
		name   string
		change func(r *Record)
	}{
		{"empty op", func(r *Record) { r.Op = "" }},
		{"empty result", func(r *Record) { r.Result = "" }},
		{"negative count", func(r *Record) { r.Count = -1 }},
		{"year 10000", func(r *Record) { r.Time = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC) }},
		{"checkpoint op", func(r *Record) { r.Op = OpCheckpoint }},
		{"checkpoint on another op", func(r *Record) { r.Checkpoint = &Checkpoint{Statement: "x"} }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := ok
			tt.change(&r)
			if err := l.Append(t.Context(), r); !errors.Is(err, ErrInvalidRecord) {
				t.Fatalf("Append: %v, want ErrInvalidRecord", err)
			}
		})
	}
	if seq, _ := l.Head(); seq != 0 {
		t.Fatalf("refused records were written: head seq %d", seq)
	}
	// A record whose fields are as long as the bounds allow is written
	// and verifies, even with every byte escaped.
	r := ok
	r.Op, r.Token, r.Key = strings.Repeat("\x01", MaxOpLen), strings.Repeat("\x01", MaxTokenLen), strings.Repeat("\x01", MaxKeyLen)
	r.Digest, r.Detail, r.Result = strings.Repeat("\x01", MaxDigestLen), strings.Repeat("\x01", MaxDetailLen), strings.Repeat("\x01", MaxResultLen)
	if err := l.Append(t.Context(), r); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyFile(path); err != nil {
		t.Fatal(err)
	}
}

func TestAppendTimeAndFields(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := Open(t.Context(), path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	when := time.Date(2025, 3, 4, 5, 6, 7, 890, time.FixedZone("x", 3600))
	r := sampleRecord(1)
	r.Time, r.Seq, r.Prev = when, 99, "caller's prev is ignored"
	if err := l.Append(t.Context(), r); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	line := readLines(t, path)[0]
	want := `{"time":"2025-03-04T04:06:07.00000089Z","seq":1,"uid":1001,"gid":1001,"pid":4242,"op":"sign_batch",` +
		`"token":"member1","key":"a1b2c3","digest":"` + fmt.Sprintf("%064x", 2) + `","count":17,"result":"ok","prev":"` + ZeroHash + `"}`
	if string(line) != want {
		t.Fatalf("line\n%s\nwant\n%s", line, want)
	}
}

// TestAppendContextEndsOnlyTheWait cancels an Append while its group is in
// fsync: Append returns at once, and the record is still written whole.
func TestAppendContextEndsOnlyTheWait(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	entered, release := make(chan struct{}), make(chan struct{})
	p := &probeFile{beforeSync: func(n int64) error {
		if n == 1 {
			close(entered)
			<-release
		}
		return nil
	}}
	l, err := open(t.Context(), path, Options{}, probe(p))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- l.Append(ctx, sampleRecord(0)) }()
	<-entered
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Append with a canceled context: %v", err)
	}
	close(release)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if sum, err := VerifyFile(path); err != nil || sum.Lines != 1 {
		t.Fatalf("verify: %+v, %v", sum, err)
	}
}

// TestWriteFailureLeavesNoPartialLine makes a write or an fsync fail and
// checks that the group is refused, cut off the file again, and that the
// log refuses everything after.
func TestWriteFailureLeavesNoPartialLine(t *testing.T) {
	errDisk := errors.New("disk on fire")
	tests := []struct {
		name string
		p    *probeFile
	}{
		{"short write", &probeFile{write: func(f logFile, b []byte) (int, error) {
			if bytes.Contains(b, []byte(`"seq":3,`)) {
				n, _ := f.Write(b[:len(b)/2])
				return n, errDisk
			}
			return f.Write(b)
		}}},
		{"fsync fails", &probeFile{
			write: func(f logFile, b []byte) (int, error) { return f.Write(b) },
			beforeSync: func(n int64) error {
				if n == 3 {
					return errDisk
				}
				return nil
			}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.log")
			l, err := open(t.Context(), path, Options{}, probe(tt.p))
			if err != nil {
				t.Fatal(err)
			}
			for i := range 2 {
				if err := l.Append(t.Context(), sampleRecord(i)); err != nil {
					t.Fatal(err)
				}
			}
			err = l.Append(t.Context(), sampleRecord(2))
			if !errors.Is(err, ErrFailed) || !errors.Is(err, errDisk) {
				t.Fatalf("failing Append: %v, want ErrFailed wrapping the cause", err)
			}
			if err := l.Append(t.Context(), sampleRecord(3)); !errors.Is(err, ErrFailed) {
				t.Fatalf("Append after a failure: %v", err)
			}
			if err := l.Close(); !errors.Is(err, ErrFailed) {
				t.Fatalf("Close after a failure: %v", err)
			}
			sum, err := VerifyFile(path)
			if err != nil || sum.Lines != 2 {
				t.Fatalf("verify after failure: %+v, %v", sum, err)
			}
			l, err = Open(t.Context(), path, Options{})
			if err != nil {
				t.Fatalf("reopen after failure: %v", err)
			}
			if seq, _ := l.Head(); seq != 2 {
				t.Fatalf("reopened at seq %d", seq)
			}
			l.Close()
		})
	}
}

// TestBufferedMode checks that Buffered Appends do not wait for fsync, that
// Close fsyncs, and that the flush timer fsyncs written records.
func TestBufferedMode(t *testing.T) {
	t.Run("fsync at Close", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "audit.log")
		p := &probeFile{}
		l, err := open(t.Context(), path, Options{Mode: Buffered, FlushEvery: time.Hour}, probe(p))
		if err != nil {
			t.Fatal(err)
		}
		for i := range 20 {
			if err := l.Append(t.Context(), sampleRecord(i)); err != nil {
				t.Fatal(err)
			}
		}
		if got := p.syncs.Load(); got != 0 {
			t.Fatalf("%d fsyncs before Close with FlushEvery an hour", got)
		}
		// Every line is written already; the head file still says 0,
		// which a head that lags may.
		if sum, err := VerifyFile(path); err != nil || sum.Lines != 20 || sum.Head.Seq != 0 {
			t.Fatalf("written lines: %+v, %v", sum, err)
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		if got := p.syncs.Load(); got != 1 {
			t.Fatalf("%d fsyncs at Close, want 1", got)
		}
		if seq, _ := readHeadT(t, path); seq != 20 {
			t.Fatalf("head seq %d after Close", seq)
		}
	})
	t.Run("flush timer", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "audit.log")
		synced := make(chan struct{}, 1)
		p := &probeFile{beforeSync: func(int64) error {
			select {
			case synced <- struct{}{}:
			default:
			}
			return nil
		}}
		l, err := open(t.Context(), path, Options{Mode: Buffered, FlushEvery: 5 * time.Millisecond}, probe(p))
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		if err := l.Append(t.Context(), sampleRecord(0)); err != nil {
			t.Fatal(err)
		}
		select {
		case <-synced:
		case <-time.After(10 * time.Second):
			t.Fatal("no fsync after FlushEvery")
		}
	})
}

// TestBufferedFsyncFailure makes the deferred fsync of Buffered mode fail:
// the head file must not claim the unsynced lines, and Close and later
// Appends must report the failure.
func TestBufferedFsyncFailure(t *testing.T) {
	errDisk := errors.New("disk on fire")
	path := filepath.Join(t.TempDir(), "audit.log")
	failed := make(chan struct{})
	p := &probeFile{beforeSync: func(int64) error {
		close(failed)
		return errDisk
	}}
	l, err := open(t.Context(), path, Options{Mode: Buffered, FlushEvery: time.Millisecond}, probe(p))
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Append(t.Context(), sampleRecord(0)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-failed:
	case <-time.After(10 * time.Second):
		t.Fatal("no fsync after FlushEvery")
	}
	if err := l.Close(); !errors.Is(err, ErrFailed) || !errors.Is(err, errDisk) {
		t.Fatalf("Close after a failed fsync: %v", err)
	}
	if err := l.Append(t.Context(), sampleRecord(1)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Append after Close: %v", err)
	}
	if seq, _ := readHeadT(t, path); seq != 0 {
		t.Fatalf("head file claims seq %d after a failed fsync", seq)
	}
}

// TestRefusedOpenCreatesNothing: a log Open refuses to create is not left
// behind empty.
func TestRefusedOpenCreatesNothing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	if err := os.WriteFile(path+headSuffix, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := Open(t.Context(), path, Options{})
	if err == nil {
		l.Close()
		t.Fatal("Open accepted a garbage head file")
	}
	if !errors.Is(err, ErrTampered) {
		t.Fatalf("error %v does not wrap ErrTampered", err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("refused Open left a log file: %v", err)
	}
}

// TestHeadEvery checks that HeadEvery spaces out head file updates, and
// that Close brings the head file up to date all the same.
func TestHeadEvery(t *testing.T) {
	tests := []struct {
		name      string
		headEvery time.Duration
		maxWrites int // head file updates after Open's, for 10 appends
	}{
		{"every group", 0, 10},
		{"an hour apart", time.Hour, 2}, // the first group's, and Close's
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.log")
			var mu sync.Mutex
			var writes []Head
			hk := hooks{headWritten: func(h Head) {
				mu.Lock()
				writes = append(writes, h)
				mu.Unlock()
			}}
			l, err := open(t.Context(), path, Options{HeadEvery: tt.headEvery}, hk)
			if err != nil {
				t.Fatal(err)
			}
			for i := range 10 {
				if err := l.Append(t.Context(), sampleRecord(i)); err != nil {
					t.Fatal(err)
				}
			}
			_, hash := l.Head()
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			if len(writes) == 0 || len(writes) > tt.maxWrites {
				t.Fatalf("%d head file updates, want 1 to %d", len(writes), tt.maxWrites)
			}
			for i := 1; i < len(writes); i++ {
				if writes[i].Seq <= writes[i-1].Seq {
					t.Fatalf("head file went from seq %d to %d", writes[i-1].Seq, writes[i].Seq)
				}
			}
			if seq, h := readHeadT(t, path); seq != 10 || h != hash {
				t.Fatalf("head file after Close (%d, %s), want (10, %s)", seq, h, hash)
			}
		})
	}
}

// TestEnqueueThenWaitTogether queues records without waiting, then waits
// for the last: that commits every record queued before it, in order, so
// that waiting for the others writes nothing more.
func TestEnqueueThenWaitTogether(t *testing.T) {
	for _, mode := range []Mode{Buffered, Sync} {
		t.Run(mode.String(), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.log")
			p := &probeFile{}
			l, err := open(t.Context(), path, Options{Mode: mode, FlushEvery: time.Hour}, probe(p))
			if err != nil {
				t.Fatal(err)
			}
			const n = 10
			tickets := make([]Ticket, n)
			for i := range n {
				if tickets[i], err = l.Enqueue(sampleRecord(i)); err != nil {
					t.Fatal(err)
				}
			}
			if err := l.Wait(t.Context(), tickets[n-1]); err != nil {
				t.Fatal(err)
			}
			// The last record's commit took every record queued before
			// it: waiting for those writes nothing more.
			w1 := p.writes.Load()
			for i := range n - 1 {
				if err := l.Wait(t.Context(), tickets[i]); err != nil {
					t.Fatalf("ticket %d: %v", i, err)
				}
			}
			if got := p.writes.Load() - w1; got != 0 {
				t.Fatalf("%d more writes to wait for records queued before one already committed", got)
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			sum, err := VerifyFile(path)
			if err != nil || sum.Lines != n {
				t.Fatalf("log after the waits: %+v, %v", sum, err)
			}
		})
	}
}

func TestWaitRefusesAForeignTicket(t *testing.T) {
	a, err := Open(t.Context(), filepath.Join(t.TempDir(), "a.log"), Options{Mode: Buffered})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := Open(t.Context(), filepath.Join(t.TempDir(), "b.log"), Options{Mode: Buffered})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	tk, err := a.Enqueue(sampleRecord(0))
	if err != nil {
		t.Fatal(err)
	}
	for name, tt := range map[string]struct {
		log *Log
		tk  Ticket
	}{
		"zero ticket":          {a, Ticket{}},
		"another log's ticket": {b, tk},
	} {
		if err := tt.log.Wait(t.Context(), tt.tk); !errors.Is(err, ErrNoTicket) {
			t.Errorf("%s: Wait = %v, want ErrNoTicket", name, err)
		}
	}
	if err := a.Wait(t.Context(), tk); err != nil {
		t.Fatalf("its own log: %v", err)
	}
}

// TestOversizedFieldsAreHashed: a field longer than its bound is written
// as its SHA-256 and length, never refused or dropped (issue 9, finding
// 3: a refusal with a 40 KiB digest left no line).
func TestOversizedFieldsAreHashed(t *testing.T) {
	big := strings.Repeat("ab", 20<<10) // a 20 KiB digest in hex
	tests := []struct {
		name  string
		set   func(r *Record, v string)
		get   func(r Record) string
		limit int
	}{
		{"op", func(r *Record, v string) { r.Op = v }, func(r Record) string { return r.Op }, MaxOpLen},
		{"token", func(r *Record, v string) { r.Token = v }, func(r Record) string { return r.Token }, MaxTokenLen},
		{"key", func(r *Record, v string) { r.Key = v }, func(r Record) string { return r.Key }, MaxKeyLen},
		{"digest", func(r *Record, v string) { r.Digest = v }, func(r Record) string { return r.Digest }, MaxDigestLen},
		{"detail", func(r *Record, v string) { r.Detail = v }, func(r Record) string { return r.Detail }, MaxDetailLen},
		{"result", func(r *Record, v string) { r.Result = v }, func(r Record) string { return r.Result }, MaxResultLen},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.log")
			l, err := Open(t.Context(), path, Options{})
			if err != nil {
				t.Fatal(err)
			}
			atLimit := strings.Repeat("x", tt.limit)
			values := []struct{ in, want string }{
				{atLimit, atLimit},
				{atLimit + "x", FieldHash(atLimit + "x")},
				{big, FieldHash(big)},
				{big + maxLineText, FieldHash(big + maxLineText)},
				// A value that could be taken for a replacement is
				// replaced too, so the form is never ambiguous.
				{FieldHash("short"), FieldHash(FieldHash("short"))},
				{"sha256:", FieldHash("sha256:")},
			}
			for _, v := range values {
				r := sampleRecord(0)
				tt.set(&r, v.in)
				if err := l.Append(t.Context(), r); err != nil {
					t.Fatalf("Append with a %s of %d bytes: %v", tt.name, len(v.in), err)
				}
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			if _, err := VerifyFile(path); err != nil {
				t.Fatal(err)
			}
			for i, line := range readLines(t, path) {
				var r Record
				if err := json.Unmarshal(line, &r); err != nil {
					t.Fatal(err)
				}
				if got := tt.get(r); got != values[i].want {
					t.Errorf("value %d (%d bytes) written as %.100q, want %.100q", i, len(values[i].in), got, values[i].want)
				}
			}
		})
	}
	sum := sha256.Sum256([]byte(big))
	if want := "sha256:" + hex.EncodeToString(sum[:]) + " len=40960"; FieldHash(big) != want {
		t.Fatalf("FieldHash = %q, want %q", FieldHash(big), want)
	}
}

// maxLineText is longer than a whole line.
var maxLineText = strings.Repeat("z", MaxLineSize)
