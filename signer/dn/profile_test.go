package dn

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"
)

func TestParseUsage(t *testing.T) {
	for _, s := range []string{"sign", "auth", "tsa"} {
		if u, err := ParseUsage(s); err != nil || string(u) != s {
			t.Errorf("ParseUsage(%q) = %q, %v", s, u, err)
		}
	}
	for _, s := range []string{"", "Sign", "encrypt", "ocsp"} {
		if _, err := ParseUsage(s); !errors.Is(err, ErrUsage) {
			t.Errorf("ParseUsage(%q) error %v, want ErrUsage", s, err)
		}
	}
}

func TestRequestTemplateExtensions(t *testing.T) {
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	// A 2048-bit modulus; RequestTemplate looks only at its length.
	rsaPub := &rsa.PublicKey{N: new(big.Int).Lsh(big.NewInt(1), 2047), E: 65537}
	ekuTS, err := asn1.Marshal([]asn1.ObjectIdentifier{{1, 3, 6, 1, 5, 5, 7, 3, 8}})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		usage Usage
		pub   crypto.PublicKey
		want  []pkix.Extension
	}{
		// KeyUsage BIT STRINGs: digitalSignature = bit 0, nonRepudiation = bit 1, keyEncipherment = bit 2.
		{UsageSign, &ec.PublicKey, []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 15}, Critical: true, Value: []byte{3, 2, 6, 0xc0}}}},
		{UsageAuth, &ec.PublicKey, []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 15}, Critical: true, Value: []byte{3, 2, 7, 0x80}}}},
		{UsageAuth, rsaPub, []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 15}, Critical: true, Value: []byte{3, 2, 5, 0xa0}}}},
		{UsageTSA, rsaPub, []pkix.Extension{
			{Id: asn1.ObjectIdentifier{2, 5, 29, 15}, Critical: true, Value: []byte{3, 2, 7, 0x80}},
			{Id: asn1.ObjectIdentifier{2, 5, 29, 37}, Critical: true, Value: ekuTS},
		}},
	}
	for _, tc := range tests {
		tmpl, err := RequestTemplate("CN=x,C=EE", tc.usage, tc.pub, nil, nil, nil)
		if err != nil {
			t.Fatalf("%s %T: %v", tc.usage, tc.pub, err)
		}
		if len(tmpl.ExtraExtensions) != len(tc.want) {
			t.Fatalf("%s %T: extensions %v, want %v", tc.usage, tc.pub, tmpl.ExtraExtensions, tc.want)
		}
		for i, w := range tc.want {
			g := tmpl.ExtraExtensions[i]
			if !g.Id.Equal(w.Id) || g.Critical != w.Critical || string(g.Value) != string(w.Value) {
				t.Errorf("%s %T: extension %d = %v %v %x, want %v %v %x", tc.usage, tc.pub, i, g.Id, g.Critical, g.Value, w.Id, w.Critical, w.Value)
			}
		}
		want, _ := mustParse(t, "CN=x,C=EE").Marshal()
		if string(tmpl.RawSubject) != string(want) {
			t.Errorf("RawSubject %x, want %x", tmpl.RawSubject, want)
		}
		if tmpl.Subject.CommonName != "x" || len(tmpl.Subject.Country) != 1 || tmpl.Subject.Country[0] != "EE" {
			t.Errorf("Subject %+v", tmpl.Subject)
		}
	}
}

