package config

import (
	"bytes"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/BurntSushi/toml"
)

// BurntSushi/toml v1.6.0 keeps the position of each key private (and keeps
// only the last position of a key repeated in an array of tables), so this
// file finds the lines itself. keyScanner walks a TOML document that the
// toml package has already parsed and records, for every key definition and
// table header, its line and two names:
//
//   - path: the key as toml.MetaData names it (no array indexes), e.g.
//     "policy.client.kyes", to match MetaData.Keys and Undecoded;
//   - indexed: the same key with the index of each array element on the
//     way, e.g. "policy.client[1].kyes", to place validation errors.
//
// It understands everything TOML allows (basic, literal and multi-line
// strings, arrays and inline tables over several lines, comments, quoted
// and dotted keys) but assumes the document is valid; on anything it does
// not expect it stops and keeps what it found, so a line is sometimes
// unknown, never wrong.

// keyDef is one key definition or table header.
type keyDef struct {
	path    toml.Key
	indexed string
	line    int
}

// keyIndex holds the definitions of one document in document order.
type keyIndex struct {
	defs  []keyDef
	first map[string]int // indexed name -> line of its first definition
	// tooDeep is the line where the document nests deeper than maxDepth,
	// or 0; the scan stops there.
	tooDeep int
}

// maxDepth bounds how deeply a document may nest: the parts of a key,
// with those of its table, and arrays and inline tables within a value.
// The schema needs 3; the toml package takes time quadratic in the depth.
const maxDepth = 16

// indexKeys scans data. It never panics, whatever data holds.
func indexKeys(data []byte) *keyIndex {
	s := &keyScanner{
		data:        data,
		line:        1,
		counts:      map[string]int{},
		arrayTables: map[string]bool{},
	}
	s.document()
	ix := &keyIndex{defs: s.defs, first: make(map[string]int, len(s.defs)), tooDeep: s.tooDeep}
	for _, d := range s.defs {
		if _, ok := ix.first[d.indexed]; !ok {
			ix.first[d.indexed] = d.line
		}
	}
	return ix
}

// lineOf returns the line where indexed (e.g. "module[0].token[1].pin") is
// defined or, failing that, where its nearest defined parent is; 0 if none.
func (ix *keyIndex) lineOf(indexed string) int {
	for indexed != "" {
		if l, ok := ix.first[indexed]; ok {
			return l
		}
		indexed = parentName(indexed)
	}
	return 0
}

// parentName drops the last ".key" or "[n]" from an indexed name.
func parentName(s string) string {
	if strings.HasSuffix(s, "]") {
		if i := strings.LastIndexByte(s, '['); i >= 0 {
			return s[:i]
		}
		return ""
	}
	if i := strings.LastIndexByte(s, '.'); i >= 0 {
		return s[:i]
	}
	return ""
}

type keyScanner struct {
	data []byte
	pos  int
	line int
	bad  bool // set when the scanner met something it does not expect

	tooDeep int // line where the nesting passed maxDepth

	defs []keyDef

	ctx        toml.Key // current table, from the last header
	ctxIndexed string

	counts      map[string]int  // indexed array-of-tables name -> elements so far
	arrayTables map[string]bool // unindexed name -> defined with [[...]]
}

func (s *keyScanner) eof() bool { return s.bad || s.pos >= len(s.data) }

func (s *keyScanner) peek(off int) byte {
	if s.pos+off < len(s.data) {
		return s.data[s.pos+off]
	}
	return 0
}

func (s *keyScanner) fail() { s.bad = true }

// document scans top-level statements until the end or a surprise.
func (s *keyScanner) document() {
	for {
		s.skipBlank()
		if s.eof() {
			return
		}
		line := s.line
		if s.peek(0) == '[' {
			array := s.peek(1) == '['
			if array {
				s.pos += 2
			} else {
				s.pos++
			}
			parts := s.key()
			s.skipSpace()
			if array {
				s.expect(']')
			}
			s.expect(']')
			if s.bad {
				return
			}
			s.header(parts, array, line)
			continue
		}
		s.keyValue(s.ctx, s.ctxIndexed, 0)
	}
}

