package audit

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

// sampleRecord returns the i-th of a varied set of records: single and
// batch signatures, a login without key, a refusal with awkward text.
func sampleRecord(i int) Record {
	digest := fmt.Sprintf("%064x", i+1)
	switch i % 4 {
	case 0:
		return Record{UID: 1001, GID: 1001, PID: 4242, Op: "sign", Token: "member1", Key: "a1b2c3", Digest: digest, Result: "ok"}
	case 1:
		return Record{UID: 1001, GID: 1001, PID: 4242, Op: "sign_batch", Token: "member1", Key: "a1b2c3", Digest: digest, Count: 17, Result: "ok"}
	case 2:
		return Record{UID: 0, GID: 0, PID: -1, Op: "token.login", Token: "officer token", Result: "ok"}
	default:
		return Record{UID: 2002, GID: 100, PID: 77, Op: "denied", Key: "ffee", Detail: "line\nbreak \"quoted\" \u00fc \x00 </script>", Result: "caller may not use key"}
	}
}

// writeLog creates a log of n sample records in a new directory and
// returns its path.
func writeLog(t testing.TB, n int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := Open(t.Context(), path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if err := l.Append(t.Context(), sampleRecord(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// readLines returns the lines of a file without their newlines; a last
// line without newline is returned as it is.
func readLines(t testing.TB, path string) [][]byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := bytes.SplitAfter(data, []byte("\n"))
	if len(lines[len(lines)-1]) == 0 {
		lines = lines[:len(lines)-1]
	}
	for i, l := range lines {
		lines[i] = bytes.TrimSuffix(l, []byte("\n"))
	}
	return lines
}

// joinLines joins lines, each followed by a newline.
func joinLines(lines [][]byte) []byte {
	var b bytes.Buffer
	for _, l := range lines {
		b.Write(l)
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// mustReplace replaces old by new in line once, failing if old is absent.
func mustReplace(t testing.TB, line []byte, old, new string) []byte {
	t.Helper()
	if !bytes.Contains(line, []byte(old)) {
		t.Fatalf("%q not in line %s", old, line)
	}
	return []byte(strings.Replace(string(line), old, new, 1))
}

// probeFile wraps the log file to count writes and fsyncs, and lets a test
// block or fail them.
type probeFile struct {
	logFile
	writes, syncs atomic.Int64
	// beforeSync, if set, runs before fsync number n (1-based); it may
	// block, and an error it returns fails that fsync.
	beforeSync func(n int64) error
	// write, if set, replaces Write.
	write func(f logFile, p []byte) (int, error)
}

func (p *probeFile) Write(b []byte) (int, error) {
	p.writes.Add(1)
	if p.write != nil {
		return p.write(p.logFile, b)
	}
	return p.logFile.Write(b)
}

func (p *probeFile) Sync() error {
	n := p.syncs.Add(1)
	if p.beforeSync != nil {
		if err := p.beforeSync(n); err != nil {
			return err
		}
	}
	return p.logFile.Sync()
}

// probe returns hooks that put p in place of the log file.
func probe(p *probeFile) hooks {
	return hooks{wrap: func(f logFile) logFile { p.logFile = f; return p }}
}
