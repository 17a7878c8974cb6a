package tsa

import (
	"bytes"
	"crypto"
	_ "crypto/sha1" // ESS signingCertificate (v1) hashes with SHA-1
	_ "crypto/sha512"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
	"sync"

	"github.com/digitorus/pkcs7"
	"github.com/digitorus/timestamp"
)

// OIDs of the ESS signing-certificate attributes (RFC 2634, RFC 5035).
var (
	oidSigningCertificate   = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 16, 2, 12}
	oidSigningCertificateV2 = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 16, 2, 47}
	oidSHA256               = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 1}
	oidSHA384               = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 2}
	oidSHA512               = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 3}
)

// Trust is what a token must chain to: the anchors and, for tokens that
// do not carry them, the TSA certificates and intermediates.
type Trust struct {
	Roots *x509.CertPool
	// Certificates are TSA certificates and intermediates used when a
	// token does not carry its own.
	Certificates []*x509.Certificate
}

// ErrToken means a time-stamp token failed verification.
var ErrToken = errors.New("time-stamp token rejected")

// MaxTokenSize bounds a TimeStampToken (and the TimeStampResp around it)
// VerifyToken and VerifyResponse read; a real one, with a chain of a few
// certificates, is a few KiB.
const MaxTokenSize = 64 << 10

// maxTokenDepth bounds the nesting of a token's DER: a real one nests
// about a dozen deep (a certificate's extensions in the SignedData).
// digitorus/pkcs7 transcodes BER to DER recursively, in time quadratic
// in the nesting, before it reads anything.
const maxTokenDepth = 64

// checkShape refuses der larger than MaxTokenSize or nested deeper than
// maxTokenDepth, reading only the tags and lengths (definite or
// indefinite), without recursion.
func checkShape(der []byte) error {
	if len(der) > MaxTokenSize {
		return fmt.Errorf("%w: %d bytes, at most %d", ErrToken, len(der), MaxTokenSize)
	}
	// ends holds, for each open constructed value, its end offset, or -1
	// for an indefinite length (closed by an end-of-contents).
	var ends []int
	for i := 0; i < len(der); {
		for len(ends) > 0 && ends[len(ends)-1] >= 0 && i >= ends[len(ends)-1] {
			ends = ends[:len(ends)-1]
		}
		if i+2 > len(der) {
			return fmt.Errorf("%w: truncated DER", ErrToken)
		}
		if der[i] == 0 && der[i+1] == 0 && len(ends) > 0 && ends[len(ends)-1] < 0 {
			ends = ends[:len(ends)-1] // end-of-contents
			i += 2
			continue
		}
		tag, constructed := der[i], der[i]&0x20 != 0
		i++
		if tag&0x1f == 0x1f { // high tag number
			for i < len(der) && der[i]&0x80 != 0 {
				i++
			}
			i++
		}
		if i >= len(der) {
			return fmt.Errorf("%w: truncated DER", ErrToken)
		}
		l := int(der[i])
		i++
		end := -1
		switch {
		case l < 0x80:
			end = i + l
		case l == 0x80:
			if !constructed {
				return fmt.Errorf("%w: an indefinite length on a primitive value", ErrToken)
			}
		default:
			n := l & 0x7f
			if n > 4 || i+n > len(der) {
				return fmt.Errorf("%w: a length of %d octets", ErrToken, n)
			}
			l = 0
			for _, b := range der[i : i+n] {
				l = l<<8 | int(b)
			}
			i += n
			end = i + l
		}
		if end > len(der) {
			return fmt.Errorf("%w: a value runs past the end of the data", ErrToken)
		}
		if !constructed {
			i = end
			continue
		}
		ends = append(ends, end)
		if len(ends) > maxTokenDepth {
			return fmt.Errorf("%w: DER nested more than %d deep", ErrToken, maxTokenDepth)
		}
	}
	return nil
}

