package dn

import (
	"encoding/asn1"
	"fmt"
	"net/mail"
	"strings"
	"unicode"
	"unicode/utf8"
)

// kind is one of the supported attribute types. The table lives in switch
// statements rather than package-level variables, so nothing in it can be
// changed at run time.
type kind int

const (
	kindUnknown kind = iota
	kindCN
	kindSurname
	kindSerialNumber
	kindCountry
	kindLocality
	kindState
	kindStreet
	kindOrganization
	kindOrgUnit
	kindTitle
	kindGivenName
	kindOrgIdentifier
	kindDomainComponent
	kindEmail
	kindEnd // one past the last kind
)

// spec describes how an attribute type is written, encoded and checked.
type spec struct {
	name       string // the name String writes
	long       string // the long name, also accepted
	oid        string // dotted OID
	tag        int    // ASN.1 universal tag of the value's string type
	maxChars   int    // RFC 5280 upper bound in characters; 0 for none
	repeatable bool   // may appear more than once in a DN
}

func (k kind) spec() spec {
	switch k {
	case kindCN:
		return spec{"CN", "commonName", "2.5.4.3", asn1.TagUTF8String, 64, false}
	case kindSurname:
		return spec{"SN", "surname", "2.5.4.4", asn1.TagUTF8String, 0, false}
	case kindSerialNumber:
		return spec{"serialNumber", "serialNumber", "2.5.4.5", asn1.TagPrintableString, 64, false}
	case kindCountry:
		return spec{"C", "countryName", "2.5.4.6", asn1.TagPrintableString, 2, false}
	case kindLocality:
		return spec{"L", "localityName", "2.5.4.7", asn1.TagUTF8String, 128, false}
	case kindState:
		return spec{"ST", "stateOrProvinceName", "2.5.4.8", asn1.TagUTF8String, 128, false}
	case kindStreet:
		return spec{"STREET", "streetAddress", "2.5.4.9", asn1.TagUTF8String, 0, false}
	case kindOrganization:
		return spec{"O", "organizationName", "2.5.4.10", asn1.TagUTF8String, 64, false}
	case kindOrgUnit:
		return spec{"OU", "organizationalUnitName", "2.5.4.11", asn1.TagUTF8String, 64, true}
	case kindTitle:
		return spec{"title", "title", "2.5.4.12", asn1.TagUTF8String, 64, false}
	case kindGivenName:
		return spec{"GN", "givenName", "2.5.4.42", asn1.TagUTF8String, 0, false}
	case kindOrgIdentifier:
		return spec{"organizationIdentifier", "organizationIdentifier", "2.5.4.97", asn1.TagUTF8String, 0, false}
	case kindDomainComponent:
		return spec{"DC", "domainComponent", "0.9.2342.19200300.100.1.25", asn1.TagIA5String, 0, true}
	case kindEmail:
		return spec{"emailAddress", "emailAddress", "1.2.840.113549.1.9.1", asn1.TagIA5String, 255, false}
	}
	return spec{}
}

// acceptedNames lists the accepted short names, for error messages.
func acceptedNames() string {
	names := make([]string, 0, int(kindEnd)-1)
	for k := kindCN; k < kindEnd; k++ {
		names = append(names, k.spec().name)
	}
	return strings.Join(names, ", ")
}

// kindByName finds an attribute type by its name (case-insensitive) or its
// dotted OID.
func kindByName(name string) kind {
	lower := strings.ToLower(name)
	for k := kindCN; k < kindEnd; k++ {
		s := k.spec()
		if lower == strings.ToLower(s.name) || lower == strings.ToLower(s.long) || name == s.oid {
			return k
		}
	}
	return kindUnknown
}

// kindByOID finds an attribute type by its OID.
func kindByOID(oid asn1.ObjectIdentifier) kind {
	s := oid.String()
	for k := kindCN; k < kindEnd; k++ {
		if k.spec().oid == s {
			return k
		}
	}
	return kindUnknown
}

// oid returns the attribute type's OID as a fresh slice.
func (k kind) oid() asn1.ObjectIdentifier {
	oid, ok := parseOID(k.spec().oid)
	if !ok {
		panic("dn: bad OID in attribute table: " + k.spec().oid)
	}
	return oid
}

