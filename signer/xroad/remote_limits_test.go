package xroad

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// remoteUID is the uid the remote rig takes callers from other machines
// for; the policy names it as a client.
const remoteUID = 4242

// remoteTable makes the rig's listener take callers from other machines
// for remoteUID, whom the policy names as a client.
var remoteTable = fmt.Sprintf(`allow_non_loopback = true
remote_uid = %d

[[policy.client]]
name = "remote"
uids = [%[1]d]
keys = ["*"]
usages = ["sign"]
members = ["*"]
`, remoteUID)

// twoOtherHosts returns two non-loopback addresses of this machine: two
// "other machines" the test can dial from (a connection to one of the
// machine's own addresses comes from that address). A machine with fewer
// gets two documentation addresses (192.0.2.2 and 192.0.2.3) on its
// loopback interface for the test, which needs root (CAP_NET_ADMIN); CI
// runs as root and must not skip, so there a refusal fails the test.
func twoOtherHosts(t *testing.T) (a, b netip.Addr) {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	var found []netip.Addr
	for _, a := range addrs {
		pfx, err := netip.ParsePrefix(a.String())
		if err != nil || pfx.Addr().IsLoopback() || pfx.Addr().IsLinkLocalUnicast() {
			continue
		}
		found = append(found, pfx.Addr())
	}
	if len(found) >= 2 {
		return found[0], found[1]
	}
	added := []netip.Addr{netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("192.0.2.3")}
	for _, ip := range added {
		out, err := exec.Command("ip", "addr", "add", ip.String()+"/32", "dev", "lo").CombinedOutput()
		if err != nil {
			if os.Getenv("CI") != "true" {
				t.Skipf("this machine has %d non-loopback addresses, and adding %s to lo failed (it needs root): %v: %s", len(found), ip, err, out)
			}
			t.Fatalf("adding %s to lo: %v: %s", ip, err, out)
		}
		t.Cleanup(func() {
			if out, err := exec.Command("ip", "addr", "del", ip.String()+"/32", "dev", "lo").CombinedOutput(); err != nil {
				t.Errorf("removing %s from lo: %v: %s", ip, err, out)
			}
		})
	}
	return added[0], added[1]
}

// isClosedEarly reports whether a TLS handshake's err is the server
// closing the connection before its hello.
func isClosedEarly(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// TestXRoadRemoteHandshakesDoNotTakeRemoteUIDConnections: with
// allow_non_loopback, a host that can reach the listener but has no
// keystore certificate cannot take remote_uid's connections: its
// connections stalled inside the TLS handshake count only against its
// own address (at most connections_per_uid, one beyond closed before the
// server's hello), and a caller from another address completes its
// handshake and is served. Before, each was counted under remote_uid
// before TLS, so connections_per_uid stalled handshakes from any host
// shut the security server out until they timed out.
func TestXRoadRemoteHandshakesDoNotTakeRemoteUIDConnections(t *testing.T) {
	const limit = 3
	attackerIP, serverIP := twoOtherHosts(t)
	r := newRig(t, rigOptions{listen: ":0", extra: remoteTable,
		limits: fmt.Sprintf("connections_per_uid = %d\nhandshake_timeout = \"1m\"", limit)})
	_, port, err := net.SplitHostPort(r.addr)
	if err != nil {
		t.Fatal(err)
	}
	attacker, server := net.JoinHostPort(attackerIP.String(), port), net.JoinHostPort(serverIP.String(), port)

	// The attacker's connections reach the client certificate request,
	// that is, the server has accepted and counted them, and stall there.
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	stall := func() (reached chan struct{}, done chan error) {
		reached, done = make(chan struct{}), make(chan error, 1)
		c, err := net.Dial("tcp", attacker)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		tc := &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"},
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				close(reached)
				<-release
				return &tls.Certificate{}, nil
			}}
		go func() { done <- tls.Client(c, tc).HandshakeContext(ctxT(t)) }()
		return reached, done
	}
	for i := range limit {
		reached, done := stall()
		select {
		case <-reached:
		case err := <-done:
			t.Fatalf("stalled handshake %d of %d: closed before the server's hello: %v", i+1, limit, err)
		}
	}
	// One beyond, from the same address, is closed before the hello.
	reached, done := stall()
	select {
	case <-reached:
		t.Fatalf("a handshake beyond connections_per_uid from one address reached the certificate request")
	case err := <-done:
		if !isClosedEarly(err) {
			t.Fatalf("a handshake beyond connections_per_uid from one address: %v, want it closed before the hello", err)
		}
	}

	// The security server, from another address, is served: its
	// handshake completes and the listener sends HTTP/2 SETTINGS.
	c, err := net.Dial("tcp", server)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(30 * time.Second)); err != nil {
		t.Fatal(err)
	}
	tlc := tls.Client(c, &tls.Config{Certificates: []tls.Certificate{r.ks.cert}, RootCAs: r.ks.pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12, NextProtos: []string{"h2"}})
	if err := tlc.HandshakeContext(ctxT(t)); err != nil {
		t.Fatalf("the security server's handshake with %d stalled handshakes of another host open: %v", limit, err)
	}
	if _, err := io.WriteString(tlc, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(tlc, tlc)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	f, err := fr.ReadFrame()
	if err != nil {
		t.Fatalf("the security server's connection after its handshake: %v, want the listener's SETTINGS", err)
	}
	if _, ok := f.(*http2.SettingsFrame); !ok {
		t.Fatalf("the listener's first frame is %T, want SETTINGS", f)
	}
}
