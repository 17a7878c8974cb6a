package xroad

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"

	"github.com/hsmsigner/hsmsigner/signer/config"
	"github.com/hsmsigner/hsmsigner/signer/xroad/xroadpb"
)

// h2Conn is a connection to the X-Road listener (insecure_loopback)
// spoken frame by frame, as a misbehaving caller would. A goroutine reads
// what the listener sends: it answers SETTINGS, keeps the connection's
// send window from WINDOW_UPDATE, and notes how each stream was answered.
type h2Conn struct {
	t    *testing.T
	conn net.Conn
	fr   *http2.Framer
	wmu  sync.Mutex // the framer's writes

	mu       sync.Mutex
	cond     *sync.Cond
	settings map[http2.SettingID]uint32 // the listener's first SETTINGS
	window   int64                      // the connection's send window
	answered map[uint32]string          // stream → "grpc-status N" or "rst CODE"
	pings    map[[8]byte]bool           // PING ACKs received
	goAway   *goAway
	err      error // why reading stopped
}

// goAway is what a GOAWAY frame said.
type goAway struct {
	code  http2.ErrCode
	debug string
}

// dialH2 connects to the rig's listener and sends the client preface and
// an empty SETTINGS frame.
func dialH2(t *testing.T, addr string) *h2Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	// A guard only: each test waits for the event it names, well before.
	if err := c.SetDeadline(time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	h := &h2Conn{t: t, conn: c, fr: http2.NewFramer(c, c), window: 65535, answered: map[uint32]string{}, pings: map[[8]byte]bool{}}
	h.cond = sync.NewCond(&h.mu)
	h.fr.ReadMetaHeaders = hpack.NewDecoder(64<<10, nil)
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	h.write(func(fr *http2.Framer) error { return fr.WriteSettings() })
	go h.read()
	return h
}

// write writes frames under the write lock.
func (h *h2Conn) write(f func(*http2.Framer) error) error {
	h.wmu.Lock()
	defer h.wmu.Unlock()
	return f(h.fr)
}

// read reads frames until the connection ends.
func (h *h2Conn) read() {
	for {
		f, err := h.fr.ReadFrame()
		h.mu.Lock()
		if err != nil {
			h.err = err
			h.cond.Broadcast()
			h.mu.Unlock()
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				if h.settings == nil {
					h.settings = map[http2.SettingID]uint32{}
					_ = f.ForeachSetting(func(s http2.Setting) error { h.settings[s.ID] = s.Val; return nil })
				}
				go h.write(func(fr *http2.Framer) error { return fr.WriteSettingsAck() })
			}
		case *http2.WindowUpdateFrame:
			if f.StreamID == 0 {
				h.window += int64(f.Increment)
			}
		case *http2.MetaHeadersFrame:
			for _, hf := range f.Fields {
				if hf.Name == "grpc-status" {
					h.answer(f.StreamID, "grpc-status "+hf.Value)
				}
			}
		case *http2.RSTStreamFrame:
			h.answer(f.StreamID, "rst "+f.ErrCode.String())
		case *http2.PingFrame:
			if f.IsAck() {
				h.pings[f.Data] = true
			} else {
				data := f.Data
				go h.write(func(fr *http2.Framer) error { return fr.WritePing(true, data) })
			}
		case *http2.GoAwayFrame:
			h.goAway = &goAway{code: f.ErrCode, debug: string(f.DebugData())}
		}
		h.cond.Broadcast()
		h.mu.Unlock()
	}
}

// lastGoAway is the GOAWAY read last (a graceful close sends two: the
// reader may replace it while the test looks).
func (h *h2Conn) lastGoAway() goAway {
	h.mu.Lock()
	defer h.mu.Unlock()
	return *h.goAway
}

// answer notes how stream id was answered first (a refused call's
// status may be followed by its RST_STREAM).
func (h *h2Conn) answer(id uint32, how string) {
	if h.answered[id] == "" {
		h.answered[id] = how
	}
}

// wait waits until cond (called with h.mu held) holds, or reading
// stopped: it returns the read error then.
func (h *h2Conn) wait(cond func() bool) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	for !cond() {
		if h.err != nil {
			return h.err
		}
		h.cond.Wait()
	}
	return nil
}

