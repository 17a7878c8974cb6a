package signer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/hsmsigner/hsmsigner/hsm"
	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/audit"
	"github.com/hsmsigner/hsmsigner/signer/config"
	"github.com/hsmsigner/hsmsigner/signer/state"
	"github.com/hsmsigner/hsmsigner/tsa"
)

// StateFile is the name of the bbolt file in the state directory.
const StateFile = "signer.db"

// Options configures New.
type Options struct {
	// Logger receives the service's logs; nil discards them.
	Logger *slog.Logger
	// Version is reported by GetStatus.
	Version string
	// AcceptAuditCut lets the service continue an audit log that lost
	// lines at its end (a cut, a missing head file, a torn last line after
	// a crash); the acknowledgement is itself audited. An officer sets it
	// once, after reviewing the log.
	AcceptAuditCut bool
	// DeferLogin makes New present no PIN: it opens everything, finds
	// every token and reads every PIN source, and the caller calls
	// LoginAtStart once its own start-up steps that can fail are done
	// (signerd: its sockets), so that a start that fails costs the
	// tokens no PIN try.
	DeferLogin bool
	// TSAClock replaces the kernel's word on the clock for the built-in
	// TSA's clock guard (tests); nil means the kernel's (adjtimex).
	TSAClock tsa.ClockSource
}

// Service implements the signer.v1 API. Create it with New and Close it
// when done.
type Service struct {
	signerv1.UnimplementedSignerServer

	cfg     *config.Config
	log     *slog.Logger
	version string
	started time.Time

	store   *state.Store
	audit   auditLog
	policy  atomic.Pointer[config.Policy]
	modules []*moduleEntry
	tokens  []*tokenEntry

	keysMu   sync.RWMutex
	keys     map[string]*keyRef // lower-case hex id → where the key is and what it is for
	keysGen  uint64             // counts the clears of keys; a fill stores only under the one it began in
	keyHooks atomic.Pointer[keyCacheHooks]
	// signHook, when set (by a benchmark only), runs right before and
	// right after the token signs for a Sign call.
	signHook atomic.Pointer[func(before bool)]

	metrics *metrics
	health  healthCheck
	limits  *uidLimits // [limits], per uid

	reconciled reconciler // differences between tokens and state already audited

	// checkpoints anchors the audit log with the audit key.
	checkpoints checkpointer

	// ocsp keeps the OCSP responses of the active certificates; nil when
	// [ocsp] enabled is false.
	ocsp *ocspWatch

	// tsaClock is Options.TSAClock.
	tsaClock tsa.ClockSource
	// tsa is the time-stamping service; nil when neither the built-in
	// TSA ([tsa] enabled) nor the upstream mode ([tsa.upstream] urls) is
	// configured.
	tsa *tsaService

	// certHooks are called after each change to the certificates (see
	// OnCertificatesChanged).
	certHooksMu sync.Mutex
	certHooks   []func()

	// streamHeld counts the SignStream calls taken and not yet sent back
	// (being signed, or waiting for their caller to read), over all
	// streams: each stream holds at most maxStreamInFlight.
	streamHeld atomic.Int64

	draining  chan struct{} // closed by Drain
	drainOnce sync.Once
	closeOnce sync.Once

	// startMu guards pending and loginsDone: the PINs read from their
	// sources at start-up and not yet presented, and whether
	// LoginAtStart ran.
	startMu    sync.Mutex
	pending    []pendingLogin
	loginsDone bool
}

// pendingLogin is a PIN read from its configured source at start-up and
// not yet presented to its token. LoginAtStart and Close zero it.
type pendingLogin struct {
	te  *tokenEntry
	src config.PINSource
	pin []byte
}

type moduleEntry struct {
	name string
	mod  *hsm.Module
}

type tokenEntry struct {
	name   string
	module *moduleEntry
	tok    *hsm.Token
	// startRefusal is why the token refused the configured PIN at
	// start-up, until an officer logs it in; nil otherwise.
	startRefusal atomic.Pointer[hsm.PINDrop]
}

