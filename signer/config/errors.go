package config

import (
	"errors"
	"strconv"
	"strings"
)

// ErrInvalid is wrapped by every error that Load, Parse, ReloadPolicy,
// Marshal, NewPolicy and ParsePINSource return about a configuration.
var ErrInvalid = errors.New("invalid configuration")

// Error is one problem found in a configuration. Parse returns one *Error,
// or several joined with errors.Join; each wraps ErrInvalid and, where there
// is one, the underlying error (a toml.ParseError for a syntax error, an
// fs error when the file cannot be read).
type Error struct {
	File string // the name given to Parse or the path given to Load
	Line int    // 1-based line, 0 when unknown
	Col  int    // 1-based column of a syntax error, 0 otherwise
	Key  string // the key concerned, e.g. "module[0].token[1].pin"; may be empty
	Msg  string // what is wrong, already naming Key where there is one
	Err  error  // the underlying error; may be nil
}

// Error formats the problem as "file:line:col: message", leaving out
// whichever position parts are unknown.
func (e *Error) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
	}
	if e.Line > 0 {
		b.WriteByte(':')
		b.WriteString(strconv.Itoa(e.Line))
		if e.Col > 0 {
			b.WriteByte(':')
			b.WriteString(strconv.Itoa(e.Col))
		}
	}
	if b.Len() > 0 {
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Unwrap returns ErrInvalid and the underlying error, if any, so that
// errors.Is and errors.As see both.
func (e *Error) Unwrap() []error {
	if e.Err == nil {
		return []error{ErrInvalid}
	}
	return []error{ErrInvalid, e.Err}
}
