package signer

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/config"
)

// Misbehaving clients against the real daemon over its real socket. Each
// is cut off while a well-behaved client (the harness's own, on its one
// connection) keeps being served: every one of its calls must succeed.

// dialGRPC is a plain gRPC client of the daemon's socket with fixed
// 64 KiB flow-control windows, for a test to misuse.
func dialGRPC(t testing.TB, sock string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient("unix://"+sock, append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(64 << 10), grpc.WithInitialConnWindowSize(64 << 10),
	}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// TestSilentConnectionClosedAtHandshakeTimeout: a connection that sends
// nothing, or only part of its preface, or its preface but no SETTINGS,
// is closed once [limits] handshake_timeout has passed since it was
// accepted (gRPC's own default would keep it 120 s), and not before.
func TestSilentConnectionClosedAtHandshakeTimeout(t *testing.T) {
	const timeout = time.Second
	d := newDaemon(t, func(p *daemonParams) { p.Limits = `handshake_timeout = "1s"` })
	if got := d.cfg.Limits.HandshakeTimeout; got != timeout {
		t.Fatalf("handshake_timeout %v, want %v", got, timeout)
	}
	k := d.genKey(t, "k", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	good := keepSigning(t, d, k.GetId())
	tests := []struct {
		name string
		send string
	}{
		{"nothing", ""},
		{"half a preface", http2.ClientPreface[:10]},
		{"a preface without settings", http2.ClientPreface},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			r := dialRaw(t, d.sock, false)
			if tc.send != "" {
				if _, err := io.WriteString(r.conn, tc.send); err != nil {
					t.Fatal(err)
				}
			}
			// The daemon sends its SETTINGS, then closes the connection.
			_, err := io.Copy(io.Discard, r.conn)
			took := time.Since(start)
			if err != nil && !closedByPeer(err) {
				t.Fatalf("reading until the daemon closes: %v", err)
			}
			if took < timeout-100*time.Millisecond || took > 10*timeout {
				t.Fatalf("closed after %v; want about handshake_timeout %v", took, timeout)
			}
			t.Logf("closed after %v", took)
		})
	}
	good.waitCalls(t, 1)
	good.check(t, 1)
}

