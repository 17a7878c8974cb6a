package dn

import (
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Attribute is one attribute type and value of a relative distinguished name.
type Attribute struct {
	// Type is the attribute type's OID.
	Type asn1.ObjectIdentifier
	// Value is the value as text (UTF-8), unescaped.
	Value string
}

// RDN is a relative distinguished name: one attribute, or several for a
// multi-valued RDN ("OU=a+CN=b"). The attributes keep the order in which they
// were written; the encoding sorts them, as DER requires of a SET.
type RDN []Attribute

// Name is a distinguished name as its RDNs in encoding (RDNSequence) order:
// Name[0] is the first RDN encoded, the most general one, and the last
// (rightmost) RDN of the RFC 4514 string form.
type Name []RDN

// String returns the name in the RFC 4514 string form, the last RDN of the
// encoding first, with the short names listed in the package documentation
// and the escapes RFC 4514 requires. Parse reads it back to an equal Name.
func (n Name) String() string {
	var b strings.Builder
	for i := len(n) - 1; i >= 0; i-- {
		if i != len(n)-1 {
			b.WriteByte(',')
		}
		for j, a := range n[i] {
			if j > 0 {
				b.WriteByte('+')
			}
			if k := kindByOID(a.Type); k != kindUnknown {
				b.WriteString(k.spec().name)
			} else {
				b.WriteString(a.Type.String())
			}
			b.WriteByte('=')
			escapeValue(&b, a.Value)
		}
	}
	return b.String()
}

// escapeValue writes v escaped as RFC 4514 section 2.4 requires. Bytes that
// are not valid UTF-8 and control or format characters, which no parsed Name
// holds, are written as \XX pairs so that nothing is hidden.
func escapeValue(b *strings.Builder, v string) {
	for i := 0; i < len(v); {
		r, size := utf8.DecodeRuneInString(v[i:])
		c := v[i]
		switch {
		case r == utf8.RuneError && size <= 1, unicode.Is(unicode.Cc, r), unicode.Is(unicode.Cf, r):
			for _, x := range []byte(v[i : i+size]) {
				fmt.Fprintf(b, "\\%02X", x)
			}
		case strings.IndexByte("\"+,;<>\\", c) >= 0,
			i == 0 && (c == ' ' || c == '#'),
			i == len(v)-1 && c == ' ':
			b.WriteByte('\\')
			b.WriteByte(c)
		default:
			b.WriteString(v[i : i+size])
		}
		if size < 1 {
			size = 1
		}
		i += size
	}
}

// Equal reports whether n and m are the same name: the same RDNs in the same
// order, each with the same attributes (in any order, as an RDN is a SET).
func (n Name) Equal(m Name) bool {
	if len(n) != len(m) {
		return false
	}
	for i := range n {
		if !n[i].equal(m[i]) {
			return false
		}
	}
	return true
}

func (r RDN) equal(s RDN) bool {
	if len(r) != len(s) {
		return false
	}
	used := make([]bool, len(s))
next:
	for _, a := range r {
		for j, b := range s {
			if !used[j] && a.Type.Equal(b.Type) && a.Value == b.Value {
				used[j] = true
				continue next
			}
		}
		return false
	}
	return true
}

// Check applies the rules Parse applies to every attribute of n, so that a
// Name built by hand is held to them too. The error wraps ErrSyntax or
// ErrAttribute; its Pos is the index of the offending RDN in n.
func (n Name) Check() error {
	if len(n) == 0 {
		return syntaxErr(0, "empty distinguished name")
	}
	var seen []Attribute
	for i, rdn := range n {
		if len(rdn) == 0 {
			return syntaxErr(i, "empty RDN")
		}
		for j, a := range rdn {
			k := kindByOID(a.Type)
			if k == kindUnknown {
				return attrErr(i, "unsupported attribute type %s; accepted: %s", a.Type, acceptedNames())
			}
			if _, msg, syntax := checkValue(k, a.Value); msg != "" {
				if syntax {
					return syntaxErr(i, "%s", msg)
				}
				return attrErr(i, "%s", msg)
			}
			for _, b := range rdn[:j] {
				if b.Type.Equal(a.Type) {
					return attrErr(i, "%s appears twice in one RDN", k.spec().name)
				}
			}
			if msg := repeated(k, a, seen); msg != "" {
				return attrErr(i, "%s", msg)
			}
			seen = append(seen, a)
		}
	}
	return nil
}

// repeated says why a may not join the attributes already seen, or "".
func repeated(k kind, a Attribute, seen []Attribute) string {
	s := k.spec()
	for _, b := range seen {
		if !b.Type.Equal(a.Type) {
			continue
		}
		if !s.repeatable {
			return fmt.Sprintf("%s appears more than once; a DN may hold only one %s", s.name, s.name)
		}
		if b.Value == a.Value {
			return fmt.Sprintf("%s=%s appears more than once", s.name, a.Value)
		}
	}
	return ""
}

// Marshal returns the DER encoding of n as an X.501 Name (RDNSequence), with
// each value in the string type its attribute calls for: PrintableString for
// C and serialNumber, IA5String for emailAddress and DC, UTF8String for the
// others. It is what x509.CertificateRequest.RawSubject takes. n is checked
// first (see Check).
func (n Name) Marshal() ([]byte, error) {
	if err := n.Check(); err != nil {
		return nil, err
	}
	seq := make(pkix.RDNSequence, 0, len(n))
	for _, rdn := range n {
		set := make(pkix.RelativeDistinguishedNameSET, 0, len(rdn))
		for _, a := range rdn {
			set = append(set, pkix.AttributeTypeAndValue{
				Type:  append(asn1.ObjectIdentifier(nil), a.Type...),
				Value: asn1.RawValue{Class: asn1.ClassUniversal, Tag: kindByOID(a.Type).spec().tag, Bytes: []byte(a.Value)},
			})
		}
		seq = append(seq, set)
	}
	der, err := asn1.Marshal(seq)
	if err != nil {
		return nil, fmt.Errorf("dn: encoding the name: %w", err)
	}
	return der, nil
}

// PKIX returns n as a pkix.Name, for display and for code that reads
// pkix.Name fields. Encode with Marshal, not with the pkix.Name: its encoding
// reorders attributes and picks string types by content.
func (n Name) PKIX() pkix.Name {
	seq := make(pkix.RDNSequence, 0, len(n))
	for _, rdn := range n {
		set := make(pkix.RelativeDistinguishedNameSET, 0, len(rdn))
		for _, a := range rdn {
			set = append(set, pkix.AttributeTypeAndValue{Type: append(asn1.ObjectIdentifier(nil), a.Type...), Value: a.Value})
		}
		seq = append(seq, set)
	}
	var p pkix.Name
	p.FillFromRDNSequence(&seq)
	return p
}
