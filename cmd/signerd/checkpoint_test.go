package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hsmsigner/hsmsigner/cmd/internal/daemontest"
	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/client"
	softhsmtest "github.com/hsmsigner/hsmsigner/softhsm-test"
)

var (
	seqField       = regexp.MustCompile(`"seq":[0-9]+,`)
	prevField      = regexp.MustCompile(`"prev":"[0-9a-f]{64}"}$`)
	statementField = regexp.MustCompile(`"statement":"(?:[^"\\]|\\.)*"`)
	digestField    = regexp.MustCompile(`"digest":"[^"]*"`)
)

func hashHex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// rewriteLog does to the audit log at path what someone who can write it
// (but holds no audit key) does to hide the lines drop selects: remove
// them, renumber the rest, recompute every prev, make each checkpoint's
// statement name the line before it again, and write a matching head
// file.
func rewriteLog(t *testing.T, path string, drop func(line string) bool) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	prev, seq := strings.Repeat("0", 64), 0
	dropped := 0
	for _, l := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
		if drop(l) {
			dropped++
			continue
		}
		line := seqField.ReplaceAllString(l, `"seq":`+strconv.Itoa(seq+1)+`,`)
		line = prevField.ReplaceAllString(line, `"prev":"`+prev+`"}`)
		if m := statementField.FindString(line); m != "" {
			var text string
			if err := json.Unmarshal([]byte(strings.TrimPrefix(m, `"statement":`)), &text); err != nil {
				t.Fatal(err)
			}
			parts := strings.Split(text, "\n") // header, seq, hash, time, ""
			parts[1], parts[2] = strconv.Itoa(seq), prev
			text = strings.Join(parts, "\n")
			quoted, _ := json.Marshal(text)
			line = statementField.ReplaceAllLiteralString(line, `"statement":`+string(quoted))
			line = digestField.ReplaceAllLiteralString(line, `"digest":"`+hashHex([]byte(text))+`"`)
		}
		seq++
		prev = hashHex([]byte(line))
		out.WriteString(line + "\n")
	}
	if dropped == 0 {
		t.Fatal("the rewrite dropped no line")
	}
	if err := os.WriteFile(path, out.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	head, _ := json.Marshal(map[string]any{"seq": seq, "hash": prev})
	if err := os.WriteFile(path+".head", append(head, '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
}

// copyLog copies the audit log and its head file into dir.
func copyLog(t *testing.T, from, dir string) string {
	t.Helper()
	to := filepath.Join(dir, filepath.Base(from))
	for _, suffix := range []string{"", ".head"} {
		b, err := os.ReadFile(from + suffix)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(to+suffix, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return to
}

// TestAuditCheckpointsAnchorTheLog is issue 9, finding 6, on the real
// daemon: signerd signs checkpoints with the HSM audit key on its
// interval and at shutdown; `signerctl audit verify --pub` then fails on
// the review's attack (a line deleted, the chain and head file
// recomputed), which verify without --pub still passes, and the
// checkpoints signerd logged catch a rewrite that drops the checkpoint
// lines too.
func TestAuditCheckpointsAnchorTheLog(t *testing.T) {
	bin := daemontest.Build(t, signerdPkg)
	ctl := daemontest.Build(t, "github.com/hsmsigner/hsmsigner/cmd/signerctl")
	soft := softhsmtest.New(t)
	dir := t.TempDir()
	cfgPath := daemonConfig(t, dir, soft, `"*"`)
	cfg, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	cfg = bytes.Replace(cfg, []byte("[server]\n"), []byte("[server]\naudit_checkpoint_interval = \"1s\"\n"), 1)
	if err := os.WriteFile(cfgPath, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	d := daemontest.Start(t, bin, nil, "--config", cfgPath)
	c, err := client.Dial(filepath.Join(dir, "run/signer.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := ctxT(t)
	signKey, err := c.GenerateKey(ctx, &signerv1.GenerateKeyRequest{Token: "t1", Label: "s", Algorithm: "EC-P256", Usage: signerv1.KeyUsage_KEY_USAGE_SIGN})
	if err != nil {
		t.Fatal(err)
	}
	auditKey, err := c.GenerateKey(ctx, &signerv1.GenerateKeyRequest{Token: "t1", Label: "audit", Algorithm: "EC-P256", Usage: signerv1.KeyUsage_KEY_USAGE_AUDIT})
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if err := signWith(ctx, c, signKey.GetId()); err != nil {
			t.Fatal(err)
		}
	}
	d.WaitForLine(`"msg":"audit checkpoint"`, d.Lines(), time.Minute)
	for range 3 {
		if err := signWith(ctx, c, signKey.GetId()); err != nil {
			t.Fatal(err)
		}
	}
	n := d.Lines()
	d.Signal(syscall.SIGTERM)
	if err := d.Wait(time.Minute); err != nil {
		t.Fatalf("exit: %v\n%s", err, d.Output())
	}
	d.WaitForLine(`"msg":"audit checkpoint"`, n, time.Second) // the one at shutdown

	work := t.TempDir()
	pubPEM := filepath.Join(work, "audit.pem")
	if err := os.WriteFile(pubPEM, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: auditKey.GetPublicKey()}), 0o600); err != nil {
		t.Fatal(err)
	}
	// The checkpoints as journald would have kept signerd's log lines.
	var shippedLines []string
	for _, l := range strings.Split(d.Output(), "\n") {
		if strings.Contains(l, `"msg":"audit checkpoint"`) {
			shippedLines = append(shippedLines, l)
		}
	}
	shipped := filepath.Join(work, "shipped.jsonl")
	if err := os.WriteFile(shipped, []byte(strings.Join(shippedLines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	verify := func(args ...string) (string, int) {
		t.Helper()
		cmd := exec.Command(ctl, append([]string{"audit", "verify"}, args...)...)
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); ok {
			return string(out), ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return string(out), 0
	}
	auditFile := filepath.Join(dir, "audit.jsonl")

	// The untouched log: every line up to the shutdown checkpoint's
	// statement anchored; only that checkpoint line itself is not.
	out, code := verify("--pub", pubPEM, "--checkpoints", shipped, auditFile)
	if code != 0 || !strings.Contains(out, "every signature verified") || !strings.Contains(out, "1 line(s) after the last checkpoint are unanchored") {
		t.Fatalf("verify --pub of the untouched log: exit %d\n%s", code, out)
	}
	out, code = verify(auditFile)
	if code != 0 || !strings.Contains(out, "signatures not checked") {
		t.Fatalf("verify without --pub: exit %d\n%s", code, out)
	}

	isSign := func(l string) bool { return strings.Contains(l, `"op":"sign"`) }
	firstSignOnly := func() func(string) bool {
		done := false
		return func(l string) bool {
			if !done && isSign(l) {
				done = true
				return true
			}
			return false
		}
	}

	// The review's attack: a sign line deleted, chain and head recomputed
	// (and the checkpoints' statements made to fit).
	forged := copyLog(t, auditFile, t.TempDir())
	rewriteLog(t, forged, firstSignOnly())
	out, code = verify(forged)
	if code != 0 || !strings.Contains(out, "chain intact") {
		t.Fatalf("without --pub the rewritten chain passes, as it always did: exit %d\n%s", code, out)
	}
	out, code = verify("--pub", pubPEM, forged)
	if code == 0 || !strings.Contains(out, "checkpoint") || !strings.Contains(out, "signature does not verify") {
		t.Fatalf("verify --pub of the rewritten log: exit %d\n%s", code, out)
	}

	// The same, with every checkpoint line dropped as well: nothing in
	// the log is anchored, which fails with --pub, and the shipped
	// checkpoints say what happened.
	stripped := copyLog(t, auditFile, t.TempDir())
	first := firstSignOnly()
	rewriteLog(t, stripped, func(l string) bool { return first(l) || strings.Contains(l, `"op":"audit.checkpoint"`) })
	out, code = verify("--pub", pubPEM, stripped)
	if code == 0 || !strings.Contains(out, "no line is anchored") {
		t.Fatalf("verify --pub of the log without checkpoints: exit %d\n%s", code, out)
	}
	out, code = verify("--pub", pubPEM, "--checkpoints", shipped, stripped)
	if code == 0 || !strings.Contains(out, "shipped checkpoint") {
		t.Fatalf("verify against the shipped checkpoints: exit %d\n%s", code, out)
	}
}
