package dn

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"net/mail"
	"net/url"
	"slices"
	"strings"
	"unicode/utf8"
)

// Usage says what a key, and the request or certificate made for it, is
// used for.
type Usage string

// The key usages.
const (
	// UsageSign is a member's signing key (X-Road sign certificate).
	UsageSign Usage = "sign"
	// UsageAuth is a security server's TLS authentication key.
	UsageAuth Usage = "auth"
	// UsageTSA is a key that issues RFC 3161 timestamps.
	UsageTSA Usage = "tsa"
)

// ErrUsage is returned for a Usage that is not one of sign, auth, tsa.
var ErrUsage = errors.New("dn: unknown key usage")

// ErrPublicKey is returned by RequestTemplate for a public key it will not
// request a certificate for: not RSA or ECDSA, an RSA key shorter than 2048
// bits, or a curve other than P-256, P-384, P-521.
var ErrPublicKey = errors.New("dn: unsupported public key")

// ErrSAN is returned by RequestTemplate for a subject alternative name that
// is not a valid host name, bare e-mail address or absolute URI.
var ErrSAN = errors.New("dn: invalid subject alternative name")

// ErrUsageMismatch is wrapped by a [*MismatchError], returned by
// CheckCertificate when a certificate does not fit the key's usage.
var ErrUsageMismatch = errors.New("dn: certificate does not fit the key usage")

// ParseUsage returns the Usage named s ("sign", "auth" or "tsa").
func ParseUsage(s string) (Usage, error) {
	u := Usage(s)
	if !u.valid() {
		return "", fmt.Errorf("%w %q (want sign, auth or tsa)", ErrUsage, s)
	}
	return u, nil
}

func (u Usage) valid() bool {
	return u == UsageSign || u == UsageAuth || u == UsageTSA
}

// MinRSABits is the shortest RSA key RequestTemplate requests a certificate for.
const MinRSABits = 2048

// RequestTemplate returns the x509.CertificateRequest template for a key of
// the given usage whose public key is pub (*rsa.PublicKey or
// *ecdsa.PublicKey). The subject is parsed with Parse and set as RawSubject
// (and, for display, as Subject). The requested extensions, which
// x509.CreateCertificateRequest puts into the extensionRequest attribute,
// are:
//
//   - sign: key usage nonRepudiation (contentCommitment) and digitalSignature, critical;
//   - auth: key usage digitalSignature, and keyEncipherment for an RSA key, critical;
//   - tsa: key usage digitalSignature, critical; extended key usage timeStamping, critical;
//
// and, if any SAN is given, a non-critical subject alternative name with the
// DNS names (host names, letters, digits and '-', no wildcards, no trailing
// dot), bare e-mail addresses (ASCII) and absolute URIs (ASCII, in the form
// net/url writes them). The signature algorithm is left to
// x509.CreateCertificateRequest, which picks SHA-256 for RSA and P-256, and
// SHA-384 and SHA-512 for P-384 and P-521.
func RequestTemplate(subject string, usage Usage, pub crypto.PublicKey, dns, emails, uris []string) (*x509.CertificateRequest, error) {
	if !usage.valid() {
		return nil, fmt.Errorf("%w %q (want sign, auth or tsa)", ErrUsage, string(usage))
	}
	isRSA, err := checkPublicKey(pub)
	if err != nil {
		return nil, err
	}
	name, err := Parse(subject)
	if err != nil {
		return nil, err
	}
	raw, err := name.Marshal()
	if err != nil {
		return nil, err
	}
	if err := checkDNSNames(dns); err != nil {
		return nil, err
	}
	if err := checkEmails(emails); err != nil {
		return nil, err
	}
	parsedURIs, err := parseURIs(uris)
	if err != nil {
		return nil, err
	}

	var ku x509.KeyUsage
	switch usage {
	case UsageSign:
		ku = x509.KeyUsageContentCommitment | x509.KeyUsageDigitalSignature
	case UsageAuth:
		ku = x509.KeyUsageDigitalSignature
		if isRSA {
			ku |= x509.KeyUsageKeyEncipherment
		}
	case UsageTSA:
		ku = x509.KeyUsageDigitalSignature
	}
	kuExt, err := keyUsageExtension(ku)
	if err != nil {
		return nil, err
	}
	exts := []pkix.Extension{kuExt}
	if usage == UsageTSA {
		value, err := asn1.Marshal([]asn1.ObjectIdentifier{oidTimeStamping()})
		if err != nil {
			return nil, fmt.Errorf("dn: encoding extended key usage: %w", err)
		}
		exts = append(exts, pkix.Extension{Id: oidExtKeyUsage(), Critical: true, Value: value})
	}
	return &x509.CertificateRequest{
		RawSubject:      raw,
		Subject:         name.PKIX(),
		DNSNames:        slices.Clone(dns),
		EmailAddresses:  slices.Clone(emails),
		URIs:            parsedURIs,
		ExtraExtensions: exts,
	}, nil
}

