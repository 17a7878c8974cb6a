package signer

import (
	"bufio"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/hsmsigner/hsmsigner/hsm"
	"github.com/hsmsigner/hsmsigner/hsm/sigalg"
	softhsmtest "github.com/hsmsigner/hsmsigner/softhsm-test"
)

// floorServerEnv set to 1 makes this test binary the floor server. Its
// configuration and the PIN come as one JSON line on its stdin (a PIN
// goes in no argv, environment or file), and it exits when its stdin
// closes, so it ends with the benchmark that started it, however that
// ends.
const floorServerEnv = "HSMSIGNER_FLOOR_SERVER"

// floorConfig is the floor server's configuration.
type floorConfig struct {
	Socket, Module, Token string
	Keys                  []string // key ids in hex: EC, then RSA
	PIN                   []byte
}

// TestMain runs the tests, or, in the process BenchmarkSocketFloor starts,
// the floor server.
func TestMain(m *testing.M) {
	if v, ok := os.LookupEnv(floorServerEnv); ok {
		_ = os.Unsetenv(floorServerEnv)
		err := fmt.Errorf("%s=%q: set it to 1, or unset it to run the tests", floorServerEnv, v)
		if v == "1" {
			err = serveFloor(os.Stdin)
		}
		fmt.Fprintln(os.Stderr, "floor server:", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// BenchmarkSocketFloor measures what crossing from one process to another
// costs on this machine before any protocol does: the "floor" server signs
// through hsm exactly as signerd does (the same pool, with the same
// defaults), but its transport is the thinnest there is: one Unix socket
// connection per caller, a request of a key number and a digest, a reply
// of a length and a signature, no gRPC, no policy, no audit, no metrics.
// The benchmark process is the caller, and in the same run, alternating
// in rounds, it signs in-process through hsm on the same token at the same
// parallelism (as `signerctl bench --raw` does). It reports each path's
// signatures per second and the median of the rounds' floor/raw ratios.
//
// Set beside the separate-process table's daemon/raw figures
// (BenchmarkSeparateProcesses in cmd/signerctl), it shows what signerd adds
// to the floor: gRPC, the policy check, the audit line and the metrics.
//
// Run: go test -run '^$' -bench BenchmarkSocketFloor -benchtime 1x ./signer/
func BenchmarkSocketFloor(b *testing.B) {
	f := newFloor(b)
	for _, tc := range []struct {
		name      string
		key       byte // index into keys
		alg       string
		c         int
		perCaller int // calls of each caller in a round
	}{
		{"ES256/c2", 0, "SHA256withECDSA", 2, 1000},
		{"ES256/c8", 0, "SHA256withECDSA", 8, 250},
		{"RS256/c2", 1, "SHA256withRSA", 2, 150},
		{"RS256/c8", 1, "SHA256withRSA", 8, 40},
	} {
		b.Run(tc.name, func(b *testing.B) {
			alg, err := hsm.ParseAlgorithm(tc.alg)
			if err != nil {
				b.Fatal(err)
			}
			digest := sha("floor " + tc.name)
			// Each caller takes a connection of its own from the pool.
			conns := make(chan *floorConn, tc.c)
			for range tc.c {
				conns <- f.dial(b)
			}
			floorSign := func(int) error {
				fc := <-conns
				defer func() { conns <- fc }()
				_, err := fc.sign(tc.key, digest)
				return err
			}
			calls := tc.c * tc.perCaller
			floor := func() (float64, error) { return runParallel(tc.c, calls, floorSign) }
			ctx := testCtx(b)
			raw := func() (float64, error) {
				return runParallel(tc.c, calls, func(int) error {
					_, err := f.tok.Sign(ctx, f.keys[tc.key].ID, alg, digest)
					return err
				})
			}
			for b.Loop() {
				floorRate, rawRate, ratio, err := compareRates(benchRounds, floor, raw)
				if err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(floorRate, "floor-sig/s")
				b.ReportMetric(rawRate, "raw-sig/s")
				b.ReportMetric(ratio, "floor/raw")
			}
		})
	}
}

// floor is a logged-in token with an EC and an RSA key (in floorConfig.Keys'
// order), and the floor server, another process, serving them.
type floor struct {
	tok  *hsm.Token
	keys []hsm.Key
	sock string
}

func newFloor(tb testing.TB) *floor {
	tb.Helper()
	soft := softhsmtest.New(tb)
	ctx := testCtx(tb)
	m, err := hsm.OpenModule(ctx, soft.ModulePath)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = m.Close() })
	tok, err := m.Token(ctx, hsm.TokenSelector{Label: soft.Label})
	if err != nil {
		tb.Fatal(err)
	}
	if err := tok.Login(ctx, soft.UserPIN); err != nil {
		tb.Fatal(err)
	}
	f := &floor{tok: tok, keys: make([]hsm.Key, 2)}
	for i, spec := range []hsm.KeySpec{hsm.ECP256, hsm.RSA2048} {
		if f.keys[i], err = tok.GenerateKey(ctx, spec, "floor-"+string(spec)); err != nil {
			tb.Fatal(err)
		}
	}
	f.sock = startFloorServer(tb, soft, f.keys)
	return f
}

// dial opens a connection to the floor server, closed when tb ends.
func (f *floor) dial(tb testing.TB) *floorConn {
	tb.Helper()
	c, err := net.Dial("unix", f.sock)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = c.Close() })
	return &floorConn{Conn: c, r: bufio.NewReader(c), buf: make([]byte, 1024)}
}

