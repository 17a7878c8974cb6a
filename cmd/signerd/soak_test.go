package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hsmsigner/hsmsigner/cmd/internal/daemontest"
	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/client"
	softhsmtest "github.com/hsmsigner/hsmsigner/softhsm-test"
)

// The soak's size: SIGNERD_SOAK_SIGNATURES signatures (make soak: 1,000,000;
// make test: the default) over SIGNERD_SOAK_CONNECTIONS connections open
// at once.
const (
	defaultSoakSignatures  = 20_000
	defaultSoakConnections = 1_000
	// defaultSoakInFlight bounds the calls in flight at once over all the
	// connections (SIGNERD_SOAK_IN_FLIGHT): 1,000 batches of 63 in
	// flight at once are 63,000 signatures queued for the token, more
	// than two CPUs sign within the session pool's 10 s wait, and the
	// calls beyond it are refused RESOURCE_EXHAUSTED, as designed.
	defaultSoakInFlight = 256
	// soakBatch is the digests of each round's SignBatch; each round is
	// that batch and one Sign call.
	soakBatch = 63
)

// soakSample is the daemon process's figures at one moment.
type soakSample struct {
	name       string
	signed     int64
	rssKiB     int64
	fds        int
	goroutines int
}

func (s soakSample) String() string {
	return fmt.Sprintf("%-22s signatures %9d  RSS %7.1f MiB  fds %5d  goroutines %5d",
		s.name, s.signed, float64(s.rssKiB)/1024, s.fds, s.goroutines)
}

