package devca_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode"

	"github.com/hsmsigner/hsmsigner/softhsm-test/devca"
)

var (
	oidKeyUsage         = asn1.ObjectIdentifier{2, 5, 29, 15}
	oidSubjectAltName   = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidBasicConstraints = asn1.ObjectIdentifier{2, 5, 29, 19}
	oidExtKeyUsage      = asn1.ObjectIdentifier{2, 5, 29, 37}
	oidCodeSigning      = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 3, 3}
)

// keys are made once: RSA key generation is slow under -race.
var keys = sync.OnceValues(func() (map[string]crypto.Signer, error) {
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	r, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	return map[string]crypto.Signer{"ecdsa": ec, "rsa": r}, nil
})

func key(t *testing.T, name string) crypto.Signer {
	t.Helper()
	m, err := keys()
	if err != nil {
		t.Fatalf("generating keys: %v", err)
	}
	return m[name]
}

// memberSubject is shaped like an X-Road member certificate's subject.
var memberSubject = pkix.Name{
	Country:      []string{"FI"},
	Organization: []string{"Test Member Ltd"},
	CommonName:   "1234567-8",
	SerialNumber: "FI/DEV/COM",
}

func sanTemplate() x509.CertificateRequest {
	return x509.CertificateRequest{
		Subject:        memberSubject,
		DNSNames:       []string{"ss1.member.example"},
		IPAddresses:    []net.IP{net.ParseIP("192.0.2.10").To4()},
		EmailAddresses: []string{"officer@member.example"},
		URIs:           []*url.URL{{Scheme: "https", Host: "ss1.member.example"}},
	}
}

func makeCSR(t *testing.T, k crypto.Signer, tmpl x509.CertificateRequest) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &tmpl, k)
	if err != nil {
		t.Fatalf("CreateCertificateRequest: %v", err)
	}
	return der
}

func findExt(c *x509.Certificate, oid asn1.ObjectIdentifier) (pkix.Extension, bool) {
	for _, e := range c.Extensions {
		if e.Id.Equal(oid) {
			return e, true
		}
	}
	return pkix.Extension{}, false
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// opensslVerify runs `openssl verify -CAfile root.pem -untrusted
// intermediate.pem [-purpose P] cert.pem` and returns its output and error.
func opensslVerify(t *testing.T, ca *devca.CA, cert *x509.Certificate, purpose string) (string, error) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "cert.pem")
	writePEM(t, p, "CERTIFICATE", cert.Raw)
	args := []string{"verify", "-CAfile", ca.RootPEM, "-untrusted", ca.IntermediatePEM}
	if purpose != "" {
		args = append(args, "-purpose", purpose)
	}
	out, err := exec.CommandContext(t.Context(), "openssl", append(args, p)...).CombinedOutput()
	return string(out), err
}

// result of one script run.
type result struct {
	stdout, stderr string
	code           int
}

func runScript(t *testing.T, args ...string) result {
	t.Helper()
	script, err := devca.ScriptPath()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(t.Context(), script, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	if ee, ok := errors.AsType[*exec.ExitError](err); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("running %s %v: %v", script, args, err)
	}
	return r
}

