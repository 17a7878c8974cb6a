package dn

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// openssl runs the openssl command and returns its combined output; the
// test fails if it does not succeed.
func openssl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("openssl", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// writePEM writes one PEM block to a file in dir and returns its path.
func writePEM(t *testing.T, dir, name, typ string, der []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestSubjectMatchesOpenSSL has OpenSSL encode a subject from its own -subj
// form (most general RDN first) and checks that Parse of the RFC 4514 form
// (most general RDN last) encodes to the same bytes: same RDN order, same
// string types, same sorting of multi-valued RDNs. It then checks that the
// RFC 2253 form OpenSSL prints parses back to the same Name.
func TestSubjectMatchesOpenSSL(t *testing.T) {
	dir := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := writePEM(t, dir, "key.pem", "PRIVATE KEY", pkcs8)
	cnf := filepath.Join(dir, "req.cnf")
	if err := os.WriteFile(cnf, []byte("[req]\ndistinguished_name = dn\nstring_mask = utf8only\n[dn]\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name string
		rfc  string // RFC 4514, for Parse
		subj string // openssl req -subj
		out  string // what openssl prints with -nameopt RFC2253 (it lists a multi-valued RDN in reverse DER order)
	}{
		{"order", "CN=x,O=y,C=EE", "/C=EE/O=y/CN=x", "CN=x,O=y,C=EE"},
		{"x-road sign", "serialNumber=70000001,CN=Agency,O=Agency,C=EE", "/C=EE/O=Agency/CN=Agency/serialNumber=70000001",
			"serialNumber=70000001,CN=Agency,O=Agency,C=EE"},
		{"eidas, UTF-8, escapes, multi-valued",
			`CN=Jüri Õunapuu\, Jr.+serialNumber=PNOEE-38001085718,O=Ääre OÜ,organizationIdentifier=NTREE-10000001,C=EE`,
			`/C=EE/organizationIdentifier=NTREE-10000001/O=Ääre OÜ/CN=Jüri Õunapuu, Jr.+serialNumber=PNOEE-38001085718`,
			`CN=J\C3\BCri \C3\95unapuu\, Jr.+serialNumber=PNOEE-38001085718,O=\C3\84\C3\A4re O\C3\9C,organizationIdentifier=NTREE-10000001,C=EE`},
		{"all the other types",
			"emailAddress=a@example.org,SN=Tamm,GN=Mari,title=Officer,STREET=Main 1,ST=Harju,L=Tallinn,OU=b,OU=a,DC=example,DC=org",
			"/DC=org/DC=example/OU=a/OU=b/L=Tallinn/ST=Harju/street=Main 1/title=Officer/GN=Mari/SN=Tamm/emailAddress=a@example.org",
			"emailAddress=a@example.org,SN=Tamm,GN=Mari,title=Officer,street=Main 1,ST=Harju,L=Tallinn,OU=b,OU=a,DC=example,DC=org"},
		{"specials", `CN=\#1 \<a\>\;b\\c\"d=e\ ,O=\ lead`, `/O= lead/CN=#1 <a>;b\\c"d=e `,
			`CN=\#1 \<a\>\;b\\c\"d=e\ ,O=\ lead`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			name, err := Parse(tc.rfc)
			if err != nil {
				t.Fatalf("Parse(%q): %v", tc.rfc, err)
			}
			ours, err := name.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			csrFile := filepath.Join(dir, "openssl.der")
			openssl(t, "req", "-new", "-config", cnf, "-key", keyFile, "-utf8", "-multivalue-rdn",
				"-subj", tc.subj, "-outform", "DER", "-out", csrFile)
			der, err := os.ReadFile(csrFile)
			if err != nil {
				t.Fatal(err)
			}
			csr, err := x509.ParseCertificateRequest(der)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(csr.RawSubject, ours) {
				t.Errorf("encoding differs from OpenSSL's\nours:    %x\nopenssl: %x", ours, csr.RawSubject)
			}
			printed := strings.TrimSpace(openssl(t, "req", "-in", csrFile, "-inform", "DER", "-noout", "-subject", "-nameopt", "RFC2253"))
			if printed != "subject="+tc.out {
				t.Errorf("openssl prints %q, want %q", printed, "subject="+tc.out)
			}
			back, err := Parse(strings.TrimPrefix(printed, "subject="))
			if err != nil {
				t.Fatalf("Parse(openssl's %q): %v", printed, err)
			}
			if !back.Equal(name) {
				t.Errorf("openssl's form parses to %q, want %q", back, name)
			}
		})
	}
}

// TestRequestOpenSSL builds CSRs with RequestTemplate and has OpenSSL verify
// them and show their subject and requested extensions.
func TestRequestOpenSSL(t *testing.T) {
	dir := t.TempDir()
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	const subject = `CN=Agency\, Ltd.+serialNumber=70000001,O=Agency,organizationIdentifier=NTREE-70000001,C=EE`
	tests := []struct {
		name    string
		usage   Usage
		key     crypto.Signer
		dns     []string
		emails  []string
		uris    []string
		want    []string // lines that -text must show, in this order
		notWant []string
	}{
		{"sign", UsageSign, ecKey, nil, nil, nil,
			[]string{"Requested Extensions:", "X509v3 Key Usage: critical", "Digital Signature, Non Repudiation"},
			[]string{"Extended Key Usage", "Subject Alternative Name", "Key Encipherment"}},
		{"auth EC", UsageAuth, ecKey, []string{"ss1.example.org", "localhost"}, nil, nil,
			[]string{"Requested Extensions:", "X509v3 Subject Alternative Name:", "DNS:ss1.example.org, DNS:localhost",
				"X509v3 Key Usage: critical", "Digital Signature"},
			[]string{"Extended Key Usage", "Key Encipherment", "Non Repudiation"}},
		{"auth RSA", UsageAuth, rsaKey, nil, nil, nil,
			[]string{"Requested Extensions:", "X509v3 Key Usage: critical", "Digital Signature, Key Encipherment"},
			[]string{"Extended Key Usage", "Non Repudiation"}},
		{"tsa with SANs", UsageTSA, ecKey, []string{"tsa.example.org"}, []string{"tsa@example.org"}, []string{"https://tsa.example.org/tsa", "urn:oid:1.2.3"},
			[]string{"Requested Extensions:", "X509v3 Subject Alternative Name:",
				"DNS:tsa.example.org, email:tsa@example.org, URI:https://tsa.example.org/tsa, URI:urn:oid:1.2.3",
				"X509v3 Key Usage: critical", "Digital Signature",
				"X509v3 Extended Key Usage: critical", "Time Stamping"},
			[]string{"Non Repudiation", "Key Encipherment", "TLS Web"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tmpl, err := RequestTemplate(subject, tc.usage, tc.key.Public(), tc.dns, tc.emails, tc.uris)
			if err != nil {
				t.Fatal(err)
			}
			der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, tc.key)
			if err != nil {
				t.Fatal(err)
			}
			f := writePEM(t, dir, tc.name+".csr", "CERTIFICATE REQUEST", der)

			if out := openssl(t, "req", "-in", f, "-noout", "-verify"); !strings.Contains(out, "verify OK") {
				t.Errorf("openssl req -verify: %s", out)
			}
			printed := strings.TrimSpace(openssl(t, "req", "-in", f, "-noout", "-subject", "-nameopt", "RFC2253"))
			if want := `subject=CN=Agency\, Ltd.+serialNumber=70000001,O=Agency,organizationIdentifier=NTREE-70000001,C=EE`; printed != want {
				t.Errorf("subject %q, want %q", printed, want)
			}

			text := openssl(t, "req", "-in", f, "-noout", "-text")
			var lines []string
			for _, l := range strings.Split(text, "\n") {
				lines = append(lines, strings.TrimSpace(l))
			}
			i := 0
			for _, w := range tc.want {
				for i < len(lines) && lines[i] != w {
					i++
				}
				if i == len(lines) {
					t.Fatalf("openssl req -text lacks the line %q (in order %q):\n%s", w, tc.want, text)
				}
			}
			for _, n := range tc.notWant {
				if strings.Contains(text, n) {
					t.Errorf("openssl req -text shows %q:\n%s", n, text)
				}
			}
		})
	}
}
