package config

import (
	"errors"
	"fmt"
	"strings"

	"github.com/hsmsigner/hsmsigner/hsm/pkcs11uri"
)

// Module is one [[module]]: a PKCS#11 library and the tokens used from it.
type Module struct {
	// Name is unique among modules.
	Name string
	// Path is the absolute path of the PKCS#11 shared library.
	Path string
	// Tokens are the module's [[module.token]] entries; at least one.
	Tokens []Token
}

// Token is one [[module.token]].
type Token struct {
	// Name is the token's id in the API and in signerctl, unique across
	// all modules.
	Name string
	// Selector names the token in the module: a label, "label:…",
	// "serial:…", or a PKCS#11 URI with token= or serial=. The hsm package
	// parses it; here it is only checked, with the same parser
	// (hsm/pkcs11uri).
	Selector string
	// PIN says where the user PIN comes from.
	PIN PINSource
	// Sessions is the size of the token's session pool; 0 means the CPU
	// count capped by the token's maximum.
	Sessions int
	// Verify verifies each signature (RSA and ECDSA) with the public key
	// before it leaves (verify_signatures; rsa_verify is its old name).
	Verify bool
}

// fileModule is one [[module]].
type fileModule struct {
	Name   string      `toml:"name"`
	Path   string      `toml:"path"`
	Tokens []fileToken `toml:"token"`
}

// fileToken is one [[module.token]].
type fileToken struct {
	Name      string  `toml:"name"`
	Token     string  `toml:"token"`
	PIN       *string `toml:"pin"`
	Sessions  int64   `toml:"sessions"`
	Verify    *bool   `toml:"verify_signatures"`
	RSAVerify *bool   `toml:"rsa_verify"` // the old name of verify_signatures
}

// fileModules is the [[module]] array of tables.
type fileModules []fileModule

// check checks every [[module]] and its [[module.token]] entries into
// c.Modules: module names, library paths and token names are unique.
func (fms fileModules) check(ck *checker, c *Config) {
	moduleNames := map[string]string{} // name -> key where first seen
	modulePaths := map[string]string{}
	tokenNames := map[string]string{}
	for i, fm := range fms {
		key := fmt.Sprintf("module[%d]", i)
		m := Module{Name: fm.Name, Path: fm.Path}
		if ck.checkName(key+".name", fm.Name) {
			if first, dup := moduleNames[fm.Name]; dup {
				ck.addf(key+".name", "%q is already the name of %s", fm.Name, first)
			} else {
				moduleNames[fm.Name] = key
			}
		}
		if ck.checkPath(key+".path", fm.Path, false) {
			if first, dup := modulePaths[fm.Path]; dup {
				ck.addf(key+".path", "%s already loads %q; a library is loaded once, give all its tokens there", first, fm.Path)
			} else {
				modulePaths[fm.Path] = key
			}
		}
		if len(fm.Tokens) == 0 {
			ck.addf(key, "has no [[module.token]]")
		}
		selectors := map[string]string{}
		for j, ft := range fm.Tokens {
			tkey := fmt.Sprintf("%s.token[%d]", key, j)
			t := Token{Name: ft.Name, Selector: ft.Token, PIN: PINSource{Kind: PINFromLogin}, Sessions: int(ft.Sessions), Verify: true}
			if ck.checkName(tkey+".name", ft.Name) {
				if first, dup := tokenNames[ft.Name]; dup {
					ck.addf(tkey+".name", "%q is already the name of %s; token names are unique across modules", ft.Name, first)
				} else {
					tokenNames[ft.Name] = tkey
				}
			}
			if problem := selectorProblem(ft.Token); problem != "" {
				ck.addf(tkey+".token", "%s", problem)
			} else if first, dup := selectors[ft.Token]; dup {
				ck.addf(tkey+".token", "%s already selects %q", first, ft.Token)
			} else {
				selectors[ft.Token] = tkey
			}
			if ft.PIN != nil {
				ps, problem := parsePINSource(*ft.PIN)
				if problem != "" {
					ck.addf(tkey+".pin", "%s", problem)
				}
				t.PIN = ps
			}
			if ft.Sessions < 0 || ft.Sessions > MaxSessions {
				ck.addf(tkey+".sessions", "%d is not between 0 (as many as CPUs) and %d", ft.Sessions, MaxSessions)
			}
			switch {
			case ft.Verify != nil && ft.RSAVerify != nil:
				ck.addf(tkey+".rsa_verify", "is the old name of verify_signatures; give verify_signatures only")
			case ft.Verify != nil:
				t.Verify = *ft.Verify
			case ft.RSAVerify != nil:
				t.Verify = *ft.RSAVerify
			}
			m.Tokens = append(m.Tokens, t)
		}
		c.Modules = append(c.Modules, m)
	}
}

