package config

import (
	"net"
	"net/netip"
	"strings"
	"testing"
)

// TestAttackTSAListenLoopbackOnly: [tsa] listen takes a loopback address
// and port only, in every spelling: the wildcard addresses, names (which
// a resolver could map anywhere), other addresses, IPv4-mapped non-loopback
// addresses, odd IPv4 spellings and port 0 are refused; what is accepted
// binds a loopback address.
func TestAttackTSAListenLoopbackOnly(t *testing.T) {
	for _, c := range []struct {
		listen string
		ok     bool
	}{
		{"127.0.0.1:3180", true},
		{"127.0.0.2:3180", true},
		{"[::1]:3180", true},
		{"[::ffff:127.0.0.1]:3180", true},
		{"0.0.0.0:3180", false},
		{"[::]:3180", false},
		{":3180", false},
		{"localhost:3180", false},
		{"LOCALHOST:3180", false},
		{"ip6-localhost:3180", false},
		{"[::ffff:0.0.0.0]:3180", false},
		{"[::ffff:10.0.0.1]:3180", false},
		{"10.0.0.1:3180", false},
		{"[fe80::1%lo]:3180", false},
		{"127.1:3180", false},
		{"0177.0.0.1:3180", false},
		{"2130706433:3180", false},
		{"0x7f000001:3180", false},
		{"127.0.0.1", false},
		{"127.0.0.1:0", false},
		{"[::1]:0", false},
		{"127.0.0.1:http", false},
		{"127.0.0.1:65536", false},
		{" 127.0.0.1:3180", false},
	} {
		t.Run(c.listen, func(t *testing.T) {
			cfg, err := Parse([]byte(moduleOK+"\n[tsa]\nenabled = true\npolicy = \"1.2.3\"\nlisten = \""+c.listen+"\"\n"), "t.toml")
			if !c.ok {
				if err == nil || !strings.Contains(err.Error(), "tsa.listen") {
					t.Fatalf("accepted (%v)", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			// What signerd would listen on, on a free port: a loopback
			// address.
			ap := netip.MustParseAddrPort(cfg.TSA.Listen)
			l, err := net.Listen("tcp", netip.AddrPortFrom(ap.Addr(), 0).String())
			if err != nil {
				t.Skipf("cannot listen on %s here: %v", ap.Addr(), err)
			}
			defer l.Close()
			if ip := l.Addr().(*net.TCPAddr).IP; !ip.IsLoopback() {
				t.Fatalf("%q binds %s", c.listen, l.Addr())
			}
		})
	}
}
