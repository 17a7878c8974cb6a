package config

import (
	"errors"
	"os"
	"slices"
	"testing"
)

// FuzzParse checks that Parse never panics and that whatever it accepts,
// Marshal writes back as a configuration Parse accepts again. Its seed
// corpus is in testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	example, err := os.ReadFile("testdata/example.toml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(example)
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data, "fuzz.toml")
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error does not wrap ErrInvalid: %v", err)
			}
			return
		}
		out, err := c.Marshal()
		if err != nil {
			t.Fatalf("Marshal of a parsed configuration: %v", err)
		}
		if _, err := Parse(out, "marshalled"); err != nil {
			t.Fatalf("Parse(Marshal()): %v\n%s", err, out)
		}
	})
}

// FuzzKeyIndex checks that, on any document the toml package accepts and
// that nests no deeper than maxDepth, the line scanner finds the same keys in the same order as the decoder, and
// that it never panics on anything.
func FuzzKeyIndex(f *testing.F) {
	example, err := os.ReadFile("testdata/example.toml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(example)
	f.Add([]byte("a = \"\"\"\n[b]\n\"\"\"\nc = { d = [ { e = 1 } ] }\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		if indexKeys(data).tooDeep > 0 {
			return // Parse refuses these before decoding
		}
		got := scannedKeys(data)
		want, ok := metaKeys(t, data)
		if !ok {
			return
		}
		if !slices.Equal(got, want) {
			t.Fatalf("scanner keys\n got %q\nwant %q", got, want)
		}
	})
}
