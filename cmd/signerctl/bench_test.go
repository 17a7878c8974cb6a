package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hsmsigner/hsmsigner/cmd/internal/daemontest"
)

// BenchmarkSeparateProcesses runs the README's separate-process figures:
// `signerd dev` and the signerctl binary, each its own process, `signerctl
// bench --raw` for each case (10 s in 2 rounds, or $BENCH_DURATION), and
// reports each case's daemon/raw and digests/s; the Merkle case also
// reports its digests/s over the raw RSA signatures/s of the RS256/c2
// case. Run it once:
//
//	go test -run '^$' -bench BenchmarkSeparateProcesses -benchtime 1x ./cmd/signerctl/
func BenchmarkSeparateProcesses(b *testing.B) {
	dir, ecKey := devDaemon(b)
	module := ""
	for _, p := range []string{"/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so"} {
		if _, err := os.Stat(p); err == nil {
			module = p
			break
		}
	}
	duration := "10s"
	if d := os.Getenv("BENCH_DURATION"); d != "" {
		duration = d
	}
	bin := daemontest.Build(b, "github.com/hsmsigner/hsmsigner/cmd/signerctl")
	env := append(os.Environ(), "SOFTHSM2_CONF="+filepath.Join(dir, "softhsm/softhsm2.conf"))
	signerctl := func(b *testing.B, args ...string) string {
		b.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.Env = env
		out, err := cmd.Output()
		if err != nil {
			b.Fatalf("signerctl %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	rsaKey := strings.TrimSpace(signerctl(b, "key", "generate", "--label", "bench-rsa", "--algorithm", "RSA2048", "-q"))
	raw := []string{"--raw", "--module", module, "--token", "label:signer-dev", "--pin-file", filepath.Join(dir, "user.pin"), "-d", duration, "--rounds", "2"}
	var rawRSA float64 // raw RSA signatures/s at 2 callers, for the Merkle case
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"ES256/c2", []string{"--key", ecKey, "--alg", "ES256", "-c", "2"}},
		{"ES256/c8", []string{"--key", ecKey, "--alg", "ES256", "-c", "8"}},
		{"ES256/c8/unary", []string{"--key", ecKey, "--alg", "ES256", "-c", "8", "--unary"}},
		{"RS256/c2", []string{"--key", rsaKey, "--alg", "SHA256withRSA", "-c", "2"}},
		{"RS256/c8", []string{"--key", rsaKey, "--alg", "SHA256withRSA", "-c", "8"}},
		{"ES256/c2/batch64", []string{"--key", ecKey, "--alg", "ES256", "-c", "2", "-b", "64"}},
		{"RS256/c2/merkle64", []string{"--key", rsaKey, "--alg", "SHA256withRSA", "-c", "2", "-b", "64", "--mode", "merkle"}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			for b.Loop() {
				out := signerctl(b, append(append([]string{"bench"}, tc.args...), raw...)...)
				ratio, daemonRate, rawRate := parseBench(b, out)
				b.ReportMetric(ratio, "daemon/raw")
				b.ReportMetric(daemonRate, "daemon-digests/s")
				b.ReportMetric(rawRate, "raw-digests/s")
				switch {
				case tc.name == "RS256/c2":
					rawRSA = rawRate
				case strings.Contains(tc.name, "merkle") && rawRSA > 0:
					// The target: Merkle digests/s against raw RSA signatures/s.
					b.ReportMetric(daemonRate/rawRSA, "x-raw-RSA-sig/s")
				}
			}
		})
	}
}

// parseBench reads the daemon/raw ratio and both rates from signerctl
// bench's output.
func parseBench(b *testing.B, out string) (ratio, daemonRate, rawRate float64) {
	b.Helper()
	num := func(s string) float64 {
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			b.Fatalf("signerctl bench output %q: %v\n%s", s, err, out)
		}
		return v
	}
	found := 0
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) == 2 && f[0] == "daemon/raw:":
			ratio = num(f[1])
			found++
		case len(f) > 1 && f[0] == "daemon":
			daemonRate = num(f[1])
			found++
		case len(f) > 1 && f[0] == "raw":
			rawRate = num(f[1])
			found++
		}
	}
	if found != 3 {
		b.Fatalf("signerctl bench output without its figures:\n%s", out)
	}
	return ratio, daemonRate, rawRate
}
