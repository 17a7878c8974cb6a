package config

import (
	"cmp"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// checker collects every problem of one configuration, each placed on its
// line when the document is known.
type checker struct {
	name string
	data []byte    // the document, nil when checking values built in Go
	ix   *keyIndex // built on the first problem
	errs []error
}

func (ck *checker) index() *keyIndex {
	if ck.ix == nil {
		ck.ix = indexKeys(ck.data)
	}
	return ck.ix
}

// addf records a problem with key, an indexed name such as
// "module[0].token[1].pin".
func (ck *checker) addf(key, format string, args ...any) {
	line := 0
	if ck.data != nil {
		line = ck.index().lineOf(key)
	}
	ck.errs = append(ck.errs, &Error{File: ck.name, Line: line, Key: key, Msg: key + ": " + fmt.Sprintf(format, args...)})
}

// err returns the problems found, in the order of their lines (those
// without a line last), as one error.
func (ck *checker) err() error {
	slices.SortStableFunc(ck.errs, func(a, b error) int {
		la, lb := a.(*Error).Line, b.(*Error).Line
		if la == 0 || lb == 0 {
			return cmp.Compare(lb, la) // 0 after any line
		}
		return cmp.Compare(la, lb)
	})
	switch len(ck.errs) {
	case 0:
		return nil
	case 1:
		return ck.errs[0]
	}
	return errors.Join(ck.errs...)
}

// unknownKeys reports every key the schema does not have: those the
// decoder left undecoded, and those it matched only by ignoring case. A
// key under an unknown table is not reported again. Each occurrence is
// reported on its own line.
func (ck *checker) unknownKeys(md toml.MetaData) {
	allowed := allowedKeys()
	unknown := map[string]bool{}
	for _, k := range md.Undecoded() {
		unknown[k.String()] = true
	}
	for _, k := range md.Keys() {
		if !allowed[k.String()] {
			unknown[k.String()] = true
		}
	}
	if len(unknown) == 0 {
		return
	}
	outermost := func(k toml.Key) bool {
		for i := 1; i < len(k); i++ {
			if unknown[k[:i].String()] {
				return false
			}
		}
		return true
	}
	add := func(k toml.Key, line int) {
		ck.errs = append(ck.errs, &Error{File: ck.name, Line: line, Key: k.String(), Msg: fmt.Sprintf("unknown key %q", k.String())})
	}
	reported := map[string]bool{}
	for _, d := range ck.index().defs {
		if s := d.path.String(); unknown[s] && outermost(d.path) {
			add(d.path, d.line)
			reported[s] = true
		}
	}
	for _, k := range md.Keys() { // any the scanner could not place
		if s := k.String(); unknown[s] && !reported[s] && outermost(k) {
			add(k, 0)
			reported[s] = true
		}
	}
}

// A section is one top-level table, or array of tables, of the file's
// schema ([server], [limits], [[module]], [policy]). Each validates itself
// in a method next to its struct: check reports every problem to ck under
// the section's keys ("server.max_batch") and puts the converted value
// into c.
type section interface {
	check(ck *checker, c *Config)
}

// sections returns the sections of fc in the order they are checked. A
// field of fileConfig that is not listed here fails TestEverySectionChecked.
func (fc *fileConfig) sections() []section {
	return []section{&fc.Server, &fc.Limits, &fc.Modules, &fc.Policy, &fc.OCSP, &fc.TSA, &fc.XRoad}
}

// config checks fc, section by section, and converts it.
func (ck *checker) config(fc *fileConfig) *Config {
	c := &Config{}
	for _, s := range fc.sections() {
		s.check(ck, c)
	}
	return c
}

// ids checks the uids or gids at key and narrows them.
func (ck *checker) ids(key string, vs []int64, what string) []uint32 {
	out := make([]uint32, 0, len(vs))
	for i, v := range vs {
		if v < 0 || v > maxID {
			ck.addf(fmt.Sprintf("%s[%d]", key, i), "%d is not a %s (0 to %d)", v, what, maxID)
			continue
		}
		out = append(out, uint32(v))
	}
	return out
}

// checkName checks a module, token or client name and reports whether it is
// usable.
func (ck *checker) checkName(key, name string) bool {
	switch {
	case name == "":
		ck.addf(key, "is missing")
		return false
	case len(name) > maxNameLen:
		ck.addf(key, "is longer than %d bytes", maxNameLen)
		return false
	case !isName(name):
		ck.addf(key, "%q may hold only letters, digits, '.', '_' and '-', and starts with a letter or digit", name)
		return false
	}
	return true
}

func isName(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || (c != '.' && c != '_' && c != '-')) {
			return false
		}
	}
	return s != ""
}