// sync sends a PING and waits for its ACK: the listener reads a
// connection's frames in order, so every frame sent before is read, and
// its answer sent, by then.
func (h *h2Conn) sync(n uint64) error {
	var data [8]byte
	binary.BigEndian.PutUint64(data[:], n)
	if err := h.write(func(fr *http2.Framer) error { return fr.WritePing(false, data) }); err != nil {
		return err
	}
	return h.wait(func() bool { return h.pings[data] })
}

// sendData sends b on stream id in frames within HTTP/2's 16 KiB, each
// once the connection's send window has room for it.
func (h *h2Conn) sendData(id uint32, b []byte) error {
	for len(b) > 0 {
		n := min(len(b), 16<<10)
		if err := h.wait(func() bool { return h.window >= int64(n) }); err != nil {
			return err
		}
		h.mu.Lock()
		h.window -= int64(n)
		h.mu.Unlock()
		if err := h.write(func(fr *http2.Framer) error { return fr.WriteData(id, false, b[:n]) }); err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// callHeaders encodes a gRPC call's request headers for method, with
// extra fields.
func callHeaders(method string, extra ...hpack.HeaderField) []byte {
	var b bytes.Buffer
	enc := hpack.NewEncoder(&b)
	for _, f := range append([]hpack.HeaderField{
		{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "http"}, {Name: ":path", Value: method},
		{Name: ":authority", Value: "127.0.0.1"}, {Name: "content-type", Value: "application/grpc"}, {Name: "te", Value: "trailers"},
	}, extra...) {
		_ = enc.WriteField(f)
	}
	return b.Bytes()
}

// rssBytes is this process's resident set size.
func rssBytes(t *testing.T) int64 {
	t.Helper()
	raw, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(raw)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmRSS in /proc/self/status")
	return 0
}

// TestXRoadStreamsBounded: one connection to the X-Road listener that
// opens 1,000 Sign calls, each with 48 KiB of a request whose prefix
// announces 60 KiB, holds at most calls_per_uid (counted from each call's
// headers, before its request is read) or max_concurrent_streams of
// them; the others are answered RESOURCE_EXHAUSTED or reset
// REFUSED_STREAM at once, and the process grows by far less than the
// 64 MiB 1,000 held calls took. The listener announces the fixed 1 MiB
// stream window, its max_concurrent_streams and max_header_list_bytes.
func TestXRoadStreamsBounded(t *testing.T) {
	const calls, sent, announced = 1000, 48 << 10, 60 << 10
	for _, c := range []struct {
		name           string
		limits, server string
		held           int    // at most, of the calls
		refusal        string // how the others are answered
		streams        uint32 // SETTINGS_MAX_CONCURRENT_STREAMS
	}{
		{"calls_per_uid", "calls_per_uid = 8", "", 8, "grpc-status " + strconv.Itoa(int(codes.ResourceExhausted)), config.DefaultMaxStreams},
		{"max_concurrent_streams", "", "max_concurrent_streams = 16", 16, "rst " + http2.ErrCodeRefusedStream.String(), 16},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := newRig(t, rigOptions{insecure: true, limits: c.limits, server: c.server})
			h := dialH2(t, r.addr)
			if err := h.wait(func() bool { return h.settings != nil }); err != nil {
				t.Fatalf("no SETTINGS: %v", err)
			}
			for _, s := range []struct {
				id   http2.SettingID
				want uint32
			}{
				{http2.SettingMaxConcurrentStreams, c.streams},
				{http2.SettingInitialWindowSize, 1 << 20},
				{http2.SettingMaxHeaderListSize, config.DefaultMaxHeaderListBytes},
			} {
				if v, ok := h.settings[s.id]; !ok || v != s.want {
					t.Errorf("SETTINGS %v = %d (sent: %v), want %d", s.id, v, ok, s.want)
				}
			}
			before := rssBytes(t)
			var prefix [5]byte
			binary.BigEndian.PutUint32(prefix[1:], announced)
			body := append(prefix[:], make([]byte, sent)...)
			block := callHeaders(xroadpb.KeyService_Sign_FullMethodName)
			for i := range calls {
				id := uint32(1 + 2*i)
				if err := h.write(func(fr *http2.Framer) error {
					return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndHeaders: true})
				}); err != nil {
					t.Fatalf("call %d: %v", i, err)
				}
				if err := h.sendData(id, body); err != nil {
					t.Fatalf("call %d: %v", i, err)
				}
			}
			if err := h.sync(1); err != nil {
				t.Fatalf("no PING answer after the calls: %v", err)
			}
			grown := rssBytes(t) - before
			h.mu.Lock()
			refused, other := 0, map[string]int{}
			for _, a := range h.answered {
				if a == c.refusal {
					refused++
				} else {
					other[a]++
				}
			}
			h.mu.Unlock()
			held := calls - refused
			for a := range other {
				held -= other[a]
			}
			t.Logf("%d calls held, %d refused (%s), other answers %v; RSS grew %.1f MiB", held, refused, c.refusal, other, float64(grown)/(1<<20))
			if held > c.held || len(other) > 0 {
				t.Fatalf("%d of %d partly sent calls held (other answers %v), want at most %d, the others answered %s", held, calls, other, c.held, c.refusal)
			}
			if grown > 16<<20 {
				t.Fatalf("RSS grew %.1f MiB over %d held calls, want less than 16 MiB", float64(grown)/(1<<20), held)
			}
		})
	}
}

