package signer

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
	"google.golang.org/grpc/credentials"

	"github.com/hsmsigner/hsmsigner/signer/audit"
	"github.com/hsmsigner/hsmsigner/signer/config"
	"github.com/hsmsigner/hsmsigner/signer/peercred"
)

// ErrLimit means the caller's uid is at one of its [limits]: its
// connections, its calls in progress, its login attempts, or the daemon's
// count of uids.
var ErrLimit = errors.New("per-uid limit reached")

// maxTrackedUIDs bounds the uids the limits keep at once, so that a
// caller cycling through uids cannot grow the daemon's memory. A uid is
// kept while it holds a connection or a call, has counts not yet
// summarised, or has a bucket not yet full again; others are forgotten at
// the next sweep. A new uid that finds the table full of busy ones is
// refused, unless the policy in force names it (its uid, or its primary
// gid, in the admins or a client rule): such a peer is kept beyond the
// bound, so that no one outside the policy can lock out the security
// server or an officer by filling the table. Peers the policy names are
// as many as the uids its rules match.
const maxTrackedUIDs = 1 << 14

// OpDeniedSummary is the audit op of the line that counts, for one uid and
// one interval, the refusals not written one line each and the
// connections and calls refused at the limits.
const OpDeniedSummary = "denied.summary"

// Names of the limits in signerd_limit_exceeded_total.
const (
	limitConnections = "connections"
	limitCalls       = "calls"
	limitLogins      = "logins"
	limitUIDs        = "uids"
)

// uidLimits applies config.Limits to each uid, and writes the summary
// lines of what it counted instead of writing it line by line.
type uidLimits struct {
	cfg   config.Limits
	log   *slog.Logger
	write func(audit.Record) error // appends a summary line
	now   func() time.Time
	max   int                        // uids kept at once, but for those known names
	known func(p peercred.Peer) bool // whether the policy in force names p

	exceeded  *prometheus.CounterVec // by limit
	unwritten prometheus.Counter     // refusals counted instead of written
	tracked   prometheus.GaugeFunc

	mu      sync.Mutex
	uids    map[uint32]*uidUse
	running bool // the sweeper runs
	closed  bool
	stop    chan struct{}
	done    chan struct{}
}

// uidUse is what one uid holds and may still do.
type uidUse struct {
	conns, calls int
	refusals     *rate.Limiter // refusals written one line each
	logins       *rate.Limiter
	counts       uidCounts // since the last summary line
}

// uidCounts are what a uid's next summary line reports.
type uidCounts struct {
	since     time.Time
	unwritten map[string]int // audit op → refusals not written one by one
	conns     int            // connections closed at connections_per_uid
	calls     int            // calls refused at calls_per_uid
}

func (c *uidCounts) empty() bool { return len(c.unwritten) == 0 && c.conns == 0 && c.calls == 0 }

// start notes the time of the first thing counted since the last summary.
func (c *uidCounts) start(now time.Time) {
	if c.empty() {
		c.since = now
	}
}

// newUIDLimits applies cfg per uid, keeping at most maxTrackedUIDs uids
// but those known says the policy names; write appends a summary line.
func newUIDLimits(cfg config.Limits, log *slog.Logger, write func(audit.Record) error, known func(peercred.Peer) bool) *uidLimits {
	return newUIDLimitsBounded(cfg, log, write, known, maxTrackedUIDs)
}

// newUIDLimitsBounded is newUIDLimits with max uids kept at once.
func newUIDLimitsBounded(cfg config.Limits, log *slog.Logger, write func(audit.Record) error, known func(peercred.Peer) bool, max int) *uidLimits {
	l := &uidLimits{
		cfg: cfg, log: log, write: write, now: time.Now, max: max, known: known,
		uids: map[uint32]*uidUse{},
		stop: make(chan struct{}), done: make(chan struct{}),
		exceeded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "signerd_limit_exceeded_total",
			Help: "Connections closed and calls refused at a per-uid limit ([limits]), by limit: connections, calls, logins, uids (the daemon keeps too many uids).",
		}, []string{"limit"}),
		unwritten: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "signerd_refusals_summarised_total",
			Help: "Refusals beyond a uid's refusals_per_second, counted in its denied.summary audit line instead of written one line each.",
		}),
	}
	l.tracked = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "signerd_limit_uids", Help: "Uids whose use the per-uid limits keep track of now.",
	}, func() float64 {
		l.mu.Lock()
		defer l.mu.Unlock()
		return float64(len(l.uids))
	})
	for _, name := range []string{limitConnections, limitCalls, limitLogins, limitUIDs} {
		l.exceeded.WithLabelValues(name)
	}
	return l
}

func (l *uidLimits) collectors() []prometheus.Collector {
	return []prometheus.Collector{l.exceeded, l.unwritten, l.tracked}
}

