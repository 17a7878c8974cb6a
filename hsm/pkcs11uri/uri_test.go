package pkcs11uri

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"
)

// uriEqual compares two URIs field by field; an empty and a nil ID are the
// same id.
func uriEqual(a, b URI) bool {
	return a.Token == b.Token && a.Serial == b.Serial && a.Manufacturer == b.Manufacturer &&
		a.Model == b.Model && a.Object == b.Object && bytes.Equal(a.ID, b.ID) && a.Type == b.Type &&
		a.ModulePath == b.ModulePath && a.ModuleName == b.ModuleName && a.PINSource == b.PINSource
}

// TestParseURI parses the examples of RFC 7512, section 3 (joined onto one
// line) and a few more, and checks that each parsed URI formats to a URI
// that parses to the same value.
func TestParseURI(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want URI
	}{
		{"RFC 7512: empty", "pkcs11:", URI{}},
		{"RFC 7512: public key object", "pkcs11:object=my-pubkey;type=public", URI{Object: "my-pubkey", Type: "public"}},
		{"RFC 7512: pin-source", "pkcs11:object=my-key;type=private?pin-source=file:/etc/token",
			URI{Object: "my-key", Type: "private", PINSource: "file:/etc/token"}},
		{"RFC 7512: full certificate URI",
			"pkcs11:token=The%20Software%20PKCS%2311%20Softtoken;manufacturer=Snake%20Oil,%20Inc.;model=1.0;" +
				"object=my-certificate;type=cert;id=%69%95%3E%5C%F4%BD%EC%91;serial=?pin-source=file:/etc/token_pin",
			URI{Token: "The Software PKCS#11 Softtoken", Manufacturer: "Snake Oil, Inc.", Model: "1.0",
				Object: "my-certificate", Type: "cert", ID: []byte{0x69, 0x95, 0x3e, 0x5c, 0xf4, 0xbd, 0xec, 0x91},
				PINSource: "file:/etc/token_pin"}},
		{"RFC 7512: module-name", "pkcs11:object=my-sign-key;type=private?module-name=mypkcs11",
			URI{Object: "my-sign-key", Type: "private", ModuleName: "mypkcs11"}},
		{"RFC 7512: module-path", "pkcs11:object=my-sign-key;type=private?module-path=/mnt/libmypkcs11.so.1",
			URI{Object: "my-sign-key", Type: "private", ModulePath: "/mnt/libmypkcs11.so.1"}},
		{"RFC 7512: slot-description accepted and ignored", "pkcs11:slot-description=Sun%20Metaslot", URI{}},
		{"RFC 7512: library attributes accepted and ignored",
			"pkcs11:library-manufacturer=Snake%20Oil,%20Inc.;library-description=Soft%20Token%20Library;library-version=1.23", URI{}},
		{"RFC 7512: percent sign and mixed-case hex in id",
			"pkcs11:token=My%20token%25%20created%20by%20Joe;library-version=3;id=%01%02%03%Ba%dd%Ef%fe%fa%ba%be?module-name=mypkcs11",
			URI{Token: "My token% created by Joe", ID: []byte{1, 2, 3, 0xba, 0xdd, 0xef, 0xfe, 0xfa, 0xba, 0xbe}, ModuleName: "mypkcs11"}},
		{"RFC 7512: encoded semicolon", "pkcs11:token=A%20name%20with%20a%20substring%20%25%3B;object=my-certificate;type=cert",
			URI{Token: "A name with a substring %;", Object: "my-certificate", Type: "cert"}},
		{"RFC 7512: UTF-8", "pkcs11:token=Name%20with%20a%20small%20A%20with%20acute:%20%C3%A1;object=my-certificate;type=cert",
			URI{Token: "Name with a small A with acute: á", Object: "my-certificate", Type: "cert"}},
		{"unknown query attribute ignored", "pkcs11:token=t?vendor-bbb=value-b&module-name=m", URI{Token: "t", ModuleName: "m"}},
		{"empty query", "pkcs11:token=t?", URI{Token: "t"}},
		{"serial and slot-id", "pkcs11:serial=0123456789abcdef;slot-id=3", URI{Serial: "0123456789abcdef"}},
		{"every type", "pkcs11:type=secret-key", URI{Type: "secret-key"}},
		{"data type", "pkcs11:type=data", URI{Type: "data"}},
		{"question mark and equals in the query", "pkcs11:?pin-source=file:/p?x=1", URI{PINSource: "file:/p?x=1"}},
		{"equals sign in a path value", "pkcs11:object=a=b", URI{Object: "a=b"}},
		{"plus stays a plus", "pkcs11:object=a+b", URI{Object: "a+b"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, err := ParseURI(tt.in)
			if err != nil {
				t.Fatalf("ParseURI(%q): %v", tt.in, err)
			}
			if !uriEqual(u, tt.want) {
				t.Fatalf("ParseURI(%q) =\n%+v, want\n%+v", tt.in, u, tt.want)
			}
			s := u.String()
			back, err := ParseURI(s)
			if err != nil {
				t.Fatalf("ParseURI(%q) (from String): %v", s, err)
			}
			if !uriEqual(back, u) {
				t.Fatalf("round trip through %q: %+v, want %+v", s, back, u)
			}
		})
	}
}