// auditLog is what the service needs of the audit log.
type auditLog interface {
	Append(ctx context.Context, r audit.Record) error
	Enqueue(r audit.Record) (audit.Ticket, error)
	Wait(ctx context.Context, t audit.Ticket) error
	Head() (seq uint64, hash string)
	Close() error
}

// keyRef locates a key and carries what the state knows of it.
type keyRef struct {
	tok   *tokenEntry
	id    []byte
	idHex string
	usage string // "" when the state does not know the key
	label string
	// members are the members the key serves: the one it is bound to
	// and, for a key recorded before bindings were, those its
	// certificates and requests name. A client's rule must allow every
	// one of them to sign with the key; a key with none is unbound.
	members []string
}

// New opens the state and the audit log, loads every module, finds every
// token and reads every configured PIN source, and only then logs in with
// those PINs (see LoginAtStart), unless opts.DeferLogin. On error
// everything opened so far is closed again and the PINs read are zeroed.
func New(ctx context.Context, cfg *config.Config, opts Options) (_ *Service, err error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := cfg.Limits.Validate(); err != nil {
		return nil, err
	}
	s := &Service{cfg: cfg, log: log, version: opts.Version, tsaClock: opts.TSAClock, started: time.Now(), keys: map[string]*keyRef{}, draining: make(chan struct{})}
	defer func() {
		if err != nil {
			_ = s.Close()
		}
	}()
	s.policy.Store(cfg.Policy)
	if s.store, err = state.Open(ctx, filepath.Join(cfg.Server.StateDir, StateFile)); err != nil {
		return nil, fmt.Errorf("opening state: %w", err)
	}
	mode := audit.Sync
	if cfg.Server.AuditMode == config.AuditBuffered {
		mode = audit.Buffered
	}
	auditFile, err := audit.Open(ctx, cfg.Server.AuditFile, audit.Options{Mode: mode, AcceptCut: opts.AcceptAuditCut})
	if errors.Is(err, audit.ErrTampered) {
		return nil, fmt.Errorf("opening audit log: %w (review it with `signerctl audit verify %s`; to acknowledge lines lost at its end, start once with --accept-audit-cut)", err, cfg.Server.AuditFile)
	}
	if err != nil {
		return nil, fmt.Errorf("opening audit log: %w", err)
	}
	s.audit, s.checkpoints = auditFile, auditFile
	for _, mc := range cfg.Modules {
		m, err := hsm.OpenModule(ctx, mc.Path, hsm.WithLogger(log))
		if err != nil {
			return nil, fmt.Errorf("module %q: %w", mc.Name, err)
		}
		me := &moduleEntry{name: mc.Name, mod: m}
		s.modules = append(s.modules, me)
		for _, tc := range mc.Tokens {
			te, pin, err := s.openToken(ctx, me, tc)
			if err != nil {
				return nil, fmt.Errorf("token %q: %w", tc.Name, err)
			}
			s.tokens = append(s.tokens, te)
			if pin != nil {
				s.startMu.Lock()
				s.pending = append(s.pending, pendingLogin{te: te, src: tc.PIN, pin: pin})
				s.startMu.Unlock()
			}
		}
	}
	s.metrics = newMetrics(s)
	s.limits = newUIDLimits(cfg.Limits, log, s.writeSummary, s.namedByPolicy)
	s.metrics.reg.MustRegister(s.limits.collectors()...)
	if err := s.setupOCSP(ctx); err != nil {
		return nil, fmt.Errorf("[ocsp]: %w", err)
	}
	if err := s.setupTSA(); err != nil {
		return nil, fmt.Errorf("[tsa]: %w", err)
	}
	if !opts.DeferLogin {
		if err := s.LoginAtStart(ctx); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// LoginAtStart presents each PIN that New read from a configured source to
// its token, once, then audits the tokens that refused theirs and
// reconciles the tokens with the state. New calls it unless
// Options.DeferLogin; otherwise the caller calls it once its own start-up
// steps that can fail are done. Later calls do nothing. A token that
// refuses its PIN stays logged out with the reason (see the README); any
// other failure to log in is returned, and the caller closes the service.
// The PINs are zeroed when it returns.
func (s *Service) LoginAtStart(ctx context.Context) error {
	s.startMu.Lock()
	pending, done := s.pending, s.loginsDone
	s.pending, s.loginsDone = nil, true
	s.startMu.Unlock()
	if done {
		return nil
	}
	defer func() {
		for _, p := range pending {
			clear(p.pin)
		}
	}()
	for _, p := range pending {
		if err := s.loginAtStart(ctx, p); err != nil {
			return fmt.Errorf("token %q: %w", p.te.name, err)
		}
	}
	for _, te := range s.tokens {
		if d := te.startRefusal.Load(); d != nil {
			s.pinDropped(te.name, *d)
		}
	}
	if err := s.bindRecorded(ctx); err != nil {
		return fmt.Errorf("binding the keys recorded before bindings were: %w", err)
	}
	s.reconcileAll(ctx)
	return nil
}

// openToken finds the token tc names and reads its PIN source. It returns
// the PIN, which the caller owns and must zero, or nil when the token
// waits for an officer's login. It presents no PIN.
func (s *Service) openToken(ctx context.Context, me *moduleEntry, tc config.Token) (*tokenEntry, []byte, error) {
	sel, err := hsm.ParseTokenSelector(tc.Selector)
	if err != nil {
		return nil, nil, err
	}
	name := tc.Name
	opts := []hsm.TokenOption{hsm.WithVerify(tc.Verify), hsm.WithPINDropHandler(func(d hsm.PINDrop) { s.pinDropped(name, d) })}
	if tc.Sessions > 0 {
		opts = append(opts, hsm.WithPoolSize(tc.Sessions))
	}
	tok, err := me.mod.Token(ctx, sel, opts...)
	if err != nil {
		return nil, nil, err
	}
	te := &tokenEntry{name: tc.Name, module: me, tok: tok}
	pin, err := tc.PIN.Read(ctx)
	switch {
	case errors.Is(err, config.ErrNoPIN):
		s.log.Info("token waits for an officer to log in", "token", tc.Name)
		return te, nil, nil
	case err != nil:
		clear(pin)
		return nil, nil, err
	}
	return te, pin, nil
}

// loginAtStart presents a PIN read at start-up to its token. A refusal
// leaves the token logged out with the reason; other failures are
// returned.
func (s *Service) loginAtStart(ctx context.Context, p pendingLogin) error {
	te, tok, src, pin := p.te, p.te.tok, p.src, p.pin
	err := tok.Login(ctx, pin)
	var pe *hsm.PINError
	if errors.As(err, &pe) {
		// The token refused the configured PIN. Failing the start would
		// have the service manager start the daemon again and again, each
		// time with one more wrong try, until the token locks: start with
		// the token logged out instead, and say why.
		reason := fmt.Sprintf("the token refused the configured PIN (from %s) at start-up (%v); it is not tried again: correct it and restart, or log in with signerctl", src, err)
		te.startRefusal.Store(&hsm.PINDrop{Token: tok.Label(), Serial: tok.Serial(), Reason: reason, Err: err})
		s.log.Error("token PIN refused at start-up; the token stays logged out", "token", te.name, "error", err.Error())
		return nil
	}
	if err != nil {
		return fmt.Errorf("logging in with the PIN from %s: %w", src.Kind, err)
	}
	s.log.Info("token logged in", "token", te.name, "pin_source", src.Kind)
	return nil
}

// Close closes the audit log, logs out every token, zeroes the kept PINs,
// finalizes the modules and closes the state. Calls still being served
// (after a gRPC server's Stop, which does not wait for them) fail with
// the closed parts' errors; nothing they read is taken away under them.
// Close may be called more than once; later calls return nil.
func (s *Service) Close() error {
	var errs []error
	s.closeOnce.Do(func() {
		s.startMu.Lock()
		for _, p := range s.pending {
			clear(p.pin)
		}
		s.pending, s.loginsDone = nil, true
		s.startMu.Unlock()
		s.tsa.close() // the upstream batch pending, with its lines
		if s.limits != nil {
			s.limits.close() // its last summary lines, while the audit log is open
		}
		// The audit log first: a module whose HSM hangs in C_Finalize
		// must not keep the log's last lines from the disk.
		if s.audit != nil {
			if err := s.audit.Close(); err != nil {
				errs = append(errs, fmt.Errorf("audit log: %w", err))
			}
		}
		for _, m := range s.modules {
			if err := m.mod.Close(); err != nil {
				errs = append(errs, fmt.Errorf("module %q: %w", m.name, err))
			}
		}
		if s.store != nil {
			if err := s.store.Close(); err != nil {
				errs = append(errs, fmt.Errorf("state: %w", err))
			}
		}
	})
	return errors.Join(errs...)
}

// SetPolicy replaces the access policy; calls already admitted finish
// under the old one.
func (s *Service) SetPolicy(p *config.Policy) { s.policy.Store(p) }

// Registry returns the service's Prometheus registry.
func (s *Service) Registry() *prometheus.Registry { return s.metrics.reg }

// Ready reports whether every module is initialised; a module that is
// down is tried again first when its backoff has passed (hsm.Module.Check).
func (s *Service) Ready() bool {
	for _, m := range s.modules {
		if m.mod.Check() != nil {
			return false
		}
	}
	return true
}

func (s *Service) token(name string) (*tokenEntry, error) {
	for _, t := range s.tokens {
		if t.name == name {
			return t, nil
		}
	}
	if name == "" && len(s.tokens) == 1 {
		return s.tokens[0], nil
	}
	if name == "" {
		return nil, fmt.Errorf("%w: name a token (%d are configured)", ErrInvalid, len(s.tokens))
	}
	return nil, fmt.Errorf("%w: %q", ErrUnknownToken, name)
}

// ServerOptions are the gRPC server options the API is served with: peer
// credentials from the Unix socket (each connection counted under its
// uid, at most [limits] connections_per_uid), the admission
// interceptors, and ListenerOptions: each call counted among its uid's
// calls from its headers, the configured message size limit, fixed
// HTTP/2 flow-control windows and the [limits] on connections.
func (s *Service) ServerOptions() []grpc.ServerOption {
	return append([]grpc.ServerOption{
		grpc.Creds(limitedCredentials{limits: s.limits}),
		grpc.UnaryInterceptor(s.UnaryInterceptor()),
		grpc.StreamInterceptor(s.StreamInterceptor()),
		grpc.MaxSendMsgSize(64 << 20),
	}, s.ListenerOptions()...)
}

// ListenerOptions are the gRPC server options that bound every listener
// the Service's callers reach it through: the API socket (ServerOptions
// adds them) and a feature's own listener (X-Road's), whose transport
// credentials must give each connection a peercred.AuthInfo and count it
// with OpenConnection. They are: each call counted among its uid's calls
// in progress from its headers, before its request is read, and refused
// RESOURCE_EXHAUSTED beyond [limits] calls_per_uid (TapCall, with
// connScope to end the context of a call it refuses), the count shared
// by every listener; [server] max_message_bytes for a request and
// max_concurrent_streams for the calls of one connection; fixed HTTP/2
// flow-control windows of 1 MiB (no bandwidth probing: the callers are on
// this machine); and the [limits] on connections: handshake_timeout for
// the handshake and preface, idle_timeout for a connection with no call,
// min_ping_interval for keepalive PINGs and max_header_list_bytes for a
// call's headers. A feature's handlers admit each call with Call, which
// takes over the count TapCall made.
func (s *Service) ListenerOptions() []grpc.ServerOption {
	lim := s.cfg.Limits
	return []grpc.ServerOption{
		grpc.NumStreamWorkers(uint32(runtime.NumCPU())),
		grpc.InitialWindowSize(1 << 20), grpc.InitialConnWindowSize(1 << 20),
		grpc.InTapHandle(s.TapCall), grpc.StatsHandler(connScope{}),
		grpc.MaxRecvMsgSize(s.cfg.Server.MaxMessageBytes),
		grpc.ConnectionTimeout(lim.HandshakeTimeout),
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: lim.IdleTimeout}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: lim.MinPingInterval}),
		grpc.MaxHeaderListSize(uint32(lim.MaxHeaderListBytes)),
		grpc.MaxConcurrentStreams(uint32(s.cfg.Server.MaxStreams)),
	}
}
