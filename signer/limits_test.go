package signer

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/audit"
	"github.com/hsmsigner/hsmsigner/signer/config"
)

// summaries returns the denied.summary lines of uid in recs and the sum
// of their counts.
func summaries(recs []audit.Record, uid int) (lines []audit.Record, count int) {
	for _, r := range recs {
		if r.Op == OpDeniedSummary && r.UID == int64(uid) {
			lines = append(lines, r)
			count += r.Count
		}
	}
	return lines, count
}

// waitFor waits, up to a minute, until cond holds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("waited a minute for %s", what)
		}
	}
}

// TestConnectionsPerUID: a connection beyond connections_per_uid is closed
// as soon as it is accepted, counted in a metric and in the uid's summary
// line; closing one makes room for another.
func TestConnectionsPerUID(t *testing.T) {
	d := newDaemon(t, func(p *daemonParams) { p.Limits = "connections_per_uid = 2" })
	if _, err := d.client.GetStatus(testCtx(t), &signerv1.GetStatusRequest{}); err != nil {
		t.Fatal(err) // the client's connection is up: one of two
	}
	// dial opens a raw connection and reports whether the daemon speaks
	// on it (its HTTP/2 settings) or closes it.
	dial := func() (net.Conn, bool) {
		t.Helper()
		c, err := net.Dial("unix", d.sock)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if err := c.SetReadDeadline(time.Now().Add(30 * time.Second)); err != nil {
			t.Fatal(err)
		}
		n, err := c.Read(make([]byte, 64))
		if n > 0 {
			return c, true
		}
		if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !strings.Contains(fmt.Sprint(err), "reset") {
			t.Fatalf("reading a new connection: %v; want its settings or its end", err)
		}
		c.Close()
		return nil, false
	}
	second, ok := dial()
	if !ok {
		t.Fatal("the uid's second connection was closed; the limit is 2")
	}
	if _, ok := dial(); ok {
		t.Fatal("the uid's third connection was served; the limit is 2")
	}
	if got := d.limitExceeded(limitConnections); got != 1 {
		t.Fatalf("signerd_limit_exceeded_total{limit=connections} = %d, want 1", got)
	}
	// Once the daemon has seen the second one closed, a new one is served.
	second.Close()
	waitFor(t, "the closed connection to be given back", func() bool {
		c, ok := dial()
		if ok {
			c.Close()
		}
		return ok
	})
	closed := d.limitExceeded(limitConnections)
	d.stop()
	lines, count := summaries(readAudit(t, d.cfg.Server.AuditFile), os.Getuid())
	if len(lines) != 1 || count != closed || !strings.Contains(lines[0].Detail, "connections closed at connections_per_uid 2") {
		t.Fatalf("summary lines %+v; want one counting the %d connections closed", lines, closed)
	}
}

// blockingAudit holds each line written through it until release is
// closed, so that the calls writing them stay in progress.
type blockingAudit struct {
	auditLog
	entered atomic.Int32
	release chan struct{}
}

