package config

import (
	"os"
	"slices"
	"testing"

	"github.com/BurntSushi/toml"
)

// scannedKeys returns the scanner's key names in order, as MetaData.Keys
// names them.
func scannedKeys(data []byte) []string {
	var out []string
	for _, d := range indexKeys(data).defs {
		out = append(out, d.path.String())
	}
	return out
}

func metaKeys(t testing.TB, data []byte) ([]string, bool) {
	t.Helper()
	var v any
	md, err := toml.Decode(string(data), &v)
	if err != nil {
		return nil, false
	}
	var out []string
	for _, k := range md.Keys() {
		out = append(out, k.String())
	}
	return out, true
}

// TestKeyIndexMatchesDecoder checks that the scanner finds the same keys,
// in the same order, as the toml package, on documents full of traps.
func TestKeyIndexMatchesDecoder(t *testing.T) {
	example, err := os.ReadFile("testdata/example.toml")
	if err != nil {
		t.Fatal(err)
	}
	docs := map[string]string{
		"example": string(example),
		"multiline strings": `a = """
b = 1
[c]
"""
d = '''
[[e]]
f = 2 '''''
g = "h = \" [i]"
j = 'k # [l]'
m = """x\
  y"""
`,
		"quoted and dotted keys": `"a b".'c.d' . e = 1
[ "x\ty" . z ]
"\u00e9" = 2
'q"' = 3
site."google.com" = true
`,
		"inline tables over lines": `t = { a = 1, b = { c = [ { d = 1 }, { e = 2 } ] },
  f.g = "}" }
arr = [
  { name = "x" }, # comment ]
  { name = "y", inner = [[{ deep = 1 }]] },
]
`,
		"arrays of tables": `[[module]]
name = "a"
  [[module.token]]
  name = "t1"
  [[module.token]]
  name = "t2"
[[module]]
name = "b"
  [module.extra]
  x = 1
  [[module.token]]
  name = "t3"
`,
		"scalars": `i = -1_000
f = 6.02e+23
h = 0xdead_beef
o = 0o755
bb = 0b1010
inf1 = +inf
nan1 = nan
dt = 1979-05-27 07:32:00Z
ld = 1979-05-27
lt = 07:32:00.999
b = false # trailing
`,
		"crlf": "a = 1\r\n[b]\r\nc = \"x\"\r\n",
	}
	for name, doc := range docs {
		t.Run(name, func(t *testing.T) {
			want, ok := metaKeys(t, []byte(doc))
			if !ok {
				t.Fatalf("the toml package refuses the document")
			}
			if got := scannedKeys([]byte(doc)); !slices.Equal(got, want) {
				t.Errorf("scanner keys\n got %q\nwant %q", got, want)
			}
		})
	}
}

func TestKeyIndexLines(t *testing.T) {
	doc := `# comment
[[module]]
name = "a"
path = """
multi
line"""
  [[module.token]]
  name = "t1"
  [[module.token]]
  name = "t2"
[[module]]
name = "b"
  [[module.token]]
  name = "t3"
[policy]
client = [ { name = "c0" },
  { name = "c1",
    keys = ["*"] } ]
`
	ix := indexKeys([]byte(doc))
	for _, tc := range []struct {
		key  string
		line int
	}{
		{"module[0]", 2},
		{"module[0].name", 3},
		{"module[0].path", 4},
		{"module[0].token[0]", 7},
		{"module[0].token[1].name", 10},
		{"module[1]", 11},
		{"module[1].name", 12},
		{"module[1].token[0]", 13},
		{"module[1].token[0].name", 14},
		{"module[1].token[0].pin", 13}, // not defined: its table's line
		{"policy.client[0].name", 16},
		{"policy.client[1].name", 17},
		{"policy.client[1].keys", 18},
		{"policy.client[1].keys[0]", 18},
		{"server.grpc_socket", 0},
	} {
		if got := ix.lineOf(tc.key); got != tc.line {
			t.Errorf("lineOf(%q) = %d, want %d", tc.key, got, tc.line)
		}
	}
}
