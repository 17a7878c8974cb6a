package dn

import (
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"strings"
	"testing"
)

// rawATVSET is an RDN with its values undecoded; encoding/asn1 reads a
// slice type whose name ends in SET as a SET OF.
type rawATVSET []struct {
	Type  asn1.ObjectIdentifier
	Value asn1.RawValue
}

func TestMarshalStringTypes(t *testing.T) {
	n := mustParse(t, `emailAddress=a@example.org,CN=Jüri+serialNumber=PNOEE-1,O=Agency,organizationIdentifier=NTREE-1,C=EE,DC=example`)
	der, err := n.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	var seq []pkix.RelativeDistinguishedNameSET
	var raw []rawATVSET
	if rest, err := asn1.Unmarshal(der, &raw); err != nil || len(rest) != 0 {
		t.Fatalf("unmarshal: %v, %d bytes left", err, len(rest))
	}
	if _, err := asn1.Unmarshal(der, &seq); err != nil {
		t.Fatal(err)
	}
	want := map[string]int{
		oCN: asn1.TagUTF8String, oSerial: asn1.TagPrintableString, oO: asn1.TagUTF8String, oOrgID: asn1.TagUTF8String,
		oC: asn1.TagPrintableString, oDC: asn1.TagIA5String, oEmail: asn1.TagIA5String,
	}
	// Encoding order: DC, C, organizationIdentifier, O, {CN, serialNumber}
	// (DER sorts a SET by encoding: CN's is the shorter), emailAddress.
	order := [][]string{{oDC}, {oC}, {oOrgID}, {oO}, {oCN, oSerial}, {oEmail}}
	if len(raw) != len(order) {
		t.Fatalf("%d RDNs, want %d", len(raw), len(order))
	}
	for i, rdn := range raw {
		if len(rdn) != len(order[i]) {
			t.Fatalf("RDN %d has %d attributes, want %d", i, len(rdn), len(order[i]))
		}
		for j, a := range rdn {
			if a.Type.String() != order[i][j] {
				t.Errorf("RDN %d attribute %d is %s, want %s", i, j, a.Type, order[i][j])
			}
			if a.Value.Class != asn1.ClassUniversal || a.Value.Tag != want[a.Type.String()] {
				t.Errorf("%s encoded with tag %d, want %d", a.Type, a.Value.Tag, want[a.Type.String()])
			}
		}
	}
	if got := seq[4][0].Value; got != "Jüri" {
		t.Errorf("CN = %v", got)
	}
}

func TestCheckHandBuilt(t *testing.T) {
	cn := func(v string) Attribute { return Attribute{Type: asn1.ObjectIdentifier{2, 5, 4, 3}, Value: v} }
	c := func(v string) Attribute { return Attribute{Type: asn1.ObjectIdentifier{2, 5, 4, 6}, Value: v} }
	tests := []struct {
		name string
		n    Name
		pos  int
		kind error
		msg  string
	}{
		{"empty", Name{}, 0, ErrSyntax, "empty distinguished name"},
		{"empty RDN", Name{{c("EE")}, {}}, 1, ErrSyntax, "empty RDN"},
		{"unknown OID", Name{{{Type: asn1.ObjectIdentifier{1, 2, 3}, Value: "x"}}}, 0, ErrAttribute, "unsupported attribute type 1.2.3"},
		{"bad country", Name{{c("Estonia")}}, 0, ErrAttribute, "C must be two upper-case letters"},
		{"control character", Name{{c("EE")}, {cn("a\x00b")}}, 1, ErrSyntax, "control or format character U+0000"},
		{"invalid UTF-8", Name{{cn("a\xc3")}}, 0, ErrSyntax, "not valid UTF-8"},
		{"empty value", Name{{cn("")}}, 0, ErrSyntax, "empty value for CN"},
		{"duplicate CN", Name{{cn("a")}, {cn("b")}}, 1, ErrAttribute, "CN appears more than once"},
		{"CN twice in an RDN", Name{{cn("a"), cn("b")}}, 0, ErrAttribute, "CN appears twice in one RDN"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			der, err := tc.n.Marshal()
			var e *Error
			if !errors.As(err, &e) || !errors.Is(err, tc.kind) {
				t.Fatalf("Marshal error %v, want an *Error wrapping %v", err, tc.kind)
			}
			if e.Pos != tc.pos || !strings.Contains(e.Msg, tc.msg) {
				t.Errorf("error at %d %q, want at %d %q", e.Pos, e.Msg, tc.pos, tc.msg)
			}
			if der != nil {
				t.Errorf("Marshal returned bytes with the error")
			}
		})
	}
}

func TestStringOfHandBuilt(t *testing.T) {
	n := Name{
		{{Type: asn1.ObjectIdentifier{1, 2, 3}, Value: "x"}},
		{{Type: asn1.ObjectIdentifier{2, 5, 4, 3}, Value: "a\x00\u202e\xffb "}},
	}
	if got, want := n.String(), `CN=a\00\E2\80\AE\FFb\ ,1.2.3=x`; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}

func TestEqual(t *testing.T) {
	tests := []struct {
		a, b string
		want bool
	}{
		{"CN=x,O=y,C=EE", "cn=x, o=y, c=EE", true},
		{"CN=x+serialNumber=1,C=EE", "serialNumber=1+CN=x,C=EE", true},
		{"CN=x,O=y", "O=y,CN=x", false},
		{"CN=x,O=y", "CN=x+O=y", false},
		{"CN=x", "CN=X", false},
		{"CN=x", "CN=x,C=EE", false},
		{"OU=a+CN=b", "OU=b+CN=a", false},
	}
	for _, tc := range tests {
		a, b := mustParse(t, tc.a), mustParse(t, tc.b)
		if got := a.Equal(b); got != tc.want {
			t.Errorf("%q.Equal(%q) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
		if got := b.Equal(a); got != tc.want {
			t.Errorf("%q.Equal(%q) = %v, want %v", tc.b, tc.a, got, tc.want)
		}
	}
}

func TestPKIX(t *testing.T) {
	p := mustParse(t, "CN=Member,OU=a,OU=b,O=Agency,C=EE,serialNumber=70000001,organizationIdentifier=NTREE-1").PKIX()
	if p.CommonName != "Member" || p.SerialNumber != "70000001" || strings.Join(p.Organization, "|") != "Agency" ||
		strings.Join(p.OrganizationalUnit, "|") != "b|a" || strings.Join(p.Country, "|") != "EE" {
		t.Errorf("PKIX() = %+v", p)
	}
	if len(p.Names) != 7 {
		t.Errorf("PKIX().Names has %d attributes, want 7", len(p.Names))
	}
}

func TestLengthOfStringForm(t *testing.T) {
	// 2.5.4.97 is written organizationIdentifier by String, 14 bytes longer.
	in := "2.5.4.97=" + strings.Repeat("a", MaxLength-len("2.5.4.97="))
	if len(in) != MaxLength {
		t.Fatal("bad test input")
	}
	_, err := Parse(in)
	var e *Error
	if !errors.As(err, &e) || !errors.Is(err, ErrSyntax) || !strings.Contains(e.Msg, "when written with attribute names (1038 bytes)") {
		t.Fatalf("error %v, want the String form refused as too long", err)
	}
	if _, err := Parse("CN=x,C=EE,O=" + strings.Repeat("a", 64)); err != nil {
		t.Fatal(err)
	}
}
