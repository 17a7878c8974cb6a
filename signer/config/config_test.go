package config

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
)

// problems flattens the error Parse returns into its *Error values.
func problems(t *testing.T, err error) []*Error {
	t.Helper()
	var out []*Error
	var walk func(error)
	walk = func(err error) {
		if e, ok := err.(*Error); ok {
			out = append(out, e)
			return
		}
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				walk(e)
			}
			return
		}
		t.Fatalf("unexpected error type %T: %v", err, err)
	}
	walk(err)
	return out
}

// markedLines returns the 1-based lines of doc that hold "# want".
func markedLines(doc string) []int {
	var lines []int
	for i, l := range strings.Split(doc, "\n") {
		if strings.Contains(l, "# want") {
			lines = append(lines, i+1)
		}
	}
	return lines
}

const moduleOK = `
[[module]]
name = "m"
path = "/usr/lib/p11.so"
  [[module.token]]
  name = "t"
  token = "tok"
`

func TestLoadExample(t *testing.T) {
	c, err := Load("testdata/example.toml")
	if err != nil {
		t.Fatal(err)
	}
	want := Server{
		GRPCSocket:      "/run/signerd/signer.sock",
		HTTPSocket:      "/run/signerd/http.sock",
		StateDir:        "/var/lib/signerd",
		AuditFile:       "/var/log/signerd/audit.jsonl",
		AuditMode:       AuditBuffered,
		MaxMessageBytes: 1048576,
		MaxBatch:        4096,
		MaxStreams:      256,
		ShutdownTimeout: 10 * time.Second,
		LogLevel:        slog.LevelInfo,

		AuditCheckpointInterval: 5 * time.Minute,
	}
	if c.Limits != DefaultLimits() {
		t.Errorf("[limits] %+v; the example documents the defaults %+v", c.Limits, DefaultLimits())
	}
	if c.Server != want {
		t.Errorf("server = %+v, want %+v", c.Server, want)
	}
	wantModules := []Module{{
		Name: "softhsm",
		Path: "/usr/lib/softhsm/libsofthsm2.so",
		Tokens: []Token{
			{Name: "signer", Selector: "pkcs11:token=signer", PIN: PINSource{Kind: PINFromLogin}, Verify: true},
			{Name: "tsa", Selector: "serial:4f1c2a9b0d3e5f60", PIN: PINSource{Kind: PINFromCredential, Name: "tsa-pin"}, Sessions: 2, Verify: true},
		},
	}}
	if !reflect.DeepEqual(c.Modules, wantModules) {
		t.Errorf("modules = %+v, want %+v", c.Modules, wantModules)
	}
	if got := c.Policy.Admins(); !reflect.DeepEqual(got, Admins{UIDs: []uint32{0}, GIDs: []uint32{}}) {
		t.Errorf("admins = %+v", got)
	}
	wantRules := []ClientRule{
		{Name: "security-server", UIDs: []uint32{998}, GIDs: []uint32{}, Keys: []string{"*"}, Usages: []string{"sign"}, Members: []string{"*"}},
		{Name: "timestamper", UIDs: []uint32{}, GIDs: []uint32{997}, Keys: []string{"0a1b2c3d4e5f60718293a4b5c6d7e8f9"}, Usages: []string{"tsa"}, Members: []string{}},
	}
	if got := c.Policy.ClientRules(); !reflect.DeepEqual(got, wantRules) {
		t.Errorf("client rules = %+v\nwant %+v", got, wantRules)
	}
	if _, tok, ok := c.TokenByName("tsa"); !ok || tok.Sessions != 2 {
		t.Errorf("TokenByName(tsa) = %+v, %v", tok, ok)
	}
	if _, _, ok := c.TokenByName("nope"); ok {
		t.Error("TokenByName(nope) found a token")
	}
}

