package xroad

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/credentials"
	"software.sslmate.com/src/go-pkcs12"

	"github.com/hsmsigner/hsmsigner/signer"
	"github.com/hsmsigner/hsmsigner/signer/config"
	"github.com/hsmsigner/hsmsigner/signer/peercred"
)

// maxKeystoreBytes bounds the keystore file read.
const maxKeystoreBytes = 256 << 10

// passwordKey is the line of X-Road's xroad-grpc-internal-env.properties
// that holds the keystore's password.
const passwordKey = "XROAD_COMMON_GRPC_INTERNAL_KEYSTORE_PASSWORD"

// readSecretFile reads path, or $CREDENTIALS_DIRECTORY/NAME for
// "credential:NAME", up to limit bytes.
func readSecretFile(path string, limit int64) ([]byte, error) {
	if name, ok := strings.CutPrefix(path, config.PINFromCredential+":"); ok {
		dir := os.Getenv("CREDENTIALS_DIRECTORY")
		if dir == "" {
			return nil, fmt.Errorf("credential %q needs LoadCredential= in the unit (CREDENTIALS_DIRECTORY is not set)", name)
		}
		path = dir + "/" + name
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, limit)
	}
	return b, nil
}

// keystorePassword takes the password out of what the password source
// holds: the password alone, or X-Road's env.properties with its
// XROAD_COMMON_GRPC_INTERNAL_KEYSTORE_PASSWORD line.
func keystorePassword(b []byte) string {
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), passwordKey+"="); ok {
			return strings.Trim(strings.TrimSpace(v), `"'`)
		}
	}
	return strings.TrimRight(string(b), "\r\n")
}

// loadKeystore reads X-Road's internal keystore: its key and certificate
// are what signerd presents, and its certificates are the only ones it
// trusts from clients, as X-Road's own signer does.
func loadKeystore(ctx context.Context, cfg config.XRoad) (tls.Certificate, []*x509.Certificate, error) {
	data, err := readSecretFile(cfg.Keystore, maxKeystoreBytes)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("keystore: %w", err)
	}
	pw, err := cfg.KeystorePassword.Read(ctx)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("keystore_password: %w", err)
	}
	password := keystorePassword(pw)
	clear(pw)
	key, cert, cas, err := pkcs12.DecodeChain(data, password)
	if err != nil {
		// The library's message names no password; ours neither.
		return tls.Certificate{}, nil, fmt.Errorf("keystore %s: %w (is keystore_password the keystore's?)", cfg.Keystore, err)
	}
	trusted := append([]*x509.Certificate{cert}, cas...)
	tc := tls.Certificate{PrivateKey: key, Leaf: cert, Certificate: [][]byte{cert.Raw}}
	for _, c := range cas {
		tc.Certificate = append(tc.Certificate, c.Raw)
	}
	return tc, trusted, nil
}

// serverTLS is the TLS of the listener: TLS 1.2 or later, the keystore's
// certificate, and a client certificate that is one of the keystore's
// certificates itself, within its validity, required. A certificate that
// merely chains to one (issued with the keystore's key: it is
// self-signed and so a CA to x509) is refused: X-Road trusts the
// keystore's certificates as they are, and the README promises no other.
func serverTLS(cert tls.Certificate, trusted []*x509.Certificate) *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequireAnyClientCert,
		VerifyConnection: func(cs tls.ConnectionState) error { return pinned(cs.PeerCertificates, trusted, time.Now()) }}
}

// errNotKeystoreCert refuses a client certificate that is not one of the
// keystore's.
var errNotKeystoreCert = errors.New("xroad: the client certificate is not one of the keystore's")

// pinned checks that the first of peer (the client's certificate) is one
// of trusted, byte for byte, and valid at now.
func pinned(peer, trusted []*x509.Certificate, now time.Time) error {
	if len(peer) == 0 {
		return fmt.Errorf("%w: none given", errNotKeystoreCert)
	}
	leaf := peer[0]
	for _, c := range trusted {
		if bytes.Equal(c.Raw, leaf.Raw) {
			if now.Before(leaf.NotBefore) || now.After(leaf.NotAfter) {
				return fmt.Errorf("%w: the keystore's certificate %q is valid from %s to %s only", errNotKeystoreCert, leaf.Subject, leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339))
			}
			return nil
		}
	}
	return fmt.Errorf("%w: %q issued by %q", errNotKeystoreCert, leaf.Subject, leaf.Issuer)
}

// identify finds the local process at the other end of an accepted TCP
// connection.
type identify func(ctx context.Context, conn net.Conn) (peercred.Peer, error)

