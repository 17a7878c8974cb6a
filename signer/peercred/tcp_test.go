package peercred

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// acceptOne listens on addr, dials it and returns the server's side of
// the connection and the client's.
func acceptOne(t *testing.T, network, addr string) (server, client net.Conn) {
	t.Helper()
	l, err := net.Listen(network, addr)
	if err != nil {
		t.Skipf("cannot listen on %s: %v", addr, err)
	}
	defer l.Close()
	c, err := net.Dial(network, l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return s, c
}

// TestFromTCPConn names this process's uid for loopback connections over
// IPv4, IPv6 and a dual-stack listener, and refuses a connection whose
// caller has gone and one that is not from this machine.
func TestFromTCPConn(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, c := range []struct{ name, network, addr string }{
		{"IPv4", "tcp4", "127.0.0.1:0"},
		{"IPv6", "tcp6", "[::1]:0"},
		{"another loopback address", "tcp4", "127.0.0.2:0"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s, _ := acceptOne(t, c.network, c.addr)
			p, err := FromTCPConn(ctx, s)
			if err != nil || p.UID != uint32(os.Getuid()) || p.GID != Unknown || p.PID != -1 {
				t.Fatalf("got %+v, %v; want uid %d", p, err, os.Getuid())
			}
		})
	}
	t.Run("caller gone", func(t *testing.T) {
		s, cl := acceptOne(t, "tcp4", "127.0.0.1:0")
		// An abortive close removes the caller's socket at once.
		cl.(*net.TCPConn).SetLinger(0)
		cl.Close()
		deadline := time.Now().Add(5 * time.Second)
		for {
			_, err := FromTCPConn(ctx, s)
			if errors.Is(err, ErrNoCredentials) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("a connection whose caller closed it was named: %v", err)
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
	t.Run("not loopback", func(t *testing.T) {
		s, _ := acceptOne(t, "tcp4", "127.0.0.1:0")
		a, _ := net.ResolveTCPAddr("tcp", "192.0.2.9:4000")
		if _, err := FromTCPConn(ctx, fakeRemote{Conn: s, addr: a}); !errors.Is(err, ErrNotLoopback) {
			t.Fatalf("got %v, want ErrNotLoopback", err)
		}
	})
}

// fakeRemote is a connection that says it comes from addr.
type fakeRemote struct {
	net.Conn
	addr net.Addr
}

func (f fakeRemote) RemoteAddr() net.Addr { return f.addr }

// TestParseDiagReply checks the reading of the kernel's answers: an
// error, a short or malformed reply, an answer for another socket.
func TestParseDiagReply(t *testing.T) {
	want := make([]byte, 36)
	want[0] = 1
	msg := func(typ uint16, seq uint32, body []byte) []byte {
		b := make([]byte, nlmsgHdrLen+len(body))
		ne := binary.NativeEndian
		ne.PutUint32(b[0:], uint32(len(b)))
		ne.PutUint16(b[4:], typ)
		ne.PutUint32(b[8:], seq)
		copy(b[nlmsgHdrLen:], body)
		return b
	}
	good := make([]byte, inetDiagMsgLen)
	copy(good[sockIDOff:], want)
	good[inetDiagStateOff] = 1 // TCP_ESTABLISHED
	binary.NativeEndian.PutUint32(good[inetDiagUIDOff:], 998)
	binary.NativeEndian.PutUint32(good[inetDiagInodeOff:], 4242)
	// The kernel's time-wait socket of a caller that closed: uid 0, no
	// inode; and an orphan that is not yet one.
	timeWait := make([]byte, inetDiagMsgLen)
	copy(timeWait[sockIDOff:], want)
	timeWait[inetDiagStateOff] = tcpTimeWait
	orphan := append([]byte{}, good...)
	orphan[inetDiagStateOff] = 5 // TCP_FIN_WAIT2
	binary.NativeEndian.PutUint32(orphan[inetDiagInodeOff:], 0)
	other := make([]byte, inetDiagMsgLen)
	enoent := make([]byte, 20)
	errno := int32(-2)
	binary.NativeEndian.PutUint32(enoent, uint32(errno))
	cases := []struct {
		name string
		b    []byte
		uid  uint32
		ok   bool
	}{
		{"socket", msg(20, 1, good), 998, true},
		{"another socket", msg(20, 1, other), 0, false},
		{"time-wait socket", msg(20, 1, timeWait), 0, false},
		{"orphan socket", msg(20, 1, orphan), 0, false},
		{"ENOENT", msg(2, 1, enoent), 0, false},
		{"another request", msg(20, 2, good), 0, false},
		{"short", good[:10], 0, false},
		{"truncated message", msg(20, 1, good[:40]), 0, false},
		{"unknown type", msg(99, 1, good), 0, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			uid, err := parseDiagReply(c.b, 1, want)
			if (err == nil) != c.ok || uid != c.uid {
				t.Fatalf("got %d, %v", uid, err)
			}
		})
	}
}

// BenchmarkFromTCPConn measures what naming a caller costs per
// connection.
func BenchmarkFromTCPConn(b *testing.B) {
	l, _ := net.Listen("tcp4", "127.0.0.1:0")
	defer l.Close()
	c, _ := net.Dial("tcp4", l.Addr().String())
	defer c.Close()
	s, _ := l.Accept()
	defer s.Close()
	ctx := context.Background()
	for b.Loop() {
		if _, err := FromTCPConn(ctx, s); err != nil {
			b.Fatal(err)
		}
	}
}

// TestFromTCPConnOtherUser: a process of another uid (nobody, 65534)
// connects, and the kernel names that uid. It needs root to start the
// process as nobody.
func TestFromTCPConnOtherUser(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run a caller as uid 65534")
	}
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	cmd := exec.Command("bash", "-c", fmt.Sprintf("exec 3<>/dev/tcp/127.0.0.1/%d; read -r -t 10 <&3", port))
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	s, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	p, err := FromTCPConn(context.Background(), s)
	if err != nil || p.UID != 65534 {
		t.Fatalf("got %+v, %v; want uid 65534", p, err)
	}
}