func TestParseValid(t *testing.T) {
	tests := []struct {
		name  string
		doc   string
		check func(t *testing.T, c *Config)
	}{
		{"empty document takes every default", "", func(t *testing.T, c *Config) {
			if !reflect.DeepEqual(c, Default()) {
				t.Errorf("got %+v, want the defaults %+v", c, Default())
			}
			if len(c.Modules) != 0 || c.Policy.IsAdmin(Peer{UID: 0}) || c.Policy.IsClient(Peer{UID: 0}) {
				t.Error("empty document must have no modules and grant nothing")
			}
		}},
		{"server values", `[server]
grpc_socket = "/tmp/s/g.sock"
http_socket = "/tmp/s/h.sock"
socket_group = "signer-clients"
state_dir = "/srv/state"
audit_file = "/srv/audit.jsonl"
audit_mode = "buffered"
max_message_bytes = 65536
max_batch = 1
max_concurrent_streams = 8
shutdown_timeout = "1m30s"
log_level = "debug"
audit_checkpoint_interval = "1h"
audit_checkpoint_key = "0A1B"
`, func(t *testing.T, c *Config) {
			want := Server{"/tmp/s/g.sock", "/tmp/s/h.sock", "signer-clients", "/srv/state", "/srv/audit.jsonl",
				AuditBuffered, 65536, 1, 8, 90 * time.Second, slog.LevelDebug, time.Hour, "0a1b"}
			if c.Server != want {
				t.Errorf("server = %+v, want %+v", c.Server, want)
			}
		}},
		{"token options", `[[module]]
name = "hw"
path = "/opt/hsm/lib/libcs_pkcs11_R3.so"
  [[module.token]]
  name = "a"
  token = "label:Signer 1"
  pin = "file:/etc/signerd/a.pin"
  sessions = 16
  rsa_verify = false
  [[module.token]]
  name = "b"
  token = "pkcs11:serial=0123;token=My%20Token;slot-id=3"
  [[module.token]]
  name = "c"
  token = "label:Signer 3"
  verify_signatures = false
`, func(t *testing.T, c *Config) {
			want := []Token{
				{Name: "a", Selector: "label:Signer 1", PIN: PINSource{Kind: PINFromFile, Path: "/etc/signerd/a.pin"}, Sessions: 16},
				{Name: "b", Selector: "pkcs11:serial=0123;token=My%20Token;slot-id=3", PIN: PINSource{Kind: PINFromLogin}, Verify: true},
				{Name: "c", Selector: "label:Signer 3", PIN: PINSource{Kind: PINFromLogin}},
			}
			if !reflect.DeepEqual(c.Modules[0].Tokens, want) {
				t.Errorf("tokens = %+v, want %+v", c.Modules[0].Tokens, want)
			}
		}},
		{"inline tables", `module = [ { name = "m", path = "/p.so", token = [ { name = "t", token = "x" } ] } ]
policy = { admins = { gids = [4] }, client = [ { name = "c", uids = [5], keys = ["ABCD"], usages = ["auth"] } ] }
`, func(t *testing.T, c *Config) {
			if len(c.Modules) != 1 || c.Modules[0].Tokens[0].Name != "t" {
				t.Errorf("modules = %+v", c.Modules)
			}
			if !c.Policy.IsAdmin(Peer{UID: 77, GID: 4}) {
				t.Error("gid 4 is not admin")
			}
			if !c.Policy.MayUseKey(Peer{UID: 5}, "abcd", UsageAuth) {
				t.Error("key ids are not compared case-insensitively")
			}
			if got := c.Policy.ClientRules()[0].Keys; !reflect.DeepEqual(got, []string{"abcd"}) {
				t.Errorf("keys = %q, want lower case", got)
			}
		}},
		{"two modules", moduleOK + `
[[module]]
name = "m2"
path = "/usr/lib/other.so"
  [[module.token]]
  name = "t2"
  token = "tok"
`, func(t *testing.T, c *Config) {
			if len(c.Modules) != 2 {
				t.Errorf("got %d modules", len(c.Modules))
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse([]byte(tc.doc), "test.toml")
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			tc.check(t, c)
		})
	}
}

// TestParseInvalid checks each validation rule: one problem, on the line
// marked "# want", wrapping ErrInvalid, with a message that says what.
func TestParseInvalid(t *testing.T) {
	server := func(kv string) string { return "[server]\n" + kv + " # want\n" }
	token := func(kv string) string {
		doc := "[[module]]\nname = \"m\"\npath = \"/p.so\"\n[[module.token]]\nname = \"t\"\n"
		if !strings.HasPrefix(kv, "token =") {
			doc += "token = \"x\"\n"
		}
		return doc + kv + " # want\n"
	}
	client := func(kv string) string {
		return "[[policy.client]]\nname = \"c\"\nuids = [1]\n" + kv + " # want\n"
	}
	tests := []struct {
		name, doc, want string
	}{
		{"relative socket", server(`grpc_socket = "run/s.sock"`), `server.grpc_socket: "run/s.sock": is not an absolute path`},
		{"unclean socket", server(`grpc_socket = "/run//s.sock"`), "is not a clean path"},
		{"socket too long", server(`http_socket = "/` + strings.Repeat("a", 107) + `"`), "longer than 107 bytes"},
		{"same sockets", server(`http_socket = "/run/signerd/signer.sock"`), "server.http_socket: must differ from grpc_socket"},
		{"empty state dir", server(`state_dir = ""`), "server.state_dir: is empty"},
		{"root audit file", server(`audit_file = "/"`), "is the root directory"},
		{"control char in path", server(`audit_file = "/a\nb"`), "control character"},
		{"socket group", server(`socket_group = "bad group"`), "server.socket_group"},
		{"audit mode", server(`audit_mode = "async"`), `server.audit_mode: "async" is not one of sync, buffered`},
		{"checkpoint interval not a duration", server(`audit_checkpoint_interval = "often"`), `server.audit_checkpoint_interval: "often" is not a duration`},
		{"checkpoint interval too short", server(`audit_checkpoint_interval = "10ms"`), `server.audit_checkpoint_interval: "10ms" is neither 0 (off) nor at least 1s`},
		{"checkpoint key not hex", server(`audit_checkpoint_key = "audit"`), `server.audit_checkpoint_key: "audit" is not a key id`},
		{"checkpoint key wildcard", server(`audit_checkpoint_key = "*"`), `server.audit_checkpoint_key: "*" is not a key id`},
		{"zero message size", server(`max_message_bytes = 0`), "server.max_message_bytes: 0 is not between 65536"},
		{"huge message size", server(`max_message_bytes = 4294967296`), "server.max_message_bytes"},
		{"negative batch", server(`max_batch = -1`), "server.max_batch: -1"},
		{"no streams", server(`max_concurrent_streams = 0`), "server.max_concurrent_streams: 0 is not between 2"},
		{"one stream", server(`max_concurrent_streams = 1`), "server.max_concurrent_streams: 1 is not between 2 (signer/client keeps a stream open) and 65536"},
		{"too many streams", server(`max_concurrent_streams = 65537`), "server.max_concurrent_streams: 65537"},
		{"duration without unit", server(`shutdown_timeout = "10"`), `server.shutdown_timeout: "10" is not a duration`},
		{"zero duration", server(`shutdown_timeout = "0s"`), "must be greater than zero"},
		{"negative duration", server(`shutdown_timeout = "-1s"`), "must be greater than zero"},
		{"log level", server(`log_level = "verbose"`), `server.log_level: "verbose" is not one of debug, info, warn, error`},

		{"module without name", "[[module]] # want\npath = \"/p.so\"\n[[module.token]]\nname = \"t\"\ntoken = \"x\"\n", "module[0].name: is missing"},
		{"module bad name", "[[module]]\nname = \"a b\" # want\npath = \"/p.so\"\n[[module.token]]\nname = \"t\"\ntoken = \"x\"\n", `module[0].name: "a b" may hold only`},
		{"module long name", "[[module]]\nname = \"" + strings.Repeat("n", 65) + "\" # want\npath = \"/p.so\"\n[[module.token]]\nname = \"t\"\ntoken = \"x\"\n", "longer than 64 bytes"},
		{"module duplicate name", moduleOK + "[[module]]\nname = \"m\" # want\npath = \"/q.so\"\n[[module.token]]\nname = \"t2\"\ntoken = \"x\"\n", `module[1].name: "m" is already the name of module[0]`},
		{"module relative path", "[[module]]\nname = \"m\"\npath = \"libsofthsm2.so\" # want\n[[module.token]]\nname = \"t\"\ntoken = \"x\"\n", "module[0].path"},
		{"module duplicate path", moduleOK + "[[module]]\nname = \"m2\"\npath = \"/usr/lib/p11.so\" # want\n[[module.token]]\nname = \"t2\"\ntoken = \"x\"\n", "module[0] already loads"},
		{"module without tokens", "[[module]] # want\nname = \"m\"\npath = \"/p.so\"\n", "module[0]: has no [[module.token]]"},

		{"token without name", "[[module]]\nname = \"m\"\npath = \"/p.so\"\n[[module.token]] # want\ntoken = \"x\"\n", "module[0].token[0].name: is missing"},
		{"token duplicate name across modules", moduleOK + "[[module]]\nname = \"m2\"\npath = \"/q.so\"\n[[module.token]]\nname = \"t\" # want\ntoken = \"y\"\n", `module[1].token[0].name: "t" is already the name of module[0].token[0]`},
		{"token without selector", "[[module]]\nname = \"m\"\npath = \"/p.so\"\n[[module.token]] # want\nname = \"t\"\n", "module[0].token[0].token: is missing"},
		{"selector duplicate", "[[module]]\nname = \"m\"\npath = \"/p.so\"\n[[module.token]]\nname = \"t\"\ntoken = \"x\"\n[[module.token]]\nname = \"u\"\ntoken = \"x\" # want\n", `module[0].token[1].token: module[0].token[0] already selects "x"`},
		{"selector with query", token(`token = "pkcs11:token=a?pin-value=1234"`), "takes no query"},
		{"selector names no token", token(`token = "pkcs11:model=SoftHSM%20v2"`), "names no token"},
		{"selector names object", token(`token = "pkcs11:token=a;object=key"`), "names an object"},
		{"selector unknown attribute", token(`token = "pkcs11:tokn=a"`), `unknown attribute "tokn"`},
		{"selector bad escape", token(`token = "pkcs11:token=a%zz"`), "bad percent-encoding"},
		{"selector not name=value", token(`token = "pkcs11:token"`), "is not name=value"},
		{"selector twice", token(`token = "pkcs11:token=a;token=b"`), "given twice"},
		{"selector empty serial", token(`token = "serial:"`), "a serial has 1 to 16 bytes"},
		{"selector empty label", token(`token = "label:"`), "a label has 1 to 32 bytes"},
		{"selector long label", token(`token = "` + strings.Repeat("l", 33) + `"`), "a label has at most 32 bytes"},
		{"pin unknown kind", token(`pin = "1234"`), `module[0].token[0].pin: must be "login", "file:/absolute/path" or "credential:NAME" (value not shown)`},
		{"pin relative file", token(`pin = "file:signer.pin"`), "module[0].token[0].pin: file: path is not an absolute path"},
		{"pin credential path", token(`pin = "credential:../x"`), "NAME must be a file name"},
		{"pin empty credential", token(`pin = "credential:"`), "NAME must be a file name"},
		{"negative sessions", token(`sessions = -1`), "module[0].token[0].sessions: -1 is not between 0"},
		{"too many sessions", token(`sessions = 5000`), "module[0].token[0].sessions: 5000"},

		{"negative admin uid", "[policy.admins]\nuids = [0, -1] # want\n", "policy.admins.uids[1]: -1 is not a uid"},
		{"admin uid -1 as unsigned", "[policy.admins]\ngids = [4294967295] # want\n", "policy.admins.gids[0]: 4294967295 is not a gid"},
		{"client uid too large", client(`gids = [4294967296]`), "policy.client[0].gids[0]"},
		{"client without name", "[[policy.client]] # want\nuids = [1]\n", "policy.client[0].name: is missing"},
		{"client duplicate name", "[[policy.client]]\nname = \"c\"\nuids = [1]\n[[policy.client]]\nname = \"c\" # want\nuids = [2]\n", `policy.client[1].name: "c" is already the name of policy.client[0]`},
		{"client matches nobody", "[[policy.client]] # want\nname = \"c\"\nkeys = [\"*\"]\n", "policy.client[0]: names no uids and no gids"},
		{"key not hex", client(`keys = ["xyz1"]`), `policy.client[0].keys[0]: "xyz1" is not a key id`},
		{"key odd length", client(`keys = ["*", "abc"]`), `policy.client[0].keys[1]: "abc" is not a key id`},
		{"unknown usage", client(`usages = ["sign", "encrypt"]`), `policy.client[0].usages[1]: "encrypt" is not one of sign, auth, tsa`},
		{"wildcard usage", client(`usages = ["*"]`), `"*" is not one of sign, auth, tsa`},
		{"empty member", client(`members = [""]`), `policy.client[0].members[0]: "" is empty`},
		{"member with space", client(`members = ["EE GOV"]`), "holds a space"},

		{"nested arrays", "[server]\nmax_batch = 1\nx = " + strings.Repeat("[", 17) + strings.Repeat("]", 17) + " # want\n", "nested deeper than 16 levels"},
		{"nested inline tables", "\nx = {\n" + strings.Repeat("a={", 16) + strings.Repeat("}", 17) + " # want\n", "nested deeper than 16 levels"},
		{"long dotted key", "[a.b.c.d.e.f.g.h]\ni.j.k.l.m.n.o.p.q = 1 # want\n", "nested deeper than 16 levels"},

		{"wrong type", token(`sessions = "many"`), "module[0].token[0].sessions: is a string; want an integer"},
		{"wrong type in second element", "[[policy.client]]\nname = \"a\"\nuids = [1]\n[[policy.client]]\nname = \"b\"\nuids = [2, \"3\"] # want\n",
			"policy.client[1].uids[1]: is a string; want an integer"},
		{"table for array of tables", "[module] # want\nname = \"m\"\n", "module: is a table; want an array"},
		{"float for integer", server(`max_batch = 1.5`), "server.max_batch: is a float; want an integer"},
		{"bool as string", token(`rsa_verify = "yes"`), "module[0].token[0].rsa_verify: is a string; want true or false"},
		{"old and new name of verify_signatures", token("verify_signatures = true\nrsa_verify = true"),
			"module[0].token[0].rsa_verify: is the old name of verify_signatures; give verify_signatures only"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.doc), "test.toml")
			if err == nil {
				t.Fatal("Parse accepted the document")
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error does not wrap ErrInvalid: %v", err)
			}
			ps := problems(t, err)
			if len(ps) != 1 {
				t.Fatalf("got %d problems, want 1: %v", len(ps), err)
			}
			if !strings.Contains(ps[0].Msg, tc.want) {
				t.Errorf("message %q does not contain %q", ps[0].Msg, tc.want)
			}
			lines := markedLines(tc.doc)
			if len(lines) != 1 {
				t.Fatalf("test document marks %d lines", len(lines))
			}
			if ps[0].Line != lines[0] {
				t.Errorf("line %d, want %d: %v", ps[0].Line, lines[0], err)
			}
			if prefix := fmt.Sprintf("test.toml:%d: ", lines[0]); !strings.HasPrefix(err.Error(), prefix) {
				t.Errorf("error %q does not start with %q", err, prefix)
			}
		})
	}
}