// selectorProblem checks a token selector with package pkcs11uri, which
// the hsm package parses it with, and is stricter: a PKCS#11 URI must name
// the token by token= or serial=, may not name objects, and takes no
// query, since the module path and the PIN come from the configuration;
// labels and serials must fit CK_TOKEN_INFO. It never repeats a URI's
// query.
func selectorProblem(s string) string {
	const labelMax, serialMax = 32, 16 // CK_TOKEN_INFO field sizes
	switch {
	case s == "":
		return "is missing"
	case strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		return "holds a control character"
	}
	path, _, hasQuery, isURI := pkcs11uri.Split(s)
	if !isURI {
		// It fails only on "serial:" or "label:" with nothing after it.
		sel, err := pkcs11uri.ParseTokenSelector(s)
		switch {
		case strings.HasPrefix(s, "serial:"):
			if err != nil || len(sel.Serial) > serialMax {
				return fmt.Sprintf("%q: a serial has 1 to %d bytes", s, serialMax)
			}
		case strings.HasPrefix(s, "label:"):
			if err != nil || len(sel.Label) > labelMax {
				return fmt.Sprintf("%q: a label has 1 to %d bytes", s, labelMax)
			}
		case len(sel.Label) > labelMax:
			return fmt.Sprintf("%q: a label has at most %d bytes", s, labelMax)
		}
		return ""
	}
	if hasQuery {
		return fmt.Sprintf("%q: a PKCS#11 URI here takes no query (module-path, pin-source, pin-value): the module and the PIN come from [[module]] and pin", pkcs11uri.Scheme+path+"?…")
	}
	seen := map[string]bool{}
	for a, err := range pkcs11uri.PathAttributes(path) {
		if err != nil {
			var pe *pkcs11uri.Error
			if !errors.As(err, &pe) {
				return fmt.Sprintf("%q: %v", s, err)
			}
			switch pe.Problem {
			case pkcs11uri.ProblemRepeated:
				return fmt.Sprintf("%q: attribute %q is given twice", s, pe.Attr)
			case pkcs11uri.ProblemEncoding:
				return fmt.Sprintf("%q: attribute %q has bad percent-encoding", s, pe.Attr)
			}
			return fmt.Sprintf("%q: attribute %q is not name=value", s, pe.Attr)
		}
		seen[a.Name] = true
		switch a.Name {
		case "token", "manufacturer", "model":
			if len(a.Value) > labelMax {
				return fmt.Sprintf("%q: %s has at most %d bytes", s, a.Name, labelMax)
			}
		case "serial":
			if len(a.Value) > serialMax {
				return fmt.Sprintf("%q: serial has at most %d bytes", s, serialMax)
			}
		case "library-manufacturer", "library-description", "library-version", "slot-description", "slot-manufacturer", "slot-id":
		case "object", "id", "type":
			return fmt.Sprintf("%q: %s= names an object, not a token", s, a.Name)
		default:
			return fmt.Sprintf("%q: unknown attribute %q", s, a.Name)
		}
	}
	if !seen["token"] && !seen["serial"] {
		return fmt.Sprintf("%q: names no token (give token= or serial=)", s)
	}
	return ""
}