// TestParseURIRefused checks that bad URIs are refused with ErrInvalidURI,
// and that a PIN given in one never appears in the error.
func TestParseURIRefused(t *testing.T) {
	const pin = "s3cr3t-PIN-4711"
	tests := []struct {
		name string
		in   string
		why  string // a word the error must contain
	}{
		{"RFC 7512 pin-value example", "pkcs11:token=Software%20PKCS%2311%20softtoken;manufacturer=Snake%20Oil,%20Inc.?pin-value=" + pin, "pin-value"},
		{"pin-value alone", "pkcs11:?pin-value=" + pin, "pin-value"},
		{"pin-value after another attribute", "pkcs11:token=t?module-name=m&pin-value=" + pin, "pin-value"},
		{"pin-value with pin-source", "pkcs11:token=t?pin-source=file:/p&pin-value=" + pin, "pin-value"},
		{"pin-value in a bad URI", "pkcs11:token=%zz?pin-value=" + pin, "percent"},
		{"pin-value after bad scheme", "pkcs12:token=t?pin-value=" + pin, "pkcs11:"},
		{"pin-value after bad query encoding", "pkcs11:?module-path=%z&pin-value=" + pin, "percent"},
		{"RFC 7512 vendor attribute: unknown path attribute",
			"pkcs11:token=my-token;object=my-certificate;type=cert;vendor-aaa=value-a?pin-source=file:/etc/token_pin&vendor-bbb=value-b", "vendor-aaa"},
		{"pin-value as a path attribute", "pkcs11:token=t;pin-value=" + pin, "pin-value"},
		{"duplicate token", "pkcs11:token=a;token=b", "twice"},
		{"duplicate id", "pkcs11:id=%01;object=o;id=%02", "twice"},
		{"duplicate ignored attribute", "pkcs11:slot-id=1;slot-id=2", "twice"},
		{"duplicate empty token", "pkcs11:token=;token=", "twice"},
		{"no scheme", "token=a", "pkcs11:"},
		{"empty", "", "pkcs11:"},
		{"other scheme", "file:/etc/token", "pkcs11:"},
		{"scheme without colon", "pkcs11", "pkcs11:"},
		{"bad percent-encoding", "pkcs11:token=%zz", "percent"},
		{"truncated percent-encoding", "pkcs11:id=%0", "percent"},
		{"lone percent in query", "pkcs11:?module-path=%", "percent"},
		{"attribute without value", "pkcs11:token", "name=value"},
		{"attribute without name", "pkcs11:=x", "name=value"},
		{"empty attribute at the end", "pkcs11:token=a;", "name=value"},
		{"empty attribute at the start", "pkcs11:;token=a", "name=value"},
		{"unknown type", "pkcs11:type=key", "type"},
		{"type in wrong case", "pkcs11:type=Private", "type"},
		{"percent-encoded attribute name", "pkcs11:tok%65n=a", "tok%65n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, err := ParseURI(tt.in)
			if !errors.Is(err, ErrInvalidURI) {
				t.Fatalf("ParseURI(%q) = %+v, %v; want ErrInvalidURI", tt.in, u, err)
			}
			if !strings.Contains(err.Error(), tt.why) {
				t.Errorf("error %q does not say %q", err, tt.why)
			}
			if strings.Contains(err.Error(), pin) {
				t.Errorf("error echoes the PIN: %q", err)
			}
		})
	}
}