// exceeded reads signerd_limit_exceeded_total{limit=name}.
func (r *rig) exceeded(t *testing.T, name string) int {
	t.Helper()
	mfs, err := r.svc.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "signerd_limit_exceeded_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "limit" && l.GetValue() == name {
					return int(m.GetCounter().GetValue())
				}
			}
		}
	}
	t.Fatalf("no signerd_limit_exceeded_total{limit=%q}", name)
	return 0
}

// TestXRoadConnectionsPerUID: the X-Road listener counts each connection
// under its caller's uid with the gRPC socket's, at most [limits]
// connections_per_uid over both; one beyond is closed as soon as the
// kernel names its uid, before any TLS, and counted. Closing one makes
// room for another.
func TestXRoadConnectionsPerUID(t *testing.T) {
	const limit, dials = 3, 12
	r := newRig(t, rigOptions{limits: fmt.Sprintf("connections_per_uid = %d", limit)})
	// The officer's client holds one of the uid's connections.
	if _, err := r.admin.ListTokens(ctxT(t), nil); err != nil {
		t.Fatal(err)
	}
	tc := &tls.Config{Certificates: []tls.Certificate{r.ks.cert}, RootCAs: r.ks.pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12, NextProtos: []string{"h2"}}
	handshake := func() (*tls.Conn, error) {
		c, err := net.Dial("tcp", r.addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if err := c.SetDeadline(time.Now().Add(30 * time.Second)); err != nil {
			t.Fatal(err)
		}
		tlc := tls.Client(c, tc)
		if err := tlc.HandshakeContext(ctxT(t)); err != nil {
			c.Close()
			return nil, err
		}
		return tlc, nil
	}
	var served []*tls.Conn
	closed := 0
	for range dials {
		c, err := handshake()
		switch {
		case err == nil:
			served = append(served, c)
		case errors.Is(err, io.EOF) || strings.Contains(err.Error(), "reset by peer") || strings.Contains(err.Error(), "broken pipe"):
			closed++ // closed before the server's hello
		default:
			t.Fatalf("a connection beyond the limit: %v, want it closed before TLS", err)
		}
	}
	if len(served) != limit-1 || closed != dials-(limit-1) {
		t.Fatalf("%d connections served, %d closed; want %d served (connections_per_uid %d less the officer's)", len(served), closed, limit-1, limit)
	}
	if got := r.exceeded(t, "connections"); got != closed {
		t.Fatalf("signerd_limit_exceeded_total{limit=connections} = %d, want %d", got, closed)
	}
	served[0].Close()
	deadline := time.Now().Add(time.Minute)
	for {
		c, err := handshake()
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no room for a connection a minute after one closed: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestXRoadIdleConnectionClosed: an X-Road connection with no call in
// progress is sent GOAWAY after [limits] idle_timeout and closed.
func TestXRoadIdleConnectionClosed(t *testing.T) {
	r := newRig(t, rigOptions{insecure: true, limits: `idle_timeout = "1s"`})
	start := time.Now()
	h := dialH2(t, r.addr)
	if err := h.wait(func() bool { return h.goAway != nil }); err != nil {
		t.Fatalf("no GOAWAY on an idle connection after %v: %v", time.Since(start), err)
	}
	ga := h.lastGoAway()
	t.Logf("GOAWAY %v %q after %v", ga.code, ga.debug, time.Since(start))
	if err := h.wait(func() bool { return false }); errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("after GOAWAY the idle connection was held: %v", err)
	}
	if d := time.Since(start); d < 900*time.Millisecond {
		t.Fatalf("closed after %v, before idle_timeout", d)
	}
	t.Logf("idle connection closed after %v", time.Since(start))
}

// TestXRoadPingsUnderMinPingInterval: the X-Road listener enforces
// [limits] min_ping_interval: a caller that floods PINGs with no call in
// progress is sent GOAWAY ENHANCE_YOUR_CALM "too_many_pings", while one
// that PINGs no more often than min_ping_interval during a call is
// answered throughout (under gRPC's own 5 minutes it was cut at the
// fourth).
func TestXRoadPingsUnderMinPingInterval(t *testing.T) {
	r := newRig(t, rigOptions{insecure: true, limits: `min_ping_interval = "1s"`})
	t.Run("flood", func(t *testing.T) {
		h := dialH2(t, r.addr)
		go func() {
			for i := range 1000 {
				if h.write(func(fr *http2.Framer) error { return fr.WritePing(false, [8]byte{1, byte(i >> 8), byte(i)}) }) != nil {
					return // closed
				}
			}
		}()
		if err := h.wait(func() bool { return h.goAway != nil }); err != nil {
			t.Fatalf("no GOAWAY for a PING flood: %v", err)
		}
		if ga := h.lastGoAway(); ga.code != http2.ErrCodeEnhanceYourCalm || ga.debug != "too_many_pings" {
			t.Fatalf("GOAWAY %v %q, want ENHANCE_YOUR_CALM too_many_pings", ga.code, ga.debug)
		}
	})
	t.Run("paced during a call", func(t *testing.T) {
		h := dialH2(t, r.addr)
		// A call in progress: its request half sent.
		block := callHeaders(xroadpb.KeyService_Sign_FullMethodName)
		if err := h.write(func(fr *http2.Framer) error {
			return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block, EndHeaders: true})
		}); err != nil {
			t.Fatal(err)
		}
		if err := h.sendData(1, []byte{0, 0, 0, 1, 0}); err != nil {
			t.Fatal(err)
		}
		const pings, pace = 5, 1100 * time.Millisecond
		for i := range pings {
			if i > 0 {
				time.Sleep(pace) // the pace of a caller within min_ping_interval
			}
			if err := h.sync(uint64(i)); err != nil {
				t.Fatalf("PING %d, %v after the last: %v", i, pace, err)
			}
		}
		h.mu.Lock()
		defer h.mu.Unlock()
		if h.goAway != nil || h.answered[1] != "" {
			t.Fatalf("GOAWAY %v, the call answered %q; want neither after %d PINGs %v apart", h.goAway, h.answered[1], pings, pace)
		}
	})
}

