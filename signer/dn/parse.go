package dn

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// MaxLength is the longest DN string Parse accepts, in bytes.
const MaxLength = 1024

// Parse parses a distinguished name in the RFC 4514 string form, with the
// stricter rules of the package documentation. As RFC 4514 defines, the
// rightmost RDN of s becomes the first RDN of the Name (the first encoded),
// so "CN=x,O=y,C=EE" is encoded C, O, CN.
//
// The limit of MaxLength bytes holds for s and for the name as String
// writes it.
//
// Every failure is an [*Error] that wraps [ErrSyntax] or [ErrAttribute] and
// gives the byte offset of the problem.
func Parse(s string) (Name, error) {
	if len(s) > MaxLength {
		return nil, syntaxErr(MaxLength, "longer than %d bytes", MaxLength)
	}
	if !utf8.ValidString(s) {
		for i, r := range s {
			if r == utf8.RuneError {
				if _, size := utf8.DecodeRuneInString(s[i:]); size <= 1 {
					return nil, syntaxErr(i, "not valid UTF-8")
				}
			}
		}
	}
	p := parser{s: s}
	return p.parse()
}

type parser struct {
	s string
	i int // next byte to read
}

// placed is an attribute with the byte offsets of its type and value.
type placed struct {
	Attribute
	kind     kind
	typePos  int
	valuePos int
}

func (p *parser) parse() (Name, error) {
	var rdns [][]placed // in string order
	var seen []Attribute
	for {
		rdn, err := p.rdn(seen)
		if err != nil {
			return nil, err
		}
		for _, a := range rdn {
			seen = append(seen, a.Attribute)
		}
		rdns = append(rdns, rdn)
		// p.rdn stops at the end or after a ',' that something follows.
		if p.i == len(p.s) {
			break
		}
	}
	name := make(Name, len(rdns))
	for i, rdn := range rdns {
		out := make(RDN, len(rdn))
		for j, a := range rdn {
			out[j] = a.Attribute
		}
		name[len(rdns)-1-i] = out
	}
	// String writes some types given as OIDs by a longer name, so check
	// the limit on that form too: whatever Parse accepts, it accepts again
	// from String.
	if n := len(name.String()); n > MaxLength {
		return nil, syntaxErr(0, "longer than %d bytes when written with attribute names (%d bytes)", MaxLength, n)
	}
	return name, nil
}

// rdn reads one RDN and the ',' after it, if any.
func (p *parser) rdn(seen []Attribute) ([]placed, error) {
	var rdn []placed
	for {
		a, err := p.attribute()
		if err != nil {
			return nil, err
		}
		for _, b := range rdn {
			if b.kind == a.kind {
				return nil, attrErr(a.typePos, "%s appears twice in one RDN", a.kind.spec().name)
			}
		}
		if msg := repeated(a.kind, a.Attribute, seen); msg != "" {
			return nil, attrErr(a.typePos, "%s", msg)
		}
		rdn = append(rdn, a)
		if p.i == len(p.s) {
			return rdn, nil
		}
		sep := p.s[p.i]
		p.i++
		if p.i == len(p.s) {
			return nil, syntaxErr(p.i-1, "trailing %q", sep)
		}
		if sep == ',' {
			return rdn, nil
		}
		// sep is '+': another attribute of this RDN follows.
	}
}