// TestURIString checks the formatting: fixed attribute order, percent-
// encoding of everything but unreserved and safe characters, and ids of
// any bytes.
func TestURIString(t *testing.T) {
	tests := []struct {
		name string
		u    URI
		want string
	}{
		{"empty", URI{}, "pkcs11:"},
		{"attribute order", URI{Type: "private", ID: []byte("k1"), Object: "o", Model: "m", Manufacturer: "mf", Serial: "s", Token: "t"},
			"pkcs11:token=t;serial=s;manufacturer=mf;model=m;object=o;id=k1;type=private"},
		{"id bytes", URI{ID: []byte{0x00, 0x01, 0x7f, 0x80, 0xff, 'a', 'Z', '9', '%', ';', '?', '&', '='}},
			"pkcs11:id=%00%01%7F%80%FFaZ9%25%3B%3F%26%3D"},
		{"random-looking id", URI{ID: []byte{0x69, 0x95, 0x3e, 0x5c, 0xf4, 0xbd, 0xec, 0x91}}, "pkcs11:id=i%95%3E%5C%F4%BD%EC%91"},
		{"space, hash, percent, semicolon", URI{Token: "The Software PKCS#11 Softtoken;100%"},
			"pkcs11:token=The%20Software%20PKCS%2311%20Softtoken%3B100%25"},
		{"reserved characters a value may hold", URI{Object: "a:b@c!$'()*+,[]-._~"}, "pkcs11:object=a:b@c!$'()*+,[]-._~"},
		{"UTF-8", URI{Token: "á"}, "pkcs11:token=%C3%A1"},
		{"query attributes in order", URI{Token: "t", PINSource: "file:/etc/pin", ModuleName: "softhsm2", ModulePath: "/usr/lib/softhsm/libsofthsm2.so"},
			"pkcs11:token=t?module-path=/usr/lib/softhsm/libsofthsm2.so&module-name=softhsm2&pin-source=file:/etc/pin"},
		{"ampersand in a query value", URI{PINSource: "file:/a&b"}, "pkcs11:?pin-source=file:/a%26b"},
		{"query only", URI{ModuleName: "m"}, "pkcs11:?module-name=m"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.u.String(); got != tt.want {
				t.Fatalf("String() = %q, want %q", got, tt.want)
			}
			back, err := ParseURI(tt.want)
			if err != nil {
				t.Fatalf("ParseURI(%q): %v", tt.want, err)
			}
			if !uriEqual(back, tt.u) {
				t.Fatalf("ParseURI(%q) = %+v, want %+v", tt.want, back, tt.u)
			}
		})
	}
}

// TestURIRoundTripAllBytes puts every byte value in every string attribute
// and in the id, formats and parses back.
func TestURIRoundTripAllBytes(t *testing.T) {
	all := make([]byte, 256)
	for i := range all {
		all[i] = byte(i)
	}
	s := string(all)
	u := URI{Token: s, Serial: s, Manufacturer: s, Model: s, Object: s, ID: all, Type: "cert",
		ModulePath: s, ModuleName: s, PINSource: s}
	f := u.String()
	back, err := ParseURI(f)
	if err != nil {
		t.Fatalf("ParseURI(String()): %v", err)
	}
	if !uriEqual(back, u) {
		t.Fatalf("round trip through %q changed the URI", f)
	}
	if again := back.String(); again != f {
		t.Fatalf("String is not stable: %q, then %q", f, again)
	}
}

