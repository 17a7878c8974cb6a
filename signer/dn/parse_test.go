package dn

import (
	"encoding/asn1"
	"errors"
	"strings"
	"testing"
)

// oid parses a dotted OID for test tables.
func oid(t *testing.T, s string) asn1.ObjectIdentifier {
	t.Helper()
	o, ok := parseOID(s)
	if !ok {
		t.Fatalf("bad OID %q in test", s)
	}
	return o
}

// at is an attribute given as dotted OID and value, for test tables.
type at struct{ oid, value string }

// mkName builds a Name from RDNs given in encoding order.
func mkName(t *testing.T, rdns ...[]at) Name {
	t.Helper()
	n := make(Name, 0, len(rdns))
	for _, r := range rdns {
		rdn := make(RDN, 0, len(r))
		for _, a := range r {
			rdn = append(rdn, Attribute{Type: oid(t, a.oid), Value: a.value})
		}
		n = append(n, rdn)
	}
	return n
}

const (
	oCN     = "2.5.4.3"
	oSN     = "2.5.4.4"
	oSerial = "2.5.4.5"
	oC      = "2.5.4.6"
	oL      = "2.5.4.7"
	oST     = "2.5.4.8"
	oStreet = "2.5.4.9"
	oO      = "2.5.4.10"
	oOU     = "2.5.4.11"
	oTitle  = "2.5.4.12"
	oGN     = "2.5.4.42"
	oOrgID  = "2.5.4.97"
	oDC     = "0.9.2342.19200300.100.1.25"
	oEmail  = "1.2.840.113549.1.9.1"
)

