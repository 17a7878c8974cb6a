package signer

import (
	"context"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc/codes"

	"github.com/hsmsigner/hsmsigner/signer/peercred"
)

// metrics are the service's Prometheus metrics, in a registry of its own.
type metrics struct {
	// The audit log's: lines that failed, and the signed checkpoints.
	auditFailures      prometheus.Counter
	checkpoints        prometheus.Counter
	checkpointFailures prometheus.Counter
	lastCheckpoint     prometheus.Gauge

	reg     *prometheus.Registry
	calls   *prometheus.CounterVec
	latency *prometheus.HistogramVec
	// pinDrops counts, per token, the PINs the daemon gave up because the
	// token refused them (or a PIN change ended in doubt).
	pinDrops *prometheus.CounterVec
}

func newMetrics(s *Service) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "signerd_calls_total", Help: "API calls by method and gRPC code.",
		}, []string{"method", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "signerd_call_seconds", Help: "API call latency by method.",
			Buckets: prometheus.ExponentialBuckets(0.00005, 2, 18),
		}, []string{"method"}),
		pinDrops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "signerd_token_pin_drops_total", Help: "PINs the daemon dropped because the token refused them; the token stays logged out until an officer logs in.",
		}, []string{"token"}),
	}
	m.reg.MustRegister(m.calls, m.latency, m.pinDrops, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for _, t := range s.tokens {
		labels := prometheus.Labels{"token": t.name}
		tok := t.tok
		m.reg.MustRegister(
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "signerd_hsm_sessions_open", Help: "Open PKCS#11 sessions in the token's pool.", ConstLabels: labels},
				func() float64 { return float64(tok.Stats().Open) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "signerd_hsm_sessions_in_use", Help: "Pool sessions in use.", ConstLabels: labels},
				func() float64 { st := tok.Stats(); return float64(st.Open - st.Idle) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "signerd_hsm_session_waits_total", Help: "Calls that waited for a free session.", ConstLabels: labels},
				func() float64 { return float64(tok.Stats().Waits) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "signerd_hsm_relogins_total", Help: "Re-logins with the kept PIN after an HSM reset.", ConstLabels: labels},
				func() float64 { return float64(tok.Stats().Logins) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "signerd_token_logged_in", Help: "1 when the token is logged in.", ConstLabels: labels},
				func() float64 { return boolFloat(tok.LoggedIn()) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "signerd_hsm_login_attempts_total", Help: "C_Login calls made as the user, with the kept PIN or an officer's, whatever the answer.", ConstLabels: labels},
				func() float64 { return float64(tok.Stats().LoginAttempts) }),
		)
		m.pinDrops.WithLabelValues(t.name)
	}
	for _, me := range s.modules {
		mod := me.mod
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "signerd_hsm_module_ready", Help: "1 when the PKCS#11 module is initialised and usable.", ConstLabels: prometheus.Labels{"module": me.name},
		}, func() float64 { return boolFloat(mod.Info().Ready) }))
	}
	m.auditFailures = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "signerd_audit_failures_total", Help: "Audit lines that could not be written; each call was refused or its result withheld.",
	})
	m.checkpoints = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "signerd_audit_checkpoints_total", Help: "Signed audit checkpoints appended to the audit log.",
	})
	m.checkpointFailures = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "signerd_audit_checkpoint_failures_total", Help: "Audit checkpoints that could not be made (audit key missing or unusable, token logged out, audit log failed).",
	})
	m.lastCheckpoint = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "signerd_audit_last_checkpoint_timestamp_seconds", Help: "When the last audit checkpoint was appended (Unix time); 0 if none since start.",
	})
	m.reg.MustRegister(m.auditFailures, m.checkpoints, m.checkpointFailures, m.lastCheckpoint)
	return m
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (m *metrics) observe(fullMethod string, code codes.Code, d time.Duration) {
	method := fullMethod[strings.LastIndexByte(fullMethod, '/')+1:]
	m.calls.WithLabelValues(method, code.String()).Inc()
	m.latency.WithLabelValues(method).Observe(d.Seconds())
}