func oidKeyUsage() asn1.ObjectIdentifier     { return asn1.ObjectIdentifier{2, 5, 29, 15} }
func oidExtKeyUsage() asn1.ObjectIdentifier  { return asn1.ObjectIdentifier{2, 5, 29, 37} }
func oidTimeStamping() asn1.ObjectIdentifier { return asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 3, 8} }

// checkPublicKey accepts RSA keys of at least MinRSABits and ECDSA keys on
// P-256, P-384 or P-521, and reports whether pub is RSA.
func checkPublicKey(pub crypto.PublicKey) (isRSA bool, err error) {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if k == nil || k.N == nil {
			return false, fmt.Errorf("%w: empty RSA key", ErrPublicKey)
		}
		if n := k.N.BitLen(); n < MinRSABits {
			return false, fmt.Errorf("%w: RSA key of %d bits, at least %d are required", ErrPublicKey, n, MinRSABits)
		}
		return true, nil
	case *ecdsa.PublicKey:
		if k == nil || k.Curve == nil {
			return false, fmt.Errorf("%w: empty ECDSA key", ErrPublicKey)
		}
		switch k.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
			return false, nil
		}
		return false, fmt.Errorf("%w: ECDSA curve %s (want P-256, P-384 or P-521)", ErrPublicKey, k.Curve.Params().Name)
	case nil:
		return false, fmt.Errorf("%w: no public key", ErrPublicKey)
	}
	return false, fmt.Errorf("%w: %T (want an RSA or ECDSA key)", ErrPublicKey, pub)
}

// keyUsageExtension encodes ku as a critical key usage extension (RFC 5280
// 4.2.1.3), a DER BIT STRING without trailing zero bits.
func keyUsageExtension(ku x509.KeyUsage) (pkix.Extension, error) {
	var bits [2]byte
	length := 0
	for i := 0; i < 9; i++ {
		if ku&(1<<i) != 0 {
			bits[i/8] |= 0x80 >> (i % 8)
			length = i + 1
		}
	}
	value, err := asn1.Marshal(asn1.BitString{Bytes: bits[:(length+7)/8], BitLength: length})
	if err != nil {
		return pkix.Extension{}, fmt.Errorf("dn: encoding key usage: %w", err)
	}
	return pkix.Extension{Id: oidKeyUsage(), Critical: true, Value: value}, nil
}

// checkDNSNames accepts host names: dot-separated labels of letters, digits
// and inner hyphens, each at most 63 bytes, at most 253 bytes in all.
func checkDNSNames(names []string) error {
	for i, n := range names {
		if len(n) > 253 {
			return fmt.Errorf("%w: DNS name %q is longer than 253 bytes", ErrSAN, n)
		}
		for _, l := range strings.Split(n, ".") {
			if reason := checkLabel(l); reason != "" {
				return fmt.Errorf("%w: DNS name %q is not a host name: %s", ErrSAN, n, reason)
			}
		}
		if slices.Contains(names[:i], n) {
			return fmt.Errorf("%w: DNS name %q given twice", ErrSAN, n)
		}
	}
	return nil
}

