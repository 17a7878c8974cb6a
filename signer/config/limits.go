package config

import "time"

// Defaults for the [limits] table, used for every key the file leaves out.
// They leave an ordinary client (signer/client keeps one connection with
// one stream open and pipelines its calls on it) far from every limit.
const (
	DefaultConnectionsPerUID      = 64
	DefaultCallsPerUID            = 1024
	DefaultRefusalsPerSecond      = 10
	DefaultRefusalBurst           = 50
	DefaultRefusalSummaryInterval = 10 * time.Second
	DefaultLoginAttemptsPerMinute = 5
	DefaultHandshakeTimeout       = 10 * time.Second
	DefaultIdleTimeout            = 5 * time.Minute
	DefaultMinPingInterval        = 5 * time.Minute
	DefaultMaxHeaderListBytes     = 8 << 10
)

// Bounds of the [limits] values, beyond which a configuration is refused.
const (
	maxConnectionsPerUID = 1 << 16
	// minCallsPerUID leaves a signer/client connection, whose open
	// SignStream counts as a call, room for a call beside it.
	minCallsPerUID            = 2
	maxCallsPerUID            = 1 << 20
	maxRefusalsPerSecond      = 1 << 20
	maxRefusalBurst           = 1 << 20
	minRefusalSummaryInterval = time.Second
	maxRefusalSummaryInterval = time.Hour
	maxLoginAttemptsPerMinute = 600
	minHandshakeTimeout       = 100 * time.Millisecond
	maxHandshakeTimeout       = 2 * time.Minute
	minIdleTimeout            = time.Second
	maxIdleTimeout            = 24 * time.Hour
	minMinPingInterval        = time.Second
	maxMinPingInterval        = 2 * time.Hour
	// minMaxHeaderListBytes leaves room for a call's own headers (its
	// method, content type, timeout and user agent: a few hundred bytes).
	minMaxHeaderListBytes = 1 << 10
	maxMaxHeaderListBytes = 1 << 20
)

// Limits holds the [limits] table: how much of the daemon one uid (as
// SO_PEERCRED reports it on the gRPC and HTTP sockets, and the kernel's
// socket table on the X-Road listener) may hold at once, and how fast its
// refusals and login attempts may come. Every peer that can reach a
// socket or listener, in the policy or not, is counted under its uid, one
// count over all of them; the callers of the TSA's TCP listener, which
// have no uid, are counted together as one peer (uid 4294967295, which no
// process has). The daemon forgets a uid that holds nothing and has its
// buckets full again.
type Limits struct {
	// ConnectionsPerUID is the most connections one uid may have open at
	// once, to the gRPC socket, the HTTP socket and the X-Road listener
	// together (and the most the TSA's TCP listener holds for all its
	// callers). A connection beyond it is closed as soon as it is
	// accepted (on the X-Road listener, as soon as the kernel names its
	// uid, before TLS), before any call is read, and counted
	// (signerd_limit_exceeded_total{limit="connections"} and the uid's
	// "denied.summary" audit line).
	ConnectionsPerUID int
	// CallsPerUID is the most calls one uid may have in progress at once,
	// over the gRPC socket, the X-Road listener and POST /tsa together:
	// each unary call and each open stream, counted from its headers
	// before its request is read (so that partly received requests
	// count), and each call of a SignStream being signed. A call beyond it is answered RESOURCE_EXHAUSTED and
	// counted as a connection beyond ConnectionsPerUID is. At least 2.
	CallsPerUID int
	// RefusalsPerSecond and RefusalBurst are a token bucket per uid for the
	// audit lines of refusals (PERMISSION_DENIED, and the login attempts
	// beyond LoginAttemptsPerMinute). A refusal the bucket has no token
	// for is still answered, but instead of a line of its own it is
	// counted, and the counts are written in one "denied.summary" line per
	// uid every RefusalSummaryInterval (and when the daemon stops).
	RefusalsPerSecond int
	RefusalBurst      int
	// RefusalSummaryInterval is how often a uid's counts are written, if
	// it has any: between 1s and 1h.
	RefusalSummaryInterval time.Duration
	// LoginAttemptsPerMinute bounds LoginToken and ChangePin calls per uid:
	// a bucket of that many attempts, refilled over a minute. An attempt
	// beyond it is answered RESOURCE_EXHAUSTED without reaching the token
	// (whose PIN a real HSM locks after a few wrong tries), and audited as
	// a refusal. Between 1 and 600.
	LoginAttemptsPerMinute int
	// HandshakeTimeout is how long a new connection to the gRPC socket
	// or the X-Road listener has to complete its handshake: its TLS
	// handshake (X-Road), HTTP/2 preface and first settings. A connection that has not by then (one that connects and
	// sends nothing) is closed. It is gRPC's ConnectionTimeout, whose own
	// default is 120 s. Between 100ms and 2m.
	HandshakeTimeout time.Duration
	// IdleTimeout is how long a connection with no call in progress (no
	// unary call, no open stream) is kept; then the daemon sends it
	// GOAWAY and closes it. A gRPC client connects again at its next
	// call. It is gRPC's keepalive MaxConnectionIdle on the gRPC socket
	// and the X-Road listener, and the HTTP socket's keep-alive between
	// requests. Between 1s and 24h.
	IdleTimeout time.Duration
	// MinPingInterval is the keepalive enforcement policy: a client that
	// sends HTTP/2 PINGs more often than this, or any PING while it has
	// no call in progress, is sent GOAWAY (ENHANCE_YOUR_CALM,
	// "too_many_pings") after a few and closed. gRPC's own default is 5m.
	// Between 1s and 2h.
	MinPingInterval time.Duration
	// MaxHeaderListBytes is the largest header list (the decoded size of
	// a call's headers and metadata, as HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE
	// announces it) the daemon reads; a call whose headers are larger is
	// reset without being read further. gRPC's own default is 16 MiB.
	// Between 1024 and 1048576.
	MaxHeaderListBytes int
}

