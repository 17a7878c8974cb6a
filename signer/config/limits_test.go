package config

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestLimitsDefaults(t *testing.T) {
	c, err := Parse([]byte("[server]\n"), "test.toml")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c.Limits, DefaultLimits()) || !reflect.DeepEqual(Default().Limits, DefaultLimits()) {
		t.Fatalf("limits %+v, want the defaults %+v", c.Limits, DefaultLimits())
	}
	if err := DefaultLimits().Validate(); err != nil {
		t.Fatalf("the defaults are invalid: %v", err)
	}
	if err := (Limits{}).Validate(); !errors.Is(err, ErrInvalid) {
		t.Fatalf("zero limits: %v, want ErrInvalid", err)
	}
}

func TestLimitsParse(t *testing.T) {
	doc := `[limits]
connections_per_uid = 3
calls_per_uid = 20
refusals_per_second = 2
refusal_burst = 4
refusal_summary_interval = "1m30s"
login_attempts_per_minute = 1
handshake_timeout = "250ms"
idle_timeout = "30s"
min_ping_interval = "1m"
max_header_list_bytes = 4096
`
	c, err := Parse([]byte(doc), "test.toml")
	if err != nil {
		t.Fatal(err)
	}
	want := Limits{ConnectionsPerUID: 3, CallsPerUID: 20, RefusalsPerSecond: 2, RefusalBurst: 4, RefusalSummaryInterval: 90 * time.Second, LoginAttemptsPerMinute: 1,
		HandshakeTimeout: 250 * time.Millisecond, IdleTimeout: 30 * time.Second, MinPingInterval: time.Minute, MaxHeaderListBytes: 4096}
	if c.Limits != want {
		t.Fatalf("limits %+v, want %+v", c.Limits, want)
	}
	data, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	back, err := Parse(data, "marshalled")
	if err != nil || back.Limits != want {
		t.Fatalf("round trip: %+v, %v; want %+v\n%s", back.Limits, err, want, data)
	}
}

func TestLimitsInvalid(t *testing.T) {
	limits := func(kv string) string { return "[limits]\n" + kv + " # want\n" }
	tests := []struct{ name, doc, want string }{
		{"no connections", limits(`connections_per_uid = 0`), "limits.connections_per_uid: 0 is not between 1 and 65536"},
		{"too many connections", limits(`connections_per_uid = 65537`), "limits.connections_per_uid: 65537"},
		{"one call", limits(`calls_per_uid = 1`), "limits.calls_per_uid: 1 is not between 2 and 1048576"},
		{"negative refusal rate", limits(`refusals_per_second = -1`), "limits.refusals_per_second: -1"},
		{"no burst", limits(`refusal_burst = 0`), "limits.refusal_burst: 0"},
		{"no login", limits(`login_attempts_per_minute = 0`), "limits.login_attempts_per_minute: 0 is not between 1 and 600"},
		{"many logins", limits(`login_attempts_per_minute = 601`), "limits.login_attempts_per_minute: 601"},
		{"interval without unit", limits(`refusal_summary_interval = "10"`), `limits.refusal_summary_interval: "10" is not a duration`},
		{"short interval", limits(`refusal_summary_interval = "500ms"`), `limits.refusal_summary_interval: "500ms" is not between 1s and 1h0m0s`},
		{"long interval", limits(`refusal_summary_interval = "2h"`), `limits.refusal_summary_interval: "2h"`},
		{"no handshake time", limits(`handshake_timeout = "0s"`), `limits.handshake_timeout: "0s" is not between 100ms and 2m0s`},
		{"long handshake", limits(`handshake_timeout = "3m"`), `limits.handshake_timeout: "3m"`},
		{"handshake without unit", limits(`handshake_timeout = "10"`), `limits.handshake_timeout: "10" is not a duration`},
		{"short idle", limits(`idle_timeout = "500ms"`), `limits.idle_timeout: "500ms" is not between 1s and 24h0m0s`},
		{"long idle", limits(`idle_timeout = "25h"`), `limits.idle_timeout: "25h"`},
		{"short ping interval", limits(`min_ping_interval = "100ms"`), `limits.min_ping_interval: "100ms" is not between 1s and 2h0m0s`},
		{"small header list", limits(`max_header_list_bytes = 1023`), "limits.max_header_list_bytes: 1023 is not between 1024 and 1048576"},
		{"large header list", limits(`max_header_list_bytes = 1048577`), "limits.max_header_list_bytes: 1048577"},
		{"string for integer", limits(`calls_per_uid = "10"`), "limits.calls_per_uid: is a string; want an integer"},
		{"unknown key", limits(`calls_per_gid = 10`), `unknown key "limits.calls_per_gid"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.doc), "test.toml")
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Parse: %v, want ErrInvalid", err)
			}
			ps := problems(t, err)
			if len(ps) != 1 || !strings.Contains(ps[0].Msg, tc.want) {
				t.Fatalf("problems %v, want one saying %q", err, tc.want)
			}
			if prefix := fmt.Sprintf("test.toml:%d: ", markedLines(tc.doc)[0]); !strings.HasPrefix(err.Error(), prefix) {
				t.Errorf("error %q does not start with %q", err, prefix)
			}
		})
	}
}