func TestParseNeverShowsPINValue(t *testing.T) {
	doc := moduleOK + "  pin = \"s3cr3t-PIN\"\n"
	_, err := Parse([]byte(doc), "test.toml")
	if err == nil {
		t.Fatal("pin = <a PIN> accepted")
	}
	if strings.Contains(err.Error(), "s3cr3t") {
		t.Errorf("error shows the pin value: %v", err)
	}
	doc = moduleOK + "  token = \"pkcs11:token=a?pin-value=s3cr3t\"\n"
	doc = strings.Replace(doc, "  token = \"tok\"\n", "", 1)
	_, err = Parse([]byte(doc), "test.toml")
	if err == nil || strings.Contains(err.Error(), "s3cr3t") {
		t.Errorf("pin-value in a URI: err = %v", err)
	}
}

func TestParseReportsEveryProblem(t *testing.T) {
	doc := `[server]
log_level = "loud"   # want
max_batch = 0        # want
[[policy.client]]    # want
name = "c"
usages = ["x"]       # want
kyes = []            # want
`
	_, err := Parse([]byte(doc), "test.toml")
	ps := problems(t, err)
	want := markedLines(doc)
	var got []int
	for _, p := range ps {
		got = append(got, p.Line)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("problem lines %v, want %v\n%v", got, want, err)
	}
}