// use returns the entry of p's uid, making it if need be; nil when the
// table is full of busy uids and the policy does not name p. Call with mu
// held.
func (l *uidLimits) use(p peercred.Peer, now time.Time) *uidUse {
	uid := p.UID
	if u := l.uids[uid]; u != nil {
		return u
	}
	if len(l.uids) >= l.max {
		l.sweep(now)
		if len(l.uids) >= l.max && (l.known == nil || !l.known(p)) {
			l.exceeded.WithLabelValues(limitUIDs).Inc()
			return nil
		}
	}
	u := &uidUse{
		refusals: rate.NewLimiter(rate.Limit(l.cfg.RefusalsPerSecond), l.cfg.RefusalBurst),
		logins:   rate.NewLimiter(rate.Every(time.Minute/time.Duration(l.cfg.LoginAttemptsPerMinute)), l.cfg.LoginAttemptsPerMinute),
	}
	l.uids[uid] = u
	if !l.running && !l.closed {
		l.running = true
		go l.run()
	}
	return u
}

// idle reports whether forgetting u loses nothing: it holds nothing, has
// nothing to report, and its buckets are full again.
func (l *uidLimits) idle(u *uidUse, now time.Time) bool {
	return u.conns == 0 && u.calls == 0 && u.counts.empty() &&
		u.refusals.TokensAt(now) >= float64(l.cfg.RefusalBurst) &&
		u.logins.TokensAt(now) >= float64(l.cfg.LoginAttemptsPerMinute)
}

// sweep forgets the idle uids. Call with mu held.
func (l *uidLimits) sweep(now time.Time) {
	maps.DeleteFunc(l.uids, func(_ uint32, u *uidUse) bool { return l.idle(u, now) })
}

// errTooManyUIDs refuses a uid the table has no room for.
func (l *uidLimits) errTooManyUIDs(uid uint32) error {
	return fmt.Errorf("%w: signerd keeps track of %d uids, all busy; uid %d, which the policy does not name, is refused until one is idle", ErrLimit, l.max, uid)
}

// openConn counts a connection of p's uid; over connections_per_uid it
// is refused (and counted). release, called once the connection is
// closed, gives it back.
func (l *uidLimits) openConn(p peercred.Peer) (release func(), err error) {
	uid := p.UID
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	u := l.use(p, now)
	if u == nil {
		return nil, l.errTooManyUIDs(p.UID)
	}
	if u.conns >= l.cfg.ConnectionsPerUID {
		u.counts.start(now)
		u.counts.conns++
		l.exceeded.WithLabelValues(limitConnections).Inc()
		return nil, fmt.Errorf("%w: uid %d has %d connections open, the most [limits] connections_per_uid allows", ErrLimit, uid, u.conns)
	}
	u.conns++
	return sync.OnceFunc(func() {
		l.mu.Lock()
		u.conns--
		l.mu.Unlock()
	}), nil
}

// startCall counts a call in progress of p's uid; over calls_per_uid it
// is refused (and counted). done, called when the call ends, gives it
// back.
func (l *uidLimits) startCall(p peercred.Peer) (done func(), err error) {
	uid := p.UID
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	u := l.use(p, now)
	if u == nil {
		return nil, l.errTooManyUIDs(p.UID)
	}
	if u.calls >= l.cfg.CallsPerUID {
		u.counts.start(now)
		u.counts.calls++
		l.exceeded.WithLabelValues(limitCalls).Inc()
		return nil, fmt.Errorf("%w: uid %d has %d calls in progress, the most [limits] calls_per_uid allows; try again when one has ended", ErrLimit, uid, u.calls)
	}
	u.calls++
	return sync.OnceFunc(func() {
		l.mu.Lock()
		u.calls--
		l.mu.Unlock()
	}), nil
}

// refusalLine reports whether a refusal of p, to be audited as op, may
// have a line of its own; when not, it is counted for its uid's next
// summary line.
func (l *uidLimits) refusalLine(p peercred.Peer, op string) bool {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	u := l.use(p, now)
	if u == nil {
		// No room to count it: write it, rather than lose it.
		return true
	}
	if u.refusals.AllowN(now, 1) {
		return true
	}
	u.counts.start(now)
	if u.counts.unwritten == nil {
		u.counts.unwritten = map[string]int{}
	}
	u.counts.unwritten[op]++
	l.unwritten.Inc()
	return false
}

// loginAttempt spends one of the login attempts of p's uid; false beyond
// login_attempts_per_minute.
func (l *uidLimits) loginAttempt(p peercred.Peer) bool {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	u := l.use(p, now)
	if u == nil || !u.logins.AllowN(now, 1) {
		l.exceeded.WithLabelValues(limitLogins).Inc()
		return false
	}
	return true
}

// run writes the summary lines every refusal_summary_interval and
// forgets idle uids, until close.
func (l *uidLimits) run() {
	defer close(l.done)
	tick := time.NewTicker(l.cfg.RefusalSummaryInterval)
	defer tick.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-tick.C:
			l.summarise()
		}
	}
}

