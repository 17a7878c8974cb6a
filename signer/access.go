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
	"google.golang.org/grpc/tap"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/audit"
	"github.com/hsmsigner/hsmsigner/signer/config"
	"github.com/hsmsigner/hsmsigner/signer/peercred"
)

// caller is who made a call, as the socket says, and what the policy in
// force when the call was admitted makes of them. It is the one access
// model: the interceptors, the stream, GetKey, GetSigningInfo and the
// in-process features (KeySigner) all ask it, with the peer read from the
// socket, whether the caller may call a method (mayCall), sign with a key
// (mayUseKey) or act for a member (mayUseMember).
type caller struct {
	peer   peercred.Peer
	policy *config.Policy
	admin  bool
	client bool
	// remote is set for a caller without socket credentials, admitted
	// by a listener the configuration opened (the TSA's loopback TCP
	// listener): its address, which its audit lines name in place of
	// uid, gid and pid (-1).
	remote string
}

// anonymousPeer is the peer of a caller without socket credentials: no
// uid, gid or pid any policy names.
func anonymousPeer() peercred.Peer { return peercred.Peer{UID: ^uint32(0), GID: ^uint32(0), PID: -1} }

// callerOf asks policy what it makes of peer p.
func callerOf(policy *config.Policy, p peercred.Peer) caller {
	c := caller{peer: p, policy: policy}
	c.admin, c.client = policy.IsAdmin(c.cfgPeer()), policy.IsClient(c.cfgPeer())
	return c
}

// cfgPeer is c's peer as package config spells it: the one place the
// peer read from the socket is converted for the policy.
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

// role is what a method requires of its caller.
type role int

const (
	roleNobody role = iota // unknown method: refused
	roleAny                // any caller the policy knows
	roleAdmin
	roleClient
)

// methodRole says which role each method of signer.v1.Signer needs, by
// its generated full name. Methods not listed are refused;
// TestEveryMethodHasARole fails for an rpc added without a role.
func methodRole(fullMethod string) role {
	switch fullMethod {
	case signerv1.Signer_GetStatus_FullMethodName,
		signerv1.Signer_GetKey_FullMethodName, // a client sees only the keys it may use
		signerv1.Signer_GetTSAStatus_FullMethodName:
		return roleAny
	case signerv1.Signer_ListTokens_FullMethodName, signerv1.Signer_GetToken_FullMethodName,
		signerv1.Signer_LoginToken_FullMethodName, signerv1.Signer_LogoutToken_FullMethodName,
		signerv1.Signer_ChangePin_FullMethodName,
		signerv1.Signer_GenerateKey_FullMethodName, signerv1.Signer_ListKeys_FullMethodName,
		signerv1.Signer_DeleteKey_FullMethodName, signerv1.Signer_RenameKey_FullMethodName,
		signerv1.Signer_GenerateCSR_FullMethodName, signerv1.Signer_ListCSRs_FullMethodName,
		signerv1.Signer_GetCSR_FullMethodName, signerv1.Signer_DeleteCSR_FullMethodName,
		signerv1.Signer_ImportCert_FullMethodName, signerv1.Signer_ListCerts_FullMethodName,
		signerv1.Signer_GetCert_FullMethodName, signerv1.Signer_ActivateCert_FullMethodName,
		signerv1.Signer_DeactivateCert_FullMethodName, signerv1.Signer_DeleteCert_FullMethodName,
		signerv1.Signer_SetCertStatus_FullMethodName,
		signerv1.Signer_GetOCSPStatus_FullMethodName, signerv1.Signer_RefreshOCSP_FullMethodName,
		signerv1.Signer_BackupState_FullMethodName:
		return roleAdmin
	case signerv1.Signer_Sign_FullMethodName, signerv1.Signer_SignBatch_FullMethodName,
		signerv1.Signer_SignStream_FullMethodName, signerv1.Signer_GetSigningInfo_FullMethodName,
		signerv1.Signer_GetOCSPResponses_FullMethodName, signerv1.Signer_SetOCSPResponses_FullMethodName,
		signerv1.Signer_Timestamp_FullMethodName:
		return roleClient
	}
	return roleNobody
}

// mayCall reports whether c has the role fullMethod needs.
func (c caller) mayCall(fullMethod string) bool {
	switch methodRole(fullMethod) {
	case roleAny:
		return c.admin || c.client
	case roleAdmin:
		return c.admin
	case roleClient:
		return c.client
	}
	return false
}