// checkPath checks an absolute path and reports whether it is usable.
func (ck *checker) checkPath(key, p string, socket bool) bool {
	if problem := pathProblem(p); problem != "" {
		if p != "" {
			ck.addf(key, "%q: %s", p, problem)
		} else {
			ck.addf(key, "%s", problem)
		}
		return false
	}
	// sun_path holds 108 bytes with the terminating NUL.
	if socket && len(p) > 107 {
		ck.addf(key, "%q is longer than 107 bytes, the most a Unix socket path can hold", p)
		return false
	}
	return true
}

// pathProblem says what is wrong with p as an absolute path of a file, or
// "". It never repeats p.
func pathProblem(p string) string {
	switch {
	case p == "":
		return "is empty; give an absolute path"
	case strings.ContainsFunc(p, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		return "holds a control character"
	case !filepath.IsAbs(p):
		return "is not an absolute path"
	case filepath.Clean(p) != p:
		return "is not a clean path (no //, /./, /../ or trailing /)"
	case p == "/":
		return "is the root directory"
	}
	return ""
}

// keyIDProblem checks a key id: hex of 1 to 128 bytes (a CKA_ID).
func keyIDProblem(k string) string {
	if k == "" || len(k)%2 != 0 || len(k) > 256 {
		return `is not a key id: an even number (2 to 256) of hex digits, or "*"`
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return `is not a key id: an even number (2 to 256) of hex digits, or "*"`
		}
	}
	return ""
}

// types checks the TOML types of the decoded document v against the schema
// type t, naming each mismatch with its indexed key. Keys that are not in
// the schema are left to unknownKeys.
func (ck *checker) types(v any, t reflect.Type, key string) {
	switch t.Kind() {
	case reflect.Pointer:
		ck.types(v, t.Elem(), key)
	case reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			ck.addf(key, "is %s; want a table", tomlTypeName(v))
			return
		}
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
			fv, ok := m[name]
			if !ok {
				continue
			}
			fkey := toml.Key{name}.String()
			if key != "" {
				fkey = key + "." + fkey
			}
			ck.types(fv, f.Type, fkey)
		}
	case reflect.Slice:
		rv := reflect.ValueOf(v)
		if v == nil || rv.Kind() != reflect.Slice {
			ck.addf(key, "is %s; want an array", tomlTypeName(v))
			return
		}
		for i := 0; i < rv.Len(); i++ {
			ck.types(rv.Index(i).Interface(), t.Elem(), fmt.Sprintf("%s[%d]", key, i))
		}
	case reflect.String:
		if _, ok := v.(string); !ok {
			ck.addf(key, "is %s; want a string", tomlTypeName(v))
		}
	case reflect.Int64:
		if _, ok := v.(int64); !ok {
			ck.addf(key, "is %s; want an integer", tomlTypeName(v))
		}
	case reflect.Bool:
		if _, ok := v.(bool); !ok {
			ck.addf(key, "is %s; want true or false", tomlTypeName(v))
		}
	}
}

// tomlTypeName names the TOML type of a decoded value, with its article.
func tomlTypeName(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case int64:
		return "an integer"
	case float64:
		return "a float"
	case bool:
		return "a boolean"
	case time.Time:
		return "a date-time"
	case map[string]any:
		return "a table"
	}
	if reflect.ValueOf(v).Kind() == reflect.Slice {
		return "an array"
	}
	return fmt.Sprintf("a %T", v)
}