// DefaultLimits returns the [limits] defaults.
func DefaultLimits() Limits {
	return Limits{
		ConnectionsPerUID:      DefaultConnectionsPerUID,
		CallsPerUID:            DefaultCallsPerUID,
		RefusalsPerSecond:      DefaultRefusalsPerSecond,
		RefusalBurst:           DefaultRefusalBurst,
		RefusalSummaryInterval: DefaultRefusalSummaryInterval,
		LoginAttemptsPerMinute: DefaultLoginAttemptsPerMinute,
		HandshakeTimeout:       DefaultHandshakeTimeout,
		IdleTimeout:            DefaultIdleTimeout,
		MinPingInterval:        DefaultMinPingInterval,
		MaxHeaderListBytes:     DefaultMaxHeaderListBytes,
	}
}

// fileLimits is the [limits] table as written in the file.
type fileLimits struct {
	ConnectionsPerUID      int64  `toml:"connections_per_uid"`
	CallsPerUID            int64  `toml:"calls_per_uid"`
	RefusalsPerSecond      int64  `toml:"refusals_per_second"`
	RefusalBurst           int64  `toml:"refusal_burst"`
	RefusalSummaryInterval string `toml:"refusal_summary_interval"`
	LoginAttemptsPerMinute int64  `toml:"login_attempts_per_minute"`
	HandshakeTimeout       string `toml:"handshake_timeout"`
	IdleTimeout            string `toml:"idle_timeout"`
	MinPingInterval        string `toml:"min_ping_interval"`
	MaxHeaderListBytes     int64  `toml:"max_header_list_bytes"`
}

// file converts l back to the schema.
func (l Limits) file() fileLimits {
	return fileLimits{
		ConnectionsPerUID:      int64(l.ConnectionsPerUID),
		CallsPerUID:            int64(l.CallsPerUID),
		RefusalsPerSecond:      int64(l.RefusalsPerSecond),
		RefusalBurst:           int64(l.RefusalBurst),
		RefusalSummaryInterval: l.RefusalSummaryInterval.String(),
		LoginAttemptsPerMinute: int64(l.LoginAttemptsPerMinute),
		HandshakeTimeout:       l.HandshakeTimeout.String(),
		IdleTimeout:            l.IdleTimeout.String(),
		MinPingInterval:        l.MinPingInterval.String(),
		MaxHeaderListBytes:     int64(l.MaxHeaderListBytes),
	}
}

// check checks the [limits] table into c.Limits.
func (fl *fileLimits) check(ck *checker, c *Config) {
	var l Limits
	count := func(key string, v, lo, hi int64, dst *int) {
		if v < lo || v > hi {
			ck.addf("limits."+key, "%d is not between %d and %d", v, lo, hi)
			return
		}
		*dst = int(v)
	}
	count("connections_per_uid", fl.ConnectionsPerUID, 1, maxConnectionsPerUID, &l.ConnectionsPerUID)
	count("calls_per_uid", fl.CallsPerUID, minCallsPerUID, maxCallsPerUID, &l.CallsPerUID)
	count("refusals_per_second", fl.RefusalsPerSecond, 1, maxRefusalsPerSecond, &l.RefusalsPerSecond)
	count("refusal_burst", fl.RefusalBurst, 1, maxRefusalBurst, &l.RefusalBurst)
	count("login_attempts_per_minute", fl.LoginAttemptsPerMinute, 1, maxLoginAttemptsPerMinute, &l.LoginAttemptsPerMinute)
	count("max_header_list_bytes", fl.MaxHeaderListBytes, minMaxHeaderListBytes, maxMaxHeaderListBytes, &l.MaxHeaderListBytes)
	duration := func(key, v string, lo, hi time.Duration, dst *time.Duration) {
		d, err := time.ParseDuration(v)
		switch {
		case err != nil:
			ck.addf("limits."+key, "%q is not a duration such as \"10s\"", v)
		case d < lo || d > hi:
			ck.addf("limits."+key, "%q is not between %s and %s", v, lo, hi)
		default:
			*dst = d
		}
	}
	duration("refusal_summary_interval", fl.RefusalSummaryInterval, minRefusalSummaryInterval, maxRefusalSummaryInterval, &l.RefusalSummaryInterval)
	duration("handshake_timeout", fl.HandshakeTimeout, minHandshakeTimeout, maxHandshakeTimeout, &l.HandshakeTimeout)
	duration("idle_timeout", fl.IdleTimeout, minIdleTimeout, maxIdleTimeout, &l.IdleTimeout)
	duration("min_ping_interval", fl.MinPingInterval, minMinPingInterval, maxMinPingInterval, &l.MinPingInterval)
	c.Limits = l
}

// Validate checks l as Parse checks the [limits] table, for limits built
// in Go; errors wrap ErrInvalid. The zero Limits is invalid.
func (l Limits) Validate() error {
	ck := &checker{name: "limits"}
	fl := l.file()
	fl.check(ck, &Config{})
	return ck.err()
}