// mayUseKey applies the client rules to a key, its usage and the members
// it serves: nil when c may sign with it, else an ErrPermission error
// that says why not.
func (c caller) mayUseKey(ref *keyRef) error {
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

// mayUseMember reports whether a client rule lets c act for member.
func (c caller) mayUseMember(member string) bool {
	return c.policy.MayUseMember(c.cfgPeer(), member)
}

// methodName is the last part of a full method name, as audit lines and
// errors name a method.
func methodName(fullMethod string) string {
	return fullMethod[strings.LastIndexByte(fullMethod, '/')+1:]
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
	done, err := s.countCall(ctx, p)
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
		return nil, toStatus(s.refuseKeyID(ctx, c, methodName(info.FullMethod), given, err))
	}
	resp, err := handler(context.WithValue(ctx, callerKey{}, c), req)
	return resp, toStatus(err)
}

// tapCallKey is the context key of the release of a call TapCall
// counted.
type tapCallKey struct{}

// TapCall is the gRPC server's InTapHandle: it counts each call (a unary
// call or a stream) among its uid's calls in progress as soon as its
// headers arrive, before a byte of its request is read, and refuses it
// RESOURCE_EXHAUSTED beyond calls_per_uid. A request still being received
// is held in memory (up to max_message_bytes): counted from its headers,
// one uid can hold at most calls_per_uid of them, however many
// connections and streams it opens. The count is given back when the
// call's handler returns or, for a call that never reaches it, when its
// stream ends. A stream without socket credentials is let through, for
// the interceptors to refuse. The context of a stream it refuses is
// ended here (see connScope): gRPC does not end it, and its deadline's
// timer would outlive the refusal.
func (s *Service) TapCall(ctx context.Context, _ *tap.Info) (context.Context, error) {
	scope, _ := ctx.Value(connScopeKey{}).(*connCtx)
	var reg uint64
	if scope != nil {
		reg = scope.take()
	}
	p, err := peercred.FromContext(ctx)
	if err != nil {
		return ctx, nil
	}
	done, err := s.limits.startCall(p)
	if err != nil {
		if reg != 0 {
			scope.cancelStream(reg)
		}
		if scope != nil && ctx.Err() == nil {
			s.log.Error("the context of a call refused at calls_per_uid did not end: its deadline's timer stays until the deadline", "uid", p.UID)
		}
		return nil, toStatus(err)
	}
	// The stream's context ends with the stream, whatever ends it.
	context.AfterFunc(ctx, done)
	return context.WithValue(ctx, tapCallKey{}, done), nil
}

// countCall counts the call of ctx among p's calls in progress: the count
// TapCall took, if it did, or a new one. done gives it back.
func (s *Service) countCall(ctx context.Context, p peercred.Peer) (done func(), err error) {
	if done, ok := ctx.Value(tapCallKey{}).(func()); ok {
		return done, nil
	}
	return s.limits.startCall(p)
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
		done, err := s.countCall(ss.Context(), p)
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
	if !c.mayCall(fullMethod) {
		return c, s.refuseOrCount(ctx, c, methodName(fullMethod))
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
func loginOp(fullMethod string) string {
	switch fullMethod {
	case signerv1.Signer_LoginToken_FullMethodName:
		return "token.login"
	case signerv1.Signer_ChangePin_FullMethodName:
		return "token.change_pin"
	}
	return ""
}

// admitLogin spends one of c's login attempts on a method that tries a
// token's PIN. Beyond [limits] login_attempts_per_minute the call is
// refused RESOURCE_EXHAUSTED before it reaches the token, and the refusal
// audited (or counted for the uid's summary line).
func (s *Service) admitLogin(ctx context.Context, c caller, fullMethod string, req any) error {
	op := loginOp(fullMethod)
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
	return callerOf(s.policy.Load(), p)
}

// namedByPolicy reports whether the policy in force names peer p (its
// uid or primary gid) as an admin or in a client rule: the per-uid limits
// keep track of such a peer even when their table of uids is full.
func (s *Service) namedByPolicy(p peercred.Peer) bool {
	c := s.callerFor(p)
	return c.admin || c.client
}

// refuse audits that c may not call method and returns the refusal.
func (s *Service) refuse(ctx context.Context, c caller, method string) error {
	err := fmt.Errorf("%w: %s may not call %s (role %s)", ErrPermission, c.peer, method, c.roleName())
	return s.audited(ctx, c, audit.Record{Op: "denied", Detail: method}, err)
}

func hexOf(b []byte) string { return hex.EncodeToString(b) }