// TSACertificateProblem says why cert may not sign time-stamp tokens, or
// returns "": RFC 3161 (2.3) wants extendedKeyUsage timeStamping alone,
// marked critical; a keyUsage, if present, must allow digitalSignature or
// nonRepudiation and nothing else. These are the checks of OpenSSL's
// timestampsign purpose, which `openssl ts -verify` applies.
func TSACertificateProblem(cert *x509.Certificate) string {
	critical := false
	for _, e := range cert.Extensions {
		if e.Id.Equal(oidExtKeyUsage) {
			critical = e.Critical
		}
	}
	if len(cert.ExtKeyUsage) != 1 || cert.ExtKeyUsage[0] != x509.ExtKeyUsageTimeStamping || len(cert.UnknownExtKeyUsage) != 0 || !critical {
		return "the certificate's extendedKeyUsage is not timeStamping alone, marked critical"
	}
	const allowed = x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment
	if ku := cert.KeyUsage; ku != 0 && (ku&^allowed != 0 || ku&allowed == 0) {
		return "the certificate's keyUsage is not digitalSignature or nonRepudiation alone"
	}
	return ""
}

// VerifyResponse checks a DER TimeStampResp for the imprint (hash,
// digest) and the nonce sent (nil for none): status granted, the CMS
// signature, the ESS signing-certificate binding of the signer's
// certificate, its chain to trust at genTime with extendedKeyUsage
// timeStamping, the certificate fit for time-stamping
// (TSACertificateProblem), the imprint and the nonce. A response or token
// over MaxTokenSize, or nested deeper than 64, is refused unread. It
// returns the token.
func VerifyResponse(resp []byte, hash crypto.Hash, digest []byte, nonce *big.Int, trust Trust) (*timestamp.Timestamp, error) {
	var r struct {
		Status struct {
			Status       int
			StatusString []string       `asn1:"optional,utf8"`
			FailInfo     asn1.BitString `asn1:"optional"`
		}
		Token asn1.RawValue `asn1:"optional"`
	}
	if len(resp) > MaxTokenSize {
		return nil, fmt.Errorf("%w: a TimeStampResp of %d bytes, at most %d", ErrToken, len(resp), MaxTokenSize)
	}
	rest, err := asn1.Unmarshal(resp, &r)
	switch {
	case err != nil:
		return nil, fmt.Errorf("%w: not a TimeStampResp: %v", ErrToken, err)
	case len(rest) > 0:
		return nil, fmt.Errorf("%w: trailing data after the TimeStampResp", ErrToken)
	case r.Status.Status != int(timestamp.Granted) && r.Status.Status != int(timestamp.GrantedWithMods):
		return nil, fmt.Errorf("%w: the TSA answered %s (failInfo bits %x)", ErrToken, timestamp.Status(r.Status.Status), r.Status.FailInfo.Bytes)
	case len(r.Token.FullBytes) == 0:
		return nil, fmt.Errorf("%w: granted without a token", ErrToken)
	}
	return VerifyToken(r.Token.FullBytes, hash, digest, nonce, trust)
}

// VerifyToken checks a DER TimeStampToken as VerifyResponse does.
func VerifyToken(token []byte, hash crypto.Hash, digest []byte, nonce *big.Int, trust Trust) (*timestamp.Timestamp, error) {
	if err := checkShape(token); err != nil {
		return nil, err
	}
	p7, ts, err := parseToken(token)
	if err != nil {
		return nil, err
	}
	if len(p7.Signers) != 1 {
		return nil, fmt.Errorf("%w: %d signers, want 1", ErrToken, len(p7.Signers))
	}
	if len(p7.Certificates) == 0 {
		p7.Certificates = trust.Certificates
	}
	signer := p7.GetOnlySigner()
	if signer == nil {
		return nil, fmt.Errorf("%w: the signer's certificate is neither in the token nor among the TSA certificates given", ErrToken)
	}
	inter := x509.NewCertPool()
	for _, c := range append(append([]*x509.Certificate(nil), p7.Certificates...), trust.Certificates...) {
		inter.AddCert(c)
	}
	if err := p7.VerifyWithOpts(x509.VerifyOptions{Roots: trust.Roots, Intermediates: inter, CurrentTime: ts.Time,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageTimeStamping}}); err != nil {
		return nil, fmt.Errorf("%w: signature or chain: %v", ErrToken, err)
	}
	if p := TSACertificateProblem(signer); p != "" {
		return nil, fmt.Errorf("%w: the signer is no TSA: %s", ErrToken, p)
	}
	if err := checkESSBinding(p7, signer); err != nil {
		return nil, err
	}
	if ts.HashAlgorithm != hash || !bytes.Equal(ts.HashedMessage, digest) {
		return nil, fmt.Errorf("%w: the token is for another imprint", ErrToken)
	}
	switch {
	case nonce == nil && ts.Nonce != nil:
	case nonce != nil && (ts.Nonce == nil || ts.Nonce.Cmp(nonce) != 0):
		return nil, fmt.Errorf("%w: the token does not carry the nonce sent", ErrToken)
	}
	return ts, nil
}

