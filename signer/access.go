package signer

import (
	"context"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hsmsigner/hsmsigner/signer/audit"
	"github.com/hsmsigner/hsmsigner/signer/config"
	"github.com/hsmsigner/hsmsigner/signer/peercred"
)

// caller is who made a call, as the socket says, and what the policy in
// force when the call was admitted makes of them.
type caller struct {
	peer   peercred.Peer
	policy *config.Policy
	admin  bool
	client bool
}

func (c caller) cfgPeer() config.Peer {
	return config.Peer{UID: c.peer.UID, GID: c.peer.GID, PID: c.peer.PID}
}

func (c caller) roleName() string {
	switch {
	case c.admin && c.client:
		return "admin+client"
	case c.admin:
		return "admin"
	case c.client:
		return "client"
	}
	return "none"
}

type callerKey struct{}

func callerFrom(ctx context.Context) caller {
	c, _ := ctx.Value(callerKey{}).(caller)
	return c
}

// need is the role a method requires.
type need int

const (
	needNobody need = iota // unknown method: refused
	needAny                // any caller the policy knows
	needAdmin
	needClient
)

// requiredRole says which role each method needs. Methods not listed are
// refused.
func requiredRole(fullMethod string) need {
	name, ok := strings.CutPrefix(fullMethod, "/signer.v1.Signer/")
	if !ok {
		return needNobody
	}
	switch name {
	case "GetStatus", "GetKey":
		return needAny // GetKey: a client sees only the keys it may use
	case "ListTokens", "GetToken", "LoginToken", "LogoutToken", "ChangePin",
		"GenerateKey", "ListKeys", "DeleteKey", "RenameKey",
		"GenerateCSR", "ListCSRs", "GetCSR", "DeleteCSR",
		"ImportCert", "ListCerts", "GetCert", "ActivateCert", "DeactivateCert", "DeleteCert", "SetCertStatus",
		"GetOCSPStatus", "RefreshOCSP":
		return needAdmin
	case "Sign", "SignBatch", "SignStream", "GetSigningInfo", "GetOCSPResponses", "SetOCSPResponses":
		return needClient
	}
	return needNobody
}

// UnaryInterceptor admits each call from its socket credentials: it reads
// the peer, counts the call under its uid ([limits] calls_per_uid),
// decides the role from the policy in force, refuses (and audits the
// refusal of) callers without the role the method needs, spends a login
// attempt of the uid on LoginToken and ChangePin, puts the request's key
// id in its one spelling, and turns errors into gRPC status codes.
func (s *Service) UnaryInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		resp, err := s.admit(ctx, req, info, handler)
		s.metrics.observe(info.FullMethod, status.Code(err), time.Since(start))
		return resp, err
	}
}

func (s *Service) admit(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	p, err := peercred.FromContext(ctx)
	if err != nil {
		return nil, errNoCredentials
	}
	done, err := s.limits.startCall(p)
	if err != nil {
		return nil, toStatus(err)
	}
	defer done()
	c, err := s.admitPeer(ctx, p, info.FullMethod)
	if err != nil {
		return nil, err
	}
	if err := s.admitLogin(ctx, c, info.FullMethod, req); err != nil {
		return nil, err
	}
	if given, err := normalizeKeyID(req); err != nil {
		method := info.FullMethod[strings.LastIndexByte(info.FullMethod, '/')+1:]
		return nil, toStatus(s.refuseKeyID(ctx, c, method, given, err))
	}
	resp, err := handler(context.WithValue(ctx, callerKey{}, c), req)
	return resp, toStatus(err)
}

// errNoCredentials refuses a call that came through no Unix socket.
var errNoCredentials = status.Error(codes.Unauthenticated, "no socket credentials: signerd serves Unix sockets only")

// StreamInterceptor admits each stream as UnaryInterceptor admits a call;
// an open stream counts as one call of its uid. Handlers of streams that
// carry many requests admit, count and normalise each request again under
// the policy in force when it arrives.
func (s *Service) StreamInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		p, err := peercred.FromContext(ss.Context())
		if err != nil {
			return errNoCredentials
		}
		done, err := s.limits.startCall(p)
		if err != nil {
			return toStatus(err)
		}
		defer done()
		c, err := s.admitPeer(ss.Context(), p, info.FullMethod)
		if err != nil {
			return err
		}
		return toStatus(handler(srv, &admittedStream{ServerStream: ss, ctx: context.WithValue(ss.Context(), callerKey{}, c)}))
	}
}

// admittedStream is a server stream whose context carries the caller.
type admittedStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (a *admittedStream) Context() context.Context { return a.ctx }

// admitPeer checks that the policy in force gives peer p the role
// fullMethod needs; a refusal is audited (or, beyond the uid's
// refusals_per_second, counted for its summary line) and returned as a
// gRPC status.
func (s *Service) admitPeer(ctx context.Context, p peercred.Peer, fullMethod string) (caller, error) {
	c := s.callerFor(p)
	if !c.may(requiredRole(fullMethod)) {
		return c, s.refuseOrCount(ctx, c, fullMethod[strings.LastIndexByte(fullMethod, '/')+1:])
	}
	return c, nil
}