// summarise writes one summary line for each uid with counts, and
// forgets the idle uids.
func (l *uidLimits) summarise() {
	now := l.now()
	l.mu.Lock()
	var lines []audit.Record
	for uid, u := range l.uids {
		if !u.counts.empty() {
			lines = append(lines, l.summary(uid, u.counts, now))
			u.counts = uidCounts{}
		}
	}
	l.sweep(now)
	l.mu.Unlock()
	slices.SortFunc(lines, func(a, b audit.Record) int { return cmp.Compare(a.UID, b.UID) })
	for _, r := range lines {
		if err := l.write(r); err != nil {
			l.log.Error("audit append failed", "op", r.Op, "uid", r.UID, "error", err.Error())
		}
	}
}

// summary is the audit line of c, uid's counts until now.
func (l *uidLimits) summary(uid uint32, c uidCounts, now time.Time) audit.Record {
	var parts []string
	total := c.conns + c.calls
	if len(c.unwritten) > 0 {
		n := 0
		var ops []string
		for _, op := range slices.Sorted(maps.Keys(c.unwritten)) {
			n += c.unwritten[op]
			ops = append(ops, fmt.Sprintf("%s %d", op, c.unwritten[op]))
		}
		total += n
		parts = append(parts, fmt.Sprintf("%d refusals not written one by one (%s), beyond refusals_per_second %d (burst %d)",
			n, strings.Join(ops, ", "), l.cfg.RefusalsPerSecond, l.cfg.RefusalBurst))
	}
	if c.conns > 0 {
		parts = append(parts, fmt.Sprintf("%d connections closed at connections_per_uid %d", c.conns, l.cfg.ConnectionsPerUID))
	}
	if c.calls > 0 {
		parts = append(parts, fmt.Sprintf("%d calls refused at calls_per_uid %d", c.calls, l.cfg.CallsPerUID))
	}
	return audit.Record{
		Time: now, UID: int64(uid), GID: -1, PID: -1, Op: OpDeniedSummary, Count: total,
		Detail: fmt.Sprintf("from %s to %s: %s", c.since.UTC().Format(time.RFC3339Nano), now.UTC().Format(time.RFC3339Nano), strings.Join(parts, "; ")),
		Result: fmt.Sprintf("%d refused", total),
	}
}

// close stops the sweeper and writes the summary lines of what is still
// counted. Later calls do nothing.
func (l *uidLimits) close() {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.closed = true
	running := l.running
	l.mu.Unlock()
	if running {
		close(l.stop)
		<-l.done
	}
	l.summarise()
}

// writeSummary appends a summary line to the audit log.
func (s *Service) writeSummary(r audit.Record) error {
	return s.audit.Append(context.Background(), r)
}

// limitedCredentials are peercred.Credentials that also count each
// connection under its peer's uid as the handshake accepts it, and
// refuse one beyond connections_per_uid: gRPC closes it at once, before
// it reads anything from it.
type limitedCredentials struct {
	peercred.Credentials
	limits *uidLimits
}

// ServerHandshake reads the peer and counts the connection.
func (c limitedCredentials) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := c.Credentials.ServerHandshake(conn)
	if err != nil {
		return nil, nil, err
	}
	ai, ok := info.(peercred.AuthInfo)
	if !ok {
		return nil, nil, fmt.Errorf("%w: %T", peercred.ErrNoCredentials, info)
	}
	if conn, err = c.limits.countConn(conn, ai.Peer); err != nil {
		return nil, nil, err
	}
	return conn, info, nil
}

// countConn counts conn, a connection of peer p, as openConn does, and
// returns it wrapped so that closing it gives the count back.
func (l *uidLimits) countConn(conn net.Conn, p peercred.Peer) (net.Conn, error) {
	release, err := l.openConn(p)
	if err != nil {
		return nil, err
	}
	return &countedConn{Conn: conn, release: release}, nil
}

// OpenConnection counts conn, a connection of peer p accepted on a
// listener of a feature (X-Road's), among its uid's connections: the
// same count, under the same [limits] connections_per_uid, as the
// connections of the gRPC and HTTP sockets, so that a uid holds at most
// that many over all of them. Beyond it the error wraps ErrLimit, the
// refusal is counted as the gRPC socket's are
// (signerd_limit_exceeded_total{limit="connections"} and the uid's
// denied.summary line) and the caller closes conn. Otherwise the
// connection returned is conn, which gives its count back when it is
// closed (once): the caller uses it in conn's place from then on, and
// closes it on every path that drops the connection.
func (s *Service) OpenConnection(conn net.Conn, p peercred.Peer) (net.Conn, error) {
	return s.limits.countConn(conn, p)
}

// ConnectionsPerUID is [limits] connections_per_uid: the most
// connections one uid holds over every socket and listener, and the bound
// a feature's listener puts on other pools of connections (X-Road's
// handshakes from one remote address).
func (s *Service) ConnectionsPerUID() int { return s.cfg.Limits.ConnectionsPerUID }

// Clone implements credentials.TransportCredentials.
func (c limitedCredentials) Clone() credentials.TransportCredentials { return c }

// countedConn gives its uid's connection back when it is closed.
type countedConn struct {
	net.Conn
	release func()
}

// Close closes the connection and gives it back (once).
func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.release()
	return err
}