func mustParse(t *testing.T, s string) Name {
	t.Helper()
	n, err := Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestRequestTemplateRefuses(t *testing.T) {
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	edPub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pub := &ec.PublicKey
	tests := []struct {
		name    string
		subject string
		usage   Usage
		pub     crypto.PublicKey
		dns     []string
		emails  []string
		uris    []string
		want    error
		msg     string
	}{
		{"unknown usage", "CN=x", "encrypt", pub, nil, nil, nil, ErrUsage, `"encrypt"`},
		{"no key", "CN=x", UsageSign, nil, nil, nil, nil, ErrPublicKey, "no public key"},
		{"ed25519", "CN=x", UsageSign, edPub, nil, nil, nil, ErrPublicKey, "ed25519.PublicKey (want an RSA or ECDSA key)"},
		{"short RSA", "CN=x", UsageAuth, &rsa.PublicKey{N: new(big.Int).Lsh(big.NewInt(1), 1023), E: 65537}, nil, nil, nil, ErrPublicKey, "RSA key of 1024 bits"},
		{"P-224", "CN=x", UsageSign, &ecdsa.PublicKey{Curve: elliptic.P224()}, nil, nil, nil, ErrPublicKey, "curve P-224"},
		{"bad subject", "CN=x,,C=EE", UsageSign, pub, nil, nil, nil, ErrSyntax, "empty RDN"},
		{"empty subject", "", UsageSign, pub, nil, nil, nil, ErrSyntax, "empty distinguished name"},
		{"unknown attribute", "CN=x,Q=y", UsageSign, pub, nil, nil, nil, ErrAttribute, `unknown attribute type "Q"`},
		{"wildcard", "CN=x", UsageAuth, pub, []string{"*.example.org"}, nil, nil, ErrSAN, `contains '*'`},
		{"trailing dot", "CN=x", UsageAuth, pub, []string{"example.org."}, nil, nil, ErrSAN, "empty label"},
		{"underscore", "CN=x", UsageAuth, pub, []string{"a_b.example"}, nil, nil, ErrSAN, `contains '_'`},
		{"hyphen at label start", "CN=x", UsageAuth, pub, []string{"-a.example"}, nil, nil, ErrSAN, "starts or ends with '-'"},
		{"long label", "CN=x", UsageAuth, pub, []string{strings.Repeat("a", 64) + ".example"}, nil, nil, ErrSAN, "longer than 63 bytes"},
		{"long name", "CN=x", UsageAuth, pub, []string{strings.Repeat("a.", 127)}, nil, nil, ErrSAN, "longer than 253 bytes"},
		{"IDN not A-label", "CN=x", UsageAuth, pub, []string{"jüri.example"}, nil, nil, ErrSAN, "not a host name"},
		{"empty DNS name", "CN=x", UsageAuth, pub, []string{""}, nil, nil, ErrSAN, "empty label"},
		{"duplicate DNS name", "CN=x", UsageAuth, pub, []string{"a.example", "a.example"}, nil, nil, ErrSAN, "given twice"},
		{"email with name", "CN=x", UsageSign, pub, nil, []string{"A <a@example.org>"}, nil, ErrSAN, `not a bare address (write just "a@example.org")`},
		{"email without @", "CN=x", UsageSign, pub, nil, []string{"nobody"}, nil, ErrSAN, `e-mail address "nobody"`},
		{"email not ASCII", "CN=x", UsageSign, pub, nil, []string{"jüri@example.org"}, nil, ErrSAN, "not ASCII"},
		{"relative URI", "CN=x", UsageTSA, pub, nil, nil, []string{"/tsa"}, ErrSAN, "not absolute"},
		{"URI with space", "CN=x", UsageTSA, pub, nil, nil, []string{"https://a.example/a b"}, ErrSAN, "contains a space"},
		{"URI not normal", "CN=x", UsageTSA, pub, nil, nil, []string{"HTTPS://a.example/"}, ErrSAN, "not in normal form"},
		{"URI unparsable", "CN=x", UsageTSA, pub, nil, nil, []string{"https://a.example:x/"}, ErrSAN, "invalid port"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tmpl, err := RequestTemplate(tc.subject, tc.usage, tc.pub, tc.dns, tc.emails, tc.uris)
			if !errors.Is(err, tc.want) {
				t.Fatalf("error %v, want %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("error %q does not say %q", err, tc.msg)
			}
			if tmpl != nil {
				t.Errorf("template returned with the error")
			}
		})
	}
}

// testCA is a throwaway certificate authority.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "Test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key}
}