// envInt is the positive integer in the environment variable name, or def.
func envInt(t *testing.T, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		t.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

// TestSoak runs signerd as its own process (so its RSS is its own) and
// signs SIGNERD_SOAK_SIGNATURES times with an ECDSA P-256 key over
// SIGNERD_SOAK_CONNECTIONS client connections open at once, each going
// round a SignBatch of 63 digests and a Sign call (every connection's
// first calls all at once, then at most SIGNERD_SOAK_IN_FLIGHT calls in
// flight); one signature of each round is verified. The daemon's RSS, open descriptors and goroutines
// are sampled from /proc and its /metrics before the connections, with
// them open, at the middle and at the end, and once they are closed, and
// printed; once more at the end with the connections idle. The test
// asserts they stay flat: goroutines and descriptors alike in the middle
// and at the end, goroutines back to the start's with the connections
// idle, both back to their baseline once the connections close, and RSS
// grown by less than 64 MiB over the second half.
func TestSoak(t *testing.T) {
	total := int64(envInt(t, "SIGNERD_SOAK_SIGNATURES", defaultSoakSignatures))
	conns := envInt(t, "SIGNERD_SOAK_CONNECTIONS", defaultSoakConnections)
	inFlight := make(chan struct{}, envInt(t, "SIGNERD_SOAK_IN_FLIGHT", defaultSoakInFlight))
	call := func(f func() error) error {
		inFlight <- struct{}{}
		defer func() { <-inFlight }()
		return f()
	}
	bin := daemontest.Build(t, signerdPkg)
	soft := softhsmtest.New(t)
	dir := t.TempDir()
	cfgPath := daemonConfig(t, dir, soft, `"*"`)
	// The soak opens all its connections as one uid: connections_per_uid
	// (default 64) is raised above their count, or all but 64 would be
	// closed at once, and calls_per_uid (default 1024) above the SignStream
	// each keeps open plus the calls in flight.
	f, err := os.OpenFile(cfgPath, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(f, "\n# The soak's %d connections are of one uid: connections_per_uid and calls_per_uid are raised above them.\n[limits]\nconnections_per_uid = %d\ncalls_per_uid = %d\n",
		conns, conns+16, conns+2*cap(inFlight)+64)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	d := daemontest.Start(t, bin, nil, "--config", cfgPath)
	sock := filepath.Join(dir, "run/signer.sock")
	metrics := metricsReader(filepath.Join(dir, "run/http.sock"))

	admin, err := client.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	// The run may take longer than ctxT's two minutes: go test's -timeout bounds it.
	ctx := t.Context()
	key, err := admin.GenerateKey(ctx, &signerv1.GenerateKeyRequest{Token: "t1", Label: "soak", Algorithm: "EC-P256", Usage: signerv1.KeyUsage_KEY_USAGE_SIGN})
	if err != nil {
		t.Fatal(err)
	}
	admin.Close()
	parsed, err := x509.ParsePKIXPublicKey(key.GetPublicKey())
	if err != nil {
		t.Fatal(err)
	}
	pub := parsed.(*ecdsa.PublicKey)

	var signed atomic.Int64
	sample := func(name string) soakSample {
		t.Helper()
		s := soakSample{name: name, signed: signed.Load(), rssKiB: procRSS(t, d.Pid()), fds: procFDs(t, d.Pid()), goroutines: metrics(t, "go_goroutines")}
		t.Log(s)
		return s
	}
	// Settle: one call on a fresh connection warms the daemon's pools.
	{
		c, err := client.Dial(sock)
		if err != nil {
			t.Fatal(err)
		}
		if err := signWith(ctx, c, key.GetId()); err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	waitSteady(t, func() int { return metrics(t, "go_goroutines") })
	baseline := sample("baseline (no clients)")

	clients := make([]*client.Client, conns)
	for i := range clients {
		c, err := client.Dial(sock)
		if err != nil {
			t.Fatal(err)
		}
		clients[i] = c
	}
	// Each connection made and used, all at once: its first call is a
	// unary one (the connection is not up yet), its second opens the
	// SignStream it keeps (two goroutines in the daemon).
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for _, c := range clients {
		wg.Go(func() {
			for range 2 {
				if err := signWith(ctx, c, key.GetId()); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatalf("a first call: %v", err)
	default:
	}
	waitSteady(t, func() int { return metrics(t, "go_goroutines") })
	start := sample(fmt.Sprintf("start (%d connections)", conns))

	const perRound = soakBatch + 1
	var next atomic.Int64 // signatures handed out to rounds
	half := make(chan struct{})
	var halfOnce sync.Once
	var mid soakSample
	midDone := make(chan struct{})
	go func() {
		<-half
		mid = sample("middle")
		close(midDone)
	}()
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	began := time.Now()
	for w, c := range clients {
		wg.Go(func() {
			for r := 0; ; r++ {
				if next.Add(perRound) > total+perRound-1 {
					return
				}
				digests := make([][]byte, soakBatch)
				for i := range digests {
					var b [16]byte
					binary.BigEndian.PutUint64(b[:], uint64(w))
					binary.BigEndian.PutUint64(b[8:], uint64(r*perRound+i))
					h := sha256.Sum256(b[:])
					digests[i] = h[:]
				}
				var resp *signerv1.SignBatchResponse
				err := call(func() (err error) {
					resp, err = c.SignBatch(runCtx, &signerv1.SignBatchRequest{Key: &signerv1.SignBatchRequest_KeyId{KeyId: key.GetId()},
						Algorithm: "ES256", Digests: digests, Mode: signerv1.BatchMode_BATCH_MODE_INDIVIDUAL})
					return err
				})
				if err != nil {
					errs <- fmt.Errorf("SignBatch: %w", err)
					cancel()
					return
				}
				if n := len(resp.GetSignatures()); n != soakBatch || !ecdsa.VerifyASN1(pub, digests[r%soakBatch], resp.GetSignatures()[r%soakBatch]) {
					errs <- fmt.Errorf("SignBatch gave %d signatures, or one that does not verify", n)
					cancel()
					return
				}
				one := sha256.Sum256(fmt.Appendf(nil, "single %d %d", w, r))
				req := &signerv1.SignRequest{Key: &signerv1.SignRequest_KeyId{KeyId: key.GetId()}, Algorithm: "ES256", Digest: one[:]}
				// Single calls alternate between the client's stream and
				// a unary call.
				sign := c.Sign
				if r%2 == 1 {
					sign = c.SignerClient.Sign
				}
				var sr *signerv1.SignResponse
				err = call(func() (err error) {
					sr, err = sign(runCtx, req)
					return err
				})
				if err != nil {
					errs <- fmt.Errorf("Sign: %w", err)
					cancel()
					return
				}
				if !ecdsa.VerifyASN1(pub, one[:], sr.GetSignature()) {
					errs <- fmt.Errorf("a Sign signature does not verify")
					cancel()
					return
				}
				if signed.Add(perRound) >= total/2 {
					halfOnce.Do(func() { close(half) })
				}
			}
		})
	}
	wg.Wait()
	took := time.Since(began)
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
	<-midDone
	end := sample("end")
	// The connections stay open, idle: the goroutines the calls took
	// (a stream's workers end a second after their last call) are given
	// back, down to what the open connections hold.
	waitQuiet(t, func() int { return metrics(t, "go_goroutines") }, start.goroutines+50)
	idle := sample("end, connections idle")
	for _, c := range clients {
		c.Close()
	}
	// Once the connections are closed the daemon gives back their
	// descriptors and goroutines; wait for that, as an event, and then
	// sample.
	waitQuiet(t, func() int { return metrics(t, "go_goroutines") }, baseline.goroutines+20)
	waitQuiet(t, func() int { return procFDs(t, d.Pid()) }, baseline.fds)
	after := sample("after (clients closed)")
	t.Logf("soak: %d signatures (%d rounds of a %d-digest SignBatch and a Sign) over %d connections in %v: %.0f signatures/s",
		signed.Load(), signed.Load()/perRound, soakBatch, conns, took.Round(time.Millisecond), float64(signed.Load())/took.Seconds())
	fmt.Printf("soak figures (%d signatures, %d connections):\n  %v\n  %v\n  %v\n  %v\n  %v\n  %v\n", signed.Load(), conns, baseline, start, mid, end, idle, after)

	if signed.Load() < total {
		t.Fatalf("signed %d, want %d", signed.Load(), total)
	}
	const rssSlackKiB = 64 << 10
	if grown := end.rssKiB - mid.rssKiB; grown > rssSlackKiB {
		t.Errorf("RSS grew %d KiB over the second half, more than %d", grown, rssSlackKiB)
	}
	if diff := end.fds - start.fds; diff < -16 || diff > 16 {
		t.Errorf("descriptors %d at the end, %d at the start: not flat", end.fds, start.fds)
	}
	if end.goroutines > mid.goroutines+conns/10+50 {
		t.Errorf("goroutines %d at the end, %d in the middle: not flat", end.goroutines, mid.goroutines)
	}
	if idle.fds != start.fds {
		t.Errorf("descriptors %d with the connections idle after the run, %d before it", idle.fds, start.fds)
	}
	if after.fds > baseline.fds+1 || after.goroutines > baseline.goroutines+20 {
		t.Errorf("after the clients closed: %v; baseline %v", after, baseline)
	}
	d.Signal(syscall.SIGTERM)
	if err := d.Wait(time.Minute); err != nil {
		t.Fatalf("signerd after the soak: %v", err)
	}
}

// waitQuiet waits, up to two minutes, until read gives at most want.
func waitQuiet(t *testing.T, read func() int, want int) {
	t.Helper()
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(20 * time.Millisecond) {
		v := read()
		if v <= want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited two minutes: %d, want at most %d", v, want)
		}
	}
}

// waitSteady waits, up to two minutes, until read has stayed within 2 of
// one value for longer than a SignStream's idle workers live (a second).
// (The goroutines /metrics counts include those of the HTTP connection
// of the reading before, which may not have ended yet.)
func waitSteady(t *testing.T, read func() int) {
	t.Helper()
	const steady = 1500 * time.Millisecond
	prev, since := read(), time.Now()
	for deadline := time.Now().Add(2 * time.Minute); time.Since(since) < steady; time.Sleep(50 * time.Millisecond) {
		if v := read(); v > prev+2 || v < prev-2 {
			prev, since = v, time.Now()
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited two minutes for %d to hold still", prev)
		}
	}
}

// procRSS is the resident set of process pid, in KiB.
func procRSS(t *testing.T, pid int) int64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("VmRSS %q: %v", rest, err)
			}
			return n
		}
	}
	t.Fatalf("no VmRSS in /proc/%d/status", pid)
	return 0
}

// procFDs is the count of open descriptors of process pid.
func procFDs(t *testing.T, pid int) int {
	t.Helper()
	es, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(es)
}

// metricsReader reads one gauge from the daemon's /metrics on the HTTP
// socket at path.
func metricsReader(path string) func(t *testing.T, name string) int {
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", path)
	}, DisableKeepAlives: true}}
	return func(t *testing.T, name string) int {
		t.Helper()
		resp, err := hc.Get("http://signerd/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		for line := range strings.Lines(string(body)) {
			if rest, ok := strings.CutPrefix(line, name+" "); ok {
				v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
				if err != nil {
					t.Fatalf("%s %q: %v", name, rest, err)
				}
				return int(v)
			}
		}
		t.Fatalf("no %s in /metrics", name)
		return 0
	}
}
