package peercred

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// tcpState is the state and inode /proc/net/tcp gives the IPv4 socket
// whose local port is port and whose remote port is peer ("05" FIN_WAIT2
// and "06" TIME_WAIT; inode "0" for a socket of no process), or "" when
// the kernel lists no such socket.
func tcpState(t *testing.T, port, peer int) string {
	t.Helper()
	f, err := os.Open("/proc/net/tcp")
	if err != nil {
		t.Skipf("no /proc/net/tcp: %v", err)
	}
	defer f.Close()
	local, remote := fmt.Sprintf("0100007F:%04X", port), fmt.Sprintf("0100007F:%04X", peer)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) > 9 && fs[1] == local && fs[2] == remote {
			return fs[3] + " inode " + fs[9]
		}
	}
	return ""
}

// waitTimeWait waits until the caller's socket from port to the
// listener's port lport is closed and left to the kernel: FIN_WAIT2 or
// TIME_WAIT, with no inode (the kernel's time-wait socket).
func waitTimeWait(t *testing.T, s net.Conn, port, lport int) {
	t.Helper()
	// The caller's FIN arrives as end of file.
	s.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadAll(s); err != nil {
		t.Fatalf("waiting for the caller's close: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for st := tcpState(t, port, lport); st != "05 inode 0" && st != "06 inode 0"; st = tcpState(t, port, lport) {
		if time.Now().After(deadline) {
			t.Fatalf("the caller's socket is %q, not the kernel's time-wait socket", st)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestFromTCPConnClosedCaller: a caller that writes its request and
// closes its socket at once leaves behind a socket of no process (the
// kernel's TIME_WAIT, or FIN_WAIT2 of an orphan), which the kernel
// reports with uid 0. Such a connection must be refused, not taken for
// root: over insecure_loopback its request, already in the server's
// buffer, would run as uid 0.
func TestFromTCPConnClosedCaller(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	t.Run("this process", func(t *testing.T) {
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		c, err := net.Dial("tcp4", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		port := c.LocalAddr().(*net.TCPAddr).Port
		c.Write([]byte("a request, then close"))
		c.Close()
		s, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		waitTimeWait(t, s, port, l.Addr().(*net.TCPAddr).Port)
		if p, err := FromTCPConn(ctx, s); !errors.Is(err, ErrNoCredentials) {
			t.Fatalf("a caller whose socket is closed was named %+v (%v); want ErrNoCredentials", p, err)
		}
	})
	t.Run("another user's process", func(t *testing.T) {
		if os.Getuid() != 0 {
			t.Skip("needs root to run a caller as uid 65534")
		}
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		lport := l.Addr().(*net.TCPAddr).Port
		// nobody connects, writes and closes before the server looks.
		cmd := exec.Command("bash", "-c", fmt.Sprintf("exec 3<>/dev/tcp/127.0.0.1/%d; printf 'PRI * HTTP/2.0' >&3; exec 3>&-", lport))
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("caller: %v\n%s", err, out)
		}
		s, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		waitTimeWait(t, s, s.RemoteAddr().(*net.TCPAddr).Port, lport)
		if p, err := FromTCPConn(ctx, s); !errors.Is(err, ErrNoCredentials) {
			t.Fatalf("uid 65534's closed connection was named %+v (%v); want ErrNoCredentials", p, err)
		}
	})
}