// issue signs tmpl for pub and returns the parsed certificate.
func (ca *testCA) issue(t *testing.T, tmpl *x509.Certificate, pub crypto.PublicKey) *x509.Certificate {
	t.Helper()
	tmpl.SerialNumber = big.NewInt(time.Now().UnixNano())
	tmpl.NotBefore = time.Now().Add(-time.Minute)
	tmpl.NotAfter = time.Now().Add(time.Hour)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// criticalEKU returns an extended key usage extension marked critical.
func criticalEKU(t *testing.T, oids ...asn1.ObjectIdentifier) pkix.Extension {
	t.Helper()
	v, err := asn1.Marshal(oids)
	if err != nil {
		t.Fatal(err)
	}
	return pkix.Extension{Id: asn1.ObjectIdentifier{2, 5, 29, 37}, Critical: true, Value: v}
}

func TestCheckCertificate(t *testing.T) {
	ca := newTestCA(t)
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	var (
		timeStamping = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 3, 8}
		clientAuth   = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 3, 2}
		subject      = pkix.Name{CommonName: "leaf", Country: []string{"EE"}}
		ds           = x509.KeyUsageDigitalSignature
		nr           = x509.KeyUsageContentCommitment
		ke           = x509.KeyUsageKeyEncipherment
	)
	tests := []struct {
		name  string
		usage Usage
		tmpl  x509.Certificate
		want  []string // problems; none means the certificate fits
	}{
		{"sign: nonRepudiation and digitalSignature", UsageSign, x509.Certificate{KeyUsage: ds | nr}, nil},
		{"sign: nonRepudiation only", UsageSign, x509.Certificate{KeyUsage: nr}, nil},
		{"sign: digitalSignature only", UsageSign, x509.Certificate{KeyUsage: ds}, nil},
		{"sign: end entity with basic constraints", UsageSign, x509.Certificate{KeyUsage: nr, BasicConstraintsValid: true}, nil},
		{"sign: keyEncipherment only", UsageSign, x509.Certificate{KeyUsage: ke}, []string{"key usage has neither digitalSignature nor nonRepudiation (contentCommitment)"}},
		{"sign: no key usage", UsageSign, x509.Certificate{}, []string{"no key usage extension"}},
		{"sign: CA", UsageSign, x509.Certificate{KeyUsage: ds | x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true},
			[]string{"it is a CA certificate (basicConstraints cA is true)", "key usage includes keyCertSign"}},
		{"sign: cRLSign", UsageSign, x509.Certificate{KeyUsage: nr | x509.KeyUsageCRLSign}, []string{"key usage includes cRLSign"}},
		{"auth: digitalSignature, no EKU", UsageAuth, x509.Certificate{KeyUsage: ds}, nil},
		{"auth: clientAuth", UsageAuth, x509.Certificate{KeyUsage: ds, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, nil},
		{"auth: RSA-style with serverAuth and clientAuth", UsageAuth, x509.Certificate{KeyUsage: ds | ke, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}, nil},
		{"auth: codeSigning EKU", UsageAuth, x509.Certificate{KeyUsage: ds, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning}},
			[]string{"extended key usage (codeSigning) has neither clientAuth nor serverAuth"}},
		{"auth: unknown EKU", UsageAuth, x509.Certificate{KeyUsage: ds, UnknownExtKeyUsage: []asn1.ObjectIdentifier{{1, 2, 3, 4}}},
			[]string{"extended key usage (1.2.3.4) has neither clientAuth nor serverAuth"}},
		{"auth: nonRepudiation only", UsageAuth, x509.Certificate{KeyUsage: nr}, []string{"key usage lacks digitalSignature"}},
		{"sign: TSA certificate", UsageSign, x509.Certificate{KeyUsage: ds, ExtraExtensions: []pkix.Extension{criticalEKU(t, timeStamping)}},
			[]string{"extended key usage includes timeStamping (that is a TSA certificate)"}},
		{"auth: timeStamping with clientAuth", UsageAuth, x509.Certificate{KeyUsage: ds, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageTimeStamping}},
			[]string{"extended key usage includes timeStamping"}},
		{"auth: CA", UsageAuth, x509.Certificate{KeyUsage: ds, BasicConstraintsValid: true, IsCA: true}, []string{"it is a CA certificate"}},
		{"tsa: critical timeStamping", UsageTSA, x509.Certificate{KeyUsage: ds, ExtraExtensions: []pkix.Extension{criticalEKU(t, timeStamping)}}, nil},
		{"tsa: timeStamping not critical", UsageTSA, x509.Certificate{KeyUsage: ds, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageTimeStamping}},
			[]string{"extended key usage is not marked critical"}},
		{"tsa: timeStamping and clientAuth", UsageTSA, x509.Certificate{KeyUsage: ds, ExtraExtensions: []pkix.Extension{criticalEKU(t, timeStamping, clientAuth)}},
			[]string{"extended key usage is timeStamping, clientAuth, must be exactly timeStamping"}},
		{"tsa: no EKU", UsageTSA, x509.Certificate{KeyUsage: ds}, []string{"no extended key usage (must be exactly timeStamping)"}},
		{"tsa: no digitalSignature", UsageTSA, x509.Certificate{KeyUsage: nr, ExtraExtensions: []pkix.Extension{criticalEKU(t, timeStamping)}},
			[]string{"key usage lacks digitalSignature"}},
		{"tsa: everything wrong", UsageTSA, x509.Certificate{KeyUsage: ke, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}},
			[]string{"key usage lacks digitalSignature", "extended key usage is serverAuth, must be exactly timeStamping", "extended key usage is not marked critical"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tmpl := tc.tmpl
			tmpl.Subject = subject
			cert := ca.issue(t, &tmpl, leafKey.Public())
			err := CheckCertificate(cert, tc.usage)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("CheckCertificate: %v", err)
				}
				return
			}
			var me *MismatchError
			if !errors.As(err, &me) || !errors.Is(err, ErrUsageMismatch) {
				t.Fatalf("error %v, want a *MismatchError wrapping ErrUsageMismatch", err)
			}
			if me.Usage != tc.usage {
				t.Errorf("Usage %q, want %q", me.Usage, tc.usage)
			}
			if len(me.Problems) != len(tc.want) {
				t.Fatalf("problems %q, want %q", me.Problems, tc.want)
			}
			for i, w := range tc.want {
				if !strings.HasPrefix(me.Problems[i], w) {
					t.Errorf("problem %d %q, want %q", i, me.Problems[i], w)
				}
			}
			if !strings.Contains(err.Error(), `certificate does not fit key usage "`+string(tc.usage)+`": `+me.Problems[0]) {
				t.Errorf("message %q", err)
			}
		})
	}

	t.Run("the CA itself", func(t *testing.T) {
		for _, u := range []Usage{UsageSign, UsageAuth, UsageTSA} {
			if err := CheckCertificate(ca.cert, u); !errors.Is(err, ErrUsageMismatch) {
				t.Errorf("%s: error %v, want ErrUsageMismatch", u, err)
			}
		}
	})
	t.Run("nil certificate", func(t *testing.T) {
		if err := CheckCertificate(nil, UsageSign); !errors.Is(err, ErrUsageMismatch) {
			t.Errorf("error %v, want ErrUsageMismatch", err)
		}
	})
	t.Run("unknown usage", func(t *testing.T) {
		if err := CheckCertificate(ca.cert, "ocsp"); !errors.Is(err, ErrUsage) {
			t.Errorf("error %v, want ErrUsage", err)
		}
	})
}

