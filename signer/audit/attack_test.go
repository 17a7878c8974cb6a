package audit

import (
	"encoding/json"
	"path/filepath"
	"testing"
)

// TestAttackInvalidUTF8FieldIsNotConflated: encoding/json writes every
// byte of a string that is not UTF-8 as U+FFFD, so two records that
// differ only in such bytes made the same line, and the line no longer
// said what was given. A field that is not valid UTF-8 is written as its
// FieldHash, as an oversized one is, so that each value keeps a line of
// its own.
func TestAttackInvalidUTF8FieldIsNotConflated(t *testing.T) {
	tests := []struct {
		name string
		set  func(r *Record, v string)
		get  func(r Record) string
	}{
		{"op", func(r *Record, v string) { r.Op = v }, func(r Record) string { return r.Op }},
		{"token", func(r *Record, v string) { r.Token = v }, func(r Record) string { return r.Token }},
		{"key", func(r *Record, v string) { r.Key = v }, func(r Record) string { return r.Key }},
		{"digest", func(r *Record, v string) { r.Digest = v }, func(r Record) string { return r.Digest }},
		{"detail", func(r *Record, v string) { r.Detail = v }, func(r Record) string { return r.Detail }},
		{"result", func(r *Record, v string) { r.Result = v }, func(r Record) string { return r.Result }},
	}
	values := []string{"label=\xff", "label=\xfe", "label=\xef\xbf\xbd"} // the last is U+FFFD itself, valid
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.log")
			l, err := Open(t.Context(), path, Options{})
			if err != nil {
				t.Fatal(err)
			}
			for _, v := range values {
				r := sampleRecord(0)
				tt.set(&r, v)
				if err := l.Append(t.Context(), r); err != nil {
					t.Fatal(err)
				}
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			if _, err := VerifyFile(path); err != nil {
				t.Fatal(err)
			}
			want := []string{FieldHash(values[0]), FieldHash(values[1]), values[2]}
			for i, line := range readLines(t, path) {
				var r Record
				if err := json.Unmarshal(line, &r); err != nil {
					t.Fatal(err)
				}
				if got := tt.get(r); got != want[i] {
					t.Errorf("%q written as %q, want %q", values[i], got, want[i])
				}
			}
		})
	}
}