func TestParseUnknownKeys(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		keys []string // one per "# want" line, in order
	}{
		{"top level", "serverr = 1 # want\n", []string{"serverr"}},
		{"in server", "[server]\nlog_level = \"info\"\ngrpc_sockett = \"/x\" # want\n", []string{"server.grpc_sockett"}},
		{"unknown table reported once", "[servr] # want\nx = 1\ny = 2\n", []string{"servr"}},
		{"unknown subtable", "[server.tls] # want\ncert = \"/c\"\n", []string{"server.tls"}},
		{"dotted key", "server.extra.deep = 1 # want\n", []string{"server.extra.deep"}},
		{"case matters", "[server]\nGRPC_SOCKET = \"/x\" # want\n", []string{"server.GRPC_SOCKET"}},
		{"case matters for tables", "[Server] # want\nlog_level = \"info\"\n", []string{"Server"}},
		{"in second module", moduleOK + "[[module]]\nname = \"m2\"\npaht = \"/q.so\" # want\n[[module.token]]\nname = \"t2\"\ntoken = \"x\"\n",
			[]string{"module.paht"}},
		{"in module.token", `[[module]]
name = "m"
path = "/p.so"
  [[module.token]]
  name = "t1"
  token = "a"
  [[module.token]]
  name = "t2"
  token = "b"
  sesions = 4 # want
`, []string{"module.token.sesions"}},
		{"in policy.client", `[policy]
[policy.admins]
uids = [0]

[[policy.client]]
name = "a"
uids = [1]

[[policy.client]]
name = "b"
uids = [2]
kyes = ["*"] # want
`, []string{"policy.client.kyes"}},
		{"every occurrence", `[[policy.client]]
name = "a"
uids = [1]
kyes = [] # want
[[policy.client]]
name = "b"
uids = [2]
kyes = [] # want
`, []string{"policy.client.kyes", "policy.client.kyes"}},
		{"in policy.admins", "[policy.admins]\nuid = [0] # want\n", []string{"policy.admins.uid"}},
		{"inline table", "policy = { client = [ { name = \"c\", uids = [1],\n  kyes = [] } ] } # want\n", []string{"policy.client.kyes"}},
		{"after multi-line string", "[server]\nsocket_group = '''\n[[module]]\nbogus = 1\n'''\nbogus = 2 # want\n", []string{"server.bogus"}},
		{"quoted key", "[server]\n\"log level\" = \"info\" # want\n", []string{`server."log level"`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.doc), "config.toml")
			if err == nil {
				t.Fatal("Parse accepted the document")
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error does not wrap ErrInvalid: %v", err)
			}
			var unknown []*Error
			for _, p := range problems(t, err) {
				if strings.HasPrefix(p.Msg, "unknown key") {
					unknown = append(unknown, p)
				}
			}
			lines := markedLines(tc.doc)
			if len(unknown) != len(tc.keys) || len(lines) != len(tc.keys) {
				t.Fatalf("got %d unknown keys, %d marked lines, want %d: %v", len(unknown), len(lines), len(tc.keys), err)
			}
			for i, p := range unknown {
				want := fmt.Sprintf("config.toml:%d: unknown key %q", lines[i], tc.keys[i])
				if p.Error() != want || p.Key != tc.keys[i] {
					t.Errorf("got %q (key %q), want %q", p.Error(), p.Key, want)
				}
			}
		})
	}
}