func TestSignUsages(t *testing.T) {
	ca := devca.New(t)
	tests := []struct {
		usage   string
		keyName string
		ku      x509.KeyUsage
		eku     []x509.ExtKeyUsage
		ekuCrit bool
		purpose []string // openssl verify -purpose values the certificate must pass
	}{
		{devca.UsageSign, "ecdsa", x509.KeyUsageContentCommitment | x509.KeyUsageDigitalSignature, nil, false, nil},
		{devca.UsageSign, "rsa", x509.KeyUsageContentCommitment | x509.KeyUsageDigitalSignature, nil, false, nil},
		{devca.UsageAuth, "ecdsa", x509.KeyUsageDigitalSignature,
			[]x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}, false, []string{"sslclient", "sslserver"}},
		{devca.UsageAuth, "rsa", x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
			[]x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}, false, []string{"sslclient", "sslserver"}},
		{devca.UsageTSA, "ecdsa", x509.KeyUsageDigitalSignature,
			[]x509.ExtKeyUsage{x509.ExtKeyUsageTimeStamping}, true, []string{"timestampsign"}},
		{devca.UsageTSA, "rsa", x509.KeyUsageDigitalSignature,
			[]x509.ExtKeyUsage{x509.ExtKeyUsageTimeStamping}, true, []string{"timestampsign"}},
	}
	for _, tc := range tests {
		t.Run(tc.usage+"/"+tc.keyName, func(t *testing.T) {
			t.Parallel()
			k := key(t, tc.keyName)
			csrDER := makeCSR(t, k, sanTemplate())
			csr, err := x509.ParseCertificateRequest(csrDER)
			if err != nil {
				t.Fatal(err)
			}
			before := time.Now()
			cert, err := ca.Sign(t.Context(), csrDER, tc.usage, devca.Current)
			if err != nil {
				t.Fatalf("Sign: %v", err)
			}

			// Subject and public key exactly as requested.
			if !bytes.Equal(cert.RawSubject, csr.RawSubject) {
				t.Errorf("subject = %v, want %v as requested", cert.Subject, csr.Subject)
			}
			if !bytes.Equal(cert.RawSubjectPublicKeyInfo, csr.RawSubjectPublicKeyInfo) {
				t.Error("public key differs from the request's")
			}
			// SANs copied.
			if !slices.Equal(cert.DNSNames, csr.DNSNames) || len(cert.DNSNames) != 1 {
				t.Errorf("DNSNames = %v, want %v", cert.DNSNames, csr.DNSNames)
			}
			if len(cert.IPAddresses) != 1 || !cert.IPAddresses[0].Equal(csr.IPAddresses[0]) {
				t.Errorf("IPAddresses = %v, want %v", cert.IPAddresses, csr.IPAddresses)
			}
			if !slices.Equal(cert.EmailAddresses, csr.EmailAddresses) {
				t.Errorf("EmailAddresses = %v, want %v", cert.EmailAddresses, csr.EmailAddresses)
			}
			if len(cert.URIs) != 1 || cert.URIs[0].String() != csr.URIs[0].String() {
				t.Errorf("URIs = %v, want %v", cert.URIs, csr.URIs)
			}
			// Usage profile.
			if cert.KeyUsage != tc.ku {
				t.Errorf("KeyUsage = %b, want %b", cert.KeyUsage, tc.ku)
			}
			if e, ok := findExt(cert, oidKeyUsage); !ok || !e.Critical {
				t.Errorf("keyUsage extension present=%v critical=%v, want critical", ok, e.Critical)
			}
			if !slices.Equal(cert.ExtKeyUsage, tc.eku) || len(cert.UnknownExtKeyUsage) != 0 {
				t.Errorf("ExtKeyUsage = %v (unknown %v), want %v", cert.ExtKeyUsage, cert.UnknownExtKeyUsage, tc.eku)
			}
			e, ok := findExt(cert, oidExtKeyUsage)
			if ok != (tc.eku != nil) || e.Critical != tc.ekuCrit {
				t.Errorf("extKeyUsage extension present=%v critical=%v, want present=%v critical=%v",
					ok, e.Critical, tc.eku != nil, tc.ekuCrit)
			}
			if !cert.BasicConstraintsValid || cert.IsCA {
				t.Errorf("basicConstraints valid=%v CA=%v, want CA:FALSE", cert.BasicConstraintsValid, cert.IsCA)
			}
			// Issued by the intermediate.
			if !bytes.Equal(cert.RawIssuer, ca.Intermediate.RawSubject) {
				t.Errorf("issuer = %v, want %v", cert.Issuer, ca.Intermediate.Subject)
			}
			if err := cert.CheckSignatureFrom(ca.Intermediate); err != nil {
				t.Errorf("not signed by the intermediate: %v", err)
			}
			if !bytes.Equal(cert.AuthorityKeyId, ca.Intermediate.SubjectKeyId) || len(cert.SubjectKeyId) == 0 {
				t.Errorf("AuthorityKeyId = %x, want %x; SubjectKeyId = %x", cert.AuthorityKeyId, ca.Intermediate.SubjectKeyId, cert.SubjectKeyId)
			}
			// Random serial, validity from a few minutes ago for 365 days.
			if cert.SerialNumber.Sign() <= 0 || cert.SerialNumber.BitLen() < 64 {
				t.Errorf("serial %x: want a positive random number of at least 64 bits", cert.SerialNumber)
			}
			if lo, hi := before.Add(-10*time.Minute), before.Add(-time.Minute); cert.NotBefore.Before(lo) || cert.NotBefore.After(hi) {
				t.Errorf("NotBefore = %v, want 1 to 10 minutes before %v", cert.NotBefore, before)
			}
			if d := cert.NotAfter.Sub(cert.NotBefore); d != 365*24*time.Hour {
				t.Errorf("validity = %v, want 365 days", d)
			}

			// Go accepts the chain for the usage.
			want := tc.eku
			if want == nil {
				want = []x509.ExtKeyUsage{x509.ExtKeyUsageAny}
			}
			for _, u := range want {
				chains, err := cert.Verify(x509.VerifyOptions{
					Roots:         ca.Pool(),
					Intermediates: poolOf(ca.Intermediate),
					KeyUsages:     []x509.ExtKeyUsage{u},
				})
				if err != nil {
					t.Errorf("Go verify for EKU %v: %v", u, err)
				} else if len(chains[0]) != 3 || !chains[0][2].Equal(ca.Root) {
					t.Errorf("Go verify chain has %d certificates, want leaf, intermediate, root", len(chains[0]))
				}
			}
			// openssl accepts it too, and for the usage's purposes.
			if out, err := opensslVerify(t, ca, cert, ""); err != nil || !strings.HasSuffix(strings.TrimSpace(out), ": OK") {
				t.Errorf("openssl verify: %v: %s", err, out)
			}
			for _, p := range tc.purpose {
				if out, err := opensslVerify(t, ca, cert, p); err != nil || !strings.HasSuffix(strings.TrimSpace(out), ": OK") {
					t.Errorf("openssl verify -purpose %s: %v: %s", p, err, out)
				}
			}
		})
	}
}

