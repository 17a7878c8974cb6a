package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hsmsigner/hsmsigner/cmd/internal/daemontest"
	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/client"
	softhsmtest "github.com/hsmsigner/hsmsigner/softhsm-test"
	"github.com/hsmsigner/hsmsigner/softhsm-test/diskfull"
)

// TestFailClosedWhenTheDiskIsFull runs the real daemon with its audit log
// and its state directory each on a small tmpfs of its own, and fills
// them in turn, as full disks.
//
// Audit disk full: signing and admin changes are refused with UNAVAILABLE
// naming the audit log, nothing is signed or changed; once there is room
// again both work without a restart.
//
// State disk full: a key generation whose record cannot be written is
// refused with UNAVAILABLE naming the state file and ENOSPC, and its key
// pair is removed from the HSM again (the token lists no such key).
// Signing needs no state write and goes on. Once there is room again
// generation works.
//
// After a restart every acknowledged key is there and known, the audit
// log verifies, and it holds exactly one ok "sign" line per signature
// handed out: nothing lost, nothing doubled.
func TestFailClosedWhenTheDiskIsFull(t *testing.T) {
	bin := daemontest.Build(t, signerdPkg)
	soft := softhsmtest.New(t)
	dir := t.TempDir()
	stateDir := filepath.Join(dir, "state")
	auditDir := filepath.Join(dir, "auditfs")
	diskfull.Mount(t, stateDir, 1<<20)
	diskfull.Mount(t, auditDir, 1<<20)
	cfgPath := daemonConfig(t, dir, soft, `"*"`)
	auditPath := filepath.Join(auditDir, "audit.jsonl")
	cfg, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	cfg = []byte(strings.Replace(string(cfg), fmt.Sprintf("audit_file = %q", filepath.Join(dir, "audit.jsonl")), fmt.Sprintf("audit_file = %q", auditPath), 1))
	if err := os.WriteFile(cfgPath, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	d := daemontest.Start(t, bin, nil, "--config", cfgPath)
	ctx := ctxT(t)
	sock := filepath.Join(dir, "run/signer.sock")
	c, err := client.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	generate := func(label string) (*signerv1.Key, error) {
		return c.GenerateKey(ctx, &signerv1.GenerateKeyRequest{Token: "t1", Label: label, Algorithm: "EC-P256", Usage: signerv1.KeyUsage_KEY_USAGE_SIGN})
	}
	k, err := generate("diskfull")
	if err != nil {
		t.Fatal(err)
	}
	acked := []string{k.GetLabel()}
	signed := 0
	sign := func(when string) {
		t.Helper()
		if err := signWith(ctx, c, k.GetId()); err != nil {
			t.Fatalf("sign %s: %v", when, err)
		}
		signed++
	}
	sign("before any disk is full")

	// The audit log's disk fills. A few lines may still fit in the page
	// the log ends in; then every signature is refused.
	auditFiller := filepath.Join(auditDir, "filler")
	diskfull.Fill(t, auditFiller)
	var refused error
	for range 200 {
		if err := signWith(ctx, c, k.GetId()); err != nil {
			refused = err
			break
		}
		signed++
	}
	wantAudit := func(what string, err error) {
		t.Helper()
		if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "audit") {
			t.Fatalf("%s while the audit log's disk is full: %v; want UNAVAILABLE naming the audit log", what, err)
		}
	}
	wantAudit("sign", refused)
	t.Logf("audit disk full: refused after %d more signatures", signed-1)
	for range 3 {
		wantAudit("sign", signWith(ctx, c, k.GetId()))
	}
	_, err = generate("refused-by-audit")
	wantAudit("key generate", err)
	if err := os.Remove(auditFiller); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		sign("after the audit log's disk has room again")
	}

	// The state's disk fills. Records fit in pages the state file has
	// written before, until one needs a new page.
	stateFiller := filepath.Join(stateDir, "filler")
	diskfull.Fill(t, stateFiller)
	refused = nil
	refusedLabel := ""
	for i := range 500 {
		label := fmt.Sprintf("state-full-%03d", i)
		if _, err := generate(label); err != nil {
			refused, refusedLabel = err, label
			break
		}
		acked = append(acked, label)
	}
	if refused == nil {
		t.Fatal("500 keys recorded on a full disk; want a refusal once the state file needs room")
	}
	if status.Code(refused) != codes.Unavailable || !strings.Contains(refused.Error(), "state file cannot be written") ||
		!strings.Contains(refused.Error(), "no space left on device") || !strings.Contains(refused.Error(), "removed from the HSM again") {
		t.Fatalf("key generate on the state's full disk: %v; want UNAVAILABLE naming the state file, ENOSPC, and the key removed again", refused)
	}
	t.Logf("state disk full: refused after %d more keys: %v", len(acked)-1, refused)
	keysNow := listLabels(ctx, t, c)
	if _, ok := keysNow[refusedLabel]; ok {
		t.Fatalf("the key whose record could not be written is still on the token: %v", keysNow)
	}
	sign("while the state's disk is full (signing writes no state)")
	if err := os.Remove(stateFiller); err != nil {
		t.Fatal(err)
	}
	if _, err := generate(refusedLabel); err != nil {
		t.Fatalf("the same key generation with room again: %v", err)
	}
	acked = append(acked, refusedLabel)
	sign("after the state's disk has room again")

	// Restart: everything acknowledged is there and known.
	c.Close()
	d.Signal(syscall.SIGTERM)
	if err := d.Wait(time.Minute); err != nil {
		t.Fatalf("stop: %v\n%s", err, d.Output())
	}
	daemontest.Start(t, bin, nil, "--config", cfgPath)
	c2, err := client.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	after := listLabels(ctx, t, c2)
	for _, l := range acked {
		if known, ok := after[l]; !ok || !known {
			t.Errorf("acknowledged key %q after the restart: listed %v, known %v", l, ok, known)
		}
	}
	if _, ok := after["refused-by-audit"]; ok {
		t.Errorf("a key was generated while its audit line could not be written")
	}
	if len(after) != len(acked) {
		t.Errorf("%d keys on the token after the restart; want the %d acknowledged: %v", len(after), len(acked), after)
	}

	stateRefusal := false
	for _, l := range checkAuditAfterFailure(t, auditPath, signed, "refused-by-audit") {
		if l.Op == "key.generate" && strings.Contains(l.Result, "state file cannot be written") {
			stateRefusal = true
		}
	}
	if !stateRefusal {
		t.Error("no key.generate line says the state file could not be written")
	}
}

