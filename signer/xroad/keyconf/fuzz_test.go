package keyconf

import (
	"crypto/x509"
	"errors"
	"strings"
	"testing"
)

// FuzzParse checks that ParseBytes never panics, that every refusal wraps
// ErrMalformed or ErrTooLarge, and that what it accepts keeps its promises:
// key ids present and unique regardless of case, every certificate's DER
// parsing to the certificate returned, member identifiers complete, usages
// and object types among the known ones.
// The seed corpus is in testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		conf, err := ParseBytes(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("error %v wraps neither ErrMalformed nor ErrTooLarge", err)
			}
			if conf != nil {
				t.Fatal("a configuration returned with an error")
			}
			return
		}
		ids := map[string]bool{}
		checkMember := func(m *MemberID) {
			if m == nil {
				return
			}
			if m.Instance == "" || m.Class == "" || m.Code == "" || strings.Count(m.String(), "/") != 2+min(1, len(m.Subsystem)) {
				t.Fatalf("member %+v accepted", *m)
			}
			if (m.ObjectType == "SUBSYSTEM") != (m.Subsystem != "") || (m.ObjectType != "SUBSYSTEM" && m.ObjectType != "MEMBER") {
				t.Fatalf("member %+v accepted", *m)
			}
		}
		for _, d := range conf.Devices {
			if d.Type == "" {
				t.Fatal("a device without a type accepted")
			}
			for _, k := range d.Keys {
				id := strings.ToLower(k.ID)
				if id == "" || ids[id] {
					t.Fatalf("key id %q empty or repeated", k.ID)
				}
				ids[id] = true
				if k.Usage != UsageNone && k.Usage != UsageSigning && k.Usage != UsageAuthentication {
					t.Fatalf("usage %q accepted", k.Usage)
				}
				if k.PublicKey != nil {
					if _, err := x509.ParsePKIXPublicKey(k.PublicKey); err != nil {
						t.Fatalf("public key accepted that does not parse: %v", err)
					}
				}
				for _, c := range k.Certs {
					again, err := x509.ParseCertificate(c.DER)
					if err != nil || c.Certificate == nil || !again.Equal(c.Certificate) {
						t.Fatalf("certificate accepted that does not parse back: %v", err)
					}
					checkMember(c.Member)
				}
				for _, r := range k.Requests {
					if r.Subject == "" {
						t.Fatal("a request without a subject accepted")
					}
					checkMember(r.Member)
				}
			}
		}
	})
}