func poolOf(certs ...*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

func TestSignSerialsDiffer(t *testing.T) {
	ca := devca.New(t)
	csr := makeCSR(t, key(t, "ecdsa"), sanTemplate())
	a, err := ca.Sign(t.Context(), csr, devca.UsageSign, devca.Current)
	if err != nil {
		t.Fatal(err)
	}
	b, err := ca.Sign(t.Context(), csr, devca.UsageSign, devca.Current)
	if err != nil {
		t.Fatal(err)
	}
	if a.SerialNumber.Cmp(b.SerialNumber) == 0 {
		t.Errorf("two certificates have the same serial %x", a.SerialNumber)
	}
}

// The extensions that define the usage come from the CA's profile, never
// from the request; only the subjectAltName (with its criticality) is copied.
func TestSignIgnoresRequestedUsageExtensions(t *testing.T) {
	ca := devca.New(t)
	bcCA, _ := asn1.Marshal(struct{ IsCA bool }{true})
	kuCertSign, _ := asn1.Marshal(asn1.BitString{Bytes: []byte{0x04}, BitLength: 6}) // keyCertSign
	ekuCodeSigning, _ := asn1.Marshal([]asn1.ObjectIdentifier{oidCodeSigning})
	san, _ := asn1.Marshal([]asn1.RawValue{{Class: asn1.ClassContextSpecific, Tag: 2, Bytes: []byte("ts.member.example")}})
	tmpl := x509.CertificateRequest{
		Subject: memberSubject,
		ExtraExtensions: []pkix.Extension{
			{Id: oidBasicConstraints, Critical: true, Value: bcCA},
			{Id: oidKeyUsage, Critical: true, Value: kuCertSign},
			{Id: oidExtKeyUsage, Value: ekuCodeSigning},
			{Id: oidSubjectAltName, Critical: true, Value: san},
		},
	}
	csr := makeCSR(t, key(t, "ecdsa"), tmpl)
	tests := []struct {
		usage string
		ku    x509.KeyUsage
		eku   []x509.ExtKeyUsage
	}{
		{devca.UsageSign, x509.KeyUsageContentCommitment | x509.KeyUsageDigitalSignature, nil},
		{devca.UsageAuth, x509.KeyUsageDigitalSignature, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}},
		{devca.UsageTSA, x509.KeyUsageDigitalSignature, []x509.ExtKeyUsage{x509.ExtKeyUsageTimeStamping}},
	}
	for _, tc := range tests {
		t.Run(tc.usage, func(t *testing.T) {
			t.Parallel()
			cert, err := ca.Sign(t.Context(), csr, tc.usage, devca.Current)
			if err != nil {
				t.Fatal(err)
			}
			if cert.IsCA || !cert.BasicConstraintsValid {
				t.Errorf("IsCA = %v (valid %v), want CA:FALSE despite the request", cert.IsCA, cert.BasicConstraintsValid)
			}
			if cert.KeyUsage != tc.ku {
				t.Errorf("KeyUsage = %b, want %b (the profile's, not the request's)", cert.KeyUsage, tc.ku)
			}
			if !slices.Equal(cert.ExtKeyUsage, tc.eku) || len(cert.UnknownExtKeyUsage) != 0 {
				t.Errorf("ExtKeyUsage = %v (unknown %v), want %v", cert.ExtKeyUsage, cert.UnknownExtKeyUsage, tc.eku)
			}
			e, ok := findExt(cert, oidSubjectAltName)
			if !ok || !e.Critical || !bytes.Equal(e.Value, san) {
				t.Errorf("subjectAltName present=%v critical=%v value=%x, want critical %x", ok, e.Critical, e.Value, san)
			}
			n := 0
			for _, e := range cert.Extensions {
				if e.Id.Equal(oidKeyUsage) || e.Id.Equal(oidExtKeyUsage) || e.Id.Equal(oidBasicConstraints) {
					n++
				}
			}
			want := 2 // basicConstraints, keyUsage
			if tc.eku != nil {
				want = 3
			}
			if n != want {
				t.Errorf("%d usage-defining extensions, want %d", n, want)
			}
		})
	}
}

