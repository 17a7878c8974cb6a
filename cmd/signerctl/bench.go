package main

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	"github.com/hsmsigner/hsmsigner/hsm"
	"github.com/hsmsigner/hsmsigner/hsm/sigalg"
	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/client"
	"github.com/hsmsigner/hsmsigner/signer/merkle"
)

// benchOptions are signerctl bench's options.
type benchOptions struct {
	keyID       string
	alg         string
	concurrency int
	connections int
	duration    time.Duration
	batch       int
	mode        string
	rounds      int
	raw         bool
	unary       bool
	module      string
	token       string
	pinFile     string
	tsaURL      string // bench --tsa: an RFC 3161 URL (benchtsa.go)
	hash        string
	certReq     bool
}

// benchResult is one measured run.
type benchResult struct {
	name      string
	digests   int64
	calls     int64
	elapsed   time.Duration
	latencies []time.Duration
	errs      int64
	firstErr  error
}

func (r *benchResult) rate() float64 { return float64(r.digests) / r.elapsed.Seconds() }

func (r *benchResult) percentile(p float64) time.Duration {
	if len(r.latencies) == 0 {
		return 0
	}
	slices.Sort(r.latencies)
	return r.latencies[min(len(r.latencies)-1, int(p*float64(len(r.latencies))))]
}

