package signer

import dto "github.com/prometheus/client_model/go"

// The limits' internals the tests read.

// limitExceeded reads signerd_limit_exceeded_total{limit=name}.
func (d *testDaemon) limitExceeded(name string) int {
	var m dto.Metric
	if err := d.svc.limits.exceeded.WithLabelValues(name).Write(&m); err != nil {
		d.t.Fatal(err)
	}
	return int(m.GetCounter().GetValue())
}

// refusalsSummarised reads signerd_refusals_summarised_total.
func (d *testDaemon) refusalsSummarised() int {
	var m dto.Metric
	if err := d.svc.limits.unwritten.Write(&m); err != nil {
		d.t.Fatal(err)
	}
	return int(m.GetCounter().GetValue())
}