// refuseOrCount refuses c's call of method as refuse does, with a line of
// its own while the uid's refusals_per_second allows, else counted for
// the uid's summary line.
func (s *Service) refuseOrCount(ctx context.Context, c caller, method string) error {
	if !s.limits.refusalLine(c.peer, "denied") {
		return toStatus(fmt.Errorf("%w: %s may not call %s (role %s)", ErrPermission, c.peer, method, c.roleName()))
	}
	return toStatus(s.refuse(ctx, c, method))
}

// loginOp is the audit op of a method that tries a token's PIN, or "".
func loginOp(method string) string {
	switch method {
	case "LoginToken":
		return "token.login"
	case "ChangePin":
		return "token.change_pin"
	}
	return ""
}

// admitLogin spends one of c's login attempts on a method that tries a
// token's PIN. Beyond [limits] login_attempts_per_minute the call is
// refused RESOURCE_EXHAUSTED before it reaches the token, and the refusal
// audited (or counted for the uid's summary line).
func (s *Service) admitLogin(ctx context.Context, c caller, fullMethod string, req any) error {
	op := loginOp(fullMethod[strings.LastIndexByte(fullMethod, '/')+1:])
	if op == "" || s.limits.loginAttempt(c.peer) {
		return nil
	}
	rec := audit.Record{Op: op}
	if r, ok := req.(interface{ GetToken() string }); ok {
		rec.Token = r.GetToken()
	}
	err := fmt.Errorf("%w: uid %d tried more PINs than [limits] login_attempts_per_minute (%d) allows; the token was not asked; try again in a minute", ErrLimit, c.peer.UID, s.cfg.Limits.LoginAttemptsPerMinute)
	if s.limits.refusalLine(c.peer, op) {
		err = s.audited(ctx, c, rec, err)
	}
	return toStatus(err)
}

// callerFor decides what the policy in force makes of peer p.
func (s *Service) callerFor(p peercred.Peer) caller {
	pol := s.policy.Load()
	cp := config.Peer{UID: p.UID, GID: p.GID, PID: p.PID}
	return caller{peer: p, policy: pol, admin: pol.IsAdmin(cp), client: pol.IsClient(cp)}
}

// namedByPolicy reports whether the policy in force names peer p (its
// uid or primary gid) as an admin or in a client rule: the per-uid limits
// keep track of such a peer even when their table of uids is full.
func (s *Service) namedByPolicy(p peercred.Peer) bool {
	c := s.callerFor(p)
	return c.admin || c.client
}

// may reports whether c has the role n.
func (c caller) may(n need) bool {
	switch n {
	case needAny:
		return c.admin || c.client
	case needAdmin:
		return c.admin
	case needClient:
		return c.client
	}
	return false
}

// refuse audits that c may not call method and returns the refusal.
func (s *Service) refuse(ctx context.Context, c caller, method string) error {
	err := fmt.Errorf("%w: %s may not call %s (role %s)", ErrPermission, c.peer, method, c.roleName())
	return s.audited(ctx, c, audit.Record{Op: "denied", Detail: method}, err)
}

// audited appends one audit line for c's operation with the result of err
// and returns err, or an ErrAudit error when the line could not be written
// (then the operation's result must not be returned). A refusal stays a
// refusal when its line fails: the failure is logged and counted
// (signerd_audit_failures_total), never turned into success.
func (s *Service) audited(ctx context.Context, c caller, r audit.Record, err error) error {
	if aerr := s.audit.Append(context.WithoutCancel(ctx), auditRecord(c, r, err)); aerr != nil {
		s.auditFailed(r.Op, err, aerr)
		if err == nil {
			return fmt.Errorf("%w: %w", ErrAudit, aerr)
		}
	}
	return err
}

// auditFailed logs and counts an audit line for op, whose result was
// err, that could not be written.
func (s *Service) auditFailed(op string, err, aerr error) {
	s.metrics.auditFailures.Inc()
	result := "ok"
	if st, ok := status.FromError(err); ok && err != nil {
		result = st.Code().String()
	} else if err != nil {
		result = codeOf(err).String()
	}
	s.log.Error("audit append failed", "op", op, "result", result, "error", aerr.Error())
}

// auditRecord completes r with the caller and the result of err.
func auditRecord(c caller, r audit.Record, err error) audit.Record {
	r.UID, r.GID, r.PID = int64(c.peer.UID), int64(c.peer.GID), int64(c.peer.PID)
	r.Result = "ok"
	if err != nil {
		r.Result = codeOf(err).String() + ": " + err.Error()
	}
	return r
}

// policyAllowsKey applies the client rules to a key and its usage.
func policyAllowsKey(c caller, ref *keyRef) error {
	if ref.usage == "" {
		return fmt.Errorf("%w: key %s has no recorded usage; an officer must register it (signerctl key rename --usage)", ErrPermission, ref.idHex)
	}
	if !c.policy.MayUseKeyOfMembers(c.cfgPeer(), ref.idHex, ref.usage, ref.members) {
		if len(ref.members) > 0 {
			return fmt.Errorf("%w: %s may not sign with key %s (usage %s) of member %s", ErrPermission, c.peer, ref.idHex, ref.usage, strings.Join(ref.members, ", "))
		}
		return fmt.Errorf("%w: %s may not sign with key %s (usage %s)", ErrPermission, c.peer, ref.idHex, ref.usage)
	}
	return nil
}

func hexOf(b []byte) string { return hex.EncodeToString(b) }
