package signer

import (
	"context"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/stats"

	"github.com/hsmsigner/hsmsigner/hsm"
	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/audit"
)

// Stage marks of one call, in the order a call passes them. The client's
// marks come from a client stats handler, the server's from a server
// stats handler, an interceptor chained after the Service's own (so it
// runs once the call is admitted, right around the Service's method) and
// a wrapper of the audit log.
const (
	markClientBegin  = iota // client: the call starts
	markClientSent          // client: request encoded and handed to the transport
	markServerHeader        // server: request headers read
	markServerDecode        // server: request message read and decoded
	markHandlerStart        // server: admitted; the Service's method starts
	markSignStart           // server: the token is asked to sign
	markSignEnd             // server: the token's signature is back (and verified)
	markAuditStart          // server: the audit line is handed to the log
	markAuditEnd            // server: the log has written it
	markHandlerEnd          // server: the Service's method returns
	markServerSent          // server: response encoded and handed to the transport
	markClientRecv          // client: response read and decoded
	markClientEnd           // client: the call is over (trailers read)
	markReturned            // client: Sign returned to its caller
	numMarks
)

// latencyStages names the span that ends at each mark, from the latest
// mark before it that the call passed, or from the call's start (a call on
// the shared SignStream passes no handler marks, so its lookup span also
// holds the hand-off to a worker, the admission and the policy's role
// check), as the breakdown reports them: µs, the median over the run's
// daemon calls. hsm-sign is the very call raw makes, inside the daemon:
// the difference of its median from the raw p50 is what signing costs
// more within a call than in a tight loop (see BenchmarkSignAfterIdle in
// hsm).
var latencyStages = [numMarks]string{
	markClientSent:   "client-encode",  // request encoded and handed to the transport
	markServerHeader: "request-wire",   // client writer goroutine, socket, server reader
	markServerDecode: "server-decode",  // request message read and decoded
	markHandlerStart: "admit",          // metrics clock, limits, policy role, key id spelling
	markSignStart:    "lookup",         // parse, resolve key, policy key check, OCSP check
	markSignEnd:      "hsm-sign",       // hsm: session, C_SignInit, C_Sign, verify (raw p50 alike)
	markAuditStart:   "sign-tail",      // the response built, the audit line handed over
	markAuditEnd:     "audit-line",     // encode, chain hash, write(2); + fsync in sync mode
	markHandlerEnd:   "handler-tail",   // the method returns
	markServerSent:   "server-respond", // admit's tail, metrics, status; response encoded, queued
	markClientRecv:   "response-wire",  // server writer goroutine, socket, client reader, decode
	markClientEnd:    "client-finish",  // trailers read, the call ends
	markReturned:     "client-return",  // Sign returns to its caller
}

// stageClock records the marks of the one call in flight; the
// benchmark makes one call at a time.
type stageClock struct {
	mu    sync.Mutex
	marks [numMarks]time.Time
}

func (c *stageClock) mark(i int) {
	now := time.Now()
	c.mu.Lock()
	c.marks[i] = now
	c.mu.Unlock()
}

// take returns the marks recorded since the last take and clears them.
func (c *stageClock) take() [numMarks]time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.marks
	c.marks = [numMarks]time.Time{}
	return m
}

// stageStats is a stats.Handler that marks a side's events.
type stageStats struct {
	clock  *stageClock
	server bool
}

func (stageStats) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context   { return ctx }
func (stageStats) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (stageStats) HandleConn(context.Context, stats.ConnStats)                       {}

func (h stageStats) HandleRPC(_ context.Context, s stats.RPCStats) {
	switch s.(type) {
	case *stats.Begin:
		if !h.server {
			h.clock.mark(markClientBegin)
		}
	case *stats.OutPayload:
		if h.server {
			h.clock.mark(markServerSent)
		} else {
			h.clock.mark(markClientSent)
		}
	case *stats.InHeader:
		if h.server {
			h.clock.mark(markServerHeader)
		}
	case *stats.InPayload:
		if h.server {
			h.clock.mark(markServerDecode)
		} else {
			h.clock.mark(markClientRecv)
		}
	case *stats.End:
		if !h.server {
			h.clock.mark(markClientEnd)
		}
	}
}

