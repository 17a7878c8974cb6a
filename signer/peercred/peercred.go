// Package peercred gives a gRPC server the identity of the process at the
// other end of a Unix socket, read from the kernel (SO_PEERCRED) when the
// connection is accepted. Nothing the caller sends can change it.
package peercred

import (
	"context"
	"errors"
	"fmt"
	"net"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// ErrNoCredentials means the connection carried no peer credentials: it is
// not a Unix socket connection accepted through Credentials.
var ErrNoCredentials = errors.New("peercred: no peer credentials")

// Peer is the identity of the process that connected.
type Peer struct {
	UID uint32
	GID uint32
	PID int32
}

// String formats the peer for logs and errors.
func (p Peer) String() string {
	return fmt.Sprintf("uid=%d gid=%d pid=%d", p.UID, p.GID, p.PID)
}

// AuthInfo carries the peer's credentials through gRPC.
type AuthInfo struct {
	credentials.CommonAuthInfo
	Peer Peer
}

// AuthType implements credentials.AuthInfo.
func (AuthInfo) AuthType() string { return "peercred" }

// Credentials are gRPC transport credentials for a server on a Unix
// socket: the handshake reads SO_PEERCRED and refuses connections that are
// not Unix sockets. There is no encryption: the socket never leaves the
// machine.
type Credentials struct{}

var _ credentials.TransportCredentials = Credentials{}

// ServerHandshake reads the peer's credentials from conn.
func (Credentials) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	p, err := FromConn(conn)
	if err != nil {
		return nil, nil, err
	}
	return conn, AuthInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}, Peer: p}, nil
}

// ClientHandshake is not used: clients connect with insecure credentials
// over the Unix socket.
func (Credentials) ClientHandshake(_ context.Context, _ string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return conn, AuthInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}}, nil
}

// Info implements credentials.TransportCredentials.
func (Credentials) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "peercred"}
}

// Clone implements credentials.TransportCredentials.
func (c Credentials) Clone() credentials.TransportCredentials { return c }

// OverrideServerName implements credentials.TransportCredentials.
func (Credentials) OverrideServerName(string) error { return nil }

// FromConn reads SO_PEERCRED from a Unix socket connection.
func FromConn(conn net.Conn) (Peer, error) {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return Peer{}, fmt.Errorf("%w: %T is not a Unix socket connection", ErrNoCredentials, conn)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return Peer{}, fmt.Errorf("%w: %w", ErrNoCredentials, err)
	}
	var (
		cred *unix.Ucred
		cerr error
	)
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Peer{}, fmt.Errorf("%w: %w", ErrNoCredentials, err)
	}
	if cerr != nil {
		return Peer{}, fmt.Errorf("%w: SO_PEERCRED: %w", ErrNoCredentials, cerr)
	}
	return Peer{UID: cred.Uid, GID: cred.Gid, PID: cred.Pid}, nil
}

// FromContext returns the peer of a gRPC call served with Credentials.
func FromContext(ctx context.Context) (Peer, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return Peer{}, ErrNoCredentials
	}
	ai, ok := p.AuthInfo.(AuthInfo)
	if !ok {
		return Peer{}, ErrNoCredentials
	}
	return ai.Peer, nil
}
