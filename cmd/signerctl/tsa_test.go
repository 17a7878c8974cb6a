package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestTSACommands stamps a file with signerctl tsa stamp against signerd
// dev, by the built-in TSA and upstream (batched, with an inclusion
// proof), and checks each token with signerctl tsa verify and with
// `openssl ts -verify`; a token checked against another file, or a
// batched token without its proof, fails; tsa status says the clock
// guard is off and the TSA serves.
func TestTSACommands(t *testing.T) {
	dir, _ := devDaemon(t)
	work := t.TempDir()
	root := filepath.Join(dir, "ca", "root.pem")
	data, other := filepath.Join(work, "hello.txt"), filepath.Join(work, "other.txt")
	_ = os.WriteFile(data, []byte("hello"), 0o600)
	_ = os.WriteFile(other, []byte("hullo"), 0o600)

	tsr := filepath.Join(work, "hello.tsr")
	if out := mustCtl(t, "tsa", "stamp", "--in", data, "--out", tsr); !strings.Contains(out, "serial ") {
		t.Fatalf("stamp printed %q", out)
	}
	if o, err := exec.Command("openssl", "ts", "-verify", "-in", tsr, "-data", data, "-CAfile", root).CombinedOutput(); err != nil || !strings.Contains(string(o), "Verification: OK") {
		t.Fatalf("openssl ts -verify: %v\n%s", err, o)
	}
	if out := mustCtl(t, "tsa", "verify", "--in", data, "--token", tsr, "--ca", root); !strings.Contains(out, "Verification: OK") || !strings.Contains(out, "policy: 2.999.1") {
		t.Fatalf("tsa verify printed %q", out)
	}
	if _, errs, code := ctl(t, "tsa", "verify", "--in", other, "--token", tsr, "--ca", root); code == 0 || !strings.Contains(errs, "another imprint") {
		t.Fatalf("verify against another file: exit %d %q", code, errs)
	}
	if _, errs, code := ctl(t, "tsa", "verify", "--in", data, "--token", data, "--ca", root); code == 0 || !strings.Contains(errs, "does not verify") {
		t.Fatalf("verify of a token that is not one: exit %d %q", code, errs)
	}
	if _, errs, code := ctl(t, "tsa", "stamp", "--in", data, "--out", tsr, "--hash", "sha1"); code == 0 || !strings.Contains(errs, "sha256") {
		t.Fatalf("stamp with sha1: exit %d %q", code, errs)
	}

	up := filepath.Join(work, "up.tsr")
	_, errs, code := ctl(t, "tsa", "stamp", "--upstream", "--in", data, "--out", up)
	if code != 0 || !strings.Contains(errs, "inclusion proof is in "+up+".proof") {
		t.Fatalf("upstream stamp: exit %d %q", code, errs)
	}
	if out := mustCtl(t, "tsa", "verify", "--in", data, "--token", up, "--ca", root); !strings.Contains(out, "inclusion proof verified") {
		t.Fatalf("verify of the upstream stamp printed %q", out)
	}
	// Without its proof, a batched token is for the root, not the file.
	if err := os.Rename(up+".proof", filepath.Join(work, "moved.proof")); err != nil {
		t.Fatal(err)
	}
	if _, _, code := ctl(t, "tsa", "verify", "--in", data, "--token", up, "--ca", root); code == 0 {
		t.Fatal("a batched token verified without its inclusion proof")
	}
	if out := mustCtl(t, "tsa", "verify", "--in", data, "--token", up, "--ca", root, "--proof", filepath.Join(work, "moved.proof")); !strings.Contains(out, "Verification: OK") {
		t.Fatalf("verify with --proof printed %q", out)
	}

	if st := mustCtl(t, "status"); !strings.Contains(st, "time-stamping: built-in TSA serving; CLOCK GUARD OFF") {
		t.Fatalf("status lacks the time-stamping line:\n%s", st)
	}
	st := mustCtl(t, "tsa", "status")
	for _, want := range []string{"built-in TSA:  serving", "clock guard:   OFF", "upstream TSAs: healthy", "TCP listener:  http://127.0.0.1:"} {
		if !strings.Contains(st, want) {
			t.Fatalf("tsa status lacks %q:\n%s", want, st)
		}
	}
}