// TestURIStringPathValuesAreRFC7512 checks that String writes path
// attribute values with only the characters RFC 7512's pk11-pchar allows
// unencoded (unreserved, ":[]@!$'()*+,=&", and pct-encoded), and query
// values with only pk11-qchar (the same without "&", plus "/?|").
//
// It fails today: escape leaves "/" unencoded in path values too, so
// URI{Object: "a/b"}.String() is "pkcs11:object=a/b", which a strict
// RFC 7512 parser refuses. ParseURI reads it back all the same, so the
// round trip does not show it.
func TestURIStringPathValuesAreRFC7512(t *testing.T) {
	pathOK := func(c byte) bool {
		return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			strings.IndexByte("-._~:[]@!$'()*+,=&%", c) >= 0
	}
	queryOK := func(c byte) bool {
		return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			strings.IndexByte("-._~:[]@!$'()*+,=/?|%", c) >= 0
	}
	all := make([]byte, 256)
	for i := range all {
		all[i] = byte(i)
	}
	s := string(all)
	u := URI{Token: s, Serial: s, Manufacturer: s, Model: s, Object: s, ID: all, ModulePath: s, ModuleName: s, PINSource: s}
	f := strings.TrimPrefix(u.String(), "pkcs11:")
	path, query, _ := strings.Cut(f, "?")
	for attr := range strings.SplitSeq(path, ";") {
		name, v, _ := strings.Cut(attr, "=")
		for i := range len(v) {
			if !pathOK(v[i]) {
				t.Errorf("path attribute %s: %q is not allowed unencoded in a path value (RFC 7512 pk11-pchar)", name, v[i])
			}
		}
	}
	for attr := range strings.SplitSeq(query, "&") {
		name, v, _ := strings.Cut(attr, "=")
		for i := range len(v) {
			if !queryOK(v[i]) {
				t.Errorf("query attribute %s: %q is not allowed unencoded in a query value (RFC 7512 pk11-qchar)", name, v[i])
			}
		}
	}
}

// TestParseTokenSelector covers every form a token can be named in.
func TestParseTokenSelector(t *testing.T) {
	tests := []struct {
		in      string
		want    TokenSelector
		wantErr error
	}{
		{"pkcs11:token=HSM%201;serial=0123abcd", TokenSelector{Label: "HSM 1", Serial: "0123abcd"}, nil},
		{"pkcs11:token=member-signing", TokenSelector{Label: "member-signing"}, nil},
		{"pkcs11:serial=42", TokenSelector{Serial: "42"}, nil},
		{"pkcs11:token=t;object=k;type=private", TokenSelector{Label: "t"}, nil},
		{"serial:0123456789abcdef", TokenSelector{Serial: "0123456789abcdef"}, nil},
		{"label:My Token", TokenSelector{Label: "My Token"}, nil},
		{"label:pkcs11:odd", TokenSelector{Label: "pkcs11:odd"}, nil},
		{"label:serial:odd", TokenSelector{Label: "serial:odd"}, nil},
		{"My Token", TokenSelector{Label: "My Token"}, nil},
		{"softhsm", TokenSelector{Label: "softhsm"}, nil},
		{"", TokenSelector{}, ErrInvalidSelector},
		{"serial:", TokenSelector{}, ErrInvalidSelector},
		{"label:", TokenSelector{}, ErrInvalidSelector},
		{"pkcs11:", TokenSelector{}, ErrInvalidURI},
		{"pkcs11:object=k", TokenSelector{}, ErrInvalidURI},
		{"pkcs11:token=t?pin-value=9876543210", TokenSelector{}, ErrInvalidURI},
		{"pkcs11:token=a;token=b", TokenSelector{}, ErrInvalidURI},
		{"pkcs11:token=%zz", TokenSelector{}, ErrInvalidURI},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseTokenSelector(tt.in)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("ParseTokenSelector(%q) error %v, want %v", tt.in, err, tt.wantErr)
			}
			if err != nil && strings.Contains(err.Error(), "9876543210") {
				t.Fatalf("error echoes the PIN: %v", err)
			}
			if got != tt.want {
				t.Fatalf("ParseTokenSelector(%q) = %+v, want %+v", tt.in, got, tt.want)
			}
		})
	}
}

