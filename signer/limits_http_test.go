package signer

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
)

// openFDs is the number of this process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// fdSlack allows for descriptors the test process opens meanwhile for
// other things (the audit log's files, the runtime's).
const fdSlack = 4

// partialTSAQuery is the start of a POST /tsa whose body announces 16 KiB
// and brings 1 KiB: the server waits for the rest.
var partialTSAQuery = "POST /tsa HTTP/1.1\r\nHost: signerd\r\nContent-Type: application/timestamp-query\r\nContent-Length: 16384\r\n\r\n" + strings.Repeat("a", 1<<10)

// holdConns dials n connections with dial and sends each a partial
// POST /tsa; it returns them, to be closed by the test.
func holdConns(t *testing.T, n int, dial func() (net.Conn, error)) []net.Conn {
	t.Helper()
	var conns []net.Conn
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for range n {
		c, err := dial()
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		// A write to a connection the server closed at once may fail:
		// what matters is what the server holds.
		_, _ = io.WriteString(c, partialTSAQuery)
	}
	return conns
}

// uidConns is how many connections the limits count for uid now.
func (d *testDaemon) uidConns(uid uint32) int {
	d.svc.limits.mu.Lock()
	defer d.svc.limits.mu.Unlock()
	if u := d.svc.limits.uids[uid]; u != nil {
		return u.conns
	}
	return 0
}

// TestHTTPSocketConnectionsPerUID: connections to the HTTP socket count
// under their uid with the gRPC socket's, at most connections_per_uid:
// 300 connections holding partial POST /tsa bodies leave the daemon with
// the limit's worth open (the rest closed as they are accepted, counted
// in signerd_limit_exceeded_total), not 300 more file descriptors; those
// it holds are closed once httpReadTimeout has passed, and the uid's
// count comes back to its gRPC connection. Before the limit every one of
// them stayed open (3,000 of them: +3,000 descriptors, +90 MiB).
func TestHTTPSocketConnectionsPerUID(t *testing.T) {
	const limit, dials = 8, 300
	d := newDaemon(t, func(p *daemonParams) {
		p.Limits = fmt.Sprintf("connections_per_uid = %d", limit)
		p.TSA = tsaOn
	})
	hc := d.serveHTTP(t)
	if _, err := d.client.GetStatus(testCtx(t), &signerv1.GetStatusRequest{}); err != nil {
		t.Fatal(err) // the harness's client is connected: one of the limit
	}
	uid := uint32(os.Getuid())
	if got := d.uidConns(uid); got != 1 {
		t.Fatalf("the uid has %d connections before the flood, want 1 (the harness's gRPC client)", got)
	}
	sock := filepath.Join(d.dir, "run", "http.sock")
	baseFDs, baseRSS := openFDs(t), rssMB(t)
	start := time.Now()
	conns := holdConns(t, dials, func() (net.Conn, error) { return net.Dial("unix", sock) })
	// The daemon's descriptors: the process's less the test's own ends.
	report := func() {
		t.Logf("%d connections: the daemon holds %d descriptors for them, %d closed at accept; RSS %+.1f MiB",
			dials, openFDs(t)-baseFDs-dials, d.limitExceeded(limitConnections), rssMB(t)-baseRSS)
	}
	waitFor(t, "the connections beyond the limit to be closed", func() bool {
		ok := d.limitExceeded(limitConnections) == dials-(limit-1) && openFDs(t)-baseFDs-dials <= limit-1+fdSlack
		if !ok && time.Since(start) > 30*time.Second {
			report()
			t.Fatalf("30 s after the flood the connections beyond the limit are still open")
		}
		return ok
	})
	report()
	if got := d.uidConns(uid); got != limit {
		t.Fatalf("the uid holds %d connections, want %d", got, limit)
	}
	// Those held are closed once their requests have taken
	// httpReadTimeout.
	waitFor(t, "the partial requests to be closed", func() bool { return d.uidConns(uid) == 1 })
	if took := time.Since(start); took > httpReadTimeout+5*time.Second {
		t.Fatalf("partial requests held %v, want them closed after httpReadTimeout %v", took, httpReadTimeout)
	}
	for _, c := range conns {
		c.Close()
	}
	// With room again, the socket serves.
	resp, err := hc.Get("http://signerd/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics after the flood: %s", resp.Status)
	}
}

