package hsm

import (
	"errors"
	"testing"

	"github.com/hsmsigner/hsmsigner/hsm/pkcs11uri"
)

// TestParseErrors checks that ParseURI and ParseTokenSelector, whose
// parsing is package pkcs11uri's, refuse with this package's sentinels and
// the very words they used before the parser moved there, and that the
// *pkcs11uri.Error is still in the chain.
func TestParseErrors(t *testing.T) {
	tests := []struct {
		in       string
		selector bool // ParseTokenSelector, else ParseURI
		want     error
		msg      string
	}{
		{"token=a", false, ErrInvalidURI, `hsm: invalid PKCS#11 URI: "token=a" does not start with pkcs11:`},
		{"pkcs11:token", false, ErrInvalidURI, `hsm: invalid PKCS#11 URI: path attribute "token" is not name=value`},
		{"pkcs11:token=a;token=b", false, ErrInvalidURI, `hsm: invalid PKCS#11 URI: attribute "token" given twice`},
		{"pkcs11:token=%zz", false, ErrInvalidURI, `hsm: invalid PKCS#11 URI: attribute "token": bad percent-encoding`},
		{"pkcs11:type=key", false, ErrInvalidURI, `hsm: invalid PKCS#11 URI: unknown object type "key"`},
		{"pkcs11:tokn=a", false, ErrInvalidURI, `hsm: invalid PKCS#11 URI: unknown path attribute "tokn"`},
		{"pkcs11:?pin-value=1", false, ErrInvalidURI, `hsm: invalid PKCS#11 URI: pin-value is refused; give the PIN through a PIN source, never in a URI`},
		{"pkcs11:?a=1&a=2", false, ErrInvalidURI, `hsm: invalid PKCS#11 URI: query attribute "a" given twice`},
		{"pkcs11:?module-path=%z", false, ErrInvalidURI, `hsm: invalid PKCS#11 URI: query attribute "module-path": bad percent-encoding`},
		{"pkcs12:x?pin-value=9", false, ErrInvalidURI, `hsm: invalid PKCS#11 URI: "pkcs12:x?…" does not start with pkcs11:`},
		{"", true, ErrInvalidArgument, `hsm: invalid argument: empty token selector`},
		{"serial:", true, ErrInvalidArgument, `hsm: invalid argument: "serial:" names no token`},
		{"label:", true, ErrInvalidArgument, `hsm: invalid argument: "label:" names no token`},
		{"pkcs11:object=k", true, ErrInvalidURI, `hsm: invalid PKCS#11 URI: "pkcs11:object=k" names no token (give token= or serial=)`},
		{"pkcs11:", true, ErrInvalidURI, `hsm: invalid PKCS#11 URI: "pkcs11:" names no token (give token= or serial=)`},
		{"pkcs11:token=%zz", true, ErrInvalidURI, `hsm: invalid PKCS#11 URI: attribute "token": bad percent-encoding`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			var err error
			if tt.selector {
				_, err = ParseTokenSelector(tt.in)
			} else {
				_, err = ParseURI(tt.in)
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("error %v does not wrap %v", err, tt.want)
			}
			if err.Error() != tt.msg {
				t.Errorf("error %q, want %q", err, tt.msg)
			}
			var pe *pkcs11uri.Error
			if !errors.As(err, &pe) {
				t.Errorf("error %v holds no *pkcs11uri.Error", err)
			}
		})
	}
}

// TestParseAccepts checks that the wrappers return what pkcs11uri parses.
func TestParseAccepts(t *testing.T) {
	sel, err := ParseTokenSelector("pkcs11:token=HSM%201;serial=0123abcd")
	if err != nil || sel != (TokenSelector{Label: "HSM 1", Serial: "0123abcd"}) {
		t.Fatalf("ParseTokenSelector = %+v, %v", sel, err)
	}
	u, err := ParseURI("pkcs11:token=t;object=k;id=%01")
	if err != nil || u.Token != "t" || u.Object != "k" || string(u.ID) != "\x01" {
		t.Fatalf("ParseURI = %+v, %v", u, err)
	}
}
