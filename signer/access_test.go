package signer

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/audit"
	"github.com/hsmsigner/hsmsigner/signer/config"
)

// buildSignerctl builds signerctl into a folder every user may read.
func buildSignerctl(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "signerctl-bin-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "signerctl")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/hsmsigner/hsmsigner/cmd/signerctl").CombinedOutput(); err != nil {
		t.Fatalf("go build signerctl: %v\n%s", err, out)
	}
	return bin
}

// TestCallerOutsidePolicyIsRefused runs signerctl as a uid the policy does
// not list (65534, "nobody", when the test runs as root; otherwise the test
// user against a policy that names someone else) and checks the refusal,
// its audit line, and that a SIGHUP-style policy reload lets it in.
func TestCallerOutsidePolicyIsRefused(t *testing.T) {
	const nobody = 65534
	asRoot := os.Getuid() == 0
	outsider := uint32(nobody)
	d := newDaemon(t, func(p *daemonParams) {
		if asRoot {
			p.Group = strconv.Itoa(nobody) // the socket's group, so nobody can reach it
		} else {
			outsider = uint32(os.Getuid())
			p.UID = os.Getuid() + 1000 // the test user is in no rule
		}
	})
	if asRoot {
		// nobody must be able to reach the socket folder to be refused by
		// the policy rather than by the file system.
		for p := d.dir; p != os.TempDir() && p != "/"; p = filepath.Dir(p) {
			if err := os.Chmod(p, 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	var k *signerv1.Key
	if asRoot {
		k = d.genKey(t, "k", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	} else {
		var err error
		kk, err := d.svc.tokens[0].tok.GenerateKey(testCtx(t), "EC-P256", "k")
		if err != nil {
			t.Fatal(err)
		}
		k = &signerv1.Key{Id: kk.IDHex()}
	}
	bin := buildSignerctl(t)
	run := func(args ...string) (string, error) {
		cmd := exec.Command(bin, append([]string{"--socket", d.sock}, args...)...)
		if asRoot {
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
		}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	for _, args := range [][]string{{"key", "list"}, {"sign", "--key", k.GetId(), "--alg", "ES256", strings.Repeat("ab", 32)}, {"status"}} {
		out, err := run(args...)
		if err == nil || !strings.Contains(out, "PermissionDenied") || strings.Count(strings.TrimSpace(out), "\n") != 0 {
			t.Fatalf("signerctl %v as uid %d: %v\n%s\nwant one line saying PermissionDenied and a non-zero exit", args, outsider, err, out)
		}
	}
	// Reload a policy that lets the outsider sign with the key.
	p, err := config.NewPolicy(config.Admins{UIDs: []uint32{uint32(os.Getuid())}}, []config.ClientRule{
		{Name: "outsider", UIDs: []uint32{outsider}, Keys: []string{k.GetId()}, Usages: []string{"sign"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	d.svc.SetPolicy(p)
	if !asRoot {
		if _, err := d.client.RenameKey(testCtx(t), &signerv1.RenameKeyRequest{KeyId: k.GetId(), Name: "k", Usage: signerv1.KeyUsage_KEY_USAGE_SIGN}); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := run("sign", "--key", k.GetId(), "--alg", "ES256", strings.Repeat("ab", 32)); err != nil {
		t.Fatalf("after the policy reload: %v\n%s", err, out)
	}
	if out, err := run("key", "list"); err == nil || !strings.Contains(out, "PermissionDenied") {
		t.Fatalf("a client listed keys (admin only): %v\n%s", err, out)
	}
	d.stop()
	recs := readAudit(t, d.cfg.Server.AuditFile)
	denied := 0
	for _, r := range recs {
		if r.Op == "denied" && r.UID == int64(outsider) {
			denied++
		}
	}
	if denied != 4 {
		t.Fatalf("%d denied lines for uid %d, want 4", denied, outsider)
	}
}

func readAudit(t *testing.T, path string) []audit.Record {
	t.Helper()
	if _, err := audit.VerifyFile(path); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []audit.Record
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var r audit.Record
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	return out
}