// readEnd reads c until the server closes it or 30 s pass: it returns
// what was read and whether the server closed it.
func readEnd(t *testing.T, c net.Conn) (string, bool) {
	t.Helper()
	if err := c.SetReadDeadline(time.Now().Add(30 * time.Second)); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return string(b), false
	}
	return string(b), true
}

// TestHTTPSocketSlowConnectionsClosed: on the HTTP socket, a request
// whose body does not come is ended after httpReadTimeout, and a
// connection idle between requests is closed after [limits]
// idle_timeout; before, both were kept for good.
func TestHTTPSocketSlowConnectionsClosed(t *testing.T) {
	d := newDaemon(t, func(p *daemonParams) {
		p.Limits = `idle_timeout = "1s"`
		p.TSA = tsaOn
	})
	d.serveHTTP(t)
	sock := filepath.Join(d.dir, "run", "http.sock")
	for _, c := range []struct {
		name     string
		send     string
		min, max time.Duration // when the server closes it
	}{
		{"partial body", partialTSAQuery, httpReadTimeout - time.Second, httpReadTimeout + 5*time.Second},
		{"idle after a request", "GET /healthz HTTP/1.1\r\nHost: signerd\r\n\r\n", 0, 5 * time.Second},
	} {
		t.Run(c.name, func(t *testing.T) {
			conn, err := net.Dial("unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			start := time.Now()
			if _, err := io.WriteString(conn, c.send); err != nil {
				t.Fatal(err)
			}
			got, closed := readEnd(t, conn)
			took := time.Since(start)
			if !closed {
				t.Fatalf("the connection is still open after %v (read %q)", took, got)
			}
			if took < c.min || took > c.max {
				t.Fatalf("closed after %v, want between %v and %v", took, c.min, c.max)
			}
			t.Logf("closed after %v; read %q", took, firstLine(got))
		})
	}
}

// firstLine is the first line of s.
func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return strings.TrimSpace(l)
}

// TestTSATCPConnectionsBounded: the TSA's TCP listener, whose callers
// have no uid, holds at most connections_per_uid connections at once
// over all of them (counted as one peer's); one beyond is closed as it
// is accepted. 100 connections holding partial POST /tsa bodies leave
// the daemon with the limit's worth of descriptors, all closed after
// httpReadTimeout; then a query is answered.
func TestTSATCPConnectionsBounded(t *testing.T) {
	const limit, dials = 16, 100
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d := newDaemon(t, func(p *daemonParams) {
		p.Limits = fmt.Sprintf("connections_per_uid = %d", limit)
		p.TSA = tsaOn + "\nlisten = \"" + l.Addr().String() + "\""
	})
	url := d.serveTSATCP(t, l)
	baseFDs, baseRSS := openFDs(t), rssMB(t)
	anon := anonymousPeer().UID
	start := time.Now()
	conns := holdConns(t, dials, func() (net.Conn, error) { return net.Dial("tcp", l.Addr().String()) })
	report := func() {
		t.Logf("%d connections: the daemon holds %d descriptors for them, %d closed at accept; RSS %+.1f MiB",
			dials, openFDs(t)-baseFDs-dials, d.limitExceeded(limitConnections), rssMB(t)-baseRSS)
	}
	waitFor(t, "the connections beyond the limit to be closed", func() bool {
		ok := d.limitExceeded(limitConnections) == dials-limit && openFDs(t)-baseFDs-dials <= limit+fdSlack
		if !ok && time.Since(start) > 5*time.Second {
			report() // within httpReadTimeout: those held are all still open
			t.Fatalf("5 s after the flood the connections beyond the limit are still open")
		}
		return ok
	})
	report()
	if got := d.uidConns(anon); got != limit {
		t.Fatalf("the TCP listener holds %d connections, want %d", got, limit)
	}
	waitFor(t, "the partial requests to be closed", func() bool { return d.uidConns(anon) == 0 })
	for _, c := range conns {
		c.Close()
	}
	resp, err := http.Post(url, "application/timestamp-query", strings.NewReader("not a query"))
	if err != nil {
		t.Fatalf("a query after the flood: %v", err)
	}
	defer resp.Body.Close()
	line, _ := bufio.NewReader(resp.Body).ReadString('\n')
	if resp.StatusCode == http.StatusServiceUnavailable || resp.StatusCode == http.StatusTooManyRequests {
		t.Fatalf("a query after the flood: %s %s", resp.Status, line)
	}
}