func TestSignValidity(t *testing.T) {
	ca := devca.New(t)
	csr := makeCSR(t, key(t, "ecdsa"), sanTemplate())
	tests := []struct {
		validity   devca.Validity
		opensslErr string
		check      func(now time.Time, c *x509.Certificate) bool
	}{
		{devca.Expired, "certificate has expired", func(now time.Time, c *x509.Certificate) bool {
			return c.NotAfter.Before(now) && c.NotBefore.Before(c.NotAfter)
		}},
		{devca.NotYetValid, "certificate is not yet valid", func(now time.Time, c *x509.Certificate) bool {
			return c.NotBefore.After(now) && c.NotBefore.Before(c.NotAfter)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.validity.String(), func(t *testing.T) {
			t.Parallel()
			cert, err := ca.Sign(t.Context(), csr, devca.UsageAuth, tc.validity)
			if err != nil {
				t.Fatal(err)
			}
			now := time.Now()
			if !tc.check(now, cert) {
				t.Errorf("validity %v to %v at %v: wrong for %v", cert.NotBefore, cert.NotAfter, now, tc.validity)
			}
			if cert.NotBefore.Before(ca.Intermediate.NotBefore) || cert.NotAfter.After(ca.Intermediate.NotAfter) {
				t.Errorf("validity %v to %v is not inside the intermediate's %v to %v",
					cert.NotBefore, cert.NotAfter, ca.Intermediate.NotBefore, ca.Intermediate.NotAfter)
			}
			_, err = cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), Intermediates: poolOf(ca.Intermediate),
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
			if ie, ok := errors.AsType[x509.CertificateInvalidError](err); !ok || ie.Reason != x509.Expired {
				t.Errorf("Go verify: %v, want CertificateInvalidError Expired", err)
			}
			out, err := opensslVerify(t, ca, cert, "")
			if err == nil || !strings.Contains(out, tc.opensslErr) {
				t.Errorf("openssl verify: err %v, output %q; want failure with %q", err, out, tc.opensslErr)
			}
		})
	}
}