// parseMu serialises digitorus/pkcs7's Parse (also behind
// timestamp.Parse): its BER-to-DER transcoding writes a package variable
// (encodeIndent), so two parses at once are a data race. It guards the
// third-party package's state, not this one's.
var parseMu sync.Mutex

// parseToken reads token as CMS SignedData and as a time-stamp token,
// one parse at a time.
func parseToken(token []byte) (*pkcs7.PKCS7, *timestamp.Timestamp, error) {
	parseMu.Lock()
	defer parseMu.Unlock()
	p7, err := pkcs7.Parse(token)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: not a CMS SignedData: %v", ErrToken, err)
	}
	ts, err := timestamp.Parse(token)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrToken, err)
	}
	return p7, ts, nil
}

// checkESSBinding checks that the signed ESS signingCertificate(V2)
// attribute names the signer's certificate by its hash.
func checkESSBinding(p7 *pkcs7.PKCS7, signer *x509.Certificate) error {
	var v2 struct {
		Certs []struct {
			HashAlgorithm struct {
				Algorithm  asn1.ObjectIdentifier
				Parameters asn1.RawValue `asn1:"optional"`
			} `asn1:"optional"`
			CertHash     []byte
			IssuerSerial asn1.RawValue `asn1:"optional"`
		}
		Policies asn1.RawValue `asn1:"optional"`
	}
	if err := p7.UnmarshalSignedAttribute(oidSigningCertificateV2, &v2); err == nil && len(v2.Certs) > 0 {
		h := crypto.SHA256 // the DEFAULT of ESSCertIDv2
		switch alg := v2.Certs[0].HashAlgorithm.Algorithm; {
		case len(alg) == 0, alg.Equal(oidSHA256):
		case alg.Equal(oidSHA384):
			h = crypto.SHA384
		case alg.Equal(oidSHA512):
			h = crypto.SHA512
		default:
			return fmt.Errorf("%w: ESS signingCertificateV2 hashes with %s", ErrToken, alg)
		}
		sum := h.New()
		sum.Write(signer.Raw)
		if !bytes.Equal(sum.Sum(nil), v2.Certs[0].CertHash) {
			return fmt.Errorf("%w: ESS signingCertificateV2 names another certificate than the signer's", ErrToken)
		}
		return nil
	}
	var v1 struct {
		Certs []struct {
			CertHash     []byte
			IssuerSerial asn1.RawValue `asn1:"optional"`
		}
		Policies asn1.RawValue `asn1:"optional"`
	}
	if err := p7.UnmarshalSignedAttribute(oidSigningCertificate, &v1); err == nil && len(v1.Certs) > 0 {
		sum := crypto.SHA1.New()
		sum.Write(signer.Raw)
		if !bytes.Equal(sum.Sum(nil), v1.Certs[0].CertHash) {
			return fmt.Errorf("%w: ESS signingCertificate names another certificate than the signer's", ErrToken)
		}
		return nil
	}
	return fmt.Errorf("%w: no ESS signingCertificate attribute binds the signer's certificate", ErrToken)
}
