package signer

import (
	"errors"
	"testing"

	"google.golang.org/protobuf/proto"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/softhsm-test/devca"
)

// BenchmarkOCSPResponses measures, on the daemon's socket in one run,
// GetOCSPResponses for one certificate from the cache against GetStatus
// (a call that does nothing), and a call for 100 certificates against
// one for a single certificate. It reports the ratios the performance
// targets are set in: ocsp1/getstatus (the cache's call as a fraction of
// a no-op call's rate; target >= 0.8) and batch100/single (the time of a
// 100-certificate call in single calls; target < 3), and beside it
// floor-batch100/single, a single call plus encoding and decoding the
// 100 responses, in single calls. The 100 are one
// certificate named 100 times, which costs the daemon what 100 cached
// certificates would.
func BenchmarkOCSPResponses(b *testing.B) {
	d := newDaemon(b, func(p *daemonParams) { p.OCSP = ocspOn })
	ca := devca.New(b)
	ca.StartOCSPResponder(b, 60)
	_, _, sum := d.activeSignCert(b, ca, "agency", member)
	if st := d.refreshOCSP(b, sum); !st.GetUsable() {
		b.Fatalf("no usable response: %+v", st)
	}
	ctx := testCtx(b)
	one := &signerv1.GetOCSPResponsesRequest{CertHashes: []string{sum}}
	hundred := &signerv1.GetOCSPResponsesRequest{}
	for range 100 {
		hundred.CertHashes = append(hundred.CertHashes, sum)
	}
	const g, n = 4, 4000
	status := func() (float64, error) {
		return runParallel(g, n, func(int) error {
			_, err := d.client.GetStatus(ctx, &signerv1.GetStatusRequest{})
			return err
		})
	}
	single := func() (float64, error) {
		return runParallel(g, n, func(int) error {
			_, err := d.client.GetOCSPResponses(ctx, one)
			return err
		})
	}
	batch := func() (float64, error) {
		return runParallel(g, n/10, func(int) error {
			r, err := d.client.GetOCSPResponses(ctx, hundred)
			if err == nil && len(r.GetResponses()[99].GetResponse()) == 0 {
				err = errors.New("a batch answer without a response")
			}
			return err
		})
	}
	b.ResetTimer()
	for b.Loop() {
		ocspRate, statusRate, r1, err := compareRates(benchRounds/2, single, status)
		if err != nil {
			b.Fatal(err)
		}
		singleRate, batchRate, rb, err := compareRates(benchRounds/2, single, batch)
		if err != nil {
			b.Fatal(err)
		}
		// The floor of a 100-certificate call: a single call plus
		// encoding and decoding the 100 responses it carries, which no
		// server can skip.
		resp, err := d.client.GetOCSPResponses(ctx, hundred)
		if err != nil {
			b.Fatal(err)
		}
		codecRate, err := runParallel(g, n/10, func(int) error {
			raw, err := proto.Marshal(resp)
			if err != nil {
				return err
			}
			return proto.Unmarshal(raw, &signerv1.GetOCSPResponsesResponse{})
		})
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(1+singleRate/codecRate, "floor-batch100/single")
		b.ReportMetric(r1, "ocsp1/getstatus")
		b.ReportMetric(rb, "batch100/single")
		b.ReportMetric(ocspRate, "ocsp1-calls/s")
		b.ReportMetric(statusRate, "getstatus-calls/s")
		b.ReportMetric(batchRate, "batch100-calls/s")
	}
}
