package dn

import (
	"errors"
	"fmt"
)

// ErrSyntax is wrapped by an [*Error] when a DN string breaks the RFC 4514
// grammar or this package's stricter rules for the string itself: a missing
// '=', an empty RDN or value, a bad escape, an unescaped special character,
// invalid UTF-8, a control character, or too long a string.
var ErrSyntax = errors.New("dn: syntax error")

// ErrAttribute is wrapped by an [*Error] when the string is well formed but
// an attribute is not acceptable: an unknown or unsupported attribute type, a
// value the attribute does not allow (wrong characters, too long, a country
// code that is not two letters A-Z), or an attribute repeated where it must
// not be.
var ErrAttribute = errors.New("dn: attribute error")

// Error reports where a DN string is wrong. It wraps [ErrSyntax] or
// [ErrAttribute].
type Error struct {
	// Pos is the byte offset in the input at which the problem was found
	// (for Name.Check, the index of the offending RDN in the Name).
	Pos int
	// Msg says what is wrong.
	Msg string
	// Err is ErrSyntax or ErrAttribute.
	Err error
}

// Error implements error.
func (e *Error) Error() string {
	return fmt.Sprintf("invalid distinguished name at byte %d: %s", e.Pos, e.Msg)
}

// Unwrap returns ErrSyntax or ErrAttribute.
func (e *Error) Unwrap() error { return e.Err }

func syntaxErr(pos int, format string, args ...any) *Error {
	return &Error{Pos: pos, Msg: fmt.Sprintf(format, args...), Err: ErrSyntax}
}

func attrErr(pos int, format string, args ...any) *Error {
	return &Error{Pos: pos, Msg: fmt.Sprintf(format, args...), Err: ErrAttribute}
}
