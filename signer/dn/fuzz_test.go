package dn

import (
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"reflect"
	"testing"
)

// FuzzParse checks that Parse never panics, that every refusal is an *Error
// wrapping exactly one of ErrSyntax and ErrAttribute with a position inside
// the input, and that every accepted DN is written by String in a form that
// parses back to the same Name, and encodes with Marshal to DER that Go's
// encoding/asn1 reads back to the same values.
// The seed corpus is in testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	f.Fuzz(func(t *testing.T, s string) {
		n, err := Parse(s)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("Parse(%q) error %v is not an *Error", s, err)
			}
			if errors.Is(err, ErrSyntax) == errors.Is(err, ErrAttribute) {
				t.Fatalf("Parse(%q) error %v must wrap exactly one of ErrSyntax, ErrAttribute", s, err)
			}
			if e.Pos < 0 || e.Pos > len(s) {
				t.Fatalf("Parse(%q) error position %d outside the input", s, e.Pos)
			}
			if n != nil {
				t.Fatalf("Parse(%q) returned a name with the error", s)
			}
			return
		}
		str := n.String()
		again, err := Parse(str)
		if err != nil {
			t.Fatalf("Parse(%q) = %q, which does not parse: %v", s, str, err)
		}
		if !reflect.DeepEqual(n, again) {
			t.Fatalf("Parse(%q) = %#v; its String %q parses to %#v", s, n, str, again)
		}
		if s2 := again.String(); s2 != str {
			t.Fatalf("String not stable: %q, then %q", str, s2)
		}
		der, err := n.Marshal()
		if err != nil {
			t.Fatalf("Marshal of parsed %q: %v", s, err)
		}
		var seq pkix.RDNSequence
		if rest, err := asn1.Unmarshal(der, &seq); err != nil || len(rest) != 0 {
			t.Fatalf("Marshal of %q gives DER that encoding/asn1 cannot read: %v", s, err)
		}
		if len(seq) != len(n) {
			t.Fatalf("DER of %q has %d RDNs, want %d", s, len(seq), len(n))
		}
		for i, set := range seq {
			if len(set) != len(n[i]) {
				t.Fatalf("DER RDN %d of %q has %d attributes, want %d", i, s, len(set), len(n[i]))
			}
			for _, atv := range set {
				v, ok := atv.Value.(string)
				if !ok || !containsAttr(n[i], atv.Type, v) {
					t.Fatalf("DER RDN %d of %q holds %v=%v, not in %v", i, s, atv.Type, atv.Value, n[i])
				}
			}
		}
	})
}

func containsAttr(r RDN, t asn1.ObjectIdentifier, v string) bool {
	for _, a := range r {
		if a.Type.Equal(t) && a.Value == v {
			return true
		}
	}
	return false
}
