package config

import "time"

// Defaults for the [limits] table, used for every key the file leaves out.
// They leave an ordinary client (signer/client keeps one connection with
// one stream open and pipelines its calls on it) far from every limit.
const (
	DefaultConnectionsPerUID      = 64
	DefaultCallsPerUID            = 4096
	DefaultRefusalsPerSecond      = 10
	DefaultRefusalBurst           = 50
	DefaultRefusalSummaryInterval = 10 * time.Second
	DefaultLoginAttemptsPerMinute = 5
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
)

// Limits holds the [limits] table: how much of the daemon one uid (as
// SO_PEERCRED reports it on the gRPC socket) may hold at once, and how
// fast its refusals and login attempts may come. Every peer that can reach
// the socket, in the policy or not, is counted under its uid; the daemon
// forgets a uid that holds nothing and has its buckets full again.
type Limits struct {
	// ConnectionsPerUID is the most connections one uid may have open to
	// the gRPC socket at once. A connection beyond it is closed as soon as
	// it is accepted, before any call is read, and counted
	// (signerd_limit_exceeded_total{limit="connections"} and the uid's
	// "denied.summary" audit line).
	ConnectionsPerUID int
	// CallsPerUID is the most calls one uid may have in progress at once:
	// each unary call, each open stream, and each call of a SignStream
	// being signed. A call beyond it is answered RESOURCE_EXHAUSTED and
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
	const key = "limits.refusal_summary_interval"
	d, err := time.ParseDuration(fl.RefusalSummaryInterval)
	switch {
	case err != nil:
		ck.addf(key, "%q is not a duration such as \"10s\"", fl.RefusalSummaryInterval)
	case d < minRefusalSummaryInterval || d > maxRefusalSummaryInterval:
		ck.addf(key, "%q is not between %s and %s", fl.RefusalSummaryInterval, minRefusalSummaryInterval, maxRefusalSummaryInterval)
	default:
		l.RefusalSummaryInterval = d
	}
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