// TestTokenSelectorStringRoundTrip checks that a selector written with
// String is read back unchanged by ParseTokenSelector.
func TestTokenSelectorStringRoundTrip(t *testing.T) {
	for _, sel := range []TokenSelector{
		{Label: "softhsm"},
		{Serial: "0123456789abcdef"},
		{Label: "HSM 1; primary?", Serial: "a/b&c"},
		{Label: "pkcs11:odd", Serial: "%20"},
		{Label: "Ünïcödé"},
	} {
		s := sel.String()
		got, err := ParseTokenSelector(s)
		if err != nil {
			t.Errorf("ParseTokenSelector(%q) (from %+v): %v", s, sel, err)
			continue
		}
		if got != sel {
			t.Errorf("round trip through %q: %+v, want %+v", s, got, sel)
		}
	}
}

// FuzzParseURI checks that ParseURI never panics, that every URI it
// accepts formats to a URI it accepts again with the same value (and the
// same text after that), and that a pin-value added to any input is
// refused without the PIN reaching the error.
func FuzzParseURI(f *testing.F) {
	for _, s := range []string{
		"pkcs11:",
		"pkcs11:object=my-pubkey;type=public",
		"pkcs11:token=The%20Software%20PKCS%2311%20Softtoken;manufacturer=Snake%20Oil,%20Inc.;model=1.0;object=my-certificate;type=cert;id=%69%95%3E%5C%F4%BD%EC%91;serial=?pin-source=file:/etc/token_pin",
		"pkcs11:object=my-sign-key;type=private?module-path=/mnt/libmypkcs11.so.1",
		"pkcs11:token=My%20token%25%20created%20by%20Joe;library-version=3;id=%01%02%03%Ba%dd%Ef%fe%fa%ba%be?module-name=mypkcs11",
		"pkcs11:token=t?pin-value=1234",
		"pkcs11:token=a;token=b",
		"pkcs11:id=%zz",
		"pkcs11:?&=&pin-source=%2F",
	} {
		f.Add(s)
	}
	const marker = "Fuzz-PIN-0xC0FFEE"
	f.Fuzz(func(t *testing.T, s string) {
		u, err := ParseURI(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidURI) {
				t.Fatalf("ParseURI(%q): error %v does not wrap ErrInvalidURI", s, err)
			}
		} else {
			f1 := u.String()
			back, err := ParseURI(f1)
			if err != nil {
				t.Fatalf("ParseURI(%q) = %+v, but its String %q does not parse: %v", s, u, f1, err)
			}
			if !uriEqual(back, u) {
				t.Fatalf("ParseURI(%q) = %+v; through String %q it becomes %+v", s, u, f1, back)
			}
			if f2 := back.String(); f2 != f1 {
				t.Fatalf("String not stable: %q, then %q", f1, f2)
			}
		}
		if strings.Contains(s, marker) {
			return
		}
		sep := "?"
		if strings.Contains(s, "?") {
			sep = "&"
		}
		withPIN := s + sep + "pin-value=" + marker
		if u, err := ParseURI(withPIN); err == nil {
			t.Fatalf("ParseURI(%q) accepted a pin-value: %+v", withPIN, u)
		} else if strings.Contains(err.Error(), marker) {
			t.Fatalf("ParseURI(%q): the error echoes the PIN: %v", withPIN, err)
		}
	})
}