func TestParseSyntaxErrors(t *testing.T) {
	tests := []struct {
		name      string
		doc       string
		line, col int
	}{
		{"missing value", "[server]\nlog_level =\n", 2, 12},
		{"unterminated string", "[server]\n\nlog_level = \"info\n", 3, 18},
		{"unclosed header", "[server\nlog_level = \"info\"\n", 2, 8},
		{"duplicate key", "[server]\nmax_batch = 1\nmax_batch = 2\n", 3, 15},
		{"duplicate table", "[server]\n[policy]\n[server]\n", 3, 2},
		{"bare word", "[server]\nlog_level = info\n", 2, 16},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.doc), "config.toml")
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error does not wrap ErrInvalid: %v", err)
			}
			var pe toml.ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("error does not wrap a toml.ParseError: %v", err)
			}
			ps := problems(t, err)
			if len(ps) != 1 {
				t.Fatalf("got %d problems", len(ps))
			}
			p := ps[0]
			if p.Line != pe.Position.Line || p.Col != pe.Position.Col {
				t.Errorf("position %d:%d, parser says %d:%d", p.Line, p.Col, pe.Position.Line, pe.Position.Col)
			}
			if p.Line != tc.line || p.Col != tc.col {
				t.Errorf("position %d:%d, want %d:%d (%v)", p.Line, p.Col, tc.line, tc.col, err)
			}
			if prefix := fmt.Sprintf("config.toml:%d:%d: ", tc.line, tc.col); !strings.HasPrefix(err.Error(), prefix) {
				t.Errorf("error %q does not start with %q", err, prefix)
			}
		})
	}
}

