package signer

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
)

// TestHTTPSocketCountReturned: whatever becomes of a connection to the
// HTTP socket, its count under its uid is given back exactly once: the
// uid's count returns to its gRPC connection alone, and a connection
// refused at connections_per_uid gives back nothing it did not take
// (those held stay counted).
func TestHTTPSocketCountReturned(t *testing.T) {
	const limit = 4
	d := newDaemon(t, func(p *daemonParams) {
		p.Limits = "connections_per_uid = 4"
		p.TSA = tsaOn
	})
	if _, err := d.client.GetStatus(testCtx(t), &signerv1.GetStatusRequest{}); err != nil {
		t.Fatal(err)
	}
	uid := uint32(os.Getuid())
	const base = 1 // the harness's gRPC client
	if got := d.uidConns(uid); got != base {
		t.Fatalf("the uid has %d connections before, want %d", got, base)
	}
	for i, c := range []struct {
		name string
		// run uses the server srv on sock, and ends it if it wants.
		run func(t *testing.T, srv *http.Server, sock string)
	}{
		{"closed at once", func(t *testing.T, _ *http.Server, sock string) {
			dialUnix(t, sock).Close()
		}},
		{"garbage", func(t *testing.T, _ *http.Server, sock string) {
			c := dialUnix(t, sock)
			_, _ = io.WriteString(c, "\x00\x01garbage\r\n\r\n")
			if _, closed := readEnd(t, c); !closed {
				t.Fatal("the server kept a connection that sent garbage")
			}
		}},
		{"a request, then the client closes", func(t *testing.T, _ *http.Server, sock string) {
			c := dialUnix(t, sock)
			_, _ = io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: signerd\r\n\r\n")
			buf := make([]byte, 12)
			if _, err := io.ReadFull(c, buf); err != nil {
				t.Fatal(err)
			}
			c.Close()
		}},
		{"refused beyond the limit", func(t *testing.T, _ *http.Server, sock string) {
			var held []net.Conn
			for range limit - base {
				c := dialUnix(t, sock)
				_, _ = io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: signerd\r\n\r\n")
				if _, err := io.ReadFull(c, make([]byte, 12)); err != nil {
					t.Fatal(err)
				}
				held = append(held, c)
			}
			for range 5 {
				c := dialUnix(t, sock)
				if _, closed := readEnd(t, c); !closed {
					t.Fatal("a connection beyond the limit is open")
				}
			}
			if got := d.uidConns(uid); got != limit {
				t.Fatalf("after 5 refused connections the uid holds %d, want %d: a refusal gave back a count it did not take", got, limit)
			}
			for _, c := range held {
				c.Close()
			}
		}},
		{"server closed with connections open", func(t *testing.T, srv *http.Server, sock string) {
			for range limit - base {
				c := dialUnix(t, sock)
				_, _ = io.WriteString(c, partialTSAQuery)
			}
			waitFor(t, "the connections to be counted", func() bool { return d.uidConns(uid) == limit })
			if err := srv.Close(); err != nil {
				t.Fatal(err)
			}
		}},
		{"server shut down with idle connections", func(t *testing.T, srv *http.Server, sock string) {
			for range limit - base {
				c := dialUnix(t, sock)
				_, _ = io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: signerd\r\n\r\n")
				if _, err := io.ReadFull(c, make([]byte, 12)); err != nil {
					t.Fatal(err)
				}
			}
			ctx, cancel := context.WithTimeout(testCtx(t), 30*time.Second)
			defer cancel()
			if err := srv.Shutdown(ctx); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			sock := filepath.Join(d.dir, "run", "h"+string(rune('a'+i))+".sock")
			l, err := net.Listen("unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			srv := d.svc.HTTPServer()
			go func() { _ = srv.Serve(l) }()
			defer srv.Close()
			c.run(t, srv, sock)
			waitFor(t, "the uid's count to come back", func() bool { return d.uidConns(uid) <= base })
			if got := d.uidConns(uid); got != base {
				t.Fatalf("the uid holds %d connections after, want %d", got, base)
			}
		})
	}
}

// dialUnix dials the Unix socket sock; the connection is closed at the
// test's end.
func dialUnix(t *testing.T, sock string) net.Conn {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
