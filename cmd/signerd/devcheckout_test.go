package main

import (
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hsmsigner/hsmsigner/cmd/internal/daemontest"
)

// TestDevRefusedAwayFromSource: a signerd built as the Debian package
// builds it (-trimpath, so no source path is compiled in) refuses `dev`
// with what to run instead, before it makes anything under --dir.
func TestDevRefusedAwayFromSource(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "signerd")
	if out, err := exec.CommandContext(t.Context(), "go", "build", "-trimpath", "-o", bin, signerdPkg).CombinedOutput(); err != nil {
		t.Fatalf("go build -trimpath: %v\n%s", err, out)
	}
	dir := filepath.Join(t.TempDir(), "signer-dev")
	out, err := daemontest.Run(t, bin, nil, "dev", "--dir", dir)
	if err == nil {
		t.Fatalf("signerd dev ran from a -trimpath build:\n%s", out)
	}
	for _, want := range []string{"runs from a source checkout only", "make dev", "--config /etc/signerd/signerd.toml"} {
		if !strings.Contains(out, want) {
			t.Errorf("the refusal lacks %q:\n%s", want, out)
		}
	}
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("--dir %s was made (or stat failed: %v) before the refusal", dir, err)
	}
}