// HTTPServer returns the server of the HTTP socket: /metrics
// (Prometheus), /healthz (200 once every module is ready, 503 otherwise),
// /ocsp/{cert-sha256-hex} (the certificate's freshest good OCSP response)
// and POST /tsa (the built-in RFC 3161 time-stamping authority, for
// callers the policy lets use the TSA key, read from each connection's
// socket credentials).
//
// Each connection is counted under its peer's uid as it is accepted,
// with the gRPC socket's (and the X-Road listener's) connections, and
// closed there, before a byte is read, beyond [limits]
// connections_per_uid or when its peer cannot be read; a request must
// be read within httpReadTimeout (its header within httpHeaderTimeout),
// its answer written within httpWriteTimeout, and a connection between
// requests is kept [limits] idle_timeout.
func (s *Service) HTTPServer() *http.Server {
	conns := &httpConns{admit: func(ctx context.Context, c net.Conn) (context.Context, func(), error) {
		p, err := peercred.FromConn(c)
		if err != nil {
			return nil, nil, err
		}
		release, err := s.limits.openConn(p)
		if err != nil {
			return nil, nil, err
		}
		return context.WithValue(ctx, connPeerKey{}, p), release, nil
	}}
	return &http.Server{
		Handler: s.httpHandler(), ConnContext: conns.connContext, ConnState: conns.connState,
		ReadHeaderTimeout: httpHeaderTimeout, ReadTimeout: httpReadTimeout, WriteTimeout: httpWriteTimeout,
		IdleTimeout: s.cfg.Limits.IdleTimeout, MaxHeaderBytes: httpMaxHeaderBytes,
	}
}

// TSAServer returns the server of the built-in TSA's loopback TCP
// listener ([tsa] listen): POST /tsa only, for RFC 3161 clients that
// speak only HTTP over TCP. Its callers have no socket credentials: the
// listener admits whoever reaches it, and each token's audit line names
// the remote address.
//
// For the [limits], its callers are one peer without a uid
// (anonymousPeer, counted as uid 4294967295, which no process has): at
// most connections_per_uid connections open at once over all of them,
// one beyond closed as it is accepted, and calls_per_uid calls in
// progress. A request must be read within httpReadTimeout, its answer
// written within httpWriteTimeout, and a connection between requests is
// kept httpHeaderTimeout.
func (s *Service) TSAServer() *http.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /tsa", func(w http.ResponseWriter, r *http.Request) {
		s.serveTSAFor(w, r, func() caller { return caller{peer: anonymousPeer(), remote: "tcp:" + r.RemoteAddr} })
	})
	conns := &httpConns{admit: func(ctx context.Context, _ net.Conn) (context.Context, func(), error) {
		release, err := s.limits.openConn(anonymousPeer())
		return ctx, release, err
	}}
	return &http.Server{
		Handler: mux, ConnContext: conns.connContext, ConnState: conns.connState,
		ReadHeaderTimeout: httpHeaderTimeout, ReadTimeout: httpReadTimeout, WriteTimeout: httpWriteTimeout,
		IdleTimeout: httpHeaderTimeout, MaxHeaderBytes: httpMaxHeaderBytes,
	}
}

// Bounds of the HTTP servers' connections.
const (
	// httpHeaderTimeout bounds the reading of a request's header.
	httpHeaderTimeout = 10 * time.Second
	// httpReadTimeout bounds the reading of a whole request, its body
	// included (a time-stamp query is at most tsa.MaxRequestSize).
	httpReadTimeout = 10 * time.Second
	// httpWriteTimeout bounds a request's handling and the writing of
	// its answer, from the end of its header.
	httpWriteTimeout = time.Minute
	// httpMaxHeaderBytes bounds a request's header.
	httpMaxHeaderBytes = 16 << 10
)

