package signer

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hsmsigner/hsmsigner/hsm"
	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/audit"
)

// GetStatus implements signerv1.SignerServer.
func (s *Service) GetStatus(ctx context.Context, _ *signerv1.GetStatusRequest) (*signerv1.Status, error) {
	c := callerFrom(ctx)
	st := &signerv1.Status{
		Version:       s.version,
		Started:       timestamppb.New(s.started),
		UptimeSeconds: int64(time.Since(s.started).Seconds()),
		Caller:        &signerv1.Caller{Uid: c.peer.UID, Gid: c.peer.GID, Pid: c.peer.PID, Role: c.roleName()},
	}
	for _, m := range s.modules {
		mi := m.mod.Info()
		st.Modules = append(st.Modules, &signerv1.Module{
			Name: m.name, Path: mi.Path, Manufacturer: mi.Manufacturer, Description: mi.Description,
			LibraryVersion: mi.LibraryVersion, Ready: mi.Ready, DownReason: mi.Down, Generation: mi.Generation,
		})
	}
	for _, t := range s.tokens {
		st.Tokens = append(st.Tokens, s.tokenMessage(ctx, t))
	}
	return st, nil
}

// tokenMessage describes a token; an unreachable token is reported as
// unavailable with the reason, not as an error.
func (s *Service) tokenMessage(ctx context.Context, t *tokenEntry) *signerv1.Token {
	ps := t.tok.Stats()
	msg := &signerv1.Token{
		Name: t.name, Module: t.module.name, Label: t.tok.Label(), Serial: t.tok.Serial(),
		LoggedIn: t.tok.LoggedIn(), PoolSize: uint32(ps.Size), SessionsOpen: uint32(ps.Open),
		SessionsInUse: uint32(ps.Open - ps.Idle), SessionWaits: ps.Waits, Relogins: ps.Logins,
		LoggedOutReason: t.loggedOutReason(),
	}
	info, err := t.tok.Info(ctx)
	if err != nil {
		msg.UnavailableReason = err.Error()
		return msg
	}
	msg.Available = true
	msg.Manufacturer, msg.Model, msg.LoginRequired = info.Manufacturer, info.Model, info.LoginRequired
	msg.Pin = &signerv1.PinStatus{CountLow: info.PIN.CountLow, FinalTry: info.PIN.FinalTry, Locked: info.PIN.Locked, ToBeChanged: info.PIN.ToBeChanged}
	return msg
}

// ListTokens implements signerv1.SignerServer.
func (s *Service) ListTokens(ctx context.Context, _ *signerv1.ListTokensRequest) (*signerv1.ListTokensResponse, error) {
	resp := &signerv1.ListTokensResponse{}
	for _, t := range s.tokens {
		resp.Tokens = append(resp.Tokens, s.tokenMessage(ctx, t))
	}
	return resp, nil
}

// GetToken implements signerv1.SignerServer.
func (s *Service) GetToken(ctx context.Context, req *signerv1.GetTokenRequest) (*signerv1.Token, error) {
	t, err := s.token(req.GetToken())
	if err != nil {
		return nil, err
	}
	return s.tokenMessage(ctx, t), nil
}

// LoginToken implements signerv1.SignerServer. The PIN is zeroed in the
// request once used and never audited.
func (s *Service) LoginToken(ctx context.Context, req *signerv1.LoginTokenRequest) (*signerv1.Token, error) {
	defer clear(req.Pin)
	t, err := handle(ctx, s, callerFrom(ctx), linePlan{}, audit.Record{Op: "token.login", Token: req.GetToken()},
		func(*audit.Record) (*tokenEntry, error) {
			t, err := s.token(req.GetToken())
			if err != nil {
				return nil, err
			}
			return t, t.explain(t.tok.Login(ctx, req.GetPin()))
		})
	if err != nil {
		return nil, err
	}
	t.startRefusal.Store(nil)
	s.forgetKeyRefs()
	if err := s.reconcileToken(ctx, t); err != nil {
		s.log.Error("reconciling the token with the state", "token", t.name, "error", err.Error())
	}
	return s.tokenMessage(ctx, t), nil
}

// LogoutToken implements signerv1.SignerServer.
func (s *Service) LogoutToken(ctx context.Context, req *signerv1.LogoutTokenRequest) (*signerv1.Token, error) {
	t, err := handle(ctx, s, callerFrom(ctx), linePlan{}, audit.Record{Op: "token.logout", Token: req.GetToken()},
		func(*audit.Record) (*tokenEntry, error) {
			t, err := s.token(req.GetToken())
			if err != nil {
				return nil, err
			}
			return t, t.tok.Logout(ctx)
		})
	if err != nil {
		return nil, err
	}
	return s.tokenMessage(ctx, t), nil
}

// ChangePin implements signerv1.SignerServer.
func (s *Service) ChangePin(ctx context.Context, req *signerv1.ChangePinRequest) (*signerv1.Token, error) {
	defer clear(req.OldPin)
	defer clear(req.NewPin)
	t, err := handle(ctx, s, callerFrom(ctx), linePlan{intent: true}, audit.Record{Op: "token.change_pin", Token: req.GetToken()},
		func(*audit.Record) (*tokenEntry, error) {
			t, err := s.token(req.GetToken())
			if err != nil {
				return nil, err
			}
			if len(req.GetNewPin()) == 0 {
				return nil, fmt.Errorf("%w: the new PIN is empty", ErrInvalid)
			}
			return t, t.explain(t.tok.ChangePIN(ctx, req.GetOldPin(), req.GetNewPin()))
		})
	if err != nil {
		return nil, err
	}
	return s.tokenMessage(ctx, t), nil
}

// loggedOutReason says why the daemon logged the token out by itself: it
// dropped a kept PIN that the token refused, or the token refused the
// configured PIN at start-up. It is empty while the token is logged in.
func (t *tokenEntry) loggedOutReason() string {
	if t.tok.LoggedIn() {
		return ""
	}
	if r := t.tok.LoggedOutReason(); r != "" {
		return r
	}
	if d := t.startRefusal.Load(); d != nil {
		return d.Reason
	}
	return ""
}

// pinDropped records that the daemon gave up a PIN it held for a token
// (see hsm.PINDrop): one audit line and a metric (hsm logs the drop). The
// daemon itself is the actor, so the line's caller ids are -1.
func (s *Service) pinDropped(token string, d hsm.PINDrop) {
	if s.metrics != nil {
		s.metrics.pinDrops.WithLabelValues(token).Inc()
	}
	rec := audit.Record{UID: -1, GID: -1, PID: -1, Op: "token.pin_dropped", Token: token, Detail: d.Reason, Result: "ok"}
	if d.Err != nil {
		rec.Result = codeOf(d.Err).String() + ": " + d.Err.Error()
	}
	if err := s.audit.Append(context.Background(), rec); err != nil {
		s.log.Error("audit append failed", "op", rec.Op, "error", err.Error())
	}
}

// isTokenUnusable reports errors that mean a token's keys cannot be listed
// now (not logged in, gone) rather than a failure of the request.
func isTokenUnusable(err error) bool {
	return errors.Is(err, hsm.ErrNotLoggedIn) || errors.Is(err, hsm.ErrUnavailable) || errors.Is(err, hsm.ErrClosed)
}