// parseOID parses a dotted OID in the RFC 4512 numericoid form: at least two
// arcs, decimal, no leading zeros.
func parseOID(s string) (asn1.ObjectIdentifier, bool) {
	parts := strings.Split(s, ".")
	if len(parts) < 2 {
		return nil, false
	}
	oid := make(asn1.ObjectIdentifier, 0, len(parts))
	for _, p := range parts {
		if p == "" || len(p) > 9 || (len(p) > 1 && p[0] == '0') {
			return nil, false
		}
		n := 0
		for i := 0; i < len(p); i++ {
			if p[i] < '0' || p[i] > '9' {
				return nil, false
			}
			n = n*10 + int(p[i]-'0')
		}
		oid = append(oid, n)
	}
	if oid[0] > 2 || (oid[0] < 2 && oid[1] > 39) {
		return nil, false
	}
	return oid, true
}

// checkValue checks a decoded value against the general rules and those of
// its attribute type. On failure it returns the byte index in value where
// the problem is (-1 for the value as a whole) and what is wrong, and whether
// that is a syntax (rather than attribute) problem.
func checkValue(k kind, value string) (at int, msg string, syntax bool) {
	s := k.spec()
	if value == "" {
		return -1, fmt.Sprintf("empty value for %s", s.name), true
	}
	for i, r := range value {
		if r == utf8.RuneError {
			if _, size := utf8.DecodeRuneInString(value[i:]); size <= 1 {
				return i, fmt.Sprintf("value of %s is not valid UTF-8", s.name), true
			}
		}
		if unicode.Is(unicode.Cc, r) || unicode.Is(unicode.Cf, r) {
			return i, fmt.Sprintf("value of %s contains the control or format character %U", s.name, r), true
		}
	}
	if n := utf8.RuneCountInString(value); s.maxChars > 0 && n > s.maxChars && k != kindCountry {
		return -1, fmt.Sprintf("value of %s is %d characters long, at most %d are allowed (RFC 5280)", s.name, n, s.maxChars), false
	}
	switch s.tag {
	case asn1.TagPrintableString:
		for i := 0; i < len(value); i++ {
			if !isPrintable(value[i]) {
				r, _ := utf8.DecodeRuneInString(value[i:])
				return i, fmt.Sprintf("%s must be a PrintableString (A-Z a-z 0-9 space ' ( ) + , - . / : = ?); %q is not allowed", s.name, r), false
			}
		}
	case asn1.TagIA5String:
		for i := 0; i < len(value); i++ {
			if value[i] >= utf8.RuneSelf {
				r, _ := utf8.DecodeRuneInString(value[i:])
				return i, fmt.Sprintf("%s must be an IA5String (ASCII); %q is not allowed", s.name, r), false
			}
		}
	}
	switch k {
	case kindCountry:
		if len(value) != 2 || !isUpper(value[0]) || !isUpper(value[1]) {
			return -1, fmt.Sprintf("C must be two upper-case letters A-Z (ISO 3166-1 alpha-2), not %q", value), false
		}
	case kindDomainComponent:
		if reason := checkLabel(value); reason != "" {
			return -1, fmt.Sprintf("DC must be one DNS label: %s", reason), false
		}
	case kindEmail:
		a, err := mail.ParseAddress(value)
		if err != nil || a.Name != "" || a.Address != value {
			return -1, fmt.Sprintf("emailAddress %q is not a bare e-mail address", value), false
		}
	}
	return 0, "", false
}

func isUpper(c byte) bool { return 'A' <= c && c <= 'Z' }

// isPrintable reports whether c is in the ASN.1 PrintableString set.
func isPrintable(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte(" '()+,-./:=?", c) >= 0
}

// checkLabel checks one DNS label (letters, digits, inner hyphens, at most
// 63 bytes) and returns what is wrong with it, or "".
func checkLabel(l string) string {
	switch {
	case l == "":
		return "empty label"
	case len(l) > 63:
		return fmt.Sprintf("label %q is longer than 63 bytes", l)
	case l[0] == '-' || l[len(l)-1] == '-':
		return fmt.Sprintf("label %q starts or ends with '-'", l)
	}
	for i := 0; i < len(l); i++ {
		c := l[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-') {
			return fmt.Sprintf("label %q contains %q (only letters, digits and '-' are allowed)", l, rune(c))
		}
	}
	return ""
}