func TestParseValid(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want [][]at // RDNs in encoding order (rightmost in the string first)
		str  string // String(); "" means the same as in
	}{
		{"x-road sign", "CN=Agency,O=Agency,C=EE,serialNumber=70000001",
			[][]at{{{oSerial, "70000001"}}, {{oC, "EE"}}, {{oO, "Agency"}}, {{oCN, "Agency"}}}, ""},
		{"order as RFC 4514: rightmost first", "C=EE,O=y,CN=x",
			[][]at{{{oCN, "x"}}, {{oO, "y"}}, {{oC, "EE"}}}, ""},
		{"spaces before attribute types", "  CN=x, O=y,   C=EE",
			[][]at{{{oC, "EE"}}, {{oO, "y"}}, {{oCN, "x"}}}, "CN=x,O=y,C=EE"},
		{"case-insensitive names", "cn=x,o=y,c=EE,SERIALNUMBER=1,Organizationidentifier=NTREE-1,EMAILADDRESS=a@example.org",
			[][]at{{{oEmail, "a@example.org"}}, {{oOrgID, "NTREE-1"}}, {{oSerial, "1"}}, {{oC, "EE"}}, {{oO, "y"}}, {{oCN, "x"}}},
			"CN=x,O=y,C=EE,serialNumber=1,organizationIdentifier=NTREE-1,emailAddress=a@example.org"},
		{"long names", "commonName=x,organizationName=y,organizationalUnitName=u,countryName=FI,localityName=l,stateOrProvinceName=s,streetAddress=st,surname=Tamm,givenName=Mari,domainComponent=example",
			[][]at{{{oDC, "example"}}, {{oGN, "Mari"}}, {{oSN, "Tamm"}}, {{oStreet, "st"}}, {{oST, "s"}}, {{oL, "l"}}, {{oC, "FI"}}, {{oOU, "u"}}, {{oO, "y"}}, {{oCN, "x"}}},
			"CN=x,O=y,OU=u,C=FI,L=l,ST=s,STREET=st,SN=Tamm,GN=Mari,DC=example"},
		{"short names", "GN=Mari,SN=Tamm,title=Officer,STREET=Main 1,L=Tallinn,ST=Harju",
			[][]at{{{oST, "Harju"}}, {{oL, "Tallinn"}}, {{oStreet, "Main 1"}}, {{oTitle, "Officer"}}, {{oSN, "Tamm"}}, {{oGN, "Mari"}}}, ""},
		{"dotted OIDs", "2.5.4.3=x,2.5.4.97=NTREE-123,2.5.4.6=EE,0.9.2342.19200300.100.1.25=org",
			[][]at{{{oDC, "org"}}, {{oC, "EE"}}, {{oOrgID, "NTREE-123"}}, {{oCN, "x"}}},
			"CN=x,organizationIdentifier=NTREE-123,C=EE,DC=org"},
		{"multi-valued RDN", "CN=x+serialNumber=42,O=y",
			[][]at{{{oO, "y"}}, {{oCN, "x"}, {oSerial, "42"}}}, ""},
		{"multi-valued with spaces after +", "OU=a+ CN=b,C=EE",
			[][]at{{{oC, "EE"}}, {{oOU, "a"}, {oCN, "b"}}}, "OU=a+CN=b,C=EE"},
		{"escaped specials", `CN=a\,b\+c\"d\\e\<f\>g\;h\=i`,
			[][]at{{{oCN, `a,b+c"d\e<f>g;h=i`}}}, `CN=a\,b\+c\"d\\e\<f\>g\;h=i`},
		{"escaped leading # and space, trailing space", `CN=\#x,O=\ y\ `,
			[][]at{{{oO, " y "}}, {{oCN, "#x"}}}, ""},
		{"hex pairs, upper and lower case", `CN=J\C3\BCri \c3\b5,O=\20lead`,
			[][]at{{{oO, " lead"}}, {{oCN, "Jüri õ"}}}, `CN=Jüri õ,O=\ lead`},
		{"hex-escaped special", `CN=a\2Cb`, [][]at{{{oCN, "a,b"}}}, `CN=a\,b`},
		{"raw UTF-8", "CN=Jüri Õunapuu,O=Ääre OÜ,C=EE",
			[][]at{{{oC, "EE"}}, {{oO, "Ääre OÜ"}}, {{oCN, "Jüri Õunapuu"}}}, ""},
		{"unescaped = and inner # and inner spaces", "CN=a=b#c  d",
			[][]at{{{oCN, "a=b#c  d"}}}, ""},
		{"repeated OU and DC", "OU=a,OU=b,DC=example,DC=com",
			[][]at{{{oDC, "com"}}, {{oDC, "example"}}, {{oOU, "b"}}, {{oOU, "a"}}}, ""},
		{"serialNumber PrintableString punctuation", `serialNumber=EE:GOV/70000001 (a'b\+c-d.e=f?)`,
			[][]at{{{oSerial, "EE:GOV/70000001 (a'b+c-d.e=f?)"}}}, `serialNumber=EE:GOV/70000001 (a'b\+c-d.e=f?)`},
		{"CN at the 64-character bound", "CN=" + strings.Repeat("é", 64),
			[][]at{{{oCN, strings.Repeat("é", 64)}}}, ""},
		{"e-mail", `emailAddress=first.last\+tag@example.org`,
			[][]at{{{oEmail, "first.last+tag@example.org"}}}, `emailAddress=first.last\+tag@example.org`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Parse(tc.in)
			if err != nil {
				t.Fatalf("Parse(%q): %v", tc.in, err)
			}
			want := mkName(t, tc.want...)
			if len(got) != len(want) {
				t.Fatalf("Parse(%q) = %q, want %q", tc.in, got, want)
			}
			for i := range want {
				if len(got[i]) != len(want[i]) {
					t.Fatalf("RDN %d = %v, want %v", i, got[i], want[i])
				}
				for j := range want[i] {
					if !got[i][j].Type.Equal(want[i][j].Type) || got[i][j].Value != want[i][j].Value {
						t.Errorf("RDN %d attribute %d = %v %q, want %v %q", i, j, got[i][j].Type, got[i][j].Value, want[i][j].Type, want[i][j].Value)
					}
				}
			}
			str := tc.str
			if str == "" {
				str = tc.in
			}
			if s := got.String(); s != str {
				t.Errorf("String() = %q, want %q", s, str)
			}
			if _, err := got.Marshal(); err != nil {
				t.Errorf("Marshal: %v", err)
			}
		})
	}
}

