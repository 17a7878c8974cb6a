package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hsmsigner/hsmsigner/cmd/internal/daemontest"
	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/audit"
	"github.com/hsmsigner/hsmsigner/signer/client"
	softhsmtest "github.com/hsmsigner/hsmsigner/softhsm-test"
)

// limitFileSize sets the largest file the process pid may write
// (RLIMIT_FSIZE's soft limit; the hard one stays unlimited, so that the
// limit can be lifted again without CAP_SYS_RESOURCE). A write past it
// fails in the kernel with EFBIG, as a full disk fails with ENOSPC; Go
// ignores the SIGXFSZ that comes with it. It needs no privileges beyond
// owning the process.
func limitFileSize(t *testing.T, pid int, bytes uint64) {
	t.Helper()
	lim := unix.Rlimit{Cur: bytes, Max: unix.RLIM_INFINITY}
	if err := unix.Prlimit(pid, unix.RLIMIT_FSIZE, &lim, nil); err != nil {
		t.Fatalf("prlimit(%d, RLIMIT_FSIZE, %d): %v", pid, bytes, err)
	}
}

// unlimitFileSize lifts RLIMIT_FSIZE of pid again.
func unlimitFileSize(t *testing.T, pid int) {
	t.Helper()
	lim := unix.Rlimit{Cur: unix.RLIM_INFINITY, Max: unix.RLIM_INFINITY}
	if err := unix.Prlimit(pid, unix.RLIMIT_FSIZE, &lim, nil); err != nil {
		t.Fatalf("prlimit(%d, RLIMIT_FSIZE, unlimited): %v", pid, err)
	}
}

// fileSize returns the size of the file at path.
func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

// auditLine is the part of an audit line the tests read.
type auditLine struct {
	Seq    uint64 `json:"seq"`
	Op     string `json:"op"`
	Key    string `json:"key"`
	Digest string `json:"digest"`
	Detail string `json:"detail"`
	Result string `json:"result"`
}

// readAudit parses every line of the audit log at path.
func readAudit(t *testing.T, path string) []auditLine {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines []auditLine
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), audit.MaxLineSize+1)
	for sc.Scan() {
		var l auditLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("audit line %d: %v: %s", len(lines)+1, err, sc.Text())
		}
		lines = append(lines, l)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return lines
}

// checkAuditAfterFailure checks the audit log at auditPath after a time
// it could not be written: it verifies; it holds exactly one "sign" line
// per signature handed out, each ok (nothing lost, nothing doubled, no
// line of a refused call); and no line of the key generation labelled
// refusedLabel, refused for want of the log. It returns the lines.
func checkAuditAfterFailure(t *testing.T, auditPath string, signed int, refusedLabel string) []auditLine {
	t.Helper()
	if _, err := audit.VerifyFile(auditPath); err != nil {
		t.Fatalf("audit log after the failure: %v", err)
	}
	lines := readAudit(t, auditPath)
	okSigns := 0
	for _, l := range lines {
		if l.Op == "sign" {
			if l.Result != "ok" {
				t.Errorf("a sign line that is not ok: %+v", l)
			}
			okSigns++
		}
		if strings.Contains(l.Detail, fmt.Sprintf("label=%q", refusedLabel)) {
			t.Errorf("a line of the key generation refused for want of the audit log: %+v", l)
		}
	}
	if okSigns != signed {
		t.Fatalf("%d ok sign lines for %d signatures handed out", okSigns, signed)
	}
	return lines
}

// TestFailClosedWhenTheAuditLogCannotBeWritten runs the real daemon and
// makes its audit log unwritable in the kernel: RLIMIT_FSIZE on the
// daemon's process at the log's current size, so that appending fails
// with EFBIG. Signing (a unary Sign and calls on a SignStream) and an
// admin change are then refused with UNAVAILABLE naming the audit log,
// and nothing is signed or changed; once the limit is lifted, signing and
// admin changes work again without a restart. The log then verifies, and
// holds exactly one ok "sign" line per signature handed out, and none for
// a refused call: nothing lost, nothing doubled.
func TestFailClosedWhenTheAuditLogCannotBeWritten(t *testing.T) {
	bin := daemontest.Build(t, signerdPkg)
	soft := softhsmtest.New(t)
	dir := t.TempDir()
	cfgPath := daemonConfig(t, dir, soft, `"*"`)
	auditPath := filepath.Join(dir, "audit.jsonl")
	d := daemontest.Start(t, bin, nil, "--config", cfgPath)
	ctx := ctxT(t)
	c, err := client.Dial(filepath.Join(dir, "run/signer.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	k, err := c.GenerateKey(ctx, &signerv1.GenerateKeyRequest{Token: "t1", Label: "failclosed", Algorithm: "EC-P256", Usage: signerv1.KeyUsage_KEY_USAGE_SIGN})
	if err != nil {
		t.Fatal(err)
	}
	signed := 0
	for range 3 {
		if err := signWith(ctx, c, k.GetId()); err != nil {
			t.Fatal(err)
		}
		signed++
	}

	limitFileSize(t, d.Pid(), uint64(fileSize(t, auditPath)))
	for i := range 5 {
		err := signWith(ctx, c, k.GetId())
		if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "audit") {
			t.Fatalf("sign %d while the audit log cannot be written: %v; want UNAVAILABLE naming the audit log", i, err)
		}
	}
	_, err = c.GenerateKey(ctx, &signerv1.GenerateKeyRequest{Token: "t1", Label: "refused", Algorithm: "EC-P256", Usage: signerv1.KeyUsage_KEY_USAGE_SIGN})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "audit") {
		t.Fatalf("key generate while the audit log cannot be written: %v; want UNAVAILABLE naming the audit log", err)
	}

	unlimitFileSize(t, d.Pid())
	for i := range 3 {
		if err := signWith(ctx, c, k.GetId()); err != nil {
			t.Fatalf("sign %d after the audit log is writable again: %v", i, err)
		}
		signed++
	}
	if _, err := c.GenerateKey(ctx, &signerv1.GenerateKeyRequest{Token: "t1", Label: "after", Algorithm: "EC-P256", Usage: signerv1.KeyUsage_KEY_USAGE_SIGN}); err != nil {
		t.Fatalf("key generate after the audit log is writable again: %v", err)
	}
	keys, err := c.ListKeys(ctx, &signerv1.ListKeysRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys.GetKeys() {
		if k.GetLabel() == "refused" {
			t.Errorf("a key was generated while its audit line could not be written: %v", k)
		}
	}
	c.Close()
	d.Signal(syscall.SIGTERM)
	if err := d.Wait(time.Minute); err != nil {
		t.Fatalf("stop: %v\n%s", err, d.Output())
	}
	checkAuditAfterFailure(t, auditPath, signed, "refused")
	if !strings.Contains(d.Output(), "audit append failed") {
		t.Errorf("the failure was not logged:\n%s", d.Output())
	}
}