// httpConns counts an http.Server's connections: admit, called as each
// is accepted (ConnContext), counts it and returns its context, or
// refuses it, and the connection is closed there, before a byte of it is
// read; the count is given back when the server is done with the
// connection (ConnState: closed, or hijacked).
type httpConns struct {
	admit func(ctx context.Context, c net.Conn) (context.Context, func(), error)

	mu   sync.Mutex
	open map[net.Conn]func() // connection → its release
}

// connContext is the server's ConnContext.
func (h *httpConns) connContext(ctx context.Context, c net.Conn) context.Context {
	cctx, release, err := h.admit(ctx, c)
	if err != nil {
		// The server reads nothing from a closed connection and ends it.
		_ = c.Close()
		return ctx
	}
	h.mu.Lock()
	if h.open == nil {
		h.open = map[net.Conn]func(){}
	}
	h.open[c] = release
	h.mu.Unlock()
	return cctx
}

// connState is the server's ConnState.
func (h *httpConns) connState(c net.Conn, st http.ConnState) {
	if st != http.StateClosed && st != http.StateHijacked {
		return
	}
	h.mu.Lock()
	release := h.open[c]
	delete(h.open, c)
	h.mu.Unlock()
	if release != nil {
		release()
	}
}

type connPeerKey struct{}

// peerOfRequest returns the socket credentials of r's connection.
func peerOfRequest(r *http.Request) (peercred.Peer, bool) {
	p, ok := r.Context().Value(connPeerKey{}).(peercred.Peer)
	return p, ok
}

func (s *Service) httpHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /ocsp/{hash}", s.serveOCSP)
	mux.HandleFunc("POST /tsa", s.serveTSA)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !s.Ready() {
			w.WriteHeader(http.StatusServiceUnavailable)
			for _, m := range s.modules {
				if mi := m.mod.Info(); !mi.Ready {
					_, _ = w.Write([]byte("module " + m.name + " not ready: " + mi.Down + "\n"))
				}
			}
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	return mux
}

// registerTSA adds the time-stamping service's metrics: whether the
// built-in TSA serves, whether its clock guard refuses, the tokens issued
// and refused, and the upstream mode's health.
func (m *metrics) registerTSA(s *Service) {
	t := s.tsa
	m.reg.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "signerd_tsa_tokens_issued_total", Help: "Time-stamp tokens the built-in TSA issued."},
			func() float64 { return float64(t.issued.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "signerd_tsa_requests_refused_total", Help: "Time-stamp requests the built-in TSA refused (an RFC 3161 rejection or a gRPC error)."},
			func() float64 { return float64(t.refused.Load()) }),
	)
	if t.builtin {
		m.reg.MustRegister(
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "signerd_tsa_serving", Help: "1 when the built-in TSA would issue a token now; signerctl tsa status says why not."},
				func() float64 {
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					defer cancel()
					_, reason := s.tsaReason(ctx)
					return boolFloat(reason == "")
				}),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "signerd_tsa_clock_refusing", Help: "1 when the clock guard refuses tokens (timeNotAvailable): clock unsynchronised, its error beyond the accuracy, or stepped."},
				func() float64 { return boolFloat(t.guard.Ready() != nil) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "signerd_tsa_clock_guard_off", Help: "1 when the clock guard is turned off ([tsa] require_synced_clock = false): never in production."},
				func() float64 { return boolFloat(t.guard.Off()) }),
		)
	}
	if t.upstream != nil {
		m.reg.MustRegister(
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "signerd_tsa_upstream_healthy", Help: "0 once every external TSA has failed for [tsa.upstream] unhealthy_after."},
				func() float64 { return boolFloat(t.upstream.Health().Healthy) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "signerd_tsa_upstream_calls_total", Help: "Requests sent to the external TSAs."},
				func() float64 { return float64(t.upstream.Health().Calls) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "signerd_tsa_upstream_stamps_total", Help: "Verified upstream stamps handed to callers."},
				func() float64 { return float64(t.upstream.Health().Stamps) }),
		)
	}
}