// header records a [table] or [[array]] header and makes it the context.
func (s *keyScanner) header(parts toml.Key, array bool, line int) {
	var idx strings.Builder
	for i, p := range parts {
		if i > 0 {
			idx.WriteByte('.')
		}
		idx.WriteString(toml.Key{p}.String())
		plain := parts[:i+1].String()
		switch {
		case array && i == len(parts)-1:
			n := s.counts[idx.String()]
			s.counts[idx.String()] = n + 1
			s.arrayTables[plain] = true
			idx.WriteString("[" + strconv.Itoa(n) + "]")
		case s.arrayTables[plain]:
			if n := s.counts[idx.String()]; n > 0 {
				idx.WriteString("[" + strconv.Itoa(n-1) + "]")
			}
		}
	}
	s.ctx = parts
	s.ctxIndexed = idx.String()
	s.emit(parts, s.ctxIndexed, line)
}

// keyValue scans "key = value" inside the table named ctx / ctxIndexed.
func (s *keyScanner) keyValue(ctx toml.Key, ctxIndexed string, depth int) {
	line := s.line
	parts := s.key()
	s.skipSpace()
	s.expect('=')
	s.skipSpace()
	if s.bad {
		return
	}
	path := make(toml.Key, 0, len(ctx)+len(parts))
	path = append(append(path, ctx...), parts...)
	indexed := ctxIndexed
	for _, p := range parts {
		if indexed != "" {
			indexed += "."
		}
		indexed += toml.Key{p}.String()
	}
	s.emit(path, indexed, line)
	s.value(path, indexed, depth)
}

func (s *keyScanner) emit(path toml.Key, indexed string, line int) {
	if len(path) > maxDepth {
		s.tooDeep = line
		s.fail()
		return
	}
	s.defs = append(s.defs, keyDef{path: append(toml.Key(nil), path...), indexed: indexed, line: line})
}

// value skips one value; inline tables in it are scanned for their keys.
func (s *keyScanner) value(path toml.Key, indexed string, depth int) {
	if c := s.peek(0); (c == '[' || c == '{') && depth+1 > maxDepth {
		s.tooDeep = s.line
		s.fail()
		return
	}
	switch c := s.peek(0); {
	case s.eof():
		s.fail()
	case c == '"' || c == '\'':
		s.str()
	case c == '[':
		s.pos++
		for i := 0; ; i++ {
			s.skipBlank()
			if s.eof() {
				s.fail()
				return
			}
			if s.peek(0) == ']' {
				s.pos++
				return
			}
			s.value(path, indexed+"["+strconv.Itoa(i)+"]", depth+1)
			s.skipBlank()
			switch s.peek(0) {
			case ',':
				s.pos++
			case ']':
			default:
				s.fail()
				return
			}
		}
	case c == '{':
		s.pos++
		for {
			s.skipBlank()
			if s.eof() {
				s.fail()
				return
			}
			if s.peek(0) == '}' {
				s.pos++
				return
			}
			s.keyValue(path, indexed, depth+1)
			s.skipBlank()
			switch s.peek(0) {
			case ',':
				s.pos++
			case '}':
			default:
				s.fail()
				return
			}
		}
	default:
		// Number, boolean, date or time: up to the next delimiter. A local
		// date-time may hold one space, which this keeps.
		start := s.pos
		for s.pos < len(s.data) && strings.IndexByte(",]}#\r\n", s.data[s.pos]) < 0 {
			s.pos++
		}
		if s.pos == start {
			s.fail()
		}
	}
}

// key reads a dotted key: bare, "basic" and 'literal' parts.
func (s *keyScanner) key() toml.Key {
	var parts toml.Key
	for {
		s.skipSpace()
		var part string
		switch c := s.peek(0); {
		case s.eof():
			s.fail()
			return parts
		case c == '"':
			part = s.basicKey()
		case c == '\'':
			s.pos++
			end := bytes.IndexByte(s.data[s.pos:], '\'')
			if end < 0 {
				s.fail()
				return parts
			}
			part = string(s.data[s.pos : s.pos+end])
			s.pos += end + 1
		default:
			start := s.pos
			for s.pos < len(s.data) && isBareKeyByte(s.data[s.pos]) {
				s.pos++
			}
			if s.pos == start {
				s.fail()
				return parts
			}
			part = string(s.data[start:s.pos])
		}
		if s.bad {
			return parts
		}
		parts = append(parts, part)
		if len(parts) > maxDepth {
			s.tooDeep = s.line
			s.fail()
			return parts
		}
		s.skipSpace()
		if s.peek(0) != '.' || s.eof() {
			return parts
		}
		s.pos++
	}
}

