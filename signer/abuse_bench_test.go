package signer

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
)

// abuseSamples is how many calls of the well-behaved client each phase
// of BenchmarkAbuseP99 times.
const abuseSamples = 3000

// BenchmarkAbuseP99 times a well-behaved client's Sign calls (unary,
// ECDSA P-256, one after another on its one connection) first alone and
// then while misbehaving clients of the same uid go on at once: silent
// connections left to the handshake timeout, a PING flood, a connection
// flood beyond connections_per_uid, messages whose prefix claims 2 GiB,
// and SignStreams whose results are never read. It reports both p99s and
// their ratio (abused/unloaded; the goal is at most 2). The daemon runs
// in this process, so the abusers share its two CPUs: the ratio is what
// the abuse costs the daemon and the machine together. The floor-spin
// phases measure the machine's part alone: one goroutine spinning, then
// two (both CPUs), which never call the daemon.
func BenchmarkAbuseP99(b *testing.B) {
	d := newDaemon(b, func(p *daemonParams) {
		p.AuditMode = "buffered" // signerd's default
		// Every client here is of the benchmark's one uid: its three
		// unread SignStreams hold up to 3,072 calls, above the default
		// calls_per_uid that would otherwise refuse the well-behaved
		// client as one of them.
		p.Limits = `connections_per_uid = 16
calls_per_uid = 4096
handshake_timeout = "1s"`
	})
	k := d.genKey(b, "k", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	ctx := testCtx(b)
	sign := func(b *testing.B) time.Duration {
		start := time.Now()
		if _, err := d.client.SignerClient.Sign(ctx, signReq(k.GetId(), sha("well-behaved"))); err != nil {
			b.Fatalf("the well-behaved client: %v", err)
		}
		return time.Since(start)
	}
	p99 := func(b *testing.B) time.Duration {
		ts := make([]time.Duration, abuseSamples)
		for i := range ts {
			ts[i] = sign(b)
		}
		slices.Sort(ts)
		return ts[len(ts)*99/100]
	}
	for range 200 {
		sign(b) // warm up
	}
	for _, tc := range []struct{ name, abusers string }{
		// The floor: one CPU kept busy by a loop that never calls the
		// daemon, what CPU contention alone costs on this machine.
		{"floor-spin", "spin"},
		// And both CPUs kept busy so: the machine taken whole.
		{"floor-spin2", "spin spin"},
		{"silent", "silent"}, {"pingflood", "ping"}, {"connflood", "conns"},
		{"hugeprefix", "huge"}, {"unreadstreams", "unread"}, {"all", "silent ping conns huge unread"},
	} {
		b.Run(tc.name, func(b *testing.B) {
			on := func(name string) bool { return slices.Contains(strings.Fields(tc.abusers), name) }
			var unloaded, abused time.Duration
			var cut string
			for range b.N {
				unloaded = p99(b)
				stop := make(chan struct{})
				var wg sync.WaitGroup
				counts := startAbuse(b, d, k.GetId(), on, strings.Count(tc.abusers, "spin"), stop, &wg)
				abused = p99(b)
				close(stop)
				wg.Wait()
				cut = counts.String()
			}
			ratio := float64(abused) / float64(unloaded)
			b.ReportMetric(float64(unloaded.Microseconds()), "p99-unloaded-µs")
			b.ReportMetric(float64(abused.Microseconds()), "p99-abused-µs")
			b.ReportMetric(ratio, "p99-ratio")
			b.Logf("well-behaved Sign p99: unloaded %v, under abuse %v, ratio %.2f (goal ≤ 2); abusers meanwhile: %s",
				unloaded, abused, ratio, cut)
		})
	}
}

// abuseCounts counts what the abusers had done to them.
type abuseCounts struct {
	silentClosed, pingGoaway, connsRefused  atomic.Int64
	hugeRefused, unreadStreams, unreadCalls atomic.Int64
	spun                                    atomic.Int64 // the floor's loop iterations, halved
}

func (c *abuseCounts) String() string {
	return fmt.Sprintf("%d silent connections closed, %d PING floods sent GOAWAY, %d connections refused, %d 2 GiB prefixes refused, %d unread streams holding %d calls sent",
		c.silentClosed.Load(), c.pingGoaway.Load(), c.connsRefused.Load(), c.hugeRefused.Load(), c.unreadStreams.Load(), c.unreadCalls.Load())
}

// startAbuse starts the misbehaving clients, each a loop that ends when
// stop is closed.
func startAbuse(b *testing.B, d *testDaemon, keyID string, on func(string) bool, spins int, stop chan struct{}, wg *sync.WaitGroup) *abuseCounts {
	c := &abuseCounts{}
	stopped := func() bool {
		select {
		case <-stop:
			return true
		default:
			return false
		}
	}
	loop := func(f func()) bool {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stopped() {
				f()
			}
		}()
		return true
	}
	dial := func() net.Conn {
		conn, err := net.Dial("unix", d.sock)
		if err != nil {
			b.Errorf("dial: %v", err)
			return nil
		}
		go func() { <-stop; conn.Close() }()
		_ = conn.SetDeadline(time.Now().Add(time.Minute))
		return conn
	}
	// Unread SignStreams: 3 streams that send until flow control stops
	// them and never read.
	cc := dialGRPC(b, d.sock)
	go func() { <-stop; cc.Close() }()
	api := signerv1.NewSignerClient(cc)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-stop; cancel() }()
	for s := range 3 {
		if !on("unread") {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := api.SignStream(ctx)
			if err != nil {
				return
			}
			c.unreadStreams.Add(1)
			for i := 0; !stopped(); i += 64 {
				m := &signerv1.SignStreamRequest{}
				for j := i; j < i+64; j++ {
					m.Calls = append(m.Calls, &signerv1.StreamedSign{Id: uint64(j), Request: signReq(keyID, sha(fmt.Sprint(s, j)))})
				}
				if st.Send(m) != nil {
					return
				}
				c.unreadCalls.Add(64)
			}
		}()
	}
	// Spin: a CPU busy without a call to the daemon (the floor), one for
	// each "spin" named.
	for range spins {
		loop(func() {
			n := 0
			for i := range 1 << 20 {
				n += i & 1
			}
			c.spun.Add(int64(n))
		})
	}
	// Silent: 4 connections at a time that send nothing, each closed at
	// the handshake timeout.
	for range 4 {
		if !on("silent") {
			break
		}
		loop(func() {
			conn := dial()
			if conn == nil {
				return
			}
			defer conn.Close()
			if _, err := io.Copy(io.Discard, conn); err == nil && !stopped() {
				c.silentClosed.Add(1)
			}
		})
	}
	// PING flood, connecting again after each GOAWAY.
	_ = on("ping") && loop(func() {
		conn := dial()
		if conn == nil {
			return
		}
		defer conn.Close()
		fr := http2.NewFramer(conn, conn)
		if _, err := io.WriteString(conn, http2.ClientPreface); err != nil || fr.WriteSettings() != nil {
			return
		}
		go func() {
			for i := 0; i < 1000 && fr.WritePing(false, [8]byte{byte(i)}) == nil; i++ {
			}
		}()
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			if _, ok := f.(*http2.GoAwayFrame); ok {
				c.pingGoaway.Add(1)
				return
			}
		}
	})
	// Connection flood: hold what the uid may have, then dial on.
	// The well-behaved client and the other abusers on keep the rest
	// (the held ones are closed with stop).
	reserved := 1
	for name, n := range map[string]int{"silent": 4, "ping": 1, "huge": 1, "unread": 1} {
		if on(name) {
			reserved += n
		}
	}
	for range d.cfg.Limits.ConnectionsPerUID - reserved {
		if !on("conns") {
			break
		}
		dial()
	}
	_ = on("conns") && loop(func() {
		conn := dial()
		if conn == nil {
			return
		}
		defer conn.Close()
		if _, err := conn.Read(make([]byte, 64)); err != nil && !stopped() {
			c.connsRefused.Add(1)
		}
	})
	// Messages claiming 2 GiB, one connection, a stream each.
	_ = on("huge") && loop(func() {
		conn := dial()
		if conn == nil {
			return
		}
		defer conn.Close()
		fr := http2.NewFramer(conn, conn)
		fr.ReadMetaHeaders = nil
		if _, err := io.WriteString(conn, http2.ClientPreface); err != nil || fr.WriteSettings() != nil {
			return
		}
		var prefix [5]byte
		binary.BigEndian.PutUint32(prefix[1:], 1<<31-1)
		for id := uint32(1); id < 1000 && !stopped(); id += 2 {
			if fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: grpcHeaders(signerv1.Signer_Sign_FullMethodName), EndHeaders: true}) != nil ||
				fr.WriteData(id, false, prefix[:]) != nil {
				return
			}
			for {
				f, err := fr.ReadFrame()
				if err != nil {
					return
				}
				if f.Header().StreamID == id && f.Header().Type == http2.FrameHeaders {
					c.hugeRefused.Add(1)
					_ = fr.WriteRSTStream(id, http2.ErrCodeCancel)
					break
				}
			}
		}
	})
	return c
}