func (a *app) benchCommand() *cobra.Command {
	var o benchOptions
	cmd := &cobra.Command{
		Use:   "bench (--key KEY-ID | --tsa URL)",
		Short: "Load generator: signatures per second and latency through the daemon, and with --raw in-process through hsm",
		Long: `bench signs random digests through signerd for --duration with --concurrency
callers and prints digests signed per second and the p50/p99 latency of a call,
with a progress line while it runs. --batch N sends SignBatch calls of N
digests, --mode individual or merkle. Single digests go, as with any user of
signer/client, on the client's shared SignStream; --unary sends each as its
own Sign call instead.

With --raw it also signs in this process through the hsm package on the same
token (--module, --token, --pin-file), alternating daemon and raw runs in
--rounds rounds, and prints the daemon/raw ratio. The raw run uses the same
concurrency; a Merkle batch in the raw run is one signature over the tree root.

With --tsa URL it is a load generator for any RFC 3161 time-stamping
authority instead: http://host:port/path, or unix:/path/to/http.sock for
POST /tsa on signerd's HTTP socket. Each request is a TimeStampReq for a
random --hash digest with a fresh nonce (certReq with --cert-req); each
answer must parse, be granted and echo the nonce and the imprint. It prints
tokens per second, the p50, p99 and largest latency, and the errors with
the first of them.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.tsaURL != "" {
				for _, name := range []string{"key", "alg", "batch", "mode", "raw", "unary", "rounds", "connections"} {
					if cmd.Flags().Changed(name) {
						return fmt.Errorf("--%s does not go with --tsa", name)
					}
				}
				return a.benchTSA(cmd.Context(), o)
			}
			if o.keyID == "" {
				return errors.New("give --key KEY-ID (or --tsa URL)")
			}
			if cmd.Flags().Changed("hash") || cmd.Flags().Changed("cert-req") {
				return errors.New("--hash and --cert-req go with --tsa")
			}
			return a.bench(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.keyID, "key", "", "key id (hex)")
	f.StringVar(&o.alg, "alg", "SHA256withECDSA", "signature algorithm")
	f.IntVarP(&o.concurrency, "concurrency", "c", 8, "concurrent callers")
	f.IntVar(&o.connections, "connections", 1, "gRPC connections the callers share (as several security server processes would open)")
	f.DurationVarP(&o.duration, "duration", "d", 10*time.Second, "how long to measure (in all, split over the rounds)")
	f.IntVarP(&o.batch, "batch", "b", 1, "digests per call (1: Sign; more: SignBatch)")
	f.StringVar(&o.mode, "mode", "individual", "batch mode: individual or merkle")
	f.IntVar(&o.rounds, "rounds", 2, "with --raw: alternate daemon and raw runs this many times")
	f.BoolVar(&o.raw, "raw", false, "also sign in-process through hsm on the same token and print the ratio")
	f.BoolVar(&o.unary, "unary", false, "send each single digest as its own Sign call instead of on the client's shared SignStream")
	f.StringVar(&o.module, "module", "", "with --raw: PKCS#11 module path")
	f.StringVar(&o.token, "token", "", "with --raw: token label, serial:NNN or PKCS#11 URI")
	f.StringVar(&o.pinFile, "pin-file", "", "with --raw: file holding the user PIN")
	f.StringVar(&o.tsaURL, "tsa", "", "bench an RFC 3161 TSA at this URL instead (http://host:port/path or unix:/path/to/http.sock)")
	f.StringVar(&o.hash, "hash", "sha256", "with --tsa: imprint hash, sha256, sha384 or sha512")
	f.BoolVar(&o.certReq, "cert-req", false, "with --tsa: set certReq, asking for the TSA's certificate in each token")
	return cmd
}

func (a *app) bench(ctx context.Context, o benchOptions) error {
	alg, err := sigalg.Parse(o.alg)
	if err != nil {
		return err
	}
	if o.concurrency < 1 || o.batch < 1 || o.rounds < 1 || o.duration <= 0 {
		return errors.New("--concurrency, --batch, --rounds and --duration must be positive")
	}
	mode := signerv1.BatchMode_BATCH_MODE_INDIVIDUAL
	switch o.mode {
	case "individual":
	case "merkle":
		mode = signerv1.BatchMode_BATCH_MODE_MERKLE
	default:
		return fmt.Errorf("--mode %q: use individual or merkle", o.mode)
	}
	if o.connections < 1 || o.connections > o.concurrency {
		return errors.New("--connections must be between 1 and --concurrency")
	}
	var conns []*client.Client
	for range o.connections {
		c, err := a.dial()
		if err != nil {
			return err
		}
		defer c.Close()
		conns = append(conns, c)
	}
	var next atomic.Uint64
	daemon := func(ctx context.Context, digests [][]byte) error {
		c := conns[next.Add(1)%uint64(len(conns))]
		if len(digests) == 1 {
			req := &signerv1.SignRequest{Key: &signerv1.SignRequest_KeyId{KeyId: o.keyID}, Algorithm: alg.Name, Digest: digests[0]}
			var err error
			if o.unary {
				_, err = c.SignerClient.Sign(ctx, req)
			} else {
				_, err = c.Sign(ctx, req)
			}
			return err
		}
		_, err := c.SignBatch(ctx, &signerv1.SignBatchRequest{Key: &signerv1.SignBatchRequest_KeyId{KeyId: o.keyID}, Algorithm: alg.Name, Digests: digests, Mode: mode})
		return err
	}
	var raw func(context.Context, [][]byte) error
	if o.raw {
		rawSign, closeRaw, err := a.openRaw(ctx, o, alg, mode)
		if err != nil {
			return err
		}
		defer closeRaw()
		raw = rawSign
	}
	fmt.Fprintf(a.stdout, "key %s, %s, concurrency %d, batch %d (%s), %s\n", o.keyID, alg.Name, o.concurrency, o.batch, o.mode, o.duration)
	total := map[string]*benchResult{}
	per := o.duration / time.Duration(o.rounds)
	if !o.raw {
		per = o.duration
	}
	for round := range max(1, o.rounds*boolInt(o.raw)) {
		for _, run := range []struct {
			name string
			fn   func(context.Context, [][]byte) error
		}{{"daemon", daemon}, {"raw", raw}} {
			if run.fn == nil {
				continue
			}
			r := a.benchRun(ctx, run.name, run.fn, o, alg, per, round)
			if r.firstErr != nil && r.digests == 0 {
				return fmt.Errorf("%s: %w", run.name, r.firstErr)
			}
			t := total[run.name]
			if t == nil {
				t = &benchResult{name: run.name}
				total[run.name] = t
			}
			t.digests += r.digests
			t.calls += r.calls
			t.elapsed += r.elapsed
			t.errs += r.errs
			t.latencies = append(t.latencies, r.latencies...)
			if t.firstErr == nil {
				t.firstErr = r.firstErr
			}
		}
		if !o.raw {
			break
		}
	}
	fmt.Fprintf(a.stdout, "%-7s %12s %10s %10s %10s %8s\n", "", "digests/s", "calls/s", "p50", "p99", "errors")
	for _, name := range []string{"daemon", "raw"} {
		r := total[name]
		if r == nil {
			continue
		}
		fmt.Fprintf(a.stdout, "%-7s %12.0f %10.0f %10s %10s %8d\n", name, r.rate(), float64(r.calls)/r.elapsed.Seconds(),
			r.percentile(0.50).Round(time.Microsecond), r.percentile(0.99).Round(time.Microsecond), r.errs)
		if r.firstErr != nil {
			fmt.Fprintf(a.stdout, "        first error: %s\n", oneLine(r.firstErr))
		}
	}
	if d, r := total["daemon"], total["raw"]; d != nil && r != nil {
		fmt.Fprintf(a.stdout, "daemon/raw: %.3f\n", d.rate()/r.rate())
	}
	return nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// benchRun runs fn from o.concurrency goroutines for d and collects the
// figures, printing a progress line every second.
func (a *app) benchRun(ctx context.Context, name string, fn func(context.Context, [][]byte) error, o benchOptions, alg sigalg.Algorithm, d time.Duration, round int) *benchResult {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var (
		digests, calls, errs atomic.Int64
		mu                   sync.Mutex
		lat                  []time.Duration
		firstErr             error
		wg                   sync.WaitGroup
	)
	start := time.Now()
	for w := range o.concurrency {
		wg.Go(func() {
			var local []time.Duration
			batch := make([][]byte, o.batch)
			seq := uint64(w) << 40
			for ctx.Err() == nil {
				for i := range batch {
					seq++
					var b [8]byte
					binary.BigEndian.PutUint64(b[:], seq)
					h := alg.Hash.New()
					h.Write(b[:])
					batch[i] = h.Sum(nil)
				}
				t0 := time.Now()
				err := fn(ctx, batch)
				if err != nil {
					// gRPC may report the deadline a moment before the
					// context's own timer fires: either ends the run.
					if dl, _ := ctx.Deadline(); ctx.Err() != nil || !time.Now().Before(dl) {
						break
					}
					errs.Add(1)
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					continue
				}
				local = append(local, time.Since(t0))
				calls.Add(1)
				digests.Add(int64(o.batch))
			}
			mu.Lock()
			lat = append(lat, local...)
			mu.Unlock()
		})
	}
	done := make(chan struct{})
	var progress sync.WaitGroup
	progress.Go(func() {
		// A progress line every second, or four in a shorter run.
		tick := time.NewTicker(min(time.Second, max(d/4, 100*time.Millisecond)))
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				el := time.Since(start)
				fmt.Fprintf(a.stderr, "\r%s round %d: %6.1fs %10.0f digests/s   ", name, round+1, el.Seconds(), float64(digests.Load())/el.Seconds())
			}
		}
	})
	wg.Wait()
	close(done)
	progress.Wait()
	fmt.Fprint(a.stderr, "\r\033[K")
	return &benchResult{name: name, digests: digests.Load(), calls: calls.Load(), elapsed: time.Since(start), latencies: lat, errs: errs.Load(), firstErr: firstErr}
}

// openRaw opens the module and token in this process and returns a sign
// function that does what the daemon does for one call, without the
// daemon.
func (a *app) openRaw(ctx context.Context, o benchOptions, alg sigalg.Algorithm, mode signerv1.BatchMode) (func(context.Context, [][]byte) error, func(), error) {
	if o.module == "" || o.token == "" || o.pinFile == "" {
		return nil, nil, errors.New("--raw needs --module, --token and --pin-file")
	}
	keyID, err := hexID(o.keyID)
	if err != nil {
		return nil, nil, err
	}
	pin, err := a.readPIN(o.pinFile, "")
	if err != nil {
		return nil, nil, err
	}
	defer clear(pin)
	m, err := hsm.OpenModule(ctx, o.module)
	if err != nil {
		return nil, nil, err
	}
	sel, err := hsm.ParseTokenSelector(o.token)
	if err != nil {
		m.Close()
		return nil, nil, err
	}
	tok, err := m.Token(ctx, sel)
	if err == nil {
		err = tok.Login(ctx, pin)
	}
	if err != nil {
		m.Close()
		return nil, nil, err
	}
	sign := func(ctx context.Context, digests [][]byte) error {
		switch {
		case len(digests) == 1:
			_, err := tok.Sign(ctx, keyID, alg, digests[0])
			return err
		case mode == signerv1.BatchMode_BATCH_MODE_MERKLE:
			tree, err := merkle.New(digests)
			if err != nil {
				return err
			}
			signed, err := merkle.SignedDigest(tree.Root(), alg.Hash)
			if err != nil {
				return err
			}
			_, err = tok.Sign(ctx, keyID, alg, signed)
			return err
		}
		_, err := tok.SignMany(ctx, keyID, alg, digests)
		return err
	}
	return sign, func() { _ = m.Close() }, nil
}

func hexID(s string) ([]byte, error) {
	id, err := hex.DecodeString(s)
	if err != nil || len(id) == 0 {
		return nil, fmt.Errorf("key id %q is not hex", s)
	}
	return id, nil
}