func TestScriptSignDays(t *testing.T) {
	ca := devca.New(t)
	dir := t.TempDir()
	csrPath := filepath.Join(dir, "req.pem")
	writePEM(t, csrPath, "CERTIFICATE REQUEST", makeCSR(t, key(t, "rsa"), sanTemplate()))
	r := runScript(t, "sign", ca.Dir, csrPath, devca.UsageSign, "30")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	block, _ := pem.Decode([]byte(r.stdout))
	if block == nil {
		t.Fatalf("no PEM on stdout: %q", r.stdout)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if d := cert.NotAfter.Sub(cert.NotBefore); d != 30*24*time.Hour {
		t.Errorf("validity = %v, want 30 days", d)
	}
}

func TestSignRefusesBadRequests(t *testing.T) {
	ca := devca.New(t)
	good := makeCSR(t, key(t, "ecdsa"), sanTemplate())
	badSig := bytes.Clone(good)
	badSig[len(badSig)-5] ^= 0x01 // inside the signature value
	badTBS := bytes.Clone(good)
	i := bytes.Index(badTBS, []byte("Test Member Ltd"))
	badTBS[i] = 'B' // the subject, so the signature no longer covers it
	tests := []struct {
		name    string
		csr     []byte
		message string
	}{
		{"broken signature", badSig, "self-signature does not verify"},
		{"altered subject", badTBS, "self-signature does not verify"},
		{"not a request", []byte("hello, not a CSR\n"), "not a PKCS#10 certificate request"},
		{"certificate, not request", ca.Root.Raw, "not a PKCS#10 certificate request"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cert, err := ca.Sign(t.Context(), tc.csr, devca.UsageSign, devca.Current)
			if err == nil {
				t.Fatalf("Sign issued %v, want refusal", cert.Subject)
			}
			if !errors.Is(err, devca.ErrCSRRefused) {
				t.Errorf("error %v does not match ErrCSRRefused", err)
			}
			se, ok := errors.AsType[*devca.ScriptError](err)
			if !ok || se.ExitCode != devca.ExitRefused || !strings.Contains(se.Message, tc.message) {
				t.Errorf("error %#v, want a ScriptError with exit %d and %q", err, devca.ExitRefused, tc.message)
			}
			// The script itself: exit 3, one line on stderr, nothing on stdout.
			p := filepath.Join(t.TempDir(), "req")
			if err := os.WriteFile(p, tc.csr, 0o600); err != nil {
				t.Fatal(err)
			}
			r := runScript(t, "sign", ca.Dir, p, devca.UsageSign)
			if r.code != devca.ExitRefused || r.stdout != "" || strings.Count(r.stderr, "\n") != 1 ||
				!strings.Contains(r.stderr, tc.message) {
				t.Errorf("script: exit %d, stdout %q, stderr %q; want exit 3, one line with %q", r.code, r.stdout, r.stderr, tc.message)
			}
		})
	}
}

func TestSignRejectsBadArguments(t *testing.T) {
	ca := devca.New(t)
	csr := makeCSR(t, key(t, "ecdsa"), sanTemplate())
	tests := []struct {
		name     string
		csr      []byte
		usage    string
		validity devca.Validity
	}{
		{"unknown usage", csr, "code", devca.Current},
		{"empty usage", csr, "", devca.Current},
		{"unknown validity", csr, devca.UsageSign, devca.Validity(7)},
		{"empty request", nil, devca.UsageSign, devca.Current},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ca.Sign(t.Context(), tc.csr, tc.usage, tc.validity)
			if !errors.Is(err, devca.ErrInvalidArgument) {
				t.Errorf("error %v, want ErrInvalidArgument", err)
			}
		})
	}

	p := filepath.Join(t.TempDir(), "req.der")
	if err := os.WriteFile(p, csr, 0o600); err != nil {
		t.Fatal(err)
	}
	script := []struct {
		name string
		args []string
		code int
	}{
		{"no arguments", nil, 2},
		{"unknown command", []string{"revoke", ca.Dir}, 2},
		{"unknown usage", []string{"sign", ca.Dir, p, "code"}, 2},
		{"zero days", []string{"sign", ca.Dir, p, "sign", "0"}, 2},
		{"too many days", []string{"sign", ca.Dir, p, "sign", "3651"}, 2},
		{"days not a number", []string{"sign", ca.Dir, p, "sign", "1e3"}, 2},
		{"days for sign-expired", []string{"sign-expired", ca.Dir, p, "sign", "30"}, 2},
		{"not a CA", []string{"sign", t.TempDir(), p, "sign"}, 1},
		{"missing request", []string{"sign", ca.Dir, p + ".missing", "sign"}, devca.ExitRefused},
	}
	for _, tc := range script {
		t.Run("script/"+tc.name, func(t *testing.T) {
			r := runScript(t, tc.args...)
			if r.code != tc.code || r.stdout != "" || r.stderr == "" {
				t.Errorf("exit %d, stdout %q, stderr %q; want exit %d, a message on stderr only", r.code, r.stdout, r.stderr, tc.code)
			}
		})
	}
}

