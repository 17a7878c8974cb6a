package main

import (
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hsmsigner/hsmsigner/cmd/internal/daemontest"
)

// TestStateBackupAndRestore backs up the state of a running signerd while
// signatures go on, checks the file (mode, size and SHA-256 as printed and
// audited), refuses to overwrite it, and restores it: after a rename made
// later, a daemon started on the copy knows the key by its name at backup
// time.
func TestStateBackupAndRestore(t *testing.T) {
	bin := daemontest.Build(t, "github.com/hsmsigner/hsmsigner/cmd/signerd")
	dir := filepath.Join(t.TempDir(), "signer-dev")
	start := func() *daemontest.Daemon {
		d := daemontest.Start(t, bin, nil, "dev", "--dir", dir)
		d.WaitForLine("Stop with Ctrl-C", 0, time.Minute)
		return d
	}
	d := start()
	t.Setenv("SIGNER_SOCKET", filepath.Join(dir, "run/signer.sock"))
	key := strings.TrimSpace(mustCtl(t, "key", "generate", "--label", "backed-up", "--algorithm", "EC-P256", "--usage", "sign", "--name", "name-at-backup", "-q"))

	// Signatures go on while the copy is made.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var signErr error
	signs := 0
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, errs, code := ctl(t, "sign", "--key", key, "--alg", "ES256", strings.Repeat("ab", 32)); code != 0 {
				signErr = fmt.Errorf("sign during the backup: %s", errs)
				return
			}
			signs++
		}
	}()
	out := filepath.Join(t.TempDir(), "signer.db.bak")
	printed := mustCtl(t, "state", "backup", "--out", out)
	close(stop)
	wg.Wait()
	if signErr != nil || signs == 0 {
		t.Fatalf("signing during the backup: %d signatures, %v", signs, signErr)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	sum := fmt.Sprintf("%x", sha256.Sum256(b))
	if want := fmt.Sprintf("wrote %s: %d bytes, sha256 %s", out, len(b), sum); !strings.Contains(printed, want) {
		t.Fatalf("printed %q, want %q", printed, want)
	}
	if fi, _ := os.Stat(out); fi.Mode().Perm() != 0o600 {
		t.Fatalf("backup mode %04o, want 0600", fi.Mode().Perm())
	}
	audit, err := os.ReadFile(filepath.Join(dir, "audit.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(audit), `"op":"state.backup"`) || !strings.Contains(string(audit), "sha256="+sum) {
		t.Fatalf("no state.backup audit line with the copy's SHA-256 %s", sum)
	}
	if _, errs, code := ctl(t, "state", "backup", "--out", out); code == 0 || !strings.Contains(errs, "exists") {
		t.Fatalf("a second backup over the first: exit %d, %s", code, errs)
	}
	if got, _ := os.ReadFile(out); string(got) != string(b) {
		t.Fatal("the refused backup changed the file")
	}

	// A change after the backup, then the restore.
	mustCtl(t, "key", "rename", key, "name-after-backup")
	d.Signal(syscall.SIGTERM)
	if err := d.Wait(time.Minute); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "state", "signer.db"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	d = start()
	t.Cleanup(func() { d.Signal(syscall.SIGTERM); _ = d.Wait(time.Minute) })
	if shown := mustCtl(t, "key", "show", key); !strings.Contains(shown, "name-at-backup") {
		t.Fatalf("after the restore the key is not as backed up:\n%s", shown)
	}
}
