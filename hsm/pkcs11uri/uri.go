package pkcs11uri

import (
	"fmt"
	"iter"
	"net/url"
	"strings"
)

// Scheme is the prefix of every PKCS#11 URI.
const Scheme = "pkcs11:"

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

// Split cuts a PKCS#11 URI into its path and its query, neither of them
// decoded. ok is false when s does not start with "pkcs11:"; hasQuery
// says whether s has a '?', even with nothing after it.
func Split(s string) (path, query string, hasQuery, ok bool) {
	rest, ok := strings.CutPrefix(s, Scheme)
	if !ok {
		return "", "", false, false
	}
	path, query, hasQuery = strings.Cut(rest, "?")
	return path, query, hasQuery, true
}

// Attribute is one name=value attribute of a PKCS#11 URI, its value
// percent-decoded.
type Attribute struct {
	Name  string
	Value string
}

// PathAttributes yields the attributes of the path of a PKCS#11 URI (as
// Split returns it) in order, each value percent-decoded. It stops after
// yielding an *Error for the first attribute that is not name=value, is
// given twice or is badly percent-encoded. An empty path is one empty
// attribute, refused as not name=value: a caller that accepts a URI
// without attributes ("pkcs11:") checks for it first, as ParseURI does.
// Names are not checked; ParseURI knows which ones RFC 7512 defines.
func PathAttributes(path string) iter.Seq2[Attribute, error] {
	return func(yield func(Attribute, error) bool) {
		seen := map[string]bool{}
		for attr := range strings.SplitSeq(path, ";") {
			name, raw, ok := strings.Cut(attr, "=")
			if !ok || name == "" {
				yield(Attribute{}, &Error{Err: ErrInvalidURI, Problem: ProblemNotNameValue, Attr: attr,
					Detail: fmt.Sprintf("path attribute %q is not name=value", attr)})
				return
			}
			if seen[name] {
				yield(Attribute{}, &Error{Err: ErrInvalidURI, Problem: ProblemRepeated, Attr: name,
					Detail: fmt.Sprintf("attribute %q given twice", name)})
				return
			}
			seen[name] = true
			v, err := url.PathUnescape(raw)
			if err != nil {
				yield(Attribute{}, &Error{Err: ErrInvalidURI, Problem: ProblemEncoding, Attr: name,
					Detail: fmt.Sprintf("attribute %q: bad percent-encoding", name)})
				return
			}
			if !yield(Attribute{Name: name, Value: v}, nil) {
				return
			}
		}
	}
}

// ParseURI parses s, which starts with "pkcs11:". Unknown path attributes
// are refused; unknown query attributes are ignored as RFC 7512 allows,
// except pin-value, which is refused. Errors are *Error, wrapping
// ErrInvalidURI.
func ParseURI(s string) (URI, error) {
	path, query, _, ok := Split(s)
	if !ok {
		return URI{}, &Error{Err: ErrInvalidURI, Problem: ProblemScheme,
			Detail: fmt.Sprintf("%q does not start with pkcs11:", redact(s))}
	}
	var u URI
	if path != "" {
		for a, err := range PathAttributes(path) {
			if err != nil {
				return URI{}, err
			}
			v := a.Value
			switch a.Name {
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
					return URI{}, &Error{Err: ErrInvalidURI, Problem: ProblemObjectType, Attr: a.Name,
						Detail: fmt.Sprintf("unknown object type %q", v)}
				}
			case "library-manufacturer", "library-description", "library-version", "slot-description", "slot-manufacturer", "slot-id":
				// Accepted and ignored: the appliance never selects by them.
			default:
				return URI{}, &Error{Err: ErrInvalidURI, Problem: ProblemUnknownAttribute, Attr: a.Name,
					Detail: fmt.Sprintf("unknown path attribute %q", a.Name)}
			}
		}
	}
	if query != "" {
		seen := map[string]bool{}
		for attr := range strings.SplitSeq(query, "&") {
			name, raw, _ := strings.Cut(attr, "=")
			if seen[name] {
				return URI{}, &Error{Err: ErrInvalidURI, Problem: ProblemRepeated, Attr: name, Query: true,
					Detail: fmt.Sprintf("query attribute %q given twice", name)}
			}
			seen[name] = true
			if name == "pin-value" {
				return URI{}, &Error{Err: ErrInvalidURI, Problem: ProblemPINValue, Attr: name, Query: true,
					Detail: "pin-value is refused; give the PIN through a PIN source, never in a URI"}
			}
			v, err := url.PathUnescape(raw)
			if err != nil {
				return URI{}, &Error{Err: ErrInvalidURI, Problem: ProblemEncoding, Attr: name, Query: true,
					Detail: fmt.Sprintf("query attribute %q: bad percent-encoding", name)}
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

// redact cuts the query from a URI before it goes into an error, so a
// pin-value never reaches a log.
func redact(s string) string {
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
	s := Scheme + strings.Join(path, ";")
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