// TestXRoadOversizedHeaderListReset: a call whose headers exceed
// [limits] max_header_list_bytes is reset unread (or its connection
// closed), not served.
func TestXRoadOversizedHeaderListReset(t *testing.T) {
	r := newRig(t, rigOptions{insecure: true, limits: "max_header_list_bytes = 4096"})
	h := dialH2(t, r.addr)
	block := callHeaders(xroadpb.TokenService_GetHSMOperationalInfo_FullMethodName, hpack.HeaderField{Name: "x-pad", Value: strings.Repeat("a", 8<<10)})
	if err := h.write(func(fr *http2.Framer) error {
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block, EndHeaders: true}); err != nil {
			return err
		}
		return fr.WriteData(1, true, make([]byte, 5)) // an empty request
	}); err != nil {
		t.Fatal(err)
	}
	err := h.wait(func() bool { return h.answered[1] != "" })
	h.mu.Lock()
	a := h.answered[1]
	h.mu.Unlock()
	switch {
	case err != nil && !errors.Is(err, os.ErrDeadlineExceeded):
		t.Logf("8 KiB of headers: the connection was closed (%v)", err)
	case err != nil:
		t.Fatalf("no answer to 8 KiB of headers: %v", err)
	case !strings.HasPrefix(a, "rst "):
		t.Fatalf("8 KiB of headers answered %q, want RST_STREAM", a)
	}
}
