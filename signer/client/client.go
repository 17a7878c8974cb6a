// Package client is the Go client of signerd's local gRPC API, and a
// crypto.Signer whose private key stays in the daemon's HSM. It builds
// with CGO_ENABLED=0, so a pure-Go security server can use it.
//
// A Client's Sign calls share one long-lived SignStream, the cheapest way
// through the socket for many concurrent single signatures; every other
// method is a plain gRPC call.
package client

import (
	"context"
	"crypto"
	"crypto/x509"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/hsmsigner/hsmsigner/hsm/sigalg"
	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
)

// DefaultSocket is the socket of a system-wide signerd.
const DefaultSocket = "/run/signerd/signer.sock"

// SocketEnv names the environment variable that overrides DefaultSocket.
const SocketEnv = "SIGNER_SOCKET"

// SocketPath returns $SIGNER_SOCKET, or DefaultSocket when it is unset.
func SocketPath() string {
	if p := os.Getenv(SocketEnv); p != "" {
		return p
	}
	return DefaultSocket
}

// Client is a connection to signerd, reused by every call. Deadlines come
// from each call's context. It is safe for concurrent use.
type Client struct {
	signerv1.SignerClient
	conn    *grpc.ClientConn
	streams *signStreams
}

// Dial prepares a connection to the daemon's Unix socket at path; the
// connection is made on the first call. Extra options are passed to gRPC.
func Dial(path string, opts ...grpc.DialOption) (*Client, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("socket path %q: %w", path, err)
	}
	opts = append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64 << 20)),
		// Fixed flow-control windows turn off gRPC's bandwidth-delay
		// probing, whose PING frames cost a round trip of wake-ups on a
		// local socket where there is no bandwidth to discover.
		grpc.WithInitialWindowSize(1 << 20),
		grpc.WithInitialConnWindowSize(1 << 20),
	}, opts...)
	conn, err := grpc.NewClient("unix://"+abs, opts...)
	if err != nil {
		return nil, fmt.Errorf("connecting to signerd at %s: %w", abs, err)
	}
	api := signerv1.NewSignerClient(conn)
	return &Client{SignerClient: api, conn: conn, streams: &signStreams{api: api}}, nil
}

// Close closes the connection.
func (c *Client) Close() error {
	c.streams.close()
	return c.conn.Close()
}

// Signer returns a crypto.Signer for the key with hex id keyID; its
// private key stays in the daemon's HSM. The caller must be allowed to use
// the key.
func (c *Client) Signer(ctx context.Context, keyID string) (*Signer, error) {
	k, err := c.GetKey(ctx, &signerv1.GetKeyRequest{KeyId: keyID})
	if err != nil {
		return nil, err
	}
	pub, err := x509.ParsePKIXPublicKey(k.GetPublicKey())
	if err != nil {
		return nil, fmt.Errorf("key %s: public key: %w", keyID, err)
	}
	return &Signer{c: c, keyID: keyID, pub: pub, Timeout: 30 * time.Second}, nil
}

// Signer is a key in signerd seen as a crypto.Signer, for crypto/tls,
// x509.CreateCertificateRequest and the like.
type Signer struct {
	c     *Client
	keyID string
	pub   crypto.PublicKey
	// Timeout bounds each Sign call, which carries no context.
	Timeout time.Duration
}

// Public returns the key's public key.
func (s *Signer) Public() crypto.PublicKey { return s.pub }

// KeyID returns the key's hex id.
func (s *Signer) KeyID() string { return s.keyID }

// Sign implements crypto.Signer: opts chooses the hash, *rsa.PSSOptions
// RSA-PSS (salt = hash length).
func (s *Signer) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), s.Timeout)
	defer cancel()
	return s.SignContext(ctx, digest, opts)
}

// SignContext is Sign with a context.
func (s *Signer) SignContext(ctx context.Context, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	alg, err := AlgorithmFor(s.pub, opts)
	if err != nil {
		return nil, err
	}
	resp, err := s.c.Sign(ctx, &signerv1.SignRequest{Key: &signerv1.SignRequest_KeyId{KeyId: s.keyID}, Algorithm: alg.Name, Digest: digest})
	if err != nil {
		return nil, err
	}
	return resp.GetSignature(), nil
}

// ErrUnsupported means the signer options ask for what the appliance does
// not do (a hash other than SHA-256/384/512, a PSS salt other than the hash
// length).
var ErrUnsupported = sigalg.ErrUnsupported

// AlgorithmFor picks the algorithm for a public key and signer options.
func AlgorithmFor(pub crypto.PublicKey, opts crypto.SignerOpts) (sigalg.Algorithm, error) {
	return sigalg.ForSignerOpts(pub, opts)
}