func TestInitIdempotent(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nested", "ca")
	first, err := devca.Init(t.Context(), dir)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("CA directory mode %v, want 0700", fi.Mode().Perm())
	}
	keyFiles := []string{"root.key", "intermediate.key"}
	before := map[string][]byte{}
	for _, k := range keyFiles {
		p := filepath.Join(dir, k)
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want 0600", k, fi.Mode().Perm())
		}
		if before[k], err = os.ReadFile(p); err != nil {
			t.Fatal(err)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 5 {
		t.Errorf("CA directory holds %d entries, want the 5 CA files (no staging left)", len(entries))
	}

	second, err := devca.Init(t.Context(), dir)
	if err != nil {
		t.Fatalf("second Init: %v", err)
	}
	if !first.Root.Equal(second.Root) || !first.Intermediate.Equal(second.Intermediate) {
		t.Error("second Init changed the CA certificates")
	}
	for _, k := range keyFiles {
		b, err := os.ReadFile(filepath.Join(dir, k))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b, before[k]) {
			t.Errorf("second Init changed %s", k)
		}
	}
	r := runScript(t, "init", dir)
	if r.code != 0 || !strings.Contains(r.stderr, "already holds a dev CA") {
		t.Errorf("third init: exit %d, stderr %q; want 0 and a note that the CA exists", r.code, r.stderr)
	}
	wantOut := "root=" + first.RootPEM + "\nintermediate=" + first.IntermediatePEM + "\nchain=" + first.ChainPEM + "\n"
	if r.stdout != wantOut {
		t.Errorf("init stdout %q, want %q", r.stdout, wantOut)
	}
}