// checkEmails accepts bare ASCII e-mail addresses ("a@example.org", no
// display name, no angle brackets).
func checkEmails(emails []string) error {
	for i, e := range emails {
		for j := 0; j < len(e); j++ {
			if e[j] >= utf8.RuneSelf {
				return fmt.Errorf("%w: e-mail address %q is not ASCII", ErrSAN, e)
			}
		}
		a, err := mail.ParseAddress(e)
		if err != nil {
			return fmt.Errorf("%w: e-mail address %q: %w", ErrSAN, e, err)
		}
		if a.Name != "" || a.Address != e {
			return fmt.Errorf("%w: e-mail address %q is not a bare address (write just %q)", ErrSAN, e, a.Address)
		}
		if slices.Contains(emails[:i], e) {
			return fmt.Errorf("%w: e-mail address %q given twice", ErrSAN, e)
		}
	}
	return nil
}

// parseURIs accepts absolute ASCII URIs that net/url writes back unchanged,
// so the request carries exactly what the officer gave.
func parseURIs(uris []string) ([]*url.URL, error) {
	var out []*url.URL
	for i, s := range uris {
		for j := 0; j < len(s); j++ {
			if s[j] <= ' ' || s[j] >= 0x7f {
				return nil, fmt.Errorf("%w: URI %q contains a space, control or non-ASCII character", ErrSAN, s)
			}
		}
		u, err := url.Parse(s)
		if err != nil {
			return nil, fmt.Errorf("%w: URI %q: %w", ErrSAN, s, err)
		}
		if !u.IsAbs() {
			return nil, fmt.Errorf("%w: URI %q is not absolute (no scheme)", ErrSAN, s)
		}
		if u.String() != s {
			return nil, fmt.Errorf("%w: URI %q is not in normal form (would be written %q)", ErrSAN, s, u.String())
		}
		if slices.Contains(uris[:i], s) {
			return nil, fmt.Errorf("%w: URI %q given twice", ErrSAN, s)
		}
		out = append(out, u)
	}
	return out, nil
}

// MismatchError says why a certificate does not fit a key usage. It wraps
// ErrUsageMismatch.
type MismatchError struct {
	// Usage is the usage the certificate was checked for.
	Usage Usage
	// Problems lists each thing that does not fit, in words.
	Problems []string
}

// Error implements error.
func (e *MismatchError) Error() string {
	return fmt.Sprintf("certificate does not fit key usage %q: %s", string(e.Usage), strings.Join(e.Problems, "; "))
}

// Unwrap returns ErrUsageMismatch.
func (e *MismatchError) Unwrap() error { return ErrUsageMismatch }

