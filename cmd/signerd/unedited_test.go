package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hsmsigner/hsmsigner/cmd/internal/daemontest"
	"github.com/hsmsigner/hsmsigner/signer/config"
)

// shippedConfig is the configuration the Debian package installs as
// /etc/signerd/signerd.toml.
const shippedConfig = "../../systemd/signerd.toml"

// TestCheckEdited: the shipped configuration is refused as unedited,
// naming the file and the key; the same file with a module path given is
// accepted; a second module left at the placeholder is named.
func TestCheckEdited(t *testing.T) {
	data, err := os.ReadFile(shippedConfig)
	if err != nil {
		t.Fatal(err)
	}
	shipped := string(data)
	if !strings.Contains(shipped, `path = "`+placeholderModule+`"`) {
		t.Fatalf("%s does not name the placeholder module %q", shippedConfig, placeholderModule)
	}
	edited := strings.ReplaceAll(shipped, placeholderModule, "/usr/lib/softhsm/libsofthsm2.so")
	second := edited + "\n[[module]]\nname = \"other\"\npath = \"" + placeholderModule + "\"\n  [[module.token]]\n  name = \"other\"\n  token = \"other\"\n"
	cases := []struct {
		name string
		toml string
		want string // "" for accepted
	}{
		{"shipped", shipped, "module[0].path is the placeholder"},
		{"edited", edited, ""},
		{"second module unedited", second, "module[1].path is the placeholder"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := config.Parse([]byte(c.toml), "/etc/signerd/signerd.toml")
			if err != nil {
				t.Fatalf("the file does not load: %v", err)
			}
			err = checkEdited("/etc/signerd/signerd.toml", cfg)
			if c.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if !errors.Is(err, errUnedited) || !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), "/etc/signerd/signerd.toml: ") {
				t.Fatalf("got %v, want errUnedited naming the file and %q", err, c.want)
			}
		})
	}
}

// TestDaemonRefusesUneditedConfig: signerd started on the shipped
// configuration exits non-zero at once, saying which file and key to edit.
func TestDaemonRefusesUneditedConfig(t *testing.T) {
	bin := daemontest.Build(t, signerdPkg)
	data, err := os.ReadFile(shippedConfig)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "signerd.toml")
	if err := os.WriteFile(p, data, 0o640); err != nil {
		t.Fatal(err)
	}
	out, err := daemontest.Run(t, bin, nil, "--config", p)
	if err == nil {
		t.Fatalf("signerd started on the unedited configuration:\n%s", out)
	}
	for _, want := range []string{p, errUnedited.Error(), "module[0].path", placeholderModule, "PKCS#11 library"} {
		if !strings.Contains(out, want) {
			t.Errorf("the refusal lacks %q:\n%s", want, out)
		}
	}
}
