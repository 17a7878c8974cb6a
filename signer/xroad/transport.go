package xroad

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"

	"google.golang.org/grpc/credentials"
	"software.sslmate.com/src/go-pkcs12"

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
func loadKeystore(ctx context.Context, cfg config.XRoad) (tls.Certificate, *x509.CertPool, error) {
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
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	for _, c := range cas {
		pool.AddCert(c)
	}
	tc := tls.Certificate{PrivateKey: key, Leaf: cert, Certificate: [][]byte{cert.Raw}}
	for _, c := range cas {
		tc.Certificate = append(tc.Certificate, c.Raw)
	}
	return tc, pool, nil
}

// serverTLS is the TLS of the listener: TLS 1.2 or later, the keystore's
// certificate, and a client certificate from the keystore required.
func serverTLS(cert tls.Certificate, trusted *x509.CertPool) *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: trusted}
}

// identify finds the local process at the other end of an accepted TCP
// connection.
type identify func(ctx context.Context, conn net.Conn) (peercred.Peer, error)

// transport is the listener's gRPC transport credentials: before the TLS
// handshake (or without TLS for insecure_loopback) it reads the caller's
// uid from the kernel, and refuses a connection whose caller it cannot
// name; the gRPC handlers find the peer as they find a Unix socket's.
type transport struct {
	tls      credentials.TransportCredentials // nil: no TLS
	identify identify
}

// errUnidentified refuses a connection whose process cannot be named.
var errUnidentified = errors.New("xroad: the caller's process cannot be identified")

// ServerHandshake implements credentials.TransportCredentials.
func (t transport) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	p, err := t.identify(context.Background(), conn)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", errUnidentified, err)
	}
	if t.tls != nil {
		if conn, _, err = t.tls.ServerHandshake(conn); err != nil {
			return nil, nil, err
		}
	}
	ai := peercred.AuthInfo{Peer: p}
	ai.SecurityLevel = credentials.PrivacyAndIntegrity
	if t.tls == nil {
		ai.SecurityLevel = credentials.NoSecurity
	}
	return conn, ai, nil
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