func writeFile(t *testing.T, name, content string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadFileChecks(t *testing.T) {
	valid := moduleOK
	t.Run("0644 accepted", func(t *testing.T) {
		if _, err := Load(writeFile(t, "c.toml", valid, 0o644)); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("symlink to a file followed", func(t *testing.T) {
		target := writeFile(t, "c.toml", valid, 0o600)
		link := filepath.Join(t.TempDir(), "link.toml")
		if err := os.Symlink(target, link); err != nil {
			t.Fatal(err)
		}
		if _, err := Load(link); err != nil {
			t.Fatal(err)
		}
	})
	for _, mode := range []os.FileMode{0o664, 0o646, 0o666} {
		t.Run(fmt.Sprintf("%04o refused", mode), func(t *testing.T) {
			p := writeFile(t, "c.toml", valid, mode)
			_, err := Load(p)
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), fmt.Sprintf("mode %04o", mode)) || !strings.HasPrefix(err.Error(), p+": ") {
				t.Errorf("err = %v", err)
			}
		})
	}
	t.Run("missing file", func(t *testing.T) {
		_, err := Load(filepath.Join(t.TempDir(), "none.toml"))
		if !errors.Is(err, ErrInvalid) || !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("directory", func(t *testing.T) {
		_, err := Load(t.TempDir())
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("too large", func(t *testing.T) {
		p := writeFile(t, "c.toml", strings.Repeat("# padding\n", MaxConfigBytes/10+1), 0o644)
		_, err := Load(p)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "larger than") {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("errors carry the path", func(t *testing.T) {
		p := writeFile(t, "c.toml", "[server]\nlog_level = \"x\"\n", 0o644)
		_, err := Load(p)
		if err == nil || !strings.HasPrefix(err.Error(), p+":2: ") {
			t.Errorf("err = %v", err)
		}
	})
}

func TestMarshalRoundTrip(t *testing.T) {
	example, err := Load("testdata/example.toml")
	if err != nil {
		t.Fatal(err)
	}
	// A dev-mode configuration built in Go.
	dev := Default()
	dev.Server.StateDir = "/tmp/signerd-dev"
	dev.Server.ShutdownTimeout = 1500 * time.Millisecond
	dev.Server.LogLevel = slog.LevelWarn
	dev.Modules = []Module{{Name: "dev", Path: "/usr/lib/softhsm/libsofthsm2.so", Tokens: []Token{
		{Name: "dev", Selector: "dev-token", PIN: PINSource{Kind: PINFromFile, Path: "/tmp/signerd-dev/pin"}, Sessions: 2},
	}}}
	dev.Policy, err = NewPolicy(Admins{UIDs: []uint32{1000}}, []ClientRule{
		{Name: "me", UIDs: []uint32{1000}, Keys: []string{"*"}, Usages: []string{UsageSign, UsageAuth, UsageTSA}, Members: []string{"*"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]*Config{"example": example, "dev": dev, "default": Default()} {
		t.Run(name, func(t *testing.T) {
			data, err := c.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			back, err := Parse(data, "marshalled")
			if err != nil {
				t.Fatalf("Parse(Marshal()): %v\n%s", err, data)
			}
			if !reflect.DeepEqual(back.Server, c.Server) || !reflect.DeepEqual(back.Modules, c.Modules) {
				t.Errorf("round trip changed the config:\n got %+v\nwant %+v", back, c)
			}
			if !equalRules(back.Policy.ClientRules(), c.Policy.ClientRules()) || !equalAdmins(back.Policy.Admins(), c.Policy.Admins()) {
				t.Errorf("round trip changed the policy:\n got %+v %+v\nwant %+v %+v",
					back.Policy.Admins(), back.Policy.ClientRules(), c.Policy.Admins(), c.Policy.ClientRules())
			}
		})
	}
}

// equalRules compares rules treating nil and empty lists alike.
func equalRules(a, b []ClientRule) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		if x.Name != y.Name || !sameIDs(x.UIDs, y.UIDs) || !sameIDs(x.GIDs, y.GIDs) ||
			strings.Join(x.Keys, ",") != strings.Join(y.Keys, ",") ||
			strings.Join(x.Usages, ",") != strings.Join(y.Usages, ",") ||
			strings.Join(x.Members, ",") != strings.Join(y.Members, ",") {
			return false
		}
	}
	return true
}

func equalAdmins(a, b Admins) bool { return sameIDs(a.UIDs, b.UIDs) && sameIDs(a.GIDs, b.GIDs) }

func sameIDs(a, b []uint32) bool { return fmt.Sprint(a) == fmt.Sprint(b) }

func TestMarshalRefusesInvalid(t *testing.T) {
	tests := map[string]func(c *Config){
		"relative state dir": func(c *Config) { c.Server.StateDir = "state" },
		"odd log level":      func(c *Config) { c.Server.LogLevel = slog.LevelInfo + 2 },
		"zero timeout":       func(c *Config) { c.Server.ShutdownTimeout = 0 },
		"module without tokens": func(c *Config) {
			c.Modules = []Module{{Name: "m", Path: "/p.so"}}
		},
		"bad pin source": func(c *Config) {
			c.Modules = []Module{{Name: "m", Path: "/p.so", Tokens: []Token{{Name: "t", Selector: "x", PIN: PINSource{Kind: "env"}}}}}
		},
	}
	for name, mutate := range tests {
		t.Run(name, func(t *testing.T) {
			c := Default()
			mutate(c)
			if _, err := c.Marshal(); !errors.Is(err, ErrInvalid) {
				t.Errorf("Marshal: err = %v, want ErrInvalid", err)
			}
		})
	}
}

func TestReloadPolicy(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "signerd.toml")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("[[policy.client]]\nname = \"a\"\nuids = [10]\nkeys = [\"*\"]\nusages = [\"sign\"]\n")
	old, err := ReloadPolicy(p)
	if err != nil {
		t.Fatal(err)
	}
	if !old.MayUseKey(Peer{UID: 10}, "aa", UsageSign) {
		t.Fatal("first policy does not grant uid 10")
	}

	write("[[policy.client]]\nname = \"a\"\nuids = [11]\nkeys = [\"*\"]\nusages = [\"sign\"]\n")
	next, err := ReloadPolicy(p)
	if err != nil {
		t.Fatal(err)
	}
	if next.MayUseKey(Peer{UID: 10}, "aa", UsageSign) || !next.MayUseKey(Peer{UID: 11}, "aa", UsageSign) {
		t.Error("reloaded policy does not reflect the file")
	}
	if !old.MayUseKey(Peer{UID: 10}, "aa", UsageSign) {
		t.Error("reloading changed the old policy value")
	}

	for name, doc := range map[string]string{
		"invalid policy":  "[[policy.client]]\nname = \"a\"\nuids = [11]\nusages = [\"sing\"]\n",
		"invalid server":  "[server]\nmax_batch = 0\n[[policy.client]]\nname = \"a\"\nuids = [11]\n",
		"unknown key":     "[[policy.client]]\nname = \"a\"\nuid = [11]\n",
		"syntax error":    "[[policy.client]\n",
		"empty is denial": "",
	} {
		t.Run(name, func(t *testing.T) {
			write(doc)
			got, err := ReloadPolicy(p)
			if name == "empty is denial" {
				if err != nil || got.IsAdmin(Peer{UID: 11}) || got.IsClient(Peer{UID: 11}) {
					t.Errorf("empty file: %v, %v", got, err)
				}
				return
			}
			if !errors.Is(err, ErrInvalid) || got != nil {
				t.Errorf("ReloadPolicy = %v, %v; want nil and ErrInvalid", got, err)
			}
		})
	}
}