// attribute reads "type=value", stopping before a ',' or '+' or at the end.
func (p *parser) attribute() (placed, error) {
	for p.i < len(p.s) && p.s[p.i] == ' ' {
		p.i++
	}
	start := p.i
	if p.i == len(p.s) {
		last := len(strings.TrimRight(p.s, " ")) - 1
		if last < 0 {
			return placed{}, syntaxErr(0, "empty distinguished name")
		}
		return placed{}, syntaxErr(last, "trailing %q", p.s[last])
	}
	switch c := p.s[p.i]; {
	case c == ',':
		return placed{}, syntaxErr(p.i, "empty RDN")
	case c == '+':
		return placed{}, syntaxErr(p.i, "empty attribute in a multi-valued RDN")
	case c == '=':
		return placed{}, syntaxErr(p.i, "missing attribute type before '='")
	case isAlpha(c):
		for p.i < len(p.s) && (isAlpha(p.s[p.i]) || isDigit(p.s[p.i]) || p.s[p.i] == '-') {
			p.i++
		}
	case isDigit(c):
		for p.i < len(p.s) && (isDigit(p.s[p.i]) || p.s[p.i] == '.') {
			p.i++
		}
		if _, ok := parseOID(p.s[start:p.i]); !ok {
			return placed{}, syntaxErr(start, "%q is not a valid dotted OID", p.s[start:p.i])
		}
	default:
		r, _ := utf8.DecodeRuneInString(p.s[p.i:])
		return placed{}, syntaxErr(p.i, "attribute type expected, found %q", r)
	}
	typ := p.s[start:p.i]
	if p.i == len(p.s) || p.s[p.i] != '=' {
		if p.i == len(p.s) || p.s[p.i] == ',' || p.s[p.i] == '+' {
			return placed{}, syntaxErr(p.i, "missing '=' after attribute type %q", typ)
		}
		r, _ := utf8.DecodeRuneInString(p.s[p.i:])
		return placed{}, syntaxErr(p.i, "expected '=' after attribute type %q, found %q", typ, r)
	}
	k := kindByName(typ)
	if k == kindUnknown {
		what := "unknown attribute type"
		if isDigit(typ[0]) {
			what = "unsupported attribute type"
		}
		return placed{}, attrErr(start, "%s %q; accepted: %s (or their dotted OIDs)", what, typ, acceptedNames())
	}
	p.i++ // '='
	valuePos := p.i
	value, srcPos, err := p.value()
	if err != nil {
		return placed{}, err
	}
	if at, msg, syntax := checkValue(k, value); msg != "" {
		pos := valuePos
		if at >= 0 {
			pos = srcPos[at]
		}
		if syntax {
			return placed{}, syntaxErr(pos, "%s", msg)
		}
		return placed{}, attrErr(pos, "%s", msg)
	}
	return placed{Attribute: Attribute{Type: k.oid(), Value: value}, kind: k, typePos: start, valuePos: valuePos}, nil
}

// value reads and unescapes an RFC 4514 attribute value up to the next
// unescaped ',' or '+' or the end. srcPos[j] is the input offset of the
// value's byte j.
func (p *parser) value() (string, []int, error) {
	start := p.i
	if p.i < len(p.s) && p.s[p.i] == '#' {
		return "", nil, syntaxErr(p.i, "#hex (BER-encoded) values are not accepted; write the value as a string, escaping a leading '#' as \\#")
	}
	var buf []byte
	var srcPos []int
	rawSpace := -1 // offset of a trailing unescaped space, if any
	for p.i < len(p.s) {
		c := p.s[p.i]
		if c == ',' || c == '+' {
			break
		}
		switch {
		case c == '\\':
			if p.i+1 == len(p.s) {
				return "", nil, syntaxErr(p.i, "'\\' at the end of the value")
			}
			n := p.s[p.i+1]
			switch {
			case strings.IndexByte("\"+,;<>\\ #=", n) >= 0:
				buf = append(buf, n)
				srcPos = append(srcPos, p.i)
				p.i += 2
			case isHex(n):
				if p.i+2 == len(p.s) || !isHex(p.s[p.i+2]) {
					return "", nil, syntaxErr(p.i, "'\\%c' must be followed by a second hex digit", n)
				}
				buf = append(buf, unhex(n)<<4|unhex(p.s[p.i+2]))
				srcPos = append(srcPos, p.i)
				p.i += 3
			default:
				r, _ := utf8.DecodeRuneInString(p.s[p.i+1:])
				return "", nil, syntaxErr(p.i, "invalid escape '\\%c' (escape only \" + , ; < > \\ space # = or a byte as two hex digits)", r)
			}
			rawSpace = -1
			continue
		case c == '"' || c == ';' || c == '<' || c == '>':
			msg := fmt.Sprintf("unescaped %q in value (write it as \\%c)", c, c)
			if c == ';' {
				msg += "; RDNs are separated by ',' only"
			}
			if c == '"' {
				msg += "; quoted values are not RFC 4514"
			}
			return "", nil, syntaxErr(p.i, "%s", msg)
		case c == ' ' && p.i == start:
			return "", nil, syntaxErr(p.i, "a leading space in a value must be escaped as '\\ '")
		case c == ' ':
			if rawSpace < 0 {
				rawSpace = p.i
			}
		default:
			rawSpace = -1
		}
		buf = append(buf, c)
		srcPos = append(srcPos, p.i)
		p.i++
	}
	if rawSpace >= 0 {
		return "", nil, syntaxErr(rawSpace, "a trailing space in a value must be escaped as '\\ ' (no spaces before ',' or '+')")
	}
	return string(buf), srcPos, nil
}

func isAlpha(c byte) bool { return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' }
func isDigit(c byte) bool { return '0' <= c && c <= '9' }
func isHex(c byte) bool   { return isDigit(c) || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F' }

func unhex(c byte) byte {
	switch {
	case isDigit(c):
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}
