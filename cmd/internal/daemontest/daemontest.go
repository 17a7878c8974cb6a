// Package daemontest builds the signerd and signerctl binaries and runs
// signerd as a real process for the commands' tests: readiness comes from
// the systemd notification socket, log lines are awaited as events, never
// guessed with sleeps.
package daemontest

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	softhsmtest "github.com/hsmsigner/hsmsigner/softhsm-test"
)

// Build compiles the command pkg (e.g.
// "github.com/hsmsigner/hsmsigner/cmd/signerd") into a temporary folder
// and returns the binary's path.
func Build(t testing.TB, pkg string) string {
	t.Helper()
	return softhsmtest.BuildCommand(t, pkg)
}

// Daemon is a running signerd process.
type Daemon struct {
	t    testing.TB
	cmd  *exec.Cmd
	done chan struct{}
	err  error // the process's exit, once done is closed

	mu    sync.Mutex
	lines []string
	cond  *sync.Cond
}

// Start runs the signerd binary with args and env added to the test's
// environment, and returns once it reports READY=1 on NOTIFY_SOCKET. It
// fails the test if the process exits or is not ready within two minutes.
// The process is killed when the test ends, if it still runs.
func Start(t testing.TB, bin string, env []string, args ...string) *Daemon {
	t.Helper()
	return StartWithFiles(t, bin, env, nil, args...)
}

// StartWithFiles is Start with files passed to the process as descriptors
// 3, 4, ... (for systemd-style socket activation).
func StartWithFiles(t testing.TB, bin string, env []string, files []*os.File, args ...string) *Daemon {
	t.Helper()
	return awaitReady(t, startProcess(t, bin, nil, env, files, args...))
}

// StartAs is Start with the process running under cred's uid and gid (the
// test must be root to give it another user's): its notification socket
// is that user's. Everything else the process needs (its binary, config,
// token and folders) must already be reachable by that user.
func StartAs(t testing.TB, bin string, cred *syscall.Credential, env []string, args ...string) *Daemon {
	t.Helper()
	return awaitReady(t, startProcess(t, bin, cred, env, nil, args...))
}

func awaitReady(t testing.TB, d notifyingDaemon) *Daemon {
	t.Helper()
	ready := d.notify
	select {
	case <-ready:
	case <-d.done:
		t.Fatalf("signerd exited before it was ready: %v\n%s", d.err, d.Output())
	case <-time.After(2 * time.Minute):
		t.Fatalf("signerd not ready within two minutes\n%s", d.Output())
	}
	return d.Daemon
}

// Run runs signerd with args and returns its combined output and exit
// error, for start-up failures.
func Run(t testing.TB, bin string, env []string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, rootArgs(args)...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

type notifyingDaemon struct {
	*Daemon
	notify chan struct{}
}

func startProcess(t testing.TB, bin string, cred *syscall.Credential, env []string, files []*os.File, args ...string) notifyingDaemon {
	t.Helper()
	sockDir, err := os.MkdirTemp("", "notify-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	notifyPath := filepath.Join(sockDir, "notify.sock")
	nl, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	if cred != nil {
		for _, p := range []string{sockDir, notifyPath} {
			if err := os.Chown(p, int(cred.Uid), int(cred.Gid)); err != nil {
				t.Fatalf("giving the notification socket to uid %d: %v", cred.Uid, err)
			}
		}
	}
	t.Cleanup(func() { nl.Close() })
	ready := make(chan struct{})
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := nl.Read(buf)
			if err != nil {
				return
			}
			if strings.Contains(string(buf[:n]), "READY=1") {
				close(ready)
				return
			}
		}
	}()
	cmd := exec.Command(bin, rootArgs(args)...)
	cmd.Env = append(append(os.Environ(), env...), "NOTIFY_SOCKET="+notifyPath)
	cmd.ExtraFiles = files
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = cmd.Stderr
	d := &Daemon{t: t, cmd: cmd, done: make(chan struct{})}
	d.cond = sync.NewCond(&d.mu)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go d.collect(stderr)
	t.Cleanup(func() {
		select {
		case <-d.done:
		default:
			_ = cmd.Process.Kill()
			<-d.done
		}
	})
	return notifyingDaemon{Daemon: d, notify: ready}
}

// collect keeps the process's output lines and waits for its exit.
func (d *Daemon) collect(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		d.mu.Lock()
		d.lines = append(d.lines, sc.Text())
		d.cond.Broadcast()
		d.mu.Unlock()
	}
	d.err = d.cmd.Wait()
	d.mu.Lock()
	close(d.done)
	d.cond.Broadcast()
	d.mu.Unlock()
}

// Output returns what the process printed so far.
func (d *Daemon) Output() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return strings.Join(d.lines, "\n")
}

// WaitForLine waits until an output line after the first skip lines
// contains s, and returns the number of lines seen so far. It fails the
// test if the process exits first or after timeout.
func (d *Daemon) WaitForLine(s string, skip int, timeout time.Duration) int {
	d.t.Helper()
	timer := time.AfterFunc(timeout, func() {
		d.mu.Lock()
		d.cond.Broadcast()
		d.mu.Unlock()
	})
	defer timer.Stop()
	deadline := time.Now().Add(timeout)
	d.mu.Lock()
	defer d.mu.Unlock()
	for {
		for i := skip; i < len(d.lines); i++ {
			if strings.Contains(d.lines[i], s) {
				return i + 1
			}
		}
		select {
		case <-d.done:
			d.t.Fatalf("signerd exited while waiting for %q: %v\n%s", s, d.err, strings.Join(d.lines, "\n"))
		default:
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("no line with %q within %s\n%s", s, timeout, strings.Join(d.lines, "\n"))
		}
		d.cond.Wait()
	}
}

// Lines returns how many output lines there are so far.
func (d *Daemon) Lines() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.lines)
}

// Pid returns the process's id.
func (d *Daemon) Pid() int { return d.cmd.Process.Pid }

// Signal sends sig to the process.
func (d *Daemon) Signal(sig syscall.Signal) {
	d.t.Helper()
	if err := d.cmd.Process.Signal(sig); err != nil {
		d.t.Fatalf("signal %v: %v", sig, err)
	}
}

// Wait waits for the process to exit and returns its exit error.
func (d *Daemon) Wait(timeout time.Duration) error {
	d.t.Helper()
	select {
	case <-d.done:
		return d.err
	case <-time.After(timeout):
		d.t.Fatalf("signerd did not exit within %s\n%s", timeout, d.Output())
		return fmt.Errorf("timeout")
	}
}

// rootArgs adds --allow-root to a production start (--config) when the
// tests run as root, as CI machines do: signerd refuses root without it.
// TestDaemonRefusesRoot runs signerd without this harness.
func rootArgs(args []string) []string {
	if os.Geteuid() != 0 || !slices.Contains(args, "--config") {
		return args
	}
	// Just before --config, so that a wrapper's own arguments (sh -c
	// SCRIPT signerd --config …) stay in front of it.
	i := slices.Index(args, "--config")
	return slices.Concat(args[:i], []string{"--allow-root"}, args[i:])
}