// listLabels lists the keys of every token by label: whether signerd
// knows each (has its record).
func listLabels(ctx context.Context, t *testing.T, c *client.Client) map[string]bool {
	t.Helper()
	resp, err := c.ListKeys(ctx, &signerv1.ListKeysRequest{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, k := range resp.GetKeys() {
		out[k.GetLabel()] = k.GetKnown()
	}
	return out
}

// TestStartOnAFullStateDisk starts the real daemon with its state
// directory on a full disk.
//
// No state file yet (a first start), two pages of room: the start fails,
// naming the state file and ENOSPC, and leaves no file behind. (bbolt
// wrote the two pages it could, and the next start, with room again,
// died of SIGBUS reading the pages the file's metadata named.) With room
// again it starts, and keys are made.
//
// A state file already there, the disk full again: the daemon starts (it
// writes nothing to start), signs, and refuses a key generation with
// UNAVAILABLE naming the state file.
func TestStartOnAFullStateDisk(t *testing.T) {
	bin := daemontest.Build(t, signerdPkg)
	soft := softhsmtest.New(t)
	dir := t.TempDir()
	stateDir := filepath.Join(dir, "state")
	diskfull.Mount(t, stateDir, 1<<20)
	cfgPath := daemonConfig(t, dir, soft, `"*"`)
	sock := filepath.Join(dir, "run/signer.sock")
	filler := filepath.Join(stateDir, "filler")
	unfill := diskfull.FillLeaving(t, filler, 8192)

	out, err := daemontest.Run(t, bin, nil, "--config", cfgPath)
	if err == nil {
		t.Fatalf("signerd started with 8 KiB left on its state disk and no state file:\n%s", out)
	}
	if !strings.Contains(out, "state file cannot be written") || !strings.Contains(out, "no space left on device") {
		t.Fatalf("signerd's start on a full state disk: %v\n%s\nwant the state file and ENOSPC named", err, out)
	}
	diskfull.CheckOnly(t, stateDir, "filler") // nothing of the failed start
	unfill()
	d := daemontest.Start(t, bin, nil, "--config", cfgPath)
	c, err := client.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)
	generate := func(label string) (*signerv1.Key, error) {
		return c.GenerateKey(ctx, &signerv1.GenerateKeyRequest{Token: "t1", Label: label, Algorithm: "EC-P256", Usage: signerv1.KeyUsage_KEY_USAGE_SIGN})
	}
	k, err := generate("first")
	if err != nil {
		t.Fatalf("key generate after the start with room again: %v\n%s", err, d.Output())
	}
	c.Close()
	d.Signal(syscall.SIGTERM)
	if err := d.Wait(time.Minute); err != nil {
		t.Fatalf("stop: %v\n%s", err, d.Output())
	}

	diskfull.Fill(t, filler)
	d = daemontest.Start(t, bin, nil, "--config", cfgPath)
	c, err = client.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := signWith(ctx, c, k.GetId()); err != nil {
		t.Fatalf("sign after a start on the full state disk: %v", err)
	}
	var refused error
	for i := range 500 {
		if _, err := generate(fmt.Sprintf("full-%03d", i)); err != nil {
			refused = err
			break
		}
	}
	if status.Code(refused) != codes.Unavailable || !strings.Contains(refused.Error(), "state file cannot be written") {
		t.Fatalf("key generate on the full state disk: %v; want UNAVAILABLE naming the state file", refused)
	}
}
