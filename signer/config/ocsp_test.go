package config

import (
	"strings"
	"testing"
	"time"
)

// TestOCSPTable checks the [ocsp] table: the defaults, values read, and
// each value refused with a message saying why, a refresh interval that
// could let a response go stale among them.
func TestOCSPTable(t *testing.T) {
	c, err := Parse([]byte(moduleOK), "t.toml")
	if err != nil {
		t.Fatal(err)
	}
	if o := c.OCSP; !o.Enabled || o.Freshness != time.Hour || o.MaxSkew != 5*time.Minute || o.RefreshInterval != 0 || o.MaxInFlight != 8 {
		t.Fatalf("defaults: %+v", o)
	}
	c, err = Parse([]byte(moduleOK+`
[ocsp]
freshness = "20m"
refresh_interval = "5m"
[[ocsp.responders]]
issuer = "/etc/ca.pem"
urls = ["http://a.test/ocsp", "https://b.test"]
method = "GET"
nonce = true
`), "t.toml")
	if err != nil {
		t.Fatal(err)
	}
	if o := c.OCSP; o.Freshness != 20*time.Minute || o.RefreshInterval != 5*time.Minute || o.RetryMax() != 5*time.Minute ||
		len(o.Responders) != 1 || o.Responders[0].Method != "GET" || !o.Responders[0].Nonce || len(o.Responders[0].URLs) != 2 {
		t.Fatalf("read: %+v", o)
	}
	if got := (OCSP{Freshness: 8 * time.Minute}).RetryMax(); got != 2*time.Minute {
		t.Fatalf("RetryMax for 8m freshness: %s, want 2m", got)
	}
	for _, c := range []struct {
		table, key, want string
	}{
		{`refresh_interval = "1h"`, "ocsp.refresh_interval", "could go stale"},
		{"freshness = \"2h\"\nrefresh_interval = \"3h\"", "ocsp.refresh_interval", "not shorter than freshness"},
		{`freshness = "30s"`, "ocsp.freshness", "not between"},
		{`freshness = "soon"`, "ocsp.freshness", "not a duration"},
		{`refresh_interval = "5s"`, "ocsp.refresh_interval", "not between"},
		{`max_in_flight = 0`, "ocsp.max_in_flight", "not between"},
		{`max_response_size = 10`, "ocsp.max_response_size", "not between"},
		{`issuer_certs = ["relative.pem"]`, "ocsp.issuer_certs[0]", "relative.pem"},
		{"[[ocsp.responders]]\nissuer = \"/ca.pem\"\nurls = []", "ocsp.responders[0].urls", "give 1 to"},
		{"[[ocsp.responders]]\nissuer = \"/ca.pem\"\nurls = [\"ftp://x\"]", "ocsp.responders[0].urls[0]", "not an http"},
		{"[[ocsp.responders]]\nissuer = \"/ca.pem\"\nurls = [\"http://u:p@x\"]", "ocsp.responders[0].urls[0]", "without credentials"},
		{"[[ocsp.responders]]\nissuer = \"/ca.pem\"\nurls = [\"http://x\"]\nmethod = \"PUT\"", "ocsp.responders[0].method", "neither"},
		{`colour = "blue"`, "ocsp.colour", "unknown key"},
	} {
		_, err := Parse([]byte(moduleOK+"\n[ocsp]\n"+c.table+"\n"), "t.toml")
		if err == nil || !strings.Contains(err.Error(), c.key) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want %s: %s", c.table, err, c.key, c.want)
		}
	}
}
