package config

import (
	"strings"
	"testing"
	"time"
)

// TestTSATable checks the [tsa] table: defaults, values read, and each
// value refused with a message saying why.
func TestTSATable(t *testing.T) {
	c, err := Parse([]byte(moduleOK), "t.toml")
	if err != nil {
		t.Fatal(err)
	}
	if ts := c.TSA; ts.Enabled || !ts.RequireSyncedClock || ts.Accuracy != time.Second || len(ts.Hashes) != 3 || ts.Upstream.MaxBatch != DefaultTSAMaxBatch {
		t.Fatalf("defaults: %+v", ts)
	}
	c, err = Parse([]byte(moduleOK+`
[tsa]
enabled = true
policy = "1.3.6.1.4.1.99999.1"
accepted_policies = ["1.3.6.1.4.1.99999.2"]
hashes = ["SHA256"]
accuracy = "500ms"
listen = "127.0.0.1:3180"
  [tsa.upstream]
  urls = ["http://tsa.example.test"]
  trust_anchors = ["/etc/signerd/tsa-ca.pem"]
  batch_window = "20ms"
`), "t.toml")
	if err != nil {
		t.Fatal(err)
	}
	if ts := c.TSA; !ts.Enabled || ts.Accuracy != 500*time.Millisecond || ts.Listen != "127.0.0.1:3180" || ts.Upstream.BatchWindow != 20*time.Millisecond {
		t.Fatalf("read: %+v", ts)
	}
	for _, c := range []struct{ table, key, want string }{
		{"enabled = true", "tsa.policy", "needs its default policy"},
		{`policy = "one.two"`, "tsa.policy", "not a dotted OID"},
		{`hashes = ["SHA1"]`, "tsa.hashes[0]", "never accepted"},
		{`hashes = []`, "tsa.hashes", "at least one"},
		{`accuracy = "2m"`, "tsa.accuracy", "not between"},
		{`listen = "0.0.0.0:3180"`, "tsa.listen", "loopback"},
		{`key = "zz"`, "tsa.key", ""},
		{"[tsa.upstream]\nurls = [\"http://x\"]", "tsa.upstream.trust_anchors", "name at least one"},
		{"[tsa.upstream]\nurls = [\"ftp://x\"]\ntrust_anchors = [\"/a.pem\"]", "tsa.upstream.urls[0]", "not an http"},
		{"[tsa.upstream]\nbatch_window = \"1m\"", "tsa.upstream.batch_window", "not between"},
		{"[tsa.upstream]\nmax_batch = 0", "tsa.upstream.max_batch", "not between"},
	} {
		_, err := Parse([]byte(moduleOK+"\n[tsa]\n"+c.table+"\n"), "t.toml")
		if err == nil || !strings.Contains(err.Error(), c.key) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want %s: %s", c.table, err, c.key, c.want)
		}
	}
}
