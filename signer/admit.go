package signer

import (
	"context"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/hsmsigner/hsmsigner/signer/audit"
	"github.com/hsmsigner/hsmsigner/signer/peercred"
)

// Call runs fn as the signer.v1 method fullMethod (a
// signerv1.Signer_*_FullMethodName) for peer p, admitted as the gRPC
// interceptors admit a call that came through the socket: the uid's call
// limit, the role the method needs under the policy in force (a refusal
// audited), a login attempt for methods that try a PIN, and req's key id
// in its one spelling. fn calls the Service's method with the context it
// is given. The error is a gRPC status with the code the signer.v1 API
// gives, and the call is counted in the metrics under metric (a full
// method name of the protocol served).
//
// A feature that serves another protocol on another listener (the X-Road
// signer protocol) reads its caller from its own transport and maps each
// of its calls onto a signer.v1 method this way, so that one access
// model, one audit log and one set of limits apply to both.
func Call[T any](ctx context.Context, s *Service, p peercred.Peer, fullMethod, metric string, req any, fn func(ctx context.Context) (T, error)) (T, error) {
	start := time.Now()
	var zero T
	v, err := s.admit(peerContext(ctx, p), req, &grpc.UnaryServerInfo{FullMethod: fullMethod}, func(ctx context.Context, _ any) (any, error) {
		return fn(ctx)
	})
	s.metrics.observe(metric, status.Code(err), time.Since(start))
	if err != nil {
		return zero, err
	}
	return v.(T), nil
}

// peerContext is ctx carrying p as the gRPC peer that admit reads.
func peerContext(ctx context.Context, p peercred.Peer) context.Context {
	return peer.NewContext(ctx, &peer.Peer{AuthInfo: peercred.AuthInfo{Peer: p}})
}

// Audit writes one audit line of op for peer p, with detail and the
// result err, as the Service's own operations do, and returns err, or an
// ErrAudit error (UNAVAILABLE) when the line could not be written: then
// the operation's result must not be given out. A feature calls it from
// within Call, for what it does itself.
func (s *Service) Audit(ctx context.Context, p peercred.Peer, op, detail string, err error) error {
	return s.audited(ctx, s.callerFor(p), audit.Record{Op: op, Detail: detail}, err)
}

// MayUseUsage reports whether a client rule of the policy in force that
// names peer p grants usage, whatever the key: for what a feature hands
// out that no key of signerd's stands for (X-Road's GetAuthKey, usage
// auth).
func (s *Service) MayUseUsage(p peercred.Peer, usage string) bool {
	c := s.callerFor(p)
	return c.policy.MayUseUsage(c.cfgPeer(), usage)
}

// AdmitConnection decides whether peer p may hold a connection on a
// feature's listener at all (before any TLS handshake): the policy in
// force must name it, as an admin or in a client rule. A refusal is
// audited as op denied with detail, as a call's refusal is (beyond the
// uid's refusals_per_second counted for its summary line), and returned
// as a PERMISSION_DENIED status. Each call on an admitted connection is
// still admitted on its own under the policy in force then.
func (s *Service) AdmitConnection(ctx context.Context, p peercred.Peer, detail string) error {
	if s.namedByPolicy(p) {
		return nil
	}
	return s.refuseOrCount(ctx, s.callerFor(p), detail)
}
