package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/hsmsigner/hsmsigner/cmd/internal/daemontest"
)

// maxUnitExposure is the highest `systemd-analyze security` exposure the
// shipped unit may score.
const maxUnitExposure = 1.5

// TestUnitHardening checks the shipped unit: systemd-analyze verify
// accepts it (with ExecStart pointed at a binary that exists here), its
// exposure is at most 1.5, it has a watchdog, and every directive that
// opens something a sandbox would close says why in a comment.
func TestUnitHardening(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Fatal("systemd-analyze not found: install systemd (Debian: apt-get install -y systemd)")
	}
	unit, err := os.ReadFile("../../systemd/signerd.service")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "signerd.service")
	bin := daemontest.Build(t, signerdPkg)
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(string(unit), "/usr/bin/signerd", bin)), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(sa, "verify", path).CombinedOutput(); err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	out, err := exec.Command(sa, "security", "--offline=true", path).CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`Overall exposure level for signerd.service: ([0-9.]+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no exposure level in:\n%s", out)
	}
	score, _ := strconv.ParseFloat(string(m[1]), 64)
	if score > maxUnitExposure {
		t.Fatalf("exposure %.1f, at most %.1f allowed:\n%s", score, maxUnitExposure, out)
	}
	for _, want := range []string{"WatchdogSec=", "Type=notify", "NoNewPrivileges=yes", "CapabilityBoundingSet=\n", "PrivateDevices=yes", "LimitCORE=0"} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("the unit lacks %q", strings.TrimSpace(want))
		}
	}
}