// TestSocketFloorSigns checks the floor server of BenchmarkSocketFloor
// does the work it is measured on: its signatures verify, for each key,
// from two connections at once, and it refuses a key it does not have.
func TestSocketFloorSigns(t *testing.T) {
	f := newFloor(t)
	var wg sync.WaitGroup
	errs := make(chan error, 2*len(f.keys)*4)
	for conn := range 2 {
		c := f.dial(t)
		wg.Go(func() {
			for round := range 4 {
				for i, k := range f.keys {
					digest := sha(fmt.Sprint("floor test ", conn, round, i))
					sig, err := c.sign(byte(i), digest)
					switch {
					case err != nil:
						errs <- fmt.Errorf("key %d: %w", i, err)
					case !verifies(k.Public, digest, sig):
						errs <- fmt.Errorf("key %d (%s): the floor server's signature does not verify", i, k.Type)
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if _, err := f.dial(t).sign(byte(len(f.keys)), sha("no such key")); err == nil || !strings.Contains(err.Error(), "no key 2") {
		t.Errorf("signing with key 2 of 2: %v, want the server's refusal", err)
	}
}

// startFloorServer runs this test binary as the floor server on a socket
// in a temporary folder, waits until it listens, and stops it when tb
// ends; it also ends if this process dies, with its stdin.
func startFloorServer(tb testing.TB, soft *softhsmtest.Token, keys []hsm.Key) string {
	tb.Helper()
	sock := filepath.Join(tb.TempDir(), "floor.sock")
	cfg := floorConfig{Socket: sock, Module: soft.ModulePath, Token: soft.Label, PIN: soft.UserPIN}
	for _, k := range keys {
		cfg.Keys = append(cfg.Keys, k.IDHex())
	}
	line, err := json.Marshal(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), floorServerEnv+"=1")
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	in, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		_ = in.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	_, err = in.Write(append(line, '\n'))
	clear(line)
	if err != nil {
		tb.Fatalf("configuring the floor server: %v", err)
	}
	ready, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || strings.TrimSpace(ready) != "listening" {
		tb.Fatalf("floor server did not start: %q, %v", ready, err)
	}
	return sock
}

// serveFloor is the floor server: it reads its configuration from in,
// logs in, listens, prints "listening", and answers each connection's
// requests in turn until in closes. A request is a key number, a digest
// length and the digest; a reply is a 2-byte big-endian length and the
// signature, or a zero length and an error text of one byte's length.
func serveFloor(in io.Reader) error {
	ctx := context.Background()
	r := bufio.NewReader(in)
	line, err := r.ReadBytes('\n')
	if err != nil {
		return fmt.Errorf("reading the configuration line from stdin: %w", err)
	}
	var cfg floorConfig
	err = json.Unmarshal(line, &cfg)
	clear(line)
	defer clear(cfg.PIN)
	if err != nil {
		return fmt.Errorf("configuration: %w", err)
	}
	if cfg.Socket == "" || cfg.Module == "" || cfg.Token == "" || len(cfg.PIN) == 0 || len(cfg.Keys) != 2 {
		return fmt.Errorf("configuration needs Socket, Module, Token, PIN and two Keys")
	}
	var ids [][]byte
	for _, h := range cfg.Keys {
		id, err := hex.DecodeString(h)
		if err != nil || len(id) == 0 {
			return fmt.Errorf("key id %q is not hex", h)
		}
		ids = append(ids, id)
	}
	algs := make([]sigalg.Algorithm, len(ids))
	for i, name := range []string{"SHA256withECDSA", "SHA256withRSA"} {
		if algs[i], err = hsm.ParseAlgorithm(name); err != nil {
			return err
		}
	}
	m, err := hsm.OpenModule(ctx, cfg.Module)
	if err != nil {
		return fmt.Errorf("opening %s: %w", cfg.Module, err)
	}
	defer m.Close()
	tok, err := m.Token(ctx, hsm.TokenSelector{Label: cfg.Token})
	if err != nil {
		return fmt.Errorf("token %q: %w", cfg.Token, err)
	}
	if err := tok.Login(ctx, cfg.PIN); err != nil {
		return fmt.Errorf("token %q: %w", cfg.Token, err)
	}
	l, err := net.Listen("unix", cfg.Socket)
	if err != nil {
		return err
	}
	go func() {
		// Serve until stdin closes: the benchmark ended, or died.
		_, _ = io.Copy(io.Discard, r)
		_ = l.Close()
	}()
	fmt.Println("listening")
	for {
		conn, err := l.Accept()
		if err != nil {
			return nil // stdin closed
		}
		go serveFloorConn(ctx, conn, tok, ids, algs)
	}
}

// serveFloorConn answers the requests of one connection in turn.
func serveFloorConn(ctx context.Context, conn net.Conn, tok *hsm.Token, ids [][]byte, algs []sigalg.Algorithm) {
	defer conn.Close()
	r := bufio.NewReader(conn)
	var head [2]byte
	digest := make([]byte, 255)
	for {
		if _, err := io.ReadFull(r, head[:]); err != nil {
			return
		}
		d := digest[:head[1]]
		if _, err := io.ReadFull(r, d); err != nil {
			return
		}
		var (
			sig  []byte
			serr error
		)
		if k := int(head[0]); k < len(ids) {
			sig, serr = tok.Sign(ctx, ids[k], algs[k], d)
		} else {
			serr = fmt.Errorf("no key %d", k)
		}
		reply := make([]byte, 2, 2+len(sig))
		if serr != nil {
			msg := serr.Error()[:min(len(serr.Error()), 255)]
			reply = append(append(reply, byte(len(msg))), msg...)
		} else {
			binary.BigEndian.PutUint16(reply, uint16(len(sig)))
			reply = append(reply, sig...)
		}
		if _, err := conn.Write(reply); err != nil {
			return
		}
	}
}

// floorConn is one caller's connection to the floor server.
type floorConn struct {
	net.Conn
	r   *bufio.Reader
	req []byte
	buf []byte
}

// sign asks the floor server for one signature and reads it. The
// signature is valid until the next call.
func (c *floorConn) sign(key byte, digest []byte) ([]byte, error) {
	c.req = append(append(c.req[:0], key, byte(len(digest))), digest...)
	if _, err := c.Write(c.req); err != nil {
		return nil, err
	}
	var head [2]byte
	if _, err := io.ReadFull(c.r, head[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint16(head[:]))
	if n == 0 {
		m, err := c.r.ReadByte()
		if err != nil {
			return nil, err
		}
		msg := make([]byte, m)
		if _, err := io.ReadFull(c.r, msg); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("floor server: %s", msg)
	}
	if n > len(c.buf) {
		c.buf = make([]byte, n)
	}
	if _, err := io.ReadFull(c.r, c.buf[:n]); err != nil {
		return nil, err
	}
	return c.buf[:n], nil
}

// verifies reports whether sig is a valid ECDSA (DER) or RSA PKCS#1 v1.5
// signature of the SHA-256 digest by pub.
func verifies(pub crypto.PublicKey, digest, sig []byte) bool {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		return ecdsa.VerifyASN1(k, digest, sig)
	case *rsa.PublicKey:
		return rsa.VerifyPKCS1v15(k, crypto.SHA256, digest, sig) == nil
	}
	return false
}