// TestIdleConnectionClosed: a connection with no call in progress is sent
// GOAWAY after [limits] idle_timeout, and its client connects again at its
// next call; a connection with an open SignStream is not idle.
func TestIdleConnectionClosed(t *testing.T) {
	d := newDaemon(t, func(p *daemonParams) { p.Limits = `idle_timeout = "1s"` })
	k := d.genKey(t, "k", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	// The harness's client has its stream open: it is not idle.
	if _, err := d.client.Sign(testCtx(t), signReq(k.GetId(), sha("open the stream"))); err != nil {
		t.Fatal(err)
	}
	cc := dialGRPC(t, d.sock)
	api := signerv1.NewSignerClient(cc)
	if _, err := api.GetStatus(testCtx(t), &signerv1.GetStatusRequest{}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(testCtx(t), 30*time.Second)
	defer cancel()
	for s := cc.GetState(); s == connectivity.Ready; s = cc.GetState() {
		if !cc.WaitForStateChange(ctx, s) {
			t.Fatalf("the idle connection is still %v after %v; idle_timeout is 1s", s, time.Since(start))
		}
	}
	t.Logf("idle connection left %v after %v", connectivity.Ready, time.Since(start))
	if time.Since(start) < 500*time.Millisecond {
		t.Fatalf("the connection was closed after %v, before idle_timeout", time.Since(start))
	}
	// Its client connects again; the busy one was never cut.
	if _, err := api.GetStatus(testCtx(t), &signerv1.GetStatusRequest{}); err != nil {
		t.Fatalf("a call after the idle close: %v", err)
	}
	if _, err := d.client.Sign(testCtx(t), signReq(k.GetId(), sha("still open"))); err != nil {
		t.Fatalf("the busy client: %v", err)
	}
}

// TestPingFloodClosed: a client that floods PINGs is sent GOAWAY
// ENHANCE_YOUR_CALM "too_many_pings" under [limits] min_ping_interval and
// closed, while the well-behaved client is served.
func TestPingFloodClosed(t *testing.T) {
	d := newDaemon(t)
	k := d.genKey(t, "k", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	good := keepSigning(t, d, k.GetId())
	r := dialRaw(t, d.sock, true)
	go func() {
		for i := range 1000 {
			r.wmu.Lock()
			err := r.fr.WritePing(false, [8]byte{byte(i >> 8), byte(i)})
			r.wmu.Unlock()
			if err != nil {
				return // closed by the daemon
			}
		}
	}()
	f, err := r.readUntil(func(f http2.Frame) bool { _, ok := f.(*http2.GoAwayFrame); return ok })
	if err != nil {
		t.Fatalf("no GOAWAY for a PING flood: %v", err)
	}
	ga := f.(*http2.GoAwayFrame)
	if ga.ErrCode != http2.ErrCodeEnhanceYourCalm || string(ga.DebugData()) != "too_many_pings" {
		t.Fatalf("GOAWAY %v %q, want ENHANCE_YOUR_CALM too_many_pings", ga.ErrCode, ga.DebugData())
	}
	if _, err := r.readUntil(func(http2.Frame) bool { return false }); !closedByPeer(err) {
		t.Fatalf("after GOAWAY: %v, want the connection closed", err)
	}
	good.waitCalls(t, 1)
	good.check(t, 1)
}

// TestOversizedHeaderListReset: a call whose headers are larger than
// [limits] max_header_list_bytes is reset unread; the daemon announces the
// limit, so a gRPC client refuses to send such a call at all; a call
// under the limit is served.
func TestOversizedHeaderListReset(t *testing.T) {
	d := newDaemon(t, func(p *daemonParams) { p.Limits = "max_header_list_bytes = 4096" })
	k := d.genKey(t, "k", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	good := keepSigning(t, d, k.GetId())

	// Raw: the daemon's SETTINGS name the limit, and the stream is reset.
	r := dialRaw(t, d.sock, true)
	f, err := r.readUntil(func(f http2.Frame) bool { s, ok := f.(*http2.SettingsFrame); return ok && !s.IsAck() })
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := f.(*http2.SettingsFrame).Value(http2.SettingMaxHeaderListSize); !ok || v != 4096 {
		t.Fatalf("SETTINGS_MAX_HEADER_LIST_SIZE %d (%v), want 4096", v, ok)
	}
	r.startCall(1, signerv1.Signer_GetStatus_FullMethodName, hpack.HeaderField{Name: "x-pad", Value: strings.Repeat("a", 8<<10)})
	f, err = r.readUntil(func(f http2.Frame) bool {
		switch f := f.(type) {
		case *http2.RSTStreamFrame, *http2.MetaHeadersFrame:
			return f.Header().StreamID == 1
		}
		return false
	})
	switch rst, ok := f.(*http2.RSTStreamFrame); {
	case err != nil && closedByPeer(err):
		t.Logf("8 KiB of headers: the connection was closed")
	case err != nil:
		t.Fatalf("no answer on the stream with 8 KiB of headers: %v", err)
	case !ok:
		t.Fatalf("the stream with 8 KiB of headers got %v, want RST_STREAM", f)
	default:
		t.Logf("8 KiB of headers: RST_STREAM %v", rst.ErrCode)
	}

	// gRPC: the client sees the announced limit and does not send.
	cc := dialGRPC(t, d.sock)
	api := signerv1.NewSignerClient(cc)
	if _, err := api.GetStatus(testCtx(t), &signerv1.GetStatusRequest{}); err != nil {
		t.Fatal(err)
	}
	big := metadata.AppendToOutgoingContext(testCtx(t), "x-pad", strings.Repeat("a", 8<<10))
	_, err = api.GetStatus(big, &signerv1.GetStatusRequest{})
	wantCode(t, err, codes.Internal, "header list size")
	small := metadata.AppendToOutgoingContext(testCtx(t), "x-pad", strings.Repeat("a", 2<<10))
	if _, err := api.GetStatus(small, &signerv1.GetStatusRequest{}); err != nil {
		t.Fatalf("a call with 2 KiB of metadata: %v", err)
	}
	good.waitCalls(t, 1)
	good.check(t, 1)
}

// TestOversizedMessageRefused: a message over max_message_bytes is refused
// RESOURCE_EXHAUSTED, also when only its 5-byte prefix claims 2 GiB (the
// daemon does not wait for, nor allocate, what it refuses); a frame over
// HTTP/2's frame size closes the connection. The daemon serves on.
func TestOversizedMessageRefused(t *testing.T) {
	d := newDaemon(t, func(p *daemonParams) { p.MaxMessage = 64 << 10 })
	k := d.genKey(t, "k", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	good := keepSigning(t, d, k.GetId())

	t.Run("whole message", func(t *testing.T) {
		cc := dialGRPC(t, d.sock)
		_, err := signerv1.NewSignerClient(cc).Sign(testCtx(t), signReq(k.GetId(), make([]byte, 100<<10)))
		wantCode(t, err, codes.ResourceExhausted, "larger than max")
	})
	t.Run("prefix claims 2 GiB", func(t *testing.T) {
		r := dialRaw(t, d.sock, true)
		r.startCall(1, signerv1.Signer_Sign_FullMethodName)
		var prefix [5]byte
		binary.BigEndian.PutUint32(prefix[1:], 1<<31-1)
		r.write(func(fr *http2.Framer) error { return fr.WriteData(1, false, append(prefix[:], make([]byte, 100)...)) })
		f, err := r.readUntil(func(f http2.Frame) bool {
			h, ok := f.(*http2.MetaHeadersFrame)
			return ok && h.StreamID == 1 && fieldValue(h.Fields, "grpc-status") != "" // the trailers
		})
		if err != nil {
			t.Fatalf("no trailers for a message claiming 2 GiB: %v", err)
		}
		h := f.(*http2.MetaHeadersFrame)
		if got := h.Fields; fieldValue(got, "grpc-status") != fmt.Sprint(int(codes.ResourceExhausted)) {
			t.Fatalf("trailers %v, want grpc-status %d", got, codes.ResourceExhausted)
		}
	})
	t.Run("frame over the frame size", func(t *testing.T) {
		r := dialRaw(t, d.sock, true)
		r.startCall(1, signerv1.Signer_Sign_FullMethodName)
		// The daemon may close the connection before the frame is all
		// written: the write fails, and the read shows why.
		r.wmu.Lock()
		werr := r.fr.WriteRawFrame(http2.FrameData, 0, 1, make([]byte, 1<<20))
		r.wmu.Unlock()
		t.Logf("writing the 1 MiB frame: %v", werr)
		f, err := r.readUntil(func(f http2.Frame) bool { _, ok := f.(*http2.GoAwayFrame); return ok })
		switch {
		case err == nil:
			if ga := f.(*http2.GoAwayFrame); ga.ErrCode != http2.ErrCodeFrameSize && ga.ErrCode != http2.ErrCodeProtocol {
				t.Fatalf("GOAWAY %v, want FRAME_SIZE_ERROR", ga.ErrCode)
			}
			if _, err := r.readUntil(func(http2.Frame) bool { return false }); !closedByPeer(err) {
				t.Fatalf("after GOAWAY: %v, want the connection closed", err)
			}
		case !closedByPeer(err):
			t.Fatalf("a 1 MiB frame: %v, want the connection closed", err)
		}
	})
	good.waitCalls(t, 1)
	good.check(t, 1)
}

// fieldValue is the value of the header field named name.
func fieldValue(fs []hpack.HeaderField, name string) string {
	for _, f := range fs {
		if f.Name == name {
			return f.Value
		}
	}
	return ""
}

// TestConnectionFloodCut: a client of the uid that opens connections
// without end has each one beyond connections_per_uid closed at once
// (the well-behaved client, connected before, is served throughout);
// once the flood's connections close, new ones are served again. The
// limit is per uid: this test runs as one uid, so the flood and the
// well-behaved client share it, and the well-behaved client keeps its
// connection.
func TestConnectionFloodCut(t *testing.T) {
	const limit = 8
	d := newDaemon(t, func(p *daemonParams) { p.Limits = fmt.Sprintf("connections_per_uid = %d", limit) })
	k := d.genKey(t, "k", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	good := keepSigning(t, d, k.GetId())
	good.waitCalls(t, 1) // its connection is up: one of the limit
	var served []*rawH2
	closed := 0
	for range 200 {
		r := dialRaw(t, d.sock, true)
		_, err := r.readUntil(func(f http2.Frame) bool { s, ok := f.(*http2.SettingsFrame); return ok && !s.IsAck() })
		switch {
		case err == nil:
			served = append(served, r)
		case closedByPeer(err):
			closed++
			r.conn.Close()
		default:
			t.Fatalf("a flood connection: %v", err)
		}
	}
	if len(served) != limit-1 || closed != 200-(limit-1) {
		t.Fatalf("%d flood connections served, %d closed; want %d served (the limit %d less the well-behaved one)", len(served), closed, limit-1, limit)
	}
	if got := d.limitExceeded(limitConnections); got != closed {
		t.Fatalf("signerd_limit_exceeded_total{limit=connections} = %d, want %d", got, closed)
	}
	good.waitCalls(t, 1)
	for _, r := range served {
		r.conn.Close()
	}
	waitFor(t, "a new connection to be served once the flood closed", func() bool {
		c := dialRaw(t, d.sock, true)
		defer c.conn.Close()
		_, err := c.readUntil(func(f http2.Frame) bool { s, ok := f.(*http2.SettingsFrame); return ok && !s.IsAck() })
		return err == nil
	})
	good.check(t, 2)
}

// TestUnreadStreamsBounded: a client that opens SignStreams, sends calls
// without end and never reads its results holds at most
// maxStreamInFlight calls per stream in the daemon: the daemon stops
// reading the stream and HTTP/2 flow control holds the client back. The
// well-behaved client is served meanwhile; once the abuser goes, what it
// held is given back.
func TestUnreadStreamsBounded(t *testing.T) {
	const streams, perStream = 3, 3 * maxStreamInFlight
	// The abuser and the well-behaved client are of the test's one uid:
	// calls_per_uid is raised above what the unread streams may hold
	// (3 × 1,024 calls, each counted while it waits), or the limit, not
	// the stream's bound, would be what the well-behaved client meets.
	d := newDaemon(t, func(p *daemonParams) { p.Limits = "calls_per_uid = 4096" })
	k := d.genKey(t, "k", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	good := keepSigning(t, d, k.GetId())
	good.waitCalls(t, 2) // its stream is open
	baseHeld := d.svc.streamHeld.Load()
	baseG := runtime.NumGoroutine()

	cc := dialGRPC(t, d.sock)
	api := signerv1.NewSignerClient(cc)
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	sent := make(chan error, streams)
	for s := range streams {
		st, err := api.SignStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			// Sends every call, in messages of 64, and never reads.
			for i := 0; i < perStream; i += 64 {
				m := &signerv1.SignStreamRequest{}
				for j := i; j < i+64; j++ {
					m.Calls = append(m.Calls, &signerv1.StreamedSign{Id: uint64(j), Request: signReq(k.GetId(), sha(fmt.Sprint(s, j)))})
				}
				if err := st.Send(m); err != nil {
					sent <- err
					return
				}
			}
			sent <- nil
		}()
	}
	most := int64(0)
	bound := int64(streams * maxStreamInFlight)
	// The well-behaved client signs one call at a time, every other one
	// over its own stream: the count may hold that one call beyond the
	// abuser's (baseHeld was read between two of its calls, or during one).
	const goodHeld = 1
	waitFor(t, "every unread stream to hold its most", func() bool {
		held := d.svc.streamHeld.Load() - baseHeld
		most = max(most, held)
		if held > bound+goodHeld {
			t.Fatalf("the unread streams hold %d calls, more than %d streams × %d (+%d of the well-behaved client)", held, streams, maxStreamInFlight, goodHeld)
		}
		return held >= bound
	})
	// The abuser is held back; the well-behaved client is served.
	good.waitCalls(t, 20)
	if held := d.svc.streamHeld.Load() - baseHeld; held > bound+goodHeld {
		t.Fatalf("the unread streams hold %d calls, more than %d (+%d of the well-behaved client)", held, bound, goodHeld)
	}
	cancel()
	for range streams {
		if err := <-sent; err != nil && !errors.Is(err, io.EOF) && !strings.Contains(err.Error(), "canceled") {
			t.Fatalf("the abuser's send: %v", err)
		}
	}
	waitFor(t, "the abuser's calls to be given back", func() bool { return d.svc.streamHeld.Load() <= baseHeld })
	waitFor(t, "the abuser's goroutines to end", func() bool { return runtime.NumGoroutine() <= baseG+10 })
	good.check(t, 20)
	t.Logf("held at most %d calls for %d unread streams", most, streams)
}

// TestConnectionFloodOtherUIDServed: while one uid's flood holds all the
// connections connections_per_uid gives it and dials on, another uid
// (signerctl run as it) connects and is served: the limit is per uid.
// Needs root, to run as another uid.
func TestConnectionFloodOtherUIDServed(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("runs signerctl as another uid: needs root")
	}
	const limit, sockGroup, other = 4, 65534, 65533
	d := newDaemon(t, func(p *daemonParams) {
		p.Group = fmt.Sprint(sockGroup)
		p.Limits = fmt.Sprintf("connections_per_uid = %d", limit)
	})
	for p := d.dir; p != os.TempDir() && p != "/"; p = filepath.Dir(p) {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	me := uint32(os.Getuid())
	pol, err := config.NewPolicy(config.Admins{UIDs: []uint32{me}}, []config.ClientRule{
		{Name: "tester", UIDs: []uint32{me}, Keys: []string{"*"}, Usages: []string{UsageSign}, Members: []string{"*"}},
		{Name: "other", UIDs: []uint32{other}, Keys: []string{"*"}, Usages: []string{UsageSign}},
	})
	if err != nil {
		t.Fatal(err)
	}
	d.svc.SetPolicy(pol)
	bin := buildSignerctl(t)
	if _, err := d.client.GetStatus(testCtx(t), &signerv1.GetStatusRequest{}); err != nil {
		t.Fatal(err) // the test user's first connection
	}
	// The flood: this uid's connections up to its limit, held, and more
	// dialled, each closed at once.
	served := 0
	for range limit + 20 {
		r := dialRaw(t, d.sock, true)
		if _, err := r.readUntil(func(f http2.Frame) bool { s, ok := f.(*http2.SettingsFrame); return ok && !s.IsAck() }); err == nil {
			served++
		}
	}
	if served != limit-1 {
		t.Fatalf("%d flood connections served, want %d", served, limit-1)
	}
	refused := d.limitExceeded(limitConnections)
	cmd := exec.CommandContext(testCtx(t), bin, "--socket", d.sock, "status")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: other, Gid: sockGroup, Groups: []uint32{sockGroup}}}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("signerctl status as uid %d during the flood: %v\n%s", other, err, out)
	}
	if got := d.limitExceeded(limitConnections); got != refused {
		t.Fatalf("signerd_limit_exceeded_total{limit=connections} went from %d to %d for the other uid", refused, got)
	}
}
