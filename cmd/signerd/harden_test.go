package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hsmsigner/hsmsigner/cmd/internal/daemontest"
	softhsmtest "github.com/hsmsigner/hsmsigner/softhsm-test"
)

// probePIDEnv makes the test binary a probe instead of a test run: it
// tries to read the memory of, and attach with ptrace to, the process
// whose pid the variable holds, and prints what the kernel answered as
// JSON. TestProcessHardening runs it as the daemon's own uid.
const probePIDEnv = "SIGNERD_TEST_PROBE_PID"

func TestMain(m *testing.M) {
	if pid := os.Getenv(probePIDEnv); pid != "" {
		n, err := strconv.Atoi(pid)
		if err != nil {
			fmt.Fprintln(os.Stderr, "probe:", err)
			os.Exit(2)
		}
		_ = json.NewEncoder(os.Stdout).Encode(probe(n))
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// probeResult is what a process of the same uid could do to another.
type probeResult struct {
	Uid     int    // the probe's own uid
	MemOpen string // "" when /proc/PID/mem opened, else the error
	MemRead string // "" when a mapped byte was read through it
	Ptrace  string // "" when PTRACE_ATTACH succeeded (then detached)
}

func probe(pid int) probeResult {
	r := probeResult{Uid: os.Getuid()}
	errText := func(err error) string {
		if err == nil {
			return ""
		}
		return err.Error()
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	r.MemOpen = errText(err)
	if err == nil {
		r.MemRead = errText(readMappedByte(pid, f))
		f.Close()
	} else {
		r.MemRead = "not opened"
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	err = unix.PtraceAttach(pid)
	r.Ptrace = errText(err)
	if err == nil {
		var ws unix.WaitStatus
		_, _ = unix.Wait4(pid, &ws, unix.WALL, nil)
		_ = unix.PtraceDetach(pid)
	}
	return r
}

// readMappedByte reads one byte at the start of pid's first readable
// mapping through mem.
func readMappedByte(pid int, mem *os.File) error {
	maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return err
	}
	for _, line := range strings.Split(string(maps), "\n") {
		fields := strings.Fields(line)
		if len(fields) < 2 || fields[1][0] != 'r' {
			continue
		}
		start, err := strconv.ParseUint(strings.SplitN(fields[0], "-", 2)[0], 16, 64)
		if err != nil {
			return err
		}
		_, err = mem.ReadAt(make([]byte, 1), int64(start))
		return err
	}
	return errors.New("no readable mapping")
}

// TestProcessHardening starts signerd as an unprivileged uid (nobody when
// the tests run as root) on a real SoftHSM token, and shows from outside
// what it set: another process of the same uid can neither open its
// /proc/PID/mem nor attach with ptrace, while the same probe can do both
// to an ordinary process of that uid; /proc/PID/limits shows no core
// files; /proc/PID/status shows no new privileges and the kept PIN's
// locked memory; /proc/PID/mem belongs to root (not dumpable).
func TestProcessHardening(t *testing.T) {
	uid, gid := os.Getuid(), os.Getgid()
	var cred *syscall.Credential
	if uid == 0 {
		uid, gid = 65534, 65534
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	// A folder the daemon's uid owns, outside the test's root-only temp dir.
	base, err := os.MkdirTemp("", "signerd-harden-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	soft := softhsmtest.New(t, softhsmtest.WithDir(filepath.Join(base, "softhsm")))
	cfg := daemonConfigFor(t, base, soft, `"*"`, uid)
	bin := copyExecutable(t, daemontest.Build(t, signerdPkg), filepath.Join(base, "signerd"))
	probeBin := copyExecutable(t, os.Args[0], filepath.Join(base, "probe"))
	if err := filepath.WalkDir(base, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, gid)
	}); err != nil {
		t.Fatal(err)
	}

	d := daemontest.StartAs(t, bin, cred, soft.Env(), "--config", cfg)
	pid := d.Pid()

	// An ordinary process of the same uid: the probe must succeed on it,
	// or its failures on signerd would prove nothing.
	control := exec.Command("sleep", "600")
	if cred != nil {
		control.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	if err := control.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = control.Process.Kill(); _ = control.Wait() })

	runProbe := func(target int) probeResult {
		t.Helper()
		cmd := exec.Command(probeBin)
		cmd.Env = append(os.Environ(), probePIDEnv+"="+strconv.Itoa(target))
		if cred != nil {
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		}
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("probe of pid %d: %v\n%s", target, err, out)
		}
		var r probeResult
		if err := json.Unmarshal(out, &r); err != nil {
			t.Fatalf("probe output %q: %v", out, err)
		}
		if r.Uid != uid {
			t.Fatalf("probe ran as uid %d, want %d", r.Uid, uid)
		}
		return r
	}
	if r := runProbe(control.Process.Pid); r.MemOpen != "" || r.MemRead != "" || r.Ptrace != "" {
		t.Fatalf("the probe cannot read or attach to an ordinary process of uid %d, so it proves nothing: %+v", uid, r)
	}
	r := runProbe(pid)
	if !strings.Contains(r.MemOpen, "permission denied") {
		t.Errorf("another process of uid %d opened signerd's /proc/%d/mem: %+v", uid, pid, r)
	}
	if !strings.Contains(r.Ptrace, "operation not permitted") {
		t.Errorf("another process of uid %d attached to signerd with ptrace: %+v", uid, r)
	}

	var st syscall.Stat_t
	if err := syscall.Stat(fmt.Sprintf("/proc/%d/mem", pid), &st); err != nil {
		t.Fatal(err)
	}
	if st.Uid != 0 {
		t.Errorf("/proc/%d/mem belongs to uid %d: signerd is dumpable", pid, st.Uid)
	}
	limits, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		t.Fatal(err)
	}
	if !coreLimitZero(string(limits)) {
		t.Errorf("core files are not off:\n%s", limits)
	}
	status := procStatus(t, pid)
	if status["NoNewPrivs"] != "1" {
		t.Errorf("NoNewPrivs = %q, want 1", status["NoNewPrivs"])
	}
	if status["Uid"] == "" || strings.Fields(status["Uid"])[1] != strconv.Itoa(uid) {
		t.Errorf("signerd runs as %q, want uid %d", status["Uid"], uid)
	}
	// The PIN kept for logging in again after the HSM comes back is in
	// locked memory: the daemon locks nothing else.
	if status["VmLck"] == "" || status["VmLck"] == "0 kB" {
		t.Errorf("VmLck = %q: the kept PIN is not in locked memory", status["VmLck"])
	}

	d.Signal(syscall.SIGTERM)
	if err := d.Wait(time.Minute); err != nil {
		t.Fatalf("exit: %v\n%s", err, d.Output())
	}
}

// coreLimitZero reports whether /proc/PID/limits shows a core file size
// limit of 0, soft and hard.
func coreLimitZero(limits string) bool {
	for _, line := range strings.Split(limits, "\n") {
		if strings.HasPrefix(line, "Max core file size") {
			f := strings.Fields(strings.TrimPrefix(line, "Max core file size"))
			return len(f) >= 2 && f[0] == "0" && f[1] == "0"
		}
	}
	return false
}

// procStatus reads /proc/PID/status into a map of field to value.
func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}

// copyExecutable copies the executable src to dst, mode 0755.
func copyExecutable(t *testing.T, src, dst string) string {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	return dst
}