func TestParseInvalid(t *testing.T) {
	tests := []struct {
		name string
		in   string
		pos  int
		kind error
		msg  string // a part of the message
	}{
		{"empty", "", 0, ErrSyntax, "empty distinguished name"},
		{"only spaces", "   ", 0, ErrSyntax, "empty distinguished name"},
		{"too long", "CN=" + strings.Repeat("a", MaxLength), MaxLength, ErrSyntax, "longer than 1024 bytes"},
		{"invalid UTF-8 in input", "CN=a\xffb", 4, ErrSyntax, "not valid UTF-8"},
		{"empty RDN", "CN=x,,C=EE", 5, ErrSyntax, "empty RDN"},
		{"leading comma", ",CN=x", 0, ErrSyntax, "empty RDN"},
		{"trailing comma", "CN=x,", 4, ErrSyntax, "trailing ','"},
		{"trailing comma and space", "CN=x, ", 4, ErrSyntax, "trailing ','"},
		{"trailing plus", "CN=x+", 4, ErrSyntax, "trailing '+'"},
		{"empty attribute in RDN", "CN=x++O=y", 5, ErrSyntax, "empty attribute in a multi-valued RDN"},
		{"missing =", "CN", 2, ErrSyntax, "missing '=' after attribute type \"CN\""},
		{"missing = before comma", "CN=x,O,C=EE", 6, ErrSyntax, "missing '=' after attribute type \"O\""},
		{"space before =", "CN =x", 2, ErrSyntax, "expected '=' after attribute type \"CN\", found ' '"},
		{"missing type", "=x", 0, ErrSyntax, "missing attribute type before '='"},
		{"bad type character", "C_N=x", 1, ErrSyntax, "expected '=' after attribute type \"C\", found '_'"},
		{"type starting with symbol", "CN=x,*=y", 5, ErrSyntax, "attribute type expected, found '*'"},
		{"unknown type", "CN=x,FOO=y", 5, ErrAttribute, `unknown attribute type "FOO"; accepted: CN, SN, serialNumber`},
		{"legacy E for email", "E=a@example.org", 0, ErrAttribute, `unknown attribute type "E"`},
		{"OID. prefix", "OID.2.5.4.3=x", 3, ErrSyntax, `expected '=' after attribute type "OID", found '.'`},
		{"unsupported OID", "1.2.3.4=x", 0, ErrAttribute, `unsupported attribute type "1.2.3.4"`},
		{"OID with leading zero", "2.5.4.03=x", 0, ErrSyntax, `"2.5.4.03" is not a valid dotted OID`},
		{"OID with empty arc", "2..5=x", 0, ErrSyntax, `"2..5" is not a valid dotted OID`},
		{"OID with one arc", "2=x", 0, ErrSyntax, `"2" is not a valid dotted OID`},
		{"empty value", "CN=,O=y", 3, ErrSyntax, "empty value for CN"},
		{"empty value at end", "O=y,CN=", 7, ErrSyntax, "empty value for CN"},
		{"empty value in RDN", "CN=x+OU=", 8, ErrSyntax, "empty value for OU"},
		{"hex value", "CN=#0403616263", 3, ErrSyntax, "#hex (BER-encoded) values are not accepted"},
		{"unescaped leading space", "CN= x", 3, ErrSyntax, "leading space in a value must be escaped"},
		{"unescaped trailing space", "CN=x  ,O=y", 4, ErrSyntax, "trailing space in a value must be escaped"},
		{"unescaped trailing space at end", "CN=x ", 4, ErrSyntax, "trailing space in a value must be escaped"},
		{"unescaped quote", `CN="x"`, 3, ErrSyntax, `unescaped '"' in value`},
		{"semicolon separator", "CN=x;O=y", 4, ErrSyntax, "RDNs are separated by ',' only"},
		{"unescaped <", "CN=a<b", 4, ErrSyntax, `unescaped '<'`},
		{"unescaped >", "CN=a>b", 4, ErrSyntax, `unescaped '>'`},
		{"backslash at end", `CN=x\`, 4, ErrSyntax, `'\' at the end of the value`},
		{"invalid escape", `CN=a\qb`, 4, ErrSyntax, `invalid escape '\q'`},
		{"half hex pair", `CN=a\4`, 4, ErrSyntax, `'\4' must be followed by a second hex digit`},
		{"half hex pair before letter", `CN=a\4g`, 4, ErrSyntax, `'\4' must be followed by a second hex digit`},
		{"hex pairs not UTF-8", `CN=ab\C3`, 5, ErrSyntax, "value of CN is not valid UTF-8"},
		{"NUL by hex", `CN=a\00`, 4, ErrSyntax, "control or format character U+0000"},
		{"raw control character", "CN=a\tb", 4, ErrSyntax, "control or format character U+0009"},
		{"raw newline", "O=y,CN=a\nb", 8, ErrSyntax, "control or format character U+000A"},
		{"C1 control", "CN=a\u0085", 4, ErrSyntax, "control or format character U+0085"},
		{"bidi override", "CN=abc\u202Egpj.exe", 6, ErrSyntax, "control or format character U+202E"},
		{"C lower case", "C=ee", 2, ErrAttribute, `C must be two upper-case letters A-Z (ISO 3166-1 alpha-2), not "ee"`},
		{"C three letters", "C=EST", 2, ErrAttribute, "C must be two upper-case letters"},
		{"C one letter", "C=E", 2, ErrAttribute, "C must be two upper-case letters"},
		{"C digits", "C=12", 2, ErrAttribute, "C must be two upper-case letters"},
		{"C non-ASCII", "C=ÄE", 2, ErrAttribute, "C must be a PrintableString"},
		{"serialNumber with @", "serialNumber=a@b", 14, ErrAttribute, `serialNumber must be a PrintableString (A-Z a-z 0-9 space ' ( ) + , - . / : = ?); '@' is not allowed`},
		{"serialNumber with UTF-8", "CN=x,serialNumber=1ü", 19, ErrAttribute, `'ü' is not allowed`},
		{"serialNumber too long", "serialNumber=" + strings.Repeat("1", 65), 13, ErrAttribute, "value of serialNumber is 65 characters long, at most 64 are allowed"},
		{"CN too long", "CN=" + strings.Repeat("é", 65), 3, ErrAttribute, "value of CN is 65 characters long, at most 64"},
		{"O too long", "O=" + strings.Repeat("o", 65), 2, ErrAttribute, "value of O is 65 characters long"},
		{"L too long", "L=" + strings.Repeat("l", 129), 2, ErrAttribute, "value of L is 129 characters long, at most 128"},
		{"email not ASCII", "emailAddress=jüri@example.org", 14, ErrAttribute, "emailAddress must be an IA5String (ASCII); 'ü' is not allowed"},
		{"email not an address", "emailAddress=nobody", 13, ErrAttribute, `emailAddress "nobody" is not a bare e-mail address`},
		{"email with display name", `emailAddress=A \<a@b.org\>`, 13, ErrAttribute, "is not a bare e-mail address"},
		{"DC with a dot", "DC=example.org", 3, ErrAttribute, "DC must be one DNS label"},
		{"DC with hyphen at end", "DC=ex-", 3, ErrAttribute, "starts or ends with '-'"},
		{"duplicate CN", "CN=a,O=y,CN=b", 9, ErrAttribute, "CN appears more than once"},
		{"duplicate CN by OID", "CN=a,2.5.4.3=b", 5, ErrAttribute, "CN appears more than once"},
		{"duplicate C", "C=EE,C=FI", 5, ErrAttribute, "C appears more than once"},
		{"duplicate serialNumber", "serialNumber=1,SERIALNUMBER=2", 15, ErrAttribute, "serialNumber appears more than once"},
		{"duplicate O", "O=a,O=b", 4, ErrAttribute, "O appears more than once"},
		{"duplicate organizationIdentifier", "organizationIdentifier=a,2.5.4.97=b", 25, ErrAttribute, "organizationIdentifier appears more than once"},
		{"same type twice in one RDN", "OU=a+OU=a", 5, ErrAttribute, "OU appears twice in one RDN"},
		{"same type twice in one RDN, other values", "OU=a+ou=b", 5, ErrAttribute, "OU appears twice in one RDN"},
		{"repeated OU with the same value", "OU=a,OU=a", 5, ErrAttribute, "OU=a appears more than once"},
		{"SN is surname, not serial: duplicate", "SN=a,surname=b", 5, ErrAttribute, "SN appears more than once"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n, err := Parse(tc.in)
			if err == nil {
				t.Fatalf("Parse(%q) = %q, want an error", tc.in, n)
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("Parse(%q) error %v is not an *Error", tc.in, err)
			}
			if !errors.Is(err, tc.kind) {
				t.Errorf("Parse(%q) error %v does not wrap %v", tc.in, err, tc.kind)
			}
			other := ErrAttribute
			if tc.kind == ErrAttribute {
				other = ErrSyntax
			}
			if errors.Is(err, other) {
				t.Errorf("Parse(%q) error %v also wraps %v", tc.in, err, other)
			}
			if e.Pos != tc.pos {
				t.Errorf("Parse(%q) error at byte %d, want %d (%v)", tc.in, e.Pos, tc.pos, err)
			}
			if !strings.Contains(e.Msg, tc.msg) {
				t.Errorf("Parse(%q) message %q does not contain %q", tc.in, e.Msg, tc.msg)
			}
			if n != nil {
				t.Errorf("Parse(%q) returned a name with the error: %q", tc.in, n)
			}
		})
	}
}

func TestErrorMessage(t *testing.T) {
	_, err := Parse("CN=x,FOO=y")
	want := `invalid distinguished name at byte 5: unknown attribute type "FOO"; accepted: CN, SN, serialNumber, C, L, ST, STREET, O, OU, title, GN, organizationIdentifier, DC, emailAddress (or their dotted OIDs)`
	if err == nil || err.Error() != want {
		t.Fatalf("error = %v, want %s", err, want)
	}
}