func (b *blockingAudit) hold(ctx context.Context) error {
	b.entered.Add(1)
	select {
	case <-b.release:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (b *blockingAudit) Append(ctx context.Context, r audit.Record) error {
	if err := b.hold(ctx); err != nil {
		return err
	}
	return b.auditLog.Append(ctx, r)
}

func (b *blockingAudit) Enqueue(r audit.Record) (audit.Ticket, error) {
	if err := b.hold(context.Background()); err != nil {
		return audit.Ticket{}, err
	}
	return b.auditLog.Enqueue(r)
}

// TestCallsPerUID: unary calls, an open stream and the calls of a stream
// being signed all count among a uid's calls in progress; beyond
// calls_per_uid a call is refused RESOURCE_EXHAUSTED, and the others go
// on.
func TestCallsPerUID(t *testing.T) {
	d := newDaemon(t, func(p *daemonParams) {
		p.Limits = "calls_per_uid = 3"
		p.SwitchAudit = true
	})
	k := d.genKey(t, "k", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	unary := func(ctx context.Context, i int) error {
		_, err := d.client.SignerClient.Sign(ctx, signReq(k.GetId(), sha(fmt.Sprint("unary ", i))))
		return err
	}
	streamed := func(ctx context.Context, i int) error {
		_, err := d.client.Sign(ctx, signReq(k.GetId(), sha(fmt.Sprint("streamed ", i))))
		return err
	}
	// hold starts n calls that stay in progress until released, and then
	// checks that one call more is refused.
	hold := func(name string, n int, call func(context.Context, int) error) {
		t.Helper()
		b := &blockingAudit{auditLog: d.audit.real, release: make(chan struct{})}
		d.audit.set(b)
		errs := make(chan error, n)
		for i := range n {
			go func() { errs <- call(testCtx(t), i) }()
		}
		waitFor(t, fmt.Sprintf("%d %s calls in progress", n, name), func() bool { return b.entered.Load() == int32(n) })
		ctx, cancel := context.WithTimeout(testCtx(t), 20*time.Second)
		defer cancel()
		wantCode(t, call(ctx, n), codes.ResourceExhausted, "calls_per_uid")
		close(b.release)
		for range n {
			if err := <-errs; err != nil {
				t.Fatalf("a %s call in progress: %v", name, err)
			}
		}
		d.audit.set(nil)
	}
	hold("unary", 3, unary)
	// The client's stream is one call, its two calls being signed two.
	if err := streamed(testCtx(t), -1); err != nil {
		t.Fatal(err) // the stream is open
	}
	hold("streamed", 2, streamed)
	// Mixed: the stream, a unary call and a call of the stream.
	hold("mixed", 2, func(ctx context.Context, i int) error {
		if i == 0 {
			return unary(ctx, i)
		}
		return streamed(ctx, i)
	})
	refused := d.limitExceeded(limitCalls)
	if refused != 3 {
		t.Fatalf("signerd_limit_exceeded_total{limit=calls} = %d, want 3", refused)
	}
	if err := unary(testCtx(t), 99); err != nil {
		t.Fatalf("a call once the others ended: %v", err)
	}
	d.stop()
	lines, count := summaries(readAudit(t, d.cfg.Server.AuditFile), os.Getuid())
	if count != refused || len(lines) == 0 || !strings.Contains(lines[0].Detail, "calls refused at calls_per_uid 3") {
		t.Fatalf("summary lines %+v; want them to count the %d calls refused", lines, refused)
	}
}

// TestRefusalsSummarised is the review's finding: a peer outside the
// policy wrote one "denied" line per call as fast as it could call.
// Beyond refusals_per_second its refusals are still answered
// PERMISSION_DENIED, but counted, and summarised in one line per uid per
// interval, written by the daemon on its own and at stop.
func TestRefusalsSummarised(t *testing.T) {
	const calls = 60
	d := newDaemon(t, func(p *daemonParams) {
		p.UID = os.Getuid() + 1000 // the test user is in no rule
		p.Limits = "refusals_per_second = 1\nrefusal_burst = 2\nrefusal_summary_interval = \"1s\""
	})
	me := os.Getuid()
	start := time.Now()
	for range calls {
		_, err := d.client.GetStatus(testCtx(t), &signerv1.GetStatusRequest{})
		wantCode(t, err, codes.PermissionDenied, "may not call GetStatus")
	}
	elapsed := time.Since(start)
	// The daemon writes the summary within an interval, unasked.
	waitFor(t, "a summary line", func() bool {
		b, err := os.ReadFile(d.cfg.Server.AuditFile)
		return err == nil && strings.Contains(string(b), `"op":"`+OpDeniedSummary+`"`)
	})
	summarised := d.refusalsSummarised()
	d.stop()
	recs := readAudit(t, d.cfg.Server.AuditFile)
	denied := 0
	for _, r := range recs {
		if r.Op == "denied" && r.UID == int64(me) {
			denied++
		}
	}
	lines, count := summaries(recs, me)
	// At most the burst and one a second.
	if most := 2 + int(elapsed/time.Second) + 1; denied > most || denied < 2 {
		t.Fatalf("%d denied lines in %v; want between 2 and %d", denied, elapsed, most)
	}
	if denied+count != calls || len(lines) == 0 {
		t.Fatalf("%d denied lines and %d summarised in %d lines, for %d refusals", denied, count, len(lines), calls)
	}
	for _, l := range lines {
		if l.Count == 0 || !strings.Contains(l.Detail, "refusals not written one by one (denied ") || l.Result == "" {
			t.Fatalf("summary line %+v", l)
		}
	}
	if summarised != count {
		t.Fatalf("signerd_refusals_summarised_total = %d, want %d", summarised, count)
	}
}

// TestLoginAttemptsPerUID: beyond login_attempts_per_minute, LoginToken
// and ChangePin are refused RESOURCE_EXHAUSTED without the token being
// asked (a wrong PIN then is not counted against it), and audited.
func TestLoginAttemptsPerUID(t *testing.T) {
	d := newDaemon(t, func(p *daemonParams) {
		p.PIN = "login"
		p.Limits = "login_attempts_per_minute = 2"
	})
	login := func(pin []byte) error {
		_, err := d.client.LoginToken(testCtx(t), &signerv1.LoginTokenRequest{Token: "t1", Pin: pin})
		return err
	}
	wantCode(t, login([]byte("wrong-pin")), codes.FailedPrecondition, "")
	if err := login(d.soft.UserPIN); err != nil {
		t.Fatal(err)
	}
	wantCode(t, login([]byte("wrong-pin")), codes.ResourceExhausted, "login_attempts_per_minute")
	_, err := d.client.ChangePin(testCtx(t), &signerv1.ChangePinRequest{Token: "t1", OldPin: []byte("wrong-pin"), NewPin: []byte("123456")})
	wantCode(t, err, codes.ResourceExhausted, "login_attempts_per_minute")
	if got := d.limitExceeded(limitLogins); got != 2 {
		t.Fatalf("signerd_limit_exceeded_total{limit=logins} = %d, want 2", got)
	}
	// The token was asked twice: its PIN counters show one wrong try at
	// most, and it is logged in.
	tok, err := d.client.GetToken(testCtx(t), &signerv1.GetTokenRequest{Token: "t1"})
	if err != nil || !tok.GetLoggedIn() || tok.GetPin().GetLocked() {
		t.Fatalf("token %v, %v; want it logged in", tok, err)
	}
	d.stop()
	got := map[string]int{}
	for _, r := range readAudit(t, d.cfg.Server.AuditFile) {
		if strings.HasPrefix(r.Result, codes.ResourceExhausted.String()) {
			got[r.Op]++
		}
	}
	if got["token.login"] != 1 || got["token.change_pin"] != 1 {
		t.Fatalf("RESOURCE_EXHAUSTED audit lines by op: %v; want one login and one PIN change", got)
	}
}

// TestKeyIDOneSpelling is the review's finding: a key id was accepted in
// any case, cached and audited as spelt. Whatever the caller's spelling,
// the call signs, and the key cache and the audit log hold the id in
// lower case.
func TestKeyIDOneSpelling(t *testing.T) {
	d := newDaemon(t)
	k := d.genKey(t, "k", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	id := k.GetId()
	upper := strings.ToUpper(id)
	mixed := strings.ToUpper(id[:len(id)/2]) + id[len(id)/2:]
	if upper == id {
		t.Fatalf("key id %s has no letters to change the case of", id)
	}
	for _, spelling := range []string{upper, mixed, id} {
		if _, err := d.client.SignerClient.Sign(testCtx(t), signReq(spelling, sha("unary"))); err != nil {
			t.Fatalf("Sign with %s: %v", spelling, err)
		}
		if _, err := d.client.Sign(testCtx(t), signReq(spelling, sha("streamed"))); err != nil {
			t.Fatalf("streamed Sign with %s: %v", spelling, err)
		}
		b, err := d.client.SignBatch(testCtx(t), &signerv1.SignBatchRequest{Key: &signerv1.SignBatchRequest_KeyId{KeyId: spelling}, Algorithm: "ES256", Digests: [][]byte{sha("batch")}})
		if err != nil || b.GetKeyId() != id {
			t.Fatalf("SignBatch with %s: %v, key %s", spelling, err, b.GetKeyId())
		}
		got, err := d.client.GetKey(testCtx(t), &signerv1.GetKeyRequest{KeyId: spelling})
		if err != nil || got.GetId() != id {
			t.Fatalf("GetKey %s: %v, %v", spelling, got, err)
		}
	}
	if _, err := d.client.RenameKey(testCtx(t), &signerv1.RenameKeyRequest{KeyId: upper, Name: "renamed"}); err != nil {
		t.Fatal(err)
	}
	d.svc.keysMu.RLock()
	var cached []string
	for k := range d.svc.keys {
		cached = append(cached, k)
	}
	d.svc.keysMu.RUnlock()
	if len(cached) > 1 || len(cached) == 1 && cached[0] != id {
		t.Fatalf("the key cache holds %v; want %s alone", cached, id)
	}
	// The cache again, after the rename cleared it, from spellings alone.
	for _, spelling := range []string{upper, mixed} {
		if _, err := d.client.Sign(testCtx(t), signReq(spelling, sha("again"))); err != nil {
			t.Fatal(err)
		}
	}
	d.svc.keysMu.RLock()
	n, ok := len(d.svc.keys), d.svc.keys[id] != nil
	d.svc.keysMu.RUnlock()
	if n != 1 || !ok {
		t.Fatalf("the key cache holds %d entries (lower-case id among them: %v); want the lower-case id alone", n, ok)
	}
	// A key id that is not hex is refused where the request enters,
	// without being echoed at length, and audited as given.
	_, err := d.client.SignerClient.Sign(testCtx(t), signReq(strings.Repeat("Z", 10000), sha("x")))
	wantCode(t, err, codes.InvalidArgument, "10000 characters")
	d.stop()
	keyed := 0
	for _, r := range readAudit(t, d.cfg.Server.AuditFile) {
		if r.Key == "" || r.Op == "invalid" {
			continue // the refused id, audited as given (hashed: it is long)
		}
		keyed++
		if r.Key != id {
			t.Errorf("audit line %d (%s) names key %q; want %q", r.Seq, r.Op, r.Key, id)
		}
	}
	if keyed < 13 {
		t.Fatalf("%d audit lines name the key; want the key's generation, 11 signatures and the rename", keyed)
	}
}

// TestUIDTableFullAdmitsPeersThePolicyNames runs signerctl as other uids
// against the daemon with its table of uids full (a bound of 1, held by
// the test user's connection): a peer outside the policy is refused at
// the handshake and counted, while peers the policy names, by uid or by
// primary gid, are tracked and served. Needs root, to run as other uids.
func TestUIDTableFullAdmitsPeersThePolicyNames(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("runs signerctl as other uids: needs root")
	}
	const sockGroup = 65534 // nobody: every child has it as a supplementary group
	const outsider, namedUID, namedGID, inNamedGID = 65534, 65533, 65532, 65531
	d := newDaemon(t, func(p *daemonParams) { p.Group = fmt.Sprint(sockGroup) })
	for p := d.dir; p != os.TempDir() && p != "/"; p = filepath.Dir(p) {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	me := uint32(os.Getuid())
	pol, err := config.NewPolicy(config.Admins{UIDs: []uint32{me}}, []config.ClientRule{
		{Name: "tester", UIDs: []uint32{me}, Keys: []string{"*"}, Usages: []string{UsageSign}, Members: []string{"*"}},
		{Name: "by-uid", UIDs: []uint32{namedUID}, Keys: []string{"*"}, Usages: []string{UsageSign}},
		{Name: "by-gid", GIDs: []uint32{namedGID}, Keys: []string{"*"}, Usages: []string{UsageSign}},
	})
	if err != nil {
		t.Fatal(err)
	}
	d.svc.SetPolicy(pol)
	bin := buildSignerctl(t)
	// The test user's connection holds the one place of the table.
	if _, err := d.client.GetStatus(testCtx(t), &signerv1.GetStatusRequest{}); err != nil {
		t.Fatal(err)
	}
	d.svc.limits.mu.Lock()
	d.svc.limits.max = 1
	d.svc.limits.mu.Unlock()

	tests := []struct {
		name     string
		uid, gid uint32
		admitted bool
	}{
		{"uid outside the policy", outsider, sockGroup, false},
		{"uid the policy names", namedUID, sockGroup, true},
		{"primary gid the policy names", inNamedGID, namedGID, true},
		{"uid outside the policy, again", outsider, sockGroup, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := d.limitExceeded(limitUIDs)
			cmd := exec.CommandContext(testCtx(t), bin, "--socket", d.sock, "status")
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: tt.uid, Gid: tt.gid, Groups: []uint32{sockGroup}}}
			out, err := cmd.CombinedOutput()
			after := d.limitExceeded(limitUIDs)
			if tt.admitted {
				if err != nil {
					t.Fatalf("signerctl status as uid %d gid %d: %v\n%s", tt.uid, tt.gid, err, out)
				}
				if after != before {
					t.Fatalf("signerd_limit_exceeded_total{limit=uids} went from %d to %d for a peer the policy names", before, after)
				}
				return
			}
			if err == nil || strings.Contains(string(out), "PermissionDenied") {
				t.Fatalf("signerctl status as uid %d: %v\n%s\nwant a refusal at the handshake", tt.uid, err, out)
			}
			if after <= before {
				t.Fatalf("signerd_limit_exceeded_total{limit=uids} stayed %d for a refused peer", after)
			}
		})
	}
}

// TestGetKeyRefusalsSummarised: GetKey refusals (a client asking for a key
// it may not use) are held to refusals_per_second like every other
// refusal: beyond the burst they are counted into the summary line, not
// written one line each.
func TestGetKeyRefusalsSummarised(t *testing.T) {
	const calls = 40
	d := newDaemon(t, func(p *daemonParams) {
		p.Limits = "refusals_per_second = 1\nrefusal_burst = 2\nrefusal_summary_interval = \"1s\""
	})
	k := d.genKey(t, "not-yours", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	me := os.Getuid()
	// From now on the test user is a client of another key only.
	p, err := config.NewPolicy(config.Admins{}, []config.ClientRule{{Name: "other-key", UIDs: []uint32{uint32(me)}, Keys: []string{strings.Repeat("ab", 16)}, Usages: []string{config.UsageSign}}})
	if err != nil {
		t.Fatal(err)
	}
	d.svc.SetPolicy(p)
	start := time.Now()
	for range calls {
		_, err := d.client.GetKey(testCtx(t), &signerv1.GetKeyRequest{KeyId: k.GetId()})
		wantCode(t, err, codes.PermissionDenied, "")
	}
	elapsed := time.Since(start)
	d.stop()
	recs := readAudit(t, d.cfg.Server.AuditFile)
	denied := 0
	for _, r := range recs {
		if r.Op == "denied" && r.Detail == "GetKey" {
			denied++
		}
	}
	_, count := summaries(recs, me)
	if most := 2 + int(elapsed/time.Second) + 1; denied > most || denied+count != calls {
		t.Fatalf("%d GetKey refusal lines and %d summarised in %v for %d refusals; want at most %d lines and the rest summarised", denied, count, elapsed, calls, most)
	}
}

// TestPartlyReceivedRequestsCountAsCalls: a call counts among its uid's
// calls in progress from its headers, before its request is read, so a
// caller that opens streams and sends each a request it never finishes
// (which the daemon holds in memory while it waits for the rest) can hold
// no more than calls_per_uid of them, over any number of connections.
// Beyond it the uid's next call is refused RESOURCE_EXHAUSTED; once the
// streams end the uid is served again.
func TestPartlyReceivedRequestsCountAsCalls(t *testing.T) {
	d := newDaemon(t, func(p *daemonParams) {
		p.Limits = "calls_per_uid = 4"
		p.MaxMessage = 64 << 10
	})
	k := d.genKey(t, "k", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	sign := func(ctx context.Context) error {
		_, err := d.client.SignerClient.Sign(ctx, signReq(k.GetId(), sha("partly received")))
		return err
	}
	if err := sign(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	// Four streams on two connections, each with half of a request whose
	// prefix announces 60 KiB.
	var raws []*rawH2
	for c := range 2 {
		r := dialRaw(t, d.sock, true)
		raws = append(raws, r)
		for i := range 2 {
			id := uint32(1 + 2*i)
			r.startCall(id, signerv1.Signer_Sign_FullMethodName)
			var prefix [5]byte
			binary.BigEndian.PutUint32(prefix[1:], 60<<10)
			// In frames within HTTP/2's 16 KiB frame size.
			r.write(func(fr *http2.Framer) error {
				return fr.WriteData(id, false, append(prefix[:], make([]byte, 10<<10)...))
			})
			r.write(func(fr *http2.Framer) error { return fr.WriteData(id, false, make([]byte, 10<<10)) })
			r.write(func(fr *http2.Framer) error { return fr.WriteData(id, false, make([]byte, 10<<10)) })
			t.Logf("connection %d, stream %d: 30 of 60 KiB sent", c, id)
		}
	}
	// The daemon reads a connection's frames in order: the answer to a
	// PING sent after the streams' frames says it has read them.
	for i, r := range raws {
		data := [8]byte{byte(i)}
		r.write(func(fr *http2.Framer) error { return fr.WritePing(false, data) })
		if _, err := r.readUntil(func(f http2.Frame) bool { p, ok := f.(*http2.PingFrame); return ok && p.IsAck() && p.Data == data }); err != nil {
			t.Fatalf("connection %d: no PING answer: %v", i, err)
		}
	}
	wantCode(t, sign(testCtx(t)), codes.ResourceExhausted, "calls_per_uid")
	if got := d.limitExceeded(limitCalls); got < 1 {
		t.Fatalf("signerd_limit_exceeded_total{limit=calls} = %d, want at least 1", got)
	}
	// The half-received streams end (one reset, the rest with their
	// connections): their counts come back.
	raws[0].write(func(fr *http2.Framer) error { return fr.WriteRSTStream(1, http2.ErrCodeCancel) })
	for _, r := range raws {
		r.conn.Close()
	}
	waitFor(t, "the uid served again once the half-received streams ended", func() bool { return sign(testCtx(t)) == nil })
}

// TestRefusedCallsLeaveNothingBehind: a call TapCall refuses at
// calls_per_uid leaves nothing in the daemon, whatever deadline it
// carries. gRPC derives a refused call's context with a timer for its
// deadline and does not end it; 20,000 refused calls with the longest
// grpc-timeout (99999999H) grew the heap by about 270 bytes each, kept
// after their connection closed, until the deadline passed. The heap now
// grows by less than 1 MB over them, and the uid is served again once
// its calls end.
func TestRefusedCallsLeaveNothingBehind(t *testing.T) {
	d := newDaemon(t, func(p *daemonParams) {
		p.Limits = "calls_per_uid = 2"
		p.MaxMessage = 64 << 10
	})
	k := d.genKey(t, "k", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	sign := func(ctx context.Context) error {
		_, err := d.client.SignerClient.Sign(ctx, signReq(k.GetId(), sha("refused calls")))
		return err
	}
	// Two partly received calls hold the uid at its limit.
	hold := dialRaw(t, d.sock, true)
	for _, id := range []uint32{1, 3} {
		hold.startCall(id, signerv1.Signer_Sign_FullMethodName)
		var prefix [5]byte
		binary.BigEndian.PutUint32(prefix[1:], 60<<10)
		hold.write(func(fr *http2.Framer) error { return fr.WriteData(id, false, prefix[:]) })
	}
	ping := [8]byte{1}
	hold.write(func(fr *http2.Framer) error { return fr.WritePing(false, ping) })
	if _, err := hold.readUntil(func(f http2.Frame) bool { p, ok := f.(*http2.PingFrame); return ok && p.IsAck() && p.Data == ping }); err != nil {
		t.Fatalf("no PING answer: %v", err)
	}

	const calls = 20000
	r := dialRaw(t, d.sock, true)
	refused := make(chan error, 1)
	go func() {
		n := 0
		for n < calls {
			f, err := r.readUntil(func(f http2.Frame) bool {
				h, ok := f.(*http2.MetaHeadersFrame)
				return ok && fieldValue(h.Fields, "grpc-status") != ""
			})
			if err != nil {
				refused <- fmt.Errorf("after %d refusals: %w", n, err)
				return
			}
			if got := fieldValue(f.(*http2.MetaHeadersFrame).Fields, "grpc-status"); got != fmt.Sprint(int(codes.ResourceExhausted)) {
				refused <- fmt.Errorf("call %d answered grpc-status %s, want %d", n, got, codes.ResourceExhausted)
				return
			}
			n++
		}
		refused <- nil
	}()
	block := grpcHeaders(signerv1.Signer_Sign_FullMethodName, hpack.HeaderField{Name: "grpc-timeout", Value: "99999999H"})
	before := heapInUse()
	for i := range calls {
		id := uint32(1 + 2*i)
		r.write(func(fr *http2.Framer) error {
			return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndHeaders: true})
		})
	}
	if err := <-refused; err != nil {
		t.Fatal(err)
	}
	r.conn.Close()
	after := heapInUse()
	if grown := int64(after) - int64(before); grown > 1<<20 {
		t.Fatalf("the heap grew by %d bytes (%d a call) over %d refused calls with a deadline; want less than 1 MB", grown, grown/calls, calls)
	}
	t.Logf("heap %d before and %d after %d refused calls", before, after, calls)

	hold.conn.Close()
	waitFor(t, "the uid served again once its calls ended", func() bool { return sign(testCtx(t)) == nil })
}

// heapInUse is the heap's live bytes after a full collection.
func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}
