package signer

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/audit"
	"github.com/hsmsigner/hsmsigner/signer/client"
	"github.com/hsmsigner/hsmsigner/signer/config"
	"github.com/hsmsigner/hsmsigner/signer/peercred"
)

// streamedSigns is how many requests the daemon answered on SignStreams
// with the code.
func (d *testDaemon) streamedSigns(code codes.Code) int {
	var m dto.Metric
	if err := d.svc.metrics.calls.WithLabelValues("SignStream", code.String()).Write(&m); err != nil {
		d.t.Fatal(err)
	}
	return int(m.GetCounter().GetValue())
}

func ecPublic(t testing.TB, k *signerv1.Key) *ecdsa.PublicKey {
	t.Helper()
	pub, err := x509.ParsePKIXPublicKey(k.GetPublicKey())
	if err != nil {
		t.Fatal(err)
	}
	return pub.(*ecdsa.PublicKey)
}

func signReq(keyID string, digest []byte) *signerv1.SignRequest {
	return &signerv1.SignRequest{Key: &signerv1.SignRequest_KeyId{KeyId: keyID}, Algorithm: "ES256", Digest: digest}
}

func TestClientSignsOverOneStreamUnderLoad(t *testing.T) {
	d := newDaemon(t, func(p *daemonParams) { p.AuditMode = "buffered" })
	k := d.genKey(t, "k", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	pub := ecPublic(t, k)
	// GenerateKey brought the connection up, so every Sign call goes over
	// the shared stream.
	const callers, each = 16, 40
	var wg sync.WaitGroup
	errs := make(chan error, callers*each)
	for g := range callers {
		wg.Go(func() {
			for i := range each {
				var b [8]byte
				binary.BigEndian.PutUint64(b[:], uint64(g*each+i))
				digest := sha(string(b[:]))
				resp, err := d.client.Sign(testCtx(t), signReq(k.GetId(), digest))
				switch {
				case err != nil:
					errs <- err
				case !ecdsa.VerifyASN1(pub, digest, resp.GetSignature()):
					errs <- errors.New("a signature does not verify against its own digest")
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := d.streamedSigns(codes.OK); n != callers*each {
		t.Fatalf("%d requests went over SignStream, want %d", n, callers*each)
	}
	// One audit line per request, as for Sign calls.
	d.stop()
	signs := 0
	for _, r := range readAudit(t, d.cfg.Server.AuditFile) {
		if r.Op == "sign" && r.Result == "ok" {
			signs++
		}
	}
	if signs != callers*each {
		t.Fatalf("%d sign lines in the audit log, want %d", signs, callers*each)
	}
}

// TestMaxConcurrentStreams checks that max_concurrent_streams bounds the
// calls one connection has in progress: with a limit of 2, a call waits
// while two streams are open on the same connection, the daemon never
// sees it, and it goes through once a stream has ended.
func TestMaxConcurrentStreams(t *testing.T) {
	d := newDaemon(t, func(p *daemonParams) { p.MaxStreams = 2 })
	k := d.genKey(t, "k", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	var streams []grpc.BidiStreamingClient[signerv1.SignStreamRequest, signerv1.SignStreamResponse]
	for i := range 2 {
		s := d.stream(t)
		if res := roundTrip(t, s, 1, signReq(k.GetId(), sha(fmt.Sprint("open ", i)))); res.GetError() != nil {
			t.Fatalf("call on stream %d: %v", i, res.GetError())
		}
		streams = append(streams, s)
	}
	statusCalls := func() int {
		var m dto.Metric
		if err := d.svc.metrics.calls.WithLabelValues("GetStatus", codes.OK.String()).Write(&m); err != nil {
			t.Fatal(err)
		}
		return int(m.GetCounter().GetValue())
	}
	ctx, cancel := context.WithTimeout(testCtx(t), 300*time.Millisecond)
	defer cancel()
	_, err := d.client.SignerClient.GetStatus(ctx, &signerv1.GetStatusRequest{})
	wantCode(t, err, codes.DeadlineExceeded, "")
	if n := statusCalls(); n != 0 {
		t.Fatalf("the daemon served %d GetStatus calls beyond the limit", n)
	}
	s := streams[0]
	if err := s.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("stream end: %v, want EOF", err)
	}
	if _, err := d.client.SignerClient.GetStatus(testCtx(t), &signerv1.GetStatusRequest{}); err != nil {
		t.Fatalf("call after a stream ended: %v", err)
	}
	if n := statusCalls(); n != 1 {
		t.Fatalf("%d GetStatus calls served, want 1", n)
	}
}

// stream opens a SignStream straight through the generated client, so
// the test sees the stream's own behaviour.
func (d *testDaemon) stream(t testing.TB) grpc.BidiStreamingClient[signerv1.SignStreamRequest, signerv1.SignStreamResponse] {
	t.Helper()
	s, err := d.client.SignerClient.SignStream(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// roundTrip sends one call on s and returns its result.
func roundTrip(t testing.TB, s grpc.BidiStreamingClient[signerv1.SignStreamRequest, signerv1.SignStreamResponse], id uint64, req *signerv1.SignRequest) *signerv1.StreamedSignResult {
	t.Helper()
	if err := s.Send(&signerv1.SignStreamRequest{Calls: []*signerv1.StreamedSign{{Id: id, Request: req}}}); err != nil {
		t.Fatal(err)
	}
	resp, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetResults()) != 1 || resp.GetResults()[0].GetId() != id {
		t.Fatalf("results %v for call %d", resp.GetResults(), id)
	}
	return resp.GetResults()[0]
}

func TestSignStreamRequestsFailAlone(t *testing.T) {
	d := newDaemon(t)
	ec := d.genKey(t, "ec", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	auth := d.genKey(t, "auth", "EC-P256", signerv1.KeyUsage_KEY_USAGE_AUTH)
	s := d.stream(t)
	// A message with several calls, one of them bad: each gets its own
	// result.
	if err := s.Send(&signerv1.SignStreamRequest{Calls: []*signerv1.StreamedSign{
		{Id: 1, Request: signReq(ec.GetId(), sha("one"))},
		{Id: 2, Request: signReq("00112233445566778899aabbccddeeff", sha("two"))},
		{Id: 3, Request: signReq(ec.GetId(), sha("three"))},
	}}); err != nil {
		t.Fatal(err)
	}
	got := map[uint64]*signerv1.StreamedSignResult{}
	for len(got) < 3 {
		m, err := s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range m.GetResults() {
			got[r.GetId()] = r
		}
	}
	for id, digest := range map[uint64][]byte{1: sha("one"), 3: sha("three")} {
		if !ecdsa.VerifyASN1(ecPublic(t, ec), digest, got[id].GetResponse().GetSignature()) {
			t.Fatalf("call %d: %v", id, got[id])
		}
	}
	if codes.Code(got[2].GetError().GetCode()) != codes.NotFound {
		t.Fatalf("call 2 (unknown key): %v", got[2])
	}
	tests := []struct {
		name     string
		req      *signerv1.SignRequest
		code     codes.Code
		contains string
	}{
		{"unknown key", signReq("00112233445566778899aabbccddeeff", sha("x")), codes.NotFound, "key not found"},
		{"short digest", signReq(ec.GetId(), sha("x")[:20]), codes.InvalidArgument, "32-byte digest"},
		{"RSA algorithm on an EC key", &signerv1.SignRequest{Key: &signerv1.SignRequest_KeyId{KeyId: ec.GetId()}, Algorithm: "PS256", Digest: sha("x")}, codes.InvalidArgument, "RSA key"},
		{"auth key where the policy allows sign only", signReq(auth.GetId(), sha("x")), codes.PermissionDenied, "usage auth"},
		{"no request", nil, codes.InvalidArgument, "unknown algorithm"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := roundTrip(t, s, uint64(10+i), tt.req)
			e := resp.GetError()
			if e == nil {
				t.Fatalf("no error: %v", resp)
			}
			wantCode(t, status.Error(codes.Code(e.GetCode()), e.GetMessage()), tt.code, tt.contains)
			// The stream goes on: the next good request on it is signed.
			good := roundTrip(t, s, 100+uint64(i), signReq(ec.GetId(), sha("good")))
			if !ecdsa.VerifyASN1(ecPublic(t, ec), sha("good"), good.GetResponse().GetSignature()) {
				t.Fatalf("after a failed request: %v", good)
			}
		})
	}
	if err := s.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("after CloseSend: %v, want the stream to end cleanly", err)
	}
}

func TestSignStreamAdmitsEachRequestUnderThePolicyInForce(t *testing.T) {
	d := newDaemon(t)
	k := d.genKey(t, "k", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	s := d.stream(t)
	if r := roundTrip(t, s, 1, signReq(k.GetId(), sha("a"))); r.GetResponse() == nil {
		t.Fatalf("before the reload: %v", r)
	}
	me := uint32(os.Getuid())
	noClients, err := config.NewPolicy(config.Admins{UIDs: []uint32{me}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	before := d.cfg.Policy
	d.svc.SetPolicy(noClients)
	r := roundTrip(t, s, 2, signReq(k.GetId(), sha("b")))
	if e := r.GetError(); e == nil || codes.Code(e.GetCode()) != codes.PermissionDenied {
		t.Fatalf("on a stream opened under a policy since withdrawn: %v, want PermissionDenied", r)
	}
	d.svc.SetPolicy(before)
	if r := roundTrip(t, s, 3, signReq(k.GetId(), sha("c"))); r.GetResponse() == nil {
		t.Fatalf("after the policy is restored: %v", r)
	}
	d.stop()
	denied := 0
	for _, rec := range readAudit(t, d.cfg.Server.AuditFile) {
		if rec.Op == "denied" && rec.Detail == "SignStream" && rec.UID == int64(me) {
			denied++
		}
	}
	if denied != 1 {
		t.Fatalf("%d denied lines, want 1", denied)
	}
}

func TestDrainAnswersEverySignedRequest(t *testing.T) {
	d := newDaemon(t, func(p *daemonParams) { p.AuditMode = "buffered" })
	k := d.genKey(t, "k", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	s := d.stream(t)
	const n = 200
	sent := make(chan error, 1)
	go func() {
		for i := range n {
			// Some messages carry several calls, as a busy client's do.
			calls := []*signerv1.StreamedSign{{Id: uint64(2*i + 1), Request: signReq(k.GetId(), sha(string(rune(2*i))))}}
			if i%2 == 0 {
				calls = append(calls, &signerv1.StreamedSign{Id: uint64(2*i + 2), Request: signReq(k.GetId(), sha(string(rune(2*i+1))))})
			}
			if err := s.Send(&signerv1.SignStreamRequest{Calls: calls}); err != nil {
				sent <- err
				return
			}
			if i == n/4 {
				d.svc.Drain()
			}
		}
		sent <- nil
	}()
	answered := map[uint64]bool{}
	var end error
	for {
		m, err := s.Recv()
		if err != nil {
			end = err
			break
		}
		for _, r := range m.GetResults() {
			if r.GetResponse() == nil || answered[r.GetId()] {
				t.Fatalf("result %v", r)
			}
			answered[r.GetId()] = true
		}
	}
	<-sent
	wantCode(t, end, codes.Unavailable, "stopping")
	// A drained daemon takes no new stream either.
	_, err := d.client.Sign(testCtx(t), signReq(k.GetId(), sha("late")))
	wantCode(t, err, codes.Unavailable, "stopping")
	// Every signature the daemon made reached the caller.
	d.stop()
	signed := 0
	for _, rec := range readAudit(t, d.cfg.Server.AuditFile) {
		if rec.Op == "sign" {
			signed++
		}
	}
	if signed != len(answered) {
		t.Fatalf("%d signatures made, %d answered", signed, len(answered))
	}
}

// unaryOnly is a daemon of before SignStream.
type unaryOnly struct{ *Service }

func (unaryOnly) SignStream(grpc.BidiStreamingServer[signerv1.SignStreamRequest, signerv1.SignStreamResponse]) error {
	return status.Error(codes.Unimplemented, "method SignStream not implemented")
}

func TestClientFallsBackToSignCalls(t *testing.T) {
	d := newDaemon(t)
	k := d.genKey(t, "k", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	sock := filepath.Join(d.dir, "run", "old.sock")
	l, err := ListenUnix(testCtx(t), sock, "")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(d.svc.ServerOptions()...)
	signerv1.RegisterSignerServer(srv, unaryOnly{d.svc})
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
	c, err := client.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := range 5 {
		resp, err := c.Sign(testCtx(t), signReq(k.GetId(), sha(string(rune(i)))))
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		if !ecdsa.VerifyASN1(ecPublic(t, k), sha(string(rune(i))), resp.GetSignature()) {
			t.Fatalf("call %d: bad signature", i)
		}
	}
	if n := d.streamedSigns(codes.OK); n != 0 {
		t.Fatalf("%d requests signed over a stream the daemon does not have", n)
	}
}

func TestClientSignHonoursAnExpiredContext(t *testing.T) {
	d := newDaemon(t)
	k := d.genKey(t, "k", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	if _, err := d.client.Sign(testCtx(t), signReq(k.GetId(), sha("connect"))); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(testCtx(t))
	cancel()
	_, err := d.client.Sign(ctx, signReq(k.GetId(), sha("x")))
	wantCode(t, err, codes.Canceled, "")
	ctx, cancel = context.WithTimeout(testCtx(t), -time.Second)
	defer cancel()
	_, err = d.client.Sign(ctx, signReq(k.GetId(), sha("x")))
	wantCode(t, err, codes.DeadlineExceeded, "")
	// The shared stream is still there for the next caller.
	if _, err := d.client.Sign(testCtx(t), signReq(k.GetId(), sha("y"))); err != nil {
		t.Fatal(err)
	}
}

// failingAudit is an audit log whose writes fail, at queueing or at
// commit: a fault the real log gives only on a failing disk.
type failingAudit struct{ atCommit bool }

var errDiskGone = errors.New("write audit.jsonl: input/output error")

func (f failingAudit) Append(context.Context, audit.Record) error { return errDiskGone }
func (f failingAudit) Enqueue(audit.Record) (audit.Ticket, error) {
	if f.atCommit {
		return audit.Ticket{}, nil
	}
	return audit.Ticket{}, errDiskGone
}
func (f failingAudit) Wait(context.Context, audit.Ticket) error { return errDiskGone }
func (f failingAudit) Head() (uint64, string)                   { return 0, "" }
func (f failingAudit) Close() error                             { return nil }

func TestSignatureWithheldWhenAuditFails(t *testing.T) {
	d := newDaemon(t, func(p *daemonParams) { p.SwitchAudit = true })
	k := d.genKey(t, "k", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	tests := []struct {
		name string
		log  failingAudit
		sign func() (*signerv1.SignResponse, error)
	}{
		{"Sign call", failingAudit{}, func() (*signerv1.SignResponse, error) {
			return d.client.SignerClient.Sign(testCtx(t), signReq(k.GetId(), sha("x")))
		}},
		{"stream, queueing fails", failingAudit{}, func() (*signerv1.SignResponse, error) {
			return d.client.Sign(testCtx(t), signReq(k.GetId(), sha("x")))
		}},
		{"stream, commit fails", failingAudit{atCommit: true}, func() (*signerv1.SignResponse, error) {
			return d.client.Sign(testCtx(t), signReq(k.GetId(), sha("x")))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d.audit.set(tt.log)
			resp, err := tt.sign()
			wantCode(t, err, codes.Unavailable, "audit log unavailable")
			if resp.GetSignature() != nil {
				t.Fatal("a signature left the daemon without its audit line")
			}
		})
	}
	// The metrics count each streamed call with the code it was sent with.
	if ok, unavailable := d.streamedSigns(codes.OK), d.streamedSigns(codes.Unavailable); ok != 0 || unavailable != 2 {
		t.Errorf("SignStream calls counted: %d OK, %d UNAVAILABLE; want 0 and 2", ok, unavailable)
	}
	d.audit.set(nil)
	if _, err := d.client.Sign(testCtx(t), signReq(k.GetId(), sha("y"))); err != nil {
		t.Fatalf("with the audit log back: %v", err)
	}
}

// stallingStream is a SignStream whose caller sends its calls and does
// not read the results: Send blocks until release is closed.
type stallingStream struct {
	grpc.ServerStream // unused; Context, Recv and Send are what the handler calls
	ctx               context.Context
	calls             chan *signerv1.SignStreamRequest
	received          atomic.Int64
	full              chan struct{} // closed at the read after which the daemon must wait
	release           chan struct{}
	sent              atomic.Int64
}

func (s *stallingStream) Context() context.Context { return s.ctx }

func (s *stallingStream) Recv() (*signerv1.SignStreamRequest, error) {
	m, ok := <-s.calls
	if !ok {
		return nil, io.EOF
	}
	if s.received.Add(1) == maxStreamInFlight+1 {
		close(s.full)
	}
	return m, nil
}

func (s *stallingStream) Send(m *signerv1.SignStreamResponse) error {
	<-s.release
	s.sent.Add(int64(len(m.GetResults())))
	return nil
}

func TestSignStreamStopsReadingACallerThatDoesNotRead(t *testing.T) {
	// The stream's own bound is under test, not calls_per_uid: the limit
	// is raised above the 1,024 calls the stream may hold.
	d := newDaemon(t, func(p *daemonParams) { p.Limits = "calls_per_uid = 4096" })
	k := d.genKey(t, "k", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	const n = maxStreamInFlight + 64
	me := peercred.Peer{UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), PID: int32(os.Getpid())}
	s := &stallingStream{
		ctx:     peer.NewContext(testCtx(t), &peer.Peer{AuthInfo: peercred.AuthInfo{Peer: me}}),
		calls:   make(chan *signerv1.SignStreamRequest, n),
		full:    make(chan struct{}),
		release: make(chan struct{}),
	}
	for i := range n {
		s.calls <- &signerv1.SignStreamRequest{Calls: []*signerv1.StreamedSign{{Id: uint64(i), Request: signReq(k.GetId(), sha(string(rune(i))))}}}
	}
	close(s.calls)
	// Signed calls show as audit lines (written by the writer in sync
	// mode, results sent or not).
	base, _ := d.svc.audit.Head()
	signed := func() int { seq, _ := d.svc.audit.Head(); return int(seq - base) }
	done := make(chan error, 1)
	go func() { done <- d.svc.SignStream(s) }()
	select {
	case <-s.full:
	case <-time.After(time.Minute):
		t.Fatalf("the daemon read %d calls, want it to read %d and wait", s.received.Load(), maxStreamInFlight+1)
	}
	// Once the calls it took are signed and their results wait for the
	// caller, the daemon has read one call more (which waits for a slot)
	// and no other.
	for deadline := time.Now().Add(time.Minute); signed() < maxStreamInFlight; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d calls signed, want %d", signed(), maxStreamInFlight)
		}
	}
	if got := s.received.Load(); got != maxStreamInFlight+1 {
		t.Fatalf("the daemon read %d calls while %d results waited for the caller; want %d", got, maxStreamInFlight, maxStreamInFlight+1)
	}
	if got := signed(); got != maxStreamInFlight {
		t.Fatalf("%d calls signed while %d results waited for the caller", got, maxStreamInFlight)
	}
	// The caller reads again: every call is answered.
	close(s.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := s.sent.Load(); got != n {
		t.Fatalf("%d results sent for %d calls", got, n)
	}
	if got := d.streamedSigns(codes.OK); got != n {
		t.Fatalf("%d calls counted as answered, want %d", got, n)
	}
}

func TestSignStreamWithoutSocketCredentialsIsRefused(t *testing.T) {
	d := newDaemon(t)
	// A stream whose context has no peer credentials, as one served
	// without the daemon's transport credentials or interceptor would.
	s := &stallingStream{ctx: testCtx(t), calls: make(chan *signerv1.SignStreamRequest), release: make(chan struct{})}
	wantCode(t, d.svc.SignStream(s), codes.Unauthenticated, "no socket credentials")
}

// TestClientSignDoesNotKeepTheRequest reuses each request's digest as soon
// as Sign returns, often because its short deadline passed: the client
// must not encode the request later (the race detector watches).
func TestClientSignDoesNotKeepTheRequest(t *testing.T) {
	d := newDaemon(t, func(p *daemonParams) { p.AuditMode = "buffered" })
	k := d.genKey(t, "k", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	var wg sync.WaitGroup
	for g := range 32 {
		wg.Go(func() {
			req := signReq(k.GetId(), sha(string(rune(g))))
			for range 20 {
				ctx, cancel := context.WithTimeout(testCtx(t), 200*time.Microsecond)
				_, err := d.client.Sign(ctx, req)
				cancel()
				if c := status.Code(err); c != codes.OK && c != codes.DeadlineExceeded {
					t.Errorf("Sign: %v", err)
				}
				req.Digest[0]++
				req.Algorithm = "SHA256withECDSA"
			}
		})
	}
	wg.Wait()
}

// recordingStream is a SignStream that delivers the calls it is given and
// keeps the results sent.
type recordingStream struct {
	grpc.ServerStream // unused; Context, Recv and Send are what the handler calls
	ctx               context.Context
	calls             chan *signerv1.SignStreamRequest
	mu                sync.Mutex
	results           []*signerv1.StreamedSignResult
}

func (s *recordingStream) Context() context.Context { return s.ctx }

func (s *recordingStream) Recv() (*signerv1.SignStreamRequest, error) {
	m, ok := <-s.calls
	if !ok {
		return nil, io.EOF
	}
	return m, nil
}

func (s *recordingStream) Send(m *signerv1.SignStreamResponse) error {
	s.mu.Lock()
	s.results = append(s.results, m.GetResults()...)
	s.mu.Unlock()
	return nil
}

// TestCallsAfterCloseFail serves a call that arrives after the service is
// closed, as one may after a gRPC server's Stop, which does not wait for
// handlers: it fails with an error result, and nothing panics.
func TestCallsAfterCloseFail(t *testing.T) {
	d := newDaemon(t)
	k := d.genKey(t, "k", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	me := peercred.Peer{UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), PID: int32(os.Getpid())}
	s := &recordingStream{
		ctx:   peer.NewContext(testCtx(t), &peer.Peer{AuthInfo: peercred.AuthInfo{Peer: me}}),
		calls: make(chan *signerv1.SignStreamRequest),
	}
	done := make(chan error, 1)
	go func() { done <- d.svc.SignStream(s) }()
	if err := d.svc.Close(); err != nil {
		t.Fatal(err)
	}
	s.calls <- &signerv1.SignStreamRequest{Calls: []*signerv1.StreamedSign{{Id: 1, Request: signReq(k.GetId(), sha("late"))}}}
	close(s.calls)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if len(s.results) != 1 || s.results[0].GetError() == nil {
		t.Fatalf("results %v: want one error", s.results)
	}
}

// recvResults reads results from s until it has n, keyed by id; a
// duplicated id keeps every result in arrival order.
func recvResults(t *testing.T, s grpc.BidiStreamingClient[signerv1.SignStreamRequest, signerv1.SignStreamResponse], n int) map[uint64][]*signerv1.StreamedSignResult {
	t.Helper()
	got := map[uint64][]*signerv1.StreamedSignResult{}
	for seen := 0; seen < n; {
		resp, err := s.Recv()
		if err != nil {
			t.Fatalf("after %d of %d results: %v", seen, n, err)
		}
		for _, r := range resp.GetResults() {
			got[r.GetId()] = append(got[r.GetId()], r)
			seen++
		}
	}
	return got
}

// TestSignStreamCancels checks the daemon's side of SignStreamRequest's
// cancel: a cancel sent with its call wins, and the call is answered
// CANCELLED and not signed; a cancel for an id the daemon does not hold
// is ignored; a call whose id is in flight already is refused.
func TestSignStreamCancels(t *testing.T) {
	d := newDaemon(t)
	k := d.genKey(t, "k", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	pub := ecPublic(t, k)
	s := d.stream(t)
	// Call 1 and its cancel in one message, beside call 2.
	if err := s.Send(&signerv1.SignStreamRequest{
		Calls: []*signerv1.StreamedSign{
			{Id: 1, Request: signReq(k.GetId(), sha("cancelled"))},
			{Id: 2, Request: signReq(k.GetId(), sha("kept"))},
		},
		Cancel: []uint64{1},
	}); err != nil {
		t.Fatal(err)
	}
	got := recvResults(t, s, 2)
	if e := got[1][0].GetError(); e.GetCode() != int32(codes.Canceled) || got[1][0].GetResponse() != nil {
		t.Errorf("call 1, cancelled with its call: %v, want CANCELLED and no signature", got[1][0])
	}
	if !ecdsa.VerifyASN1(pub, sha("kept"), got[2][0].GetResponse().GetSignature()) {
		t.Errorf("call 2: %v, want a valid signature", got[2][0])
	}
	if n := d.streamedSigns(codes.Canceled); n != 1 {
		t.Errorf("%d calls counted CANCELLED, want 1", n)
	}
	// A cancel for calls already answered or never made: nothing comes
	// back for it, and the stream goes on.
	if err := s.Send(&signerv1.SignStreamRequest{Cancel: []uint64{2, 99}}); err != nil {
		t.Fatal(err)
	}
	if r := roundTrip(t, s, 3, signReq(k.GetId(), sha("after"))); r.GetResponse() == nil {
		t.Fatalf("call 3 after stray cancels: %v", r)
	}
	// Two calls with one id in one message: the second is refused.
	if err := s.Send(&signerv1.SignStreamRequest{Calls: []*signerv1.StreamedSign{
		{Id: 4, Request: signReq(k.GetId(), sha("first 4"))},
		{Id: 4, Request: signReq(k.GetId(), sha("second 4"))},
	}}); err != nil {
		t.Fatal(err)
	}
	var signed, refused int
	for _, r := range recvResults(t, s, 2)[4] {
		switch {
		case r.GetResponse() != nil && ecdsa.VerifyASN1(pub, sha("first 4"), r.GetResponse().GetSignature()):
			signed++
		case r.GetError().GetCode() == int32(codes.InvalidArgument) && strings.Contains(r.GetError().GetMessage(), "in flight already"):
			refused++
		default:
			t.Errorf("call 4: %v", r)
		}
	}
	if signed != 1 || refused != 1 {
		t.Errorf("two calls with id 4: %d signed (the first), %d refused; want 1 and 1", signed, refused)
	}
}

// listeningDaemon is a daemon whose SignStream records what it receives
// and never answers.
type listeningDaemon struct {
	signerv1.UnimplementedSignerServer
	got chan *signerv1.SignStreamRequest
}

func (r listeningDaemon) SignStream(s grpc.BidiStreamingServer[signerv1.SignStreamRequest, signerv1.SignStreamResponse]) error {
	for {
		m, err := s.Recv()
		if err != nil {
			return nil
		}
		r.got <- m
	}
}

// TestClientCancelsWhatItGivesUpOn checks that a caller whose context is
// cancelled (no deadline, so the daemon cannot know by itself) makes the
// client send the call's cancel on the stream.
func TestClientCancelsWhatItGivesUpOn(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "rec.sock")
	l, err := ListenUnix(testCtx(t), sock, "")
	if err != nil {
		t.Fatal(err)
	}
	rec := listeningDaemon{got: make(chan *signerv1.SignStreamRequest, 16)}
	srv := grpc.NewServer()
	signerv1.RegisterSignerServer(srv, rec)
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
	c, err := client.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Bring the connection up, so that Sign uses the stream.
	_, err = c.GetStatus(testCtx(t), &signerv1.GetStatusRequest{})
	wantCode(t, err, codes.Unimplemented, "")
	ctx, cancel := context.WithCancel(context.Background()) // no deadline
	t.Cleanup(cancel)
	done := make(chan error, 1)
	go func() {
		_, err := c.Sign(ctx, signReq("00", sha("given up")))
		done <- err
	}()
	next := func(signDone <-chan error) *signerv1.SignStreamRequest {
		select {
		case m := <-rec.got:
			return m
		case err := <-signDone:
			// Sign ended before anything reached the stream: say how.
			t.Fatalf("Sign returned %v before anything was received on the stream", err)
			return nil
		case <-time.After(time.Minute):
			t.Fatal("nothing received on the stream")
			return nil
		}
	}
	m := next(done)
	if len(m.GetCalls()) != 1 || m.GetCalls()[0].GetTimeoutMs() != 0 {
		t.Fatalf("first message %v, want one call without timeout", m)
	}
	id := m.GetCalls()[0].GetId()
	cancel()
	wantCode(t, <-done, codes.Canceled, "")
	if m := next(nil); len(m.GetCalls()) != 0 || !slices.Equal(m.GetCancel(), []uint64{id}) {
		t.Fatalf("after the cancel: %v, want the cancel of call %d alone", m, id)
	}
}