// stageAudit marks when the audit line is handed over and written.
type stageAudit struct {
	auditLog
	clock *stageClock
}

func (a stageAudit) Append(ctx context.Context, r audit.Record) error {
	a.clock.mark(markAuditStart)
	err := a.auditLog.Append(ctx, r)
	a.clock.mark(markAuditEnd)
	return err
}

// Enqueue and Wait are the audit line of a call on SignStream: queued
// by the worker that signed, waited for by the send of its result.
func (a stageAudit) Enqueue(r audit.Record) (audit.Ticket, error) {
	a.clock.mark(markAuditStart)
	return a.auditLog.Enqueue(r)
}

func (a stageAudit) Wait(ctx context.Context, t audit.Ticket) error {
	err := a.auditLog.Wait(ctx, t)
	a.clock.mark(markAuditEnd)
	return err
}

// BenchmarkLatency measures what one call costs at one caller: Sign
// through the daemon's socket (the gRPC client in this process, the
// Service's server on a real Unix socket; on the client's shared
// SignStream, as signer/client's Sign sends it, and as a unary Sign call)
// against the same signature in-process through hsm on the same token,
// one call at a time. In the same run it measures the socket floor: the
// same signature with the same key from the floor server of
// BenchmarkSocketFloor, another process on the thinnest protocol there
// is. The paths take turns in rounds, each round in another order.
// The verify-off cases turn the token's verify_signatures off (on by
// default) for both the daemon and raw, to show what that check costs;
// they have no floor, whose server verifies.
//
// It reports the median latency of the daemon and of raw (p50-daemon-us,
// p50-raw-us) and their difference (added-us, what the daemon adds), the
// floor's median and what it adds (p50-floor-us, floor-added-us), and,
// for the daemon's calls, the median of each stage of the call in µs (see
// latencyStages; the stages' medians need not add up to the call's).
//
// Run: make bench-latency
func BenchmarkLatency(b *testing.B) {
	for _, tc := range []struct {
		name, keyAlg, alg, auditMode string
		unary                        bool
		verifyOff                    bool // verify_signatures = false: what the check costs
	}{
		{"ES256/audit-buffered/stream", "EC-P256", "SHA256withECDSA", "buffered", false, false},
		{"ES256/audit-buffered/unary", "EC-P256", "SHA256withECDSA", "buffered", true, false},
		{"RS256/audit-buffered/stream", "RSA2048", "SHA256withRSA", "buffered", false, false},
		{"RS256/audit-buffered/unary", "RSA2048", "SHA256withRSA", "buffered", true, false},
		{"ES256/audit-sync/stream", "EC-P256", "SHA256withECDSA", "sync", false, false},
		{"ES256/audit-buffered/stream/verify-off", "EC-P256", "SHA256withECDSA", "buffered", false, true},
		{"RS256/audit-buffered/stream/verify-off", "RSA2048", "SHA256withRSA", "buffered", false, true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			clock := &stageClock{}
			d := newDaemon(b, func(p *daemonParams) {
				p.AuditMode = tc.auditMode
				if tc.verifyOff {
					p.TokenExtra = "  verify_signatures = false"
				}
				p.ServerOptions = []grpc.ServerOption{
					grpc.StatsHandler(stageStats{clock: clock, server: true}),
					grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
						clock.mark(markHandlerStart)
						resp, err := h(ctx, req)
						clock.mark(markHandlerEnd)
						return resp, err
					}),
				}
				p.DialOptions = []grpc.DialOption{grpc.WithStatsHandler(stageStats{clock: clock})}
				p.WrapAudit = func(l auditLog) auditLog { return stageAudit{auditLog: l, clock: clock} }
			})
			signHook := func(before bool) {
				if before {
					clock.mark(markSignStart)
				} else {
					clock.mark(markSignEnd)
				}
			}
			d.svc.signHook.Store(&signHook)
			k := d.genKey(b, "latency", tc.keyAlg, signerv1.KeyUsage_KEY_USAGE_SIGN)
			id, err := hex.DecodeString(k.GetId())
			if err != nil {
				b.Fatal(err)
			}
			alg, err := hsm.ParseAlgorithm(tc.alg)
			if err != nil {
				b.Fatal(err)
			}
			tok := d.svc.tokens[0].tok
			digest := sha("latency " + tc.name)
			ctx := context.Background()
			req := &signerv1.SignRequest{Key: &signerv1.SignRequest_KeyId{KeyId: k.GetId()}, Algorithm: tc.alg, Digest: digest}
			// The floor: the same signature with the same key from another
			// process over the thinnest protocol there is (see
			// BenchmarkSocketFloor; it serves two keys, here both this one).
			f := &floor{sock: startFloorServer(b, d.soft, []hsm.Key{{ID: id}, {ID: id}})}
			fc := f.dial(b)
			floorKey := byte(0) // the floor server signs with key 0 as ECDSA, key 1 as RSA
			if tc.keyAlg == "RSA2048" {
				floorKey = 1
			}
			calls := max(b.N/benchRounds, 20)
			var daemonLat, rawLat, floorLat []time.Duration
			var stages [numMarks][]time.Duration
			sign := d.client.Sign // on the shared SignStream
			if tc.unary {
				sign = d.client.SignerClient.Sign
			}
			daemon := func() error {
				for range calls {
					clock.take()
					start := time.Now()
					if _, err := sign(ctx, req); err != nil {
						return err
					}
					end := time.Now()
					daemonLat = append(daemonLat, end.Sub(start))
					m := clock.take()
					m[markReturned] = end
					prev := start
					for i := markClientBegin + 1; i < numMarks; i++ {
						if !m[i].IsZero() {
							stages[i] = append(stages[i], m[i].Sub(prev))
							prev = m[i]
						}
					}
				}
				return nil
			}
			raw := func() error {
				for range calls {
					start := time.Now()
					if _, err := tok.Sign(ctx, id, alg, digest); err != nil {
						return err
					}
					rawLat = append(rawLat, time.Since(start))
				}
				return nil
			}
			floor := func() error {
				for range calls {
					start := time.Now()
					if _, err := fc.sign(floorKey, digest); err != nil {
						return err
					}
					floorLat = append(floorLat, time.Since(start))
				}
				return nil
			}
			paths := []func() error{daemon, raw, floor}
			if tc.verifyOff {
				paths = paths[:2] // the floor server verifies: no floor to compare
			}
			// Warm every path (connections, key cache, sessions).
			for _, p := range paths {
				if err := p(); err != nil {
					b.Fatal(err)
				}
			}
			daemonLat, rawLat, floorLat = daemonLat[:0], rawLat[:0], floorLat[:0]
			for i := range stages {
				stages[i] = stages[i][:0]
			}
			b.ResetTimer()
			for round := range benchRounds {
				// Each round in another order: 0 1 2, 1 2 0, 2 0 1, ...
				for i := range paths {
					if err := paths[(round+i)%len(paths)](); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.StopTimer()
			pd, pr := p50(daemonLat), p50(rawLat)
			b.ReportMetric(us(pd), "p50-daemon-us")
			b.ReportMetric(us(pr), "p50-raw-us")
			b.ReportMetric(us(pd-pr), "added-us")
			var line strings.Builder
			fmt.Fprintf(&line, "%s: p50 daemon %.0f µs, raw %.0f µs, added %.0f µs;", tc.name, us(pd), us(pr), us(pd-pr))
			if len(floorLat) > 0 {
				pf := p50(floorLat)
				b.ReportMetric(us(pf), "p50-floor-us")
				b.ReportMetric(us(pf-pr), "floor-added-us")
				fmt.Fprintf(&line, " floor %.0f µs, floor added %.0f µs;", us(pf), us(pf-pr))
			}
			line.WriteString(" stages (p50 µs):")
			for i, name := range latencyStages {
				if name == "" || len(stages[i]) == 0 {
					continue
				}
				v := us(p50(stages[i]))
				b.ReportMetric(v, name+"-us")
				fmt.Fprintf(&line, " %s %.1f", name, v)
			}
			b.Log(line.String())
		})
	}
}

// p50 returns the median of ds (which it sorts).
func p50(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	return ds[len(ds)/2]
}

// us is d in microseconds.
func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
