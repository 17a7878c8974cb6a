package hsm

import (
	"fmt"
	"net/url"
	"strings"
)

// URI is a PKCS#11 URI (RFC 7512) as far as the appliance uses it: the
// token, the object and the module. PIN attributes (pin-value) are refused:
// PINs never travel in a URI.
type URI struct {
	Token        string // token=
	Serial       string // serial=
	Manufacturer string // manufacturer=
	Model        string // model=
	Object       string // object= (CKA_LABEL)
	ID           []byte // id= (CKA_ID)
	Type         string // type= (private, public, cert, ...)
	ModulePath   string // ?module-path=
	ModuleName   string // ?module-name=
	PINSource    string // ?pin-source=
}

// ParseURI parses s, which starts with "pkcs11:". Unknown path attributes
// are refused; unknown query attributes are ignored as RFC 7512 allows,
// except pin-value, which is refused.
func ParseURI(s string) (URI, error) {
	rest, ok := strings.CutPrefix(s, "pkcs11:")
	if !ok {
		return URI{}, fmt.Errorf("%w: %q does not start with pkcs11:", ErrInvalidURI, redactURI(s))
	}
	path, query, _ := strings.Cut(rest, "?")
	var u URI
	seen := map[string]bool{}
	if path != "" {
		for attr := range strings.SplitSeq(path, ";") {
			name, raw, ok := strings.Cut(attr, "=")
			if !ok || name == "" {
				return URI{}, fmt.Errorf("%w: path attribute %q is not name=value", ErrInvalidURI, attr)
			}
			if seen[name] {
				return URI{}, fmt.Errorf("%w: attribute %q given twice", ErrInvalidURI, name)
			}
			seen[name] = true
			v, err := url.PathUnescape(raw)
			if err != nil {
				return URI{}, fmt.Errorf("%w: attribute %q: bad percent-encoding", ErrInvalidURI, name)
			}
			switch name {
			case "token":
				u.Token = v
			case "serial":
				u.Serial = v
			case "manufacturer":
				u.Manufacturer = v
			case "model":
				u.Model = v
			case "object":
				u.Object = v
			case "id":
				u.ID = []byte(v)
			case "type":
				switch v {
				case "private", "public", "cert", "secret-key", "data":
					u.Type = v
				default:
					return URI{}, fmt.Errorf("%w: unknown object type %q", ErrInvalidURI, v)
				}
			case "library-manufacturer", "library-description", "library-version", "slot-description", "slot-manufacturer", "slot-id":
				// Accepted and ignored: the appliance never selects by them.
			default:
				return URI{}, fmt.Errorf("%w: unknown path attribute %q", ErrInvalidURI, name)
			}
		}
	}
	if query != "" {
		for attr := range strings.SplitSeq(query, "&") {
			name, raw, _ := strings.Cut(attr, "=")
			if seen["?"+name] {
				return URI{}, fmt.Errorf("%w: query attribute %q given twice", ErrInvalidURI, name)
			}
			seen["?"+name] = true
			if name == "pin-value" {
				return URI{}, fmt.Errorf("%w: pin-value is refused; give the PIN through a PIN source, never in a URI", ErrInvalidURI)
			}
			v, err := url.PathUnescape(raw)
			if err != nil {
				return URI{}, fmt.Errorf("%w: query attribute %q: bad percent-encoding", ErrInvalidURI, name)
			}
			switch name {
			case "module-path":
				u.ModulePath = v
			case "module-name":
				u.ModuleName = v
			case "pin-source":
				u.PINSource = v
			}
		}
	}
	return u, nil
}

// redactURI cuts the query from a URI before it goes into an error, so a
// pin-value never reaches a log.
func redactURI(s string) string {
	if i := strings.IndexByte(s, '?'); i >= 0 {
		return s[:i] + "?…"
	}
	return s
}

// String formats u as a PKCS#11 URI, percent-encoding values.
func (u URI) String() string {
	var path []string
	add := func(name, v string) {
		if v != "" {
			path = append(path, name+"="+escape(v, false))
		}
	}
	add("token", u.Token)
	add("serial", u.Serial)
	add("manufacturer", u.Manufacturer)
	add("model", u.Model)
	add("object", u.Object)
	add("id", string(u.ID))
	add("type", u.Type)
	s := "pkcs11:" + strings.Join(path, ";")
	var q []string
	if u.ModulePath != "" {
		q = append(q, "module-path="+escape(u.ModulePath, true))
	}
	if u.ModuleName != "" {
		q = append(q, "module-name="+escape(u.ModuleName, true))
	}
	if u.PINSource != "" {
		q = append(q, "pin-source="+escape(u.PINSource, true))
	}
	if len(q) > 0 {
		s += "?" + strings.Join(q, "&")
	}
	return s
}

// escape percent-encodes everything but RFC 7512's unreserved characters
// and the characters its grammar allows unencoded in a value: "/" only in
// a query value (pk11-qchar), never in a path value (pk11-pchar).
func escape(v string, query bool) string {
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("-._~:[]@!$'()*+,", c) >= 0 ||
			c == '/' && query {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, "%%%02X", c)
	}
	return b.String()
}
