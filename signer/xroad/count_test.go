package xroad

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"
)

// TestXRoadCountReturned: whatever becomes of a connection to the X-Road
// listener before it is served (garbage instead of TLS, a client that
// closes mid-handshake, a client certificate not the keystore's, garbage
// instead of HTTP/2's preface, no preface within handshake_timeout), the
// count it took under its uid is given back exactly once: afterwards the
// uid has room for exactly connections_per_uid less the officer's
// connection, no fewer (a leak) and no more (a count given back twice).
func TestXRoadCountReturned(t *testing.T) {
	const limit = 3
	r := newRig(t, rigOptions{limits: fmt.Sprintf("connections_per_uid = %d\nhandshake_timeout = \"500ms\"", limit)})
	if _, err := r.admin.ListTokens(ctxT(t), nil); err != nil {
		t.Fatal(err) // the officer's connection: one of the limit
	}
	good := &tls.Config{Certificates: []tls.Certificate{r.ks.cert}, RootCAs: r.ks.pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12, NextProtos: []string{"h2"}}
	dial := func(t *testing.T) net.Conn {
		c, err := net.Dial("tcp", r.addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if err := c.SetDeadline(time.Now().Add(30 * time.Second)); err != nil {
			t.Fatal(err)
		}
		return c
	}
	// room is how many handshakes the uid completes now, up to limit.
	room := func(t *testing.T) int {
		var open []net.Conn
		defer func() {
			for _, c := range open {
				c.Close()
			}
		}()
		for range limit {
			tlc := tls.Client(dial(t), good)
			if err := tlc.HandshakeContext(ctxT(t)); err != nil {
				break
			}
			open = append(open, tlc)
		}
		return len(open)
	}
	// served completes a handshake with the keystore's certificate,
	// once the server has taken back the previous probe's connections.
	served := func(t *testing.T) *tls.Conn {
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			tlc := tls.Client(dial(t), good)
			err := tlc.HandshakeContext(ctxT(t))
			if err == nil {
				return tlc
			}
			if time.Now().After(deadline) {
				t.Fatalf("no handshake completes: %v", err)
			}
		}
	}
	// waitClosed reads c until the server closes it.
	waitClosed := func(t *testing.T, c net.Conn) {
		// Any end but the test's deadline: EOF, a reset, a TLS alert.
		var ne net.Error
		if _, err := io.Copy(io.Discard, c); errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("the server kept the connection: %v", err)
		}
	}
	for _, c := range []struct {
		name string
		run  func(t *testing.T)
	}{
		{"garbage instead of TLS", func(t *testing.T) {
			c := dial(t)
			_, _ = io.WriteString(c, "GET / HTTP/1.1\r\n\r\n")
			waitClosed(t, c)
		}},
		{"closed mid-handshake", func(t *testing.T) {
			c := dial(t)
			_, _ = c.Write([]byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01}) // a ClientHello's start
			c.Close()
		}},
		{"a certificate not the keystore's", func(t *testing.T) {
			c := dial(t)
			bad := &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12, NextProtos: []string{"h2"}}
			tlc := tls.Client(c, bad)
			_ = tlc.HandshakeContext(ctxT(t))
			waitClosed(t, tlc)
		}},
		{"garbage instead of the preface", func(t *testing.T) {
			tlc := served(t)
			_, _ = io.WriteString(tlc, "garbage garbage garbage garbage\r\n\r\n")
			waitClosed(t, tlc)
		}},
		{"no preface within handshake_timeout", func(t *testing.T) {
			tlc := served(t)
			waitClosed(t, tlc)
		}},
		{"nothing at all within handshake_timeout", func(t *testing.T) {
			waitClosed(t, dial(t))
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.run(t)
			want := limit - 1
			deadline := time.Now().Add(30 * time.Second)
			for {
				got := room(t)
				if got > want {
					t.Fatalf("room for %d connections, want %d: a count was given back twice", got, want)
				}
				if got == want {
					return
				}
				if time.Now().After(deadline) {
					t.Fatalf("room for %d connections 30 s after, want %d: a count was not given back", got, want)
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
}
