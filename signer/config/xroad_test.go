package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestXRoadSection checks the [xroad] table: off without listen, a
// loopback listen with a keystore and its password source, and each
// refusal named by its key.
func TestXRoadSection(t *testing.T) {
	dir := t.TempDir()
	ks := filepath.Join(dir, "ks.p12")
	if err := os.WriteFile(ks, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := moduleOK
	cases := []struct {
		name, table, wantErr string
	}{
		{"off", "", ""},
		{"loopback with keystore", `listen = "127.0.0.1:5560"` + "\n" + `keystore = "` + ks + `"` + "\n" + `keystore_password = "file:/etc/signerd/xroad.pass"`, ""},
		{"credential keystore", `listen = "[::1]:5560"` + "\n" + `keystore = "credential:xroad-ks"` + "\n" + `keystore_password = "credential:xroad-pass"`, ""},
		{"insecure loopback", `listen = "127.0.0.1:5560"` + "\n" + `insecure_loopback = true`, ""},
		{"non-loopback with remote uid", `listen = "192.0.2.1:5560"` + "\nallow_non_loopback = true\nremote_uid = 999\n" + `keystore = "` + ks + `"` + "\n" + `keystore_password = "file:/etc/p"`, ""},
		{"keystore without listen", `keystore = "` + ks + `"`, "xroad.listen"},
		{"non-loopback", `listen = "0.0.0.0:5560"` + "\n" + `keystore = "` + ks + `"` + "\n" + `keystore_password = "file:/etc/p"`, "not a loopback address"},
		{"non-loopback without remote uid", `listen = "192.0.2.1:5560"` + "\nallow_non_loopback = true\n" + `keystore = "` + ks + `"` + "\n" + `keystore_password = "file:/etc/p"`, "xroad.remote_uid"},
		{"insecure non-loopback", `listen = "192.0.2.1:5560"` + "\nallow_non_loopback = true\nremote_uid = 9\ninsecure_loopback = true", "xroad.insecure_loopback"},
		{"no keystore", `listen = "127.0.0.1:5560"`, "xroad.keystore"},
		{"no password", `listen = "127.0.0.1:5560"` + "\n" + `keystore = "` + ks + `"`, "xroad.keystore_password"},
		{"password in the file", `listen = "127.0.0.1:5560"` + "\n" + `keystore = "` + ks + `"` + "\n" + `keystore_password = "hunter2"`, "value not shown"},
		{"login as password", `listen = "127.0.0.1:5560"` + "\n" + `keystore = "` + ks + `"` + "\n" + `keystore_password = "login"`, "for tokens"},
		{"port 0", `listen = "127.0.0.1:0"` + "\ninsecure_loopback = true", "xroad.listen"},
		{"auth key password without file", `listen = "127.0.0.1:5560"` + "\ninsecure_loopback = true\n" + `auth_key_password = "file:/etc/p"`, "xroad.auth_key_file"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			doc := base
			if c.table != "" {
				doc += "\n[xroad]\n" + c.table + "\n"
			}
			cfg, err := Parse([]byte(doc), filepath.Join(dir, "signerd.toml"))
			switch {
			case c.wantErr == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)):
				t.Fatalf("got %v, want an error with %q", err, c.wantErr)
			case c.wantErr != "" && strings.Contains(err.Error(), "hunter2"):
				t.Fatalf("the error repeats the password: %v", err)
			case err == nil && c.table == "" && cfg.XRoad.Listen != "":
				t.Fatalf("listener on by default: %+v", cfg.XRoad)
			}
		})
	}
}