// CheckCertificate checks that an issued certificate fits a key of the given
// usage:
//
//   - every usage: not a CA certificate (no basicConstraints cA, no
//     keyCertSign or cRLSign key usage), and a key usage extension present;
//   - sign and auth: no timeStamping in an extended key usage (a TSA's
//     certificate is for timestamps only);
//   - sign: key usage digitalSignature or nonRepudiation (contentCommitment);
//   - auth: key usage digitalSignature; an extended key usage, if present,
//     contains clientAuth or serverAuth;
//   - tsa: key usage digitalSignature; an extended key usage that is exactly
//     timeStamping and marked critical (RFC 3161 section 2.3).
//
// It returns a [*MismatchError] listing everything that does not fit, or an
// error wrapping ErrUsage for an unknown usage.
func CheckCertificate(cert *x509.Certificate, usage Usage) error {
	if !usage.valid() {
		return fmt.Errorf("%w %q (want sign, auth or tsa)", ErrUsage, string(usage))
	}
	if cert == nil {
		return &MismatchError{Usage: usage, Problems: []string{"no certificate"}}
	}
	var problems []string
	if cert.BasicConstraintsValid && cert.IsCA {
		problems = append(problems, "it is a CA certificate (basicConstraints cA is true)")
	}
	if cert.KeyUsage&x509.KeyUsageCertSign != 0 {
		problems = append(problems, "key usage includes keyCertSign")
	}
	if cert.KeyUsage&x509.KeyUsageCRLSign != 0 {
		problems = append(problems, "key usage includes cRLSign")
	}
	hasKU := hasExtension(cert, oidKeyUsage())
	if !hasKU {
		problems = append(problems, "no key usage extension")
	}
	ds := cert.KeyUsage&x509.KeyUsageDigitalSignature != 0
	hasEKU := len(cert.ExtKeyUsage) > 0 || len(cert.UnknownExtKeyUsage) > 0
	if usage != UsageTSA && slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageTimeStamping) {
		problems = append(problems, "extended key usage includes timeStamping (that is a TSA certificate)")
	}
	switch usage {
	case UsageSign:
		if hasKU && !ds && cert.KeyUsage&x509.KeyUsageContentCommitment == 0 {
			problems = append(problems, "key usage has neither digitalSignature nor nonRepudiation (contentCommitment)")
		}
	case UsageAuth:
		if hasKU && !ds {
			problems = append(problems, "key usage lacks digitalSignature")
		}
		if hasEKU && !slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageClientAuth) && !slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageServerAuth) {
			problems = append(problems, fmt.Sprintf("extended key usage (%s) has neither clientAuth nor serverAuth", ekuNames(cert)))
		}
	case UsageTSA:
		if hasKU && !ds {
			problems = append(problems, "key usage lacks digitalSignature")
		}
		switch {
		case !hasEKU:
			problems = append(problems, "no extended key usage (must be exactly timeStamping)")
		case len(cert.ExtKeyUsage) != 1 || len(cert.UnknownExtKeyUsage) != 0 || cert.ExtKeyUsage[0] != x509.ExtKeyUsageTimeStamping:
			problems = append(problems, fmt.Sprintf("extended key usage is %s, must be exactly timeStamping", ekuNames(cert)))
		}
		if hasEKU && !extensionCritical(cert, oidExtKeyUsage()) {
			problems = append(problems, "extended key usage is not marked critical")
		}
	}
	if len(problems) > 0 {
		return &MismatchError{Usage: usage, Problems: problems}
	}
	return nil
}

func hasExtension(cert *x509.Certificate, oid asn1.ObjectIdentifier) bool {
	for _, e := range cert.Extensions {
		if e.Id.Equal(oid) {
			return true
		}
	}
	return false
}

func extensionCritical(cert *x509.Certificate, oid asn1.ObjectIdentifier) bool {
	for _, e := range cert.Extensions {
		if e.Id.Equal(oid) {
			return e.Critical
		}
	}
	return false
}

// ekuNames lists a certificate's extended key usages by name.
func ekuNames(cert *x509.Certificate) string {
	var names []string
	for _, u := range cert.ExtKeyUsage {
		names = append(names, ekuName(u))
	}
	for _, oid := range cert.UnknownExtKeyUsage {
		names = append(names, oid.String())
	}
	return strings.Join(names, ", ")
}

func ekuName(u x509.ExtKeyUsage) string {
	switch u {
	case x509.ExtKeyUsageAny:
		return "anyExtendedKeyUsage"
	case x509.ExtKeyUsageServerAuth:
		return "serverAuth"
	case x509.ExtKeyUsageClientAuth:
		return "clientAuth"
	case x509.ExtKeyUsageCodeSigning:
		return "codeSigning"
	case x509.ExtKeyUsageEmailProtection:
		return "emailProtection"
	case x509.ExtKeyUsageTimeStamping:
		return "timeStamping"
	case x509.ExtKeyUsageOCSPSigning:
		return "OCSPSigning"
	}
	return fmt.Sprintf("extKeyUsage(%d)", int(u))
}
