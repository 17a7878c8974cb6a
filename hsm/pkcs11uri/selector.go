package pkcs11uri

import (
	"fmt"
	"strings"
)

// TokenSelector names a token by label, serial or both. Slot numbers are
// never used: they change between runs and after re-initialisation.
type TokenSelector struct {
	Label  string
	Serial string
}

// String returns the selector as a PKCS#11 URI.
func (s TokenSelector) String() string {
	u := URI{Token: s.Label, Serial: s.Serial}
	return u.String()
}

// ParseTokenSelector accepts a PKCS#11 URI (`pkcs11:token=…;serial=…`),
// `serial:NNN`, `label:NAME`, or a bare label. Errors are *Error: about a
// URI they wrap ErrInvalidURI, otherwise ErrInvalidSelector.
func ParseTokenSelector(s string) (TokenSelector, error) {
	switch {
	case strings.HasPrefix(s, Scheme):
		u, err := ParseURI(s)
		if err != nil {
			return TokenSelector{}, err
		}
		if u.Token == "" && u.Serial == "" {
			return TokenSelector{}, &Error{Err: ErrInvalidURI, Problem: ProblemNoToken,
				Detail: fmt.Sprintf("%q names no token (give token= or serial=)", s)}
		}
		return TokenSelector{Label: u.Token, Serial: u.Serial}, nil
	case strings.HasPrefix(s, "serial:") || strings.HasPrefix(s, "label:"):
		kind, v, _ := strings.Cut(s, ":")
		if v == "" {
			return TokenSelector{}, &Error{Err: ErrInvalidSelector, Problem: ProblemNoToken, Attr: kind,
				Detail: fmt.Sprintf("%q names no token", s)}
		}
		if kind == "serial" {
			return TokenSelector{Serial: v}, nil
		}
		return TokenSelector{Label: v}, nil
	case s == "":
		return TokenSelector{}, &Error{Err: ErrInvalidSelector, Problem: ProblemEmpty, Detail: "empty token selector"}
	}
	return TokenSelector{Label: s}, nil
}

// TrimPadding returns a text field of CK_TOKEN_INFO (label, serial
// number, manufacturer, model) without the blanks or NULs that pad it to
// its fixed size: the field as selectors compare it and officers read it.
// It is the one way the appliance trims a token field.
func TrimPadding(field string) string {
	return strings.TrimRight(field, " \x00")
}

// Matches reports whether s selects the token whose label and serial
// number are given as CK_TOKEN_INFO holds them (padded with blanks, or
// NULs; see TrimPadding). A selector that names neither matches no token.
func (s TokenSelector) Matches(label, serial string) bool {
	if s.Label != "" && TrimPadding(label) != s.Label {
		return false
	}
	if s.Serial != "" && TrimPadding(serial) != s.Serial {
		return false
	}
	return s.Label != "" || s.Serial != ""
}