func isBareKeyByte(c byte) bool {
	return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

// basicKey reads a "quoted" key part and decodes its escapes as TOML does.
func (s *keyScanner) basicKey() string {
	s.pos++ // opening quote
	var b strings.Builder
	for {
		if s.pos >= len(s.data) {
			s.fail()
			return ""
		}
		c := s.data[s.pos]
		switch c {
		case '"':
			s.pos++
			return b.String()
		case '\n':
			s.fail()
			return ""
		case '\\':
			s.pos++
			e := s.peek(0)
			s.pos++
			switch e {
			case 'b':
				b.WriteByte('\b')
			case 't':
				b.WriteByte('\t')
			case 'n':
				b.WriteByte('\n')
			case 'f':
				b.WriteByte('\f')
			case 'r':
				b.WriteByte('\r')
			case 'e':
				b.WriteByte(0x1b)
			case '"':
				b.WriteByte('"')
			case '\\':
				b.WriteByte('\\')
			case 'x', 'u', 'U':
				n := 2
				switch e {
				case 'u':
					n = 4
				case 'U':
					n = 8
				}
				if s.pos+n > len(s.data) {
					s.fail()
					return ""
				}
				v, err := strconv.ParseUint(string(s.data[s.pos:s.pos+n]), 16, 32)
				if err != nil || !utf8.ValidRune(rune(v)) {
					s.fail()
					return ""
				}
				b.WriteRune(rune(v))
				s.pos += n
			default:
				s.fail()
				return ""
			}
		default:
			b.WriteByte(c)
			s.pos++
		}
	}
}

// str skips a string value of any of TOML's four kinds, counting lines.
func (s *keyScanner) str() {
	q := s.peek(0)
	if s.peek(1) == q && s.peek(2) == q {
		// Multi-line: ends at the first unescaped triple quote; up to two
		// more quotes right before it belong to the content.
		s.pos += 3
		for {
			if s.pos >= len(s.data) {
				s.fail()
				return
			}
			c := s.data[s.pos]
			switch {
			case c == '\\' && q == '"':
				if s.peek(1) == '\n' {
					s.line++
				}
				s.pos += 2
			case c == '\n':
				s.line++
				s.pos++
			case c == q && s.peek(1) == q && s.peek(2) == q:
				s.pos += 3
				for i := 0; i < 2 && s.peek(0) == q && s.pos < len(s.data); i++ {
					s.pos++
				}
				return
			default:
				s.pos++
			}
		}
	}
	s.pos++
	for {
		if s.pos >= len(s.data) {
			s.fail()
			return
		}
		c := s.data[s.pos]
		switch {
		case c == '\\' && q == '"':
			s.pos += 2
		case c == q:
			s.pos++
			return
		case c == '\n':
			s.fail()
			return
		default:
			s.pos++
		}
	}
}

// skipSpace skips spaces and tabs.
func (s *keyScanner) skipSpace() {
	for s.pos < len(s.data) && (s.data[s.pos] == ' ' || s.data[s.pos] == '\t') {
		s.pos++
	}
}

// skipBlank skips whitespace, newlines and comments.
func (s *keyScanner) skipBlank() {
	for s.pos < len(s.data) {
		switch s.data[s.pos] {
		case ' ', '\t', '\r':
			s.pos++
		case '\n':
			s.line++
			s.pos++
		case '#':
			for s.pos < len(s.data) && s.data[s.pos] != '\n' {
				s.pos++
			}
		default:
			return
		}
	}
}

func (s *keyScanner) expect(c byte) {
	if s.eof() || s.data[s.pos] != c {
		s.fail()
		return
	}
	s.pos++
}