func TestParseURIRefusesRepeatedQueryAttribute(t *testing.T) {
	if _, err := ParseURI("pkcs11:token=t?module-path=/a&module-path=/b"); !errors.Is(err, ErrInvalidURI) {
		t.Fatalf("a repeated module-path: %v; want ErrInvalidURI", err)
	}
}

// TestTokenSelectorMatches checks the matching of a selector against a
// token's label and serial as CK_TOKEN_INFO pads them.
func TestTokenSelectorMatches(t *testing.T) {
	tests := []struct {
		name          string
		sel           TokenSelector
		label, serial string
		want          bool
	}{
		{"label, padded with blanks", TokenSelector{Label: "signer"}, "signer" + strings.Repeat(" ", 26), "0123", true},
		{"label, padded with NULs", TokenSelector{Label: "signer"}, "signer\x00\x00", "0123", true},
		{"other label", TokenSelector{Label: "signer"}, "signer2 ", "0123", false},
		{"serial", TokenSelector{Serial: "0123"}, "any", "0123            ", true},
		{"other serial", TokenSelector{Serial: "0123"}, "any", "01234", false},
		{"label and serial", TokenSelector{Label: "a", Serial: "1"}, "a ", "1 ", true},
		{"label and wrong serial", TokenSelector{Label: "a", Serial: "1"}, "a ", "2 ", false},
		{"empty selector matches nothing", TokenSelector{}, "", "", false},
		{"leading blank kept", TokenSelector{Label: "a"}, " a", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.sel.Matches(tt.label, tt.serial); got != tt.want {
				t.Fatalf("%+v.Matches(%q, %q) = %v, want %v", tt.sel, tt.label, tt.serial, got, tt.want)
			}
		})
	}
}

// TestTrimPadding checks that a CK_TOKEN_INFO field loses its padding of
// blanks or NULs at the end, and nothing else.
func TestTrimPadding(t *testing.T) {
	tests := []struct{ in, want string }{
		{"signer" + strings.Repeat(" ", 26), "signer"},
		{"signer\x00\x00", "signer"},
		{"0123 \x00 ", "0123"},
		{" a b ", " a b"},
		{"a\tb", "a\tb"},
		{"   ", ""},
	}
	for _, tt := range tests {
		if got := TrimPadding(tt.in); got != tt.want {
			t.Errorf("TrimPadding(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// TestPathAttributes checks the attributes yielded in order and the
// Problem of each refusal.
func TestPathAttributes(t *testing.T) {
	tests := []struct {
		path    string
		want    []Attribute
		problem Problem // of the error after want; 0 for none
		attr    string
	}{
		{"token=a%20b;serial=1;x=", []Attribute{{"token", "a b"}, {"serial", "1"}, {"x", ""}}, 0, ""},
		{"", nil, ProblemNotNameValue, ""},
		{"token=a;token", []Attribute{{"token", "a"}}, ProblemNotNameValue, "token"},
		{"token=a;=b", []Attribute{{"token", "a"}}, ProblemNotNameValue, "=b"},
		{"token=a;serial=1;token=b", []Attribute{{"token", "a"}, {"serial", "1"}}, ProblemRepeated, "token"},
		{"serial=%zz;token=a", nil, ProblemEncoding, "serial"},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			var got []Attribute
			var problem Problem
			var attr string
			for a, err := range PathAttributes(tt.path) {
				if err != nil {
					var e *Error
					if !errors.As(err, &e) || !errors.Is(err, ErrInvalidURI) {
						t.Fatalf("error %v is not an *Error wrapping ErrInvalidURI", err)
					}
					problem, attr = e.Problem, e.Attr
					continue
				}
				got = append(got, a)
			}
			if !slices.Equal(got, tt.want) || problem != tt.problem || attr != tt.attr {
				t.Fatalf("PathAttributes(%q) = %v then problem %d on %q; want %v then %d on %q", tt.path, got, problem, attr, tt.want, tt.problem, tt.attr)
			}
		})
	}
}