func TestInitRefusesPartialCA(t *testing.T) {
	ca := devca.New(t)
	dir := t.TempDir()
	for _, f := range []string{"root.key", "root.pem", "intermediate.key"} {
		b, err := os.ReadFile(filepath.Join(ca.Dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	_, err := devca.Init(t.Context(), dir)
	se, ok := errors.AsType[*devca.ScriptError](err)
	if !ok || !strings.Contains(se.Message, "part of a dev CA") {
		t.Fatalf("Init of a partial CA: %v, want a ScriptError about a partial CA", err)
	}
	if _, err := os.Stat(filepath.Join(dir, devca.IntermediateFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Init of a partial CA wrote %s (stat: %v)", devca.IntermediateFile, err)
	}
}

func TestChainAndPool(t *testing.T) {
	ca := devca.New(t)
	chain := ca.Chain()
	if len(chain) != 2 || !chain[0].Equal(ca.Intermediate) || !chain[1].Equal(ca.Root) {
		t.Fatalf("Chain() = %d certificates, want intermediate then root", len(chain))
	}
	b, err := os.ReadFile(ca.ChainPEM)
	if err != nil {
		t.Fatal(err)
	}
	var inFile []*x509.Certificate
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			break
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		inFile = append(inFile, c)
	}
	if len(inFile) != 2 || !inFile[0].Equal(ca.Intermediate) || !inFile[1].Equal(ca.Root) {
		t.Errorf("%s holds %d certificates, want intermediate then root", ca.ChainPEM, len(inFile))
	}
	if _, err := ca.Intermediate.Verify(x509.VerifyOptions{Roots: ca.Pool()}); err != nil {
		t.Errorf("intermediate does not verify against Pool(): %v", err)
	}
	if ca.Root.Subject.String() == ca.Intermediate.Subject.String() {
		t.Error("root and intermediate have the same subject")
	}
	if !ca.Root.IsCA || !ca.Intermediate.IsCA || ca.Intermediate.MaxPathLen != 0 || !ca.Intermediate.MaxPathLenZero {
		t.Errorf("root CA=%v, intermediate CA=%v pathlen=%d: want CAs, intermediate pathlen 0",
			ca.Root.IsCA, ca.Intermediate.IsCA, ca.Intermediate.MaxPathLen)
	}
	// Backdated, so that Expired certificates nest inside the CAs' validity.
	if time.Since(ca.Intermediate.NotBefore) < 20*24*time.Hour {
		t.Errorf("intermediate NotBefore %v: want backdated", ca.Intermediate.NotBefore)
	}
	other := devca.New(t)
	if other.Root.Subject.String() == ca.Root.Subject.String() {
		t.Error("two dev CAs have the same root subject")
	}
}

// No run of the script, successful or not, puts private key material on
// stdout or stderr.
func TestScriptNeverPrintsKeyMaterial(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	csrDir := t.TempDir()
	good := makeCSR(t, key(t, "rsa"), sanTemplate())
	bad := bytes.Clone(good)
	bad[len(bad)-3] ^= 0x80
	pemCSR := filepath.Join(csrDir, "good.pem")
	derCSR := filepath.Join(csrDir, "good.der")
	badCSR := filepath.Join(csrDir, "bad.der")
	writePEM(t, pemCSR, "CERTIFICATE REQUEST", good)
	for p, b := range map[string][]byte{derCSR: good, badCSR: bad} {
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	runs := [][]string{
		{"init", dir},
		{"init", dir},
		{"sign", dir, pemCSR, "sign"},
		{"sign", dir, derCSR, "auth", "10"},
		{"sign-expired", dir, derCSR, "tsa"},
		{"sign-future", dir, pemCSR, "auth"},
		{"sign", dir, badCSR, "sign"},
		{"sign", dir, derCSR, "bogus"},
		{"sign", dir, filepath.Join(dir, "root.key"), "sign"},
		{"sign", dir, filepath.Join(dir, "intermediate.key"), "sign"},
		{},
	}
	var out strings.Builder
	for _, args := range runs {
		r := runScript(t, args...)
		out.WriteString(r.stdout)
		out.WriteString(r.stderr)
	}
	all := out.String()
	if strings.Contains(all, "PRIVATE KEY") {
		t.Error("script output contains a PRIVATE KEY block")
	}
	// Hex as openssl prints it, "ab:cd:..." over several indented lines.
	hexOnly := strings.Map(func(r rune) rune {
		if r == ':' || unicode.IsSpace(r) {
			return -1
		}
		return unicode.ToLower(r)
	}, all)
	for _, name := range []string{"root.key", "intermediate.key"} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		block, _ := pem.Decode(b)
		if block == nil {
			t.Fatalf("%s: no PEM", name)
		}
		k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		ek, ok := k.(*ecdsa.PrivateKey)
		if !ok {
			t.Fatalf("%s: %T, want an EC key", name, k)
		}
		scalar, err := ek.Bytes()
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(hexOnly, hex.EncodeToString(scalar)) {
			t.Errorf("script output contains the private scalar of %s in hex", name)
		}
		// The scalar in base64 at each alignment, and the key file's lines
		// that carry it.
		for off := range 3 {
			enc := base64.StdEncoding.EncodeToString(append(make([]byte, off), scalar...))
			if frag := enc[4 : len(enc)-4]; strings.Contains(all, frag) {
				t.Errorf("script output contains the private scalar of %s in base64", name)
			}
		}
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		for _, l := range lines[1:3] {
			if strings.Contains(all, l) {
				t.Errorf("script output contains a line of %s", name)
			}
		}
	}
}

func TestScriptPath(t *testing.T) {
	p, err := devca.ScriptPath()
	if err != nil {
		t.Fatal(err)
	}
	if !filepath.IsAbs(p) || filepath.Base(p) != "dev-ca.sh" {
		t.Errorf("ScriptPath() = %q, want an absolute path to dev-ca.sh", p)
	}
}

func TestInitRefusesBadDirectory(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := devca.Init(t.Context(), file); err == nil {
		t.Error("Init on a regular file succeeded")
	}
	if _, err := devca.Init(t.Context(), ""); !errors.Is(err, devca.ErrInvalidArgument) {
		t.Errorf("Init(\"\"): %v, want ErrInvalidArgument", err)
	}
}