// transport is the listener's gRPC transport credentials: before the TLS
// handshake (or without TLS for insecure_loopback) it reads the caller's
// uid from the kernel, refuses a connection whose caller it cannot name
// or the policy names nowhere, and counts it under the uid (refusing one
// beyond connections_per_uid); the gRPC handlers find the peer as they
// find a Unix socket's.
//
// A caller from another machine (allow_non_loopback) has no uid the
// kernel vouches for: it is taken for remote_uid only once its TLS
// handshake has shown a keystore certificate, and only then counted
// under remote_uid. Until then its connection counts among its remote
// address's handshakes in progress (at most connections_per_uid, one
// beyond closed at once), so that a host without the certificate can
// neither take remote_uid's connections nor hold more than that many.
type transport struct {
	tls      credentials.TransportCredentials // nil: no TLS
	identify identify
	// admit refuses a caller the policy names nowhere before the TLS
	// handshake; nil admits every identified caller.
	admit func(ctx context.Context, p peercred.Peer) error
	// count counts an admitted connection under its caller's uid before
	// the TLS handshake (signer.Service.OpenConnection): it refuses one
	// beyond connections_per_uid, and the connection it returns gives
	// the count back when closed. nil counts nothing.
	count func(conn net.Conn, p peercred.Peer) (net.Conn, error)
	// remote bounds the handshakes in progress of each remote address;
	// nil bounds nothing.
	remote *handshakes
}

// errUnidentified refuses a connection whose process cannot be named.
var errUnidentified = errors.New("xroad: the caller's process cannot be identified")

// ServerHandshake implements credentials.TransportCredentials.
func (t transport) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
	defer cancel()
	p, err := t.identify(ctx, conn)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", errUnidentified, err)
	}
	if t.admit != nil {
		if err := t.admit(ctx, p); err != nil {
			return nil, nil, err
		}
	}
	// A local caller is counted under its uid before TLS; a remote one
	// among its address's handshakes until TLS, then under remote_uid.
	remote, isRemote := remoteAddr(conn)
	if isRemote && t.remote != nil {
		done, err := t.remote.start(remote)
		if err != nil {
			return nil, nil, err
		}
		defer done()
	}
	if t.count != nil && !isRemote {
		if conn, err = t.count(conn, p); err != nil {
			return nil, nil, err
		}
	}
	if t.tls != nil {
		tlsConn, _, err := t.tls.ServerHandshake(conn)
		if err != nil {
			// gRPC closes the connection it accepted, not the counted
			// one: give the count back here.
			conn.Close()
			return nil, nil, err
		}
		conn = tlsConn
	}
	if t.count != nil && isRemote {
		counted, err := t.count(conn, p)
		if err != nil {
			conn.Close()
			return nil, nil, err
		}
		conn = counted
	}
	ai := peercred.AuthInfo{Peer: p}
	ai.SecurityLevel = credentials.PrivacyAndIntegrity
	if t.tls == nil {
		ai.SecurityLevel = credentials.NoSecurity
	}
	return conn, ai, nil
}

// remoteAddr returns the address of conn's caller and whether it is
// another machine's (not a loopback address).
func remoteAddr(conn net.Conn) (netip.Addr, bool) {
	ap, err := netip.ParseAddrPort(conn.RemoteAddr().String())
	if err != nil {
		return netip.Addr{}, false
	}
	a := ap.Addr().Unmap()
	return a, !a.IsLoopback()
}

// errTooManyHandshakes refuses a connection from a remote address that
// has connections_per_uid handshakes in progress already.
var errTooManyHandshakes = fmt.Errorf("%w: too many X-Road handshakes in progress from one remote address", signer.ErrLimit)

// handshakes counts the TLS handshakes in progress of each remote
// address, at most max each.
type handshakes struct {
	max int
	mu  sync.Mutex
	n   map[netip.Addr]int
}

// start counts a handshake of a; done, called when it ends, gives it
// back. One beyond max is refused.
func (h *handshakes) start(a netip.Addr) (done func(), err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.n[a] >= h.max {
		return nil, fmt.Errorf("%w: %s has %d", errTooManyHandshakes, a, h.n[a])
	}
	if h.n == nil {
		h.n = map[netip.Addr]int{}
	}
	h.n[a]++
	return sync.OnceFunc(func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		if h.n[a]--; h.n[a] == 0 {
			delete(h.n, a)
		}
	}), nil
}

// ClientHandshake implements credentials.TransportCredentials; the
// listener is a server only.
func (transport) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("xroad: server-side credentials")
}

// Info implements credentials.TransportCredentials.
func (t transport) Info() credentials.ProtocolInfo {
	if t.tls != nil {
		return t.tls.Info()
	}
	return credentials.ProtocolInfo{SecurityProtocol: "insecure"}
}

// Clone implements credentials.TransportCredentials.
func (t transport) Clone() credentials.TransportCredentials { return t }

// OverrideServerName implements credentials.TransportCredentials.
func (transport) OverrideServerName(string) error { return nil }
