package xroad

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hsmsigner/hsmsigner/signer/config"
	"github.com/hsmsigner/hsmsigner/signer/peercred"
)

// remoteConn is a connection that says it comes from addr.
type remoteConn struct {
	net.Conn
	addr net.Addr
}

func (c remoteConn) RemoteAddr() net.Addr { return c.addr }

// TestIdentifyCaller checks who a connection is taken for: the kernel's
// answer for a loopback peer (IPv4, IPv6, IPv4-mapped), a refusal for
// another address, and remote_uid for another address only with
// allow_non_loopback.
func TestIdentifyCaller(t *testing.T) {
	kernel := func(context.Context, net.Conn) (peercred.Peer, error) {
		return peercred.Peer{UID: 998, GID: 998, PID: 42}, nil
	}
	cases := []struct {
		name   string
		remote string
		cfg    config.XRoad
		uid    uint32
		err    string
	}{
		{"IPv4 loopback", "127.0.0.1:40000", config.XRoad{}, 998, ""},
		{"other loopback address", "127.0.0.53:40000", config.XRoad{}, 998, ""},
		{"IPv6 loopback", "[::1]:40000", config.XRoad{}, 998, ""},
		{"IPv4-mapped loopback", "[::ffff:127.0.0.1]:40000", config.XRoad{}, 998, ""},
		{"another machine", "192.0.2.7:40000", config.XRoad{}, 0, "not a loopback address"},
		{"IPv4-mapped other", "[::ffff:192.0.2.7]:40000", config.XRoad{}, 0, "not a loopback address"},
		{"another machine, allowed", "192.0.2.7:40000", config.XRoad{AllowNonLoopback: true, RemoteUID: 1234}, 1234, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a, err := net.ResolveTCPAddr("tcp", c.remote)
			if err != nil {
				t.Fatal(err)
			}
			p, err := identifyCaller(kernel, c.cfg)(context.Background(), remoteConn{addr: a})
			switch {
			case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
				t.Fatalf("got %v %v, want an error with %q", p, err, c.err)
			case c.err == "" && (err != nil || p.UID != c.uid):
				t.Fatalf("got %v %v, want uid %d", p, err, c.uid)
			}
		})
	}
	// The kernel's refusal is the connection's refusal.
	refuse := func(context.Context, net.Conn) (peercred.Peer, error) { return peercred.Peer{}, errors.New("row gone") }
	a, _ := net.ResolveTCPAddr("tcp", "127.0.0.1:1")
	if _, err := identifyCaller(refuse, config.XRoad{})(context.Background(), remoteConn{addr: a}); err == nil {
		t.Fatal("a caller the kernel cannot name was admitted")
	}
}

// TestKeystorePassword reads the password from X-Road's env.properties
// or from a file holding it alone.
func TestKeystorePassword(t *testing.T) {
	cases := map[string]string{
		"s3cret\n": "s3cret",
		"s3cret":   "s3cret",
		"XROAD_COMMON_GRPC_INTERNAL_KEYSTORE_PASSWORD=\"a-b_c\"\nXROAD_COMMON_GRPC_INTERNAL_TRUSTSTORE_PASSWORD=\"a-b_c\"\n": "a-b_c",
		"# x\n  XROAD_COMMON_GRPC_INTERNAL_KEYSTORE_PASSWORD=plain\r\n":                                                      "plain",
	}
	for in, want := range cases {
		if got := keystorePassword([]byte(in)); got != want {
			t.Errorf("keystorePassword(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestKeystoreRefusals: a wrong password or a file that is not a keystore
// stops the start with an error that names the keystore and not the
// password.
func TestKeystoreRefusals(t *testing.T) {
	dir := t.TempDir()
	ks := newKeystore(t, dir, "right-password")
	wrong := filepath.Join(dir, "wrong.pass")
	os.WriteFile(wrong, []byte("wrong-password\n"), 0o600)
	notP12 := filepath.Join(dir, "not.p12")
	os.WriteFile(notP12, []byte("hello"), 0o600)
	for name, cfg := range map[string]config.XRoad{
		"wrong password": {Listen: "127.0.0.1:5560", Keystore: ks.p12, KeystorePassword: config.PINSource{Kind: config.PINFromFile, Path: wrong}},
		"not a keystore": {Listen: "127.0.0.1:5560", Keystore: notP12, KeystorePassword: config.PINSource{Kind: config.PINFromFile, Path: ks.envFile}},
		"no keystore":    {Listen: "127.0.0.1:5560", Keystore: filepath.Join(dir, "none.p12"), KeystorePassword: config.PINSource{Kind: config.PINFromFile, Path: ks.envFile}},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := New(context.Background(), nil, cfg, Options{})
			if err == nil || !strings.Contains(err.Error(), "keystore") || strings.Contains(err.Error(), "wrong-password") || strings.Contains(err.Error(), "right-password") {
				t.Fatalf("got %v", err)
			}
		})
	}
	// The right password, from X-Road's env.properties, loads.
	if _, _, err := loadKeystore(context.Background(), config.XRoad{Keystore: ks.p12, KeystorePassword: config.PINSource{Kind: config.PINFromFile, Path: ks.envFile}}); err != nil {
		t.Fatalf("loadKeystore: %v", err)
	}
}