// TestRequestThenCertificate issues, for each usage, a certificate carrying
// exactly the extensions a RequestTemplate CSR requests, and checks that it
// fits that usage and no other where the profiles differ.
func TestRequestThenCertificate(t *testing.T) {
	ca := newTestCA(t)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	fits := map[Usage][]Usage{
		UsageSign: {UsageSign, UsageAuth}, // digitalSignature, no EKU: an auth certificate too
		UsageAuth: {UsageSign, UsageAuth},
		UsageTSA:  {UsageTSA}, // EKU timeStamping does not do for auth
	}
	for _, usage := range []Usage{UsageSign, UsageAuth, UsageTSA} {
		tmpl, err := RequestTemplate("CN=Member,O=Agency,C=EE,serialNumber=70000001", usage, key.Public(), []string{"ss1.example.org"}, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
		if err != nil {
			t.Fatal(err)
		}
		csr, err := x509.ParseCertificateRequest(der)
		if err != nil {
			t.Fatal(err)
		}
		if err := csr.CheckSignature(); err != nil {
			t.Fatal(err)
		}
		cert := ca.issue(t, &x509.Certificate{RawSubject: csr.RawSubject, ExtraExtensions: csr.Extensions}, csr.PublicKey)
		if string(cert.RawSubject) != string(tmpl.RawSubject) {
			t.Errorf("%s: issued subject %x, want %x", usage, cert.RawSubject, tmpl.RawSubject)
		}
		for _, u := range []Usage{UsageSign, UsageAuth, UsageTSA} {
			err := CheckCertificate(cert, u)
			want := false
			for _, f := range fits[usage] {
				want = want || f == u
			}
			if want && err != nil {
				t.Errorf("certificate requested for %s does not fit %s: %v", usage, u, err)
			}
			if !want && !errors.Is(err, ErrUsageMismatch) {
				t.Errorf("certificate requested for %s fits %s: %v", usage, u, err)
			}
		}
	}
}
