package ocsp

import (
	"bytes"
	"crypto"
	_ "crypto/sha1" // CertID hashes: SHA-1 is what most responders use
	_ "crypto/sha256"
	_ "crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"

	"golang.org/x/crypto/cryptobyte"
	casn1 "golang.org/x/crypto/cryptobyte/asn1"
	xocsp "golang.org/x/crypto/ocsp"
)

// oidNonce is id-pkix-ocsp-nonce (RFC 8954).
var oidNonce = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 48, 1, 2}

// certIDHashes are the hash algorithms of a CertID this package accepts.
var certIDHashes = map[string]crypto.Hash{
	"1.3.14.3.2.26":          crypto.SHA1,
	"2.16.840.1.101.3.4.2.1": crypto.SHA256,
	"2.16.840.1.101.3.4.2.2": crypto.SHA384,
	"2.16.840.1.101.3.4.2.3": crypto.SHA512,
}

// certID is one SingleResponse's CertID.
type certID struct {
	hash               crypto.Hash
	nameHash, keyHash  []byte
	serial             *big.Int
	hashAlgorithmKnown bool
}

// checkCertID checks that the SingleResponse ParseResponseForCert picked
// (the first whose serial is cert's) names cert's issuer by name and key
// hash: x/crypto/ocsp matches the serial number only. A response with
// more than one SingleResponse for the serial is refused: x/crypto/ocsp
// would read the first and ignore the others, which may say otherwise
// (good and revoked, or another issuer's certificate of that serial).
func checkCertID(ids []certID, cert, issuer *x509.Certificate) error {
	n := 0
	for _, id := range ids {
		if id.serial.Cmp(cert.SerialNumber) == 0 {
			n++
		}
	}
	if n > 1 {
		return reject(CheckCertID, nil, "the response answers %d times for serial %s; only one answer is accepted", n, cert.SerialNumber)
	}
	for _, id := range ids {
		if id.serial.Cmp(cert.SerialNumber) != 0 {
			continue
		}
		if !id.hashAlgorithmKnown {
			return reject(CheckCertID, nil, "CertID hash algorithm is not SHA-1 or SHA-2")
		}
		if !bytes.Equal(cert.RawIssuer, issuer.RawSubject) {
			return reject(CheckCertID, nil, "the certificate's issuer name is not the subject of the issuer given")
		}
		nameHash, keyHash, err := issuerHashes(issuer, id.hash)
		if err != nil {
			return reject(CheckCertID, err, "cannot hash the issuer: %v", err)
		}
		if !bytes.Equal(id.nameHash, nameHash) || !bytes.Equal(id.keyHash, keyHash) {
			return reject(CheckCertID, nil, "the response is for serial %s of another issuer (issuer name or key hash differs from %q)", cert.SerialNumber, issuer.Subject)
		}
		return nil
	}
	return reject(CheckCertID, nil, "no single response for serial %s", cert.SerialNumber)
}

// parseCertIDs reads the CertID of every SingleResponse in a DER
// ResponseData (RFC 6960, 4.2.1).
func parseCertIDs(tbs []byte) ([]certID, error) {
	ids, _, err := parseResponseData(tbs)
	return ids, err
}

// parseResponseData reads the CertID of every SingleResponse in a DER
// ResponseData and its responseExtensions, which x/crypto/ocsp does not
// expose (it gives singleExtensions only).
func parseResponseData(tbs []byte) ([]certID, []pkix.Extension, error) {
	in := cryptobyte.String(tbs)
	var rd, responses cryptobyte.String
	if !in.ReadASN1(&rd, casn1.SEQUENCE) ||
		!rd.SkipOptionalASN1(casn1.Tag(0).Constructed().ContextSpecific()) || // version
		!rd.SkipASN1(peekTag(rd)) || // responderID
		!rd.SkipASN1(casn1.GeneralizedTime) || // producedAt
		!rd.ReadASN1(&responses, casn1.SEQUENCE) {
		return nil, nil, errors.New("malformed ResponseData")
	}
	var ids []certID
	for !responses.Empty() {
		var single, cid, alg cryptobyte.String
		var oid asn1.ObjectIdentifier
		id := certID{serial: new(big.Int)}
		if !responses.ReadASN1(&single, casn1.SEQUENCE) ||
			!single.ReadASN1(&cid, casn1.SEQUENCE) ||
			!cid.ReadASN1(&alg, casn1.SEQUENCE) ||
			!alg.ReadASN1ObjectIdentifier(&oid) ||
			!cid.ReadASN1Bytes(&id.nameHash, casn1.OCTET_STRING) ||
			!cid.ReadASN1Bytes(&id.keyHash, casn1.OCTET_STRING) ||
			!cid.ReadASN1Integer(id.serial) {
			return nil, nil, errors.New("malformed SingleResponse")
		}
		id.hash, id.hashAlgorithmKnown = certIDHashes[oid.String()]
		ids = append(ids, id)
	}
	var exts []pkix.Extension
	var present bool
	var raw cryptobyte.String
	if !rd.ReadOptionalASN1(&raw, &present, casn1.Tag(1).Constructed().ContextSpecific()) {
		return nil, nil, errors.New("malformed responseExtensions")
	}
	if present {
		var list cryptobyte.String
		if !raw.ReadASN1(&list, casn1.SEQUENCE) {
			return nil, nil, errors.New("malformed responseExtensions")
		}
		for !list.Empty() {
			var ext, val cryptobyte.String
			var e pkix.Extension
			if !list.ReadASN1(&ext, casn1.SEQUENCE) || !ext.ReadASN1ObjectIdentifier(&e.Id) ||
				!ext.ReadOptionalASN1Boolean(&e.Critical, casn1.BOOLEAN, false) ||
				!ext.ReadASN1(&val, casn1.OCTET_STRING) {
				return nil, nil, errors.New("malformed response extension")
			}
			e.Value = val
			exts = append(exts, e)
		}
	}
	return ids, exts, nil
}

// peekTag returns the tag of the next element of s, or 0 if s is empty.
func peekTag(s cryptobyte.String) casn1.Tag {
	if len(s) == 0 {
		return 0
	}
	return casn1.Tag(s[0])
}

// issuerHashes returns the CertID hashes of issuer's name and key.
func issuerHashes(issuer *x509.Certificate, h crypto.Hash) (nameHash, keyHash []byte, err error) {
	spki := cryptobyte.String(issuer.RawSubjectPublicKeyInfo)
	var inner cryptobyte.String
	var key asn1.BitString
	if !spki.ReadASN1(&inner, casn1.SEQUENCE) || !inner.SkipASN1(casn1.SEQUENCE) || !inner.ReadASN1BitString(&key) {
		return nil, nil, errors.New("malformed subjectPublicKeyInfo")
	}
	if !h.Available() {
		return nil, nil, fmt.Errorf("hash %v not available", h)
	}
	hn := h.New()
	hn.Write(issuer.RawSubject)
	hk := h.New()
	hk.Write(key.RightAlign())
	return hn.Sum(nil), hk.Sum(nil), nil
}

// NonceSize is the length of the nonces Request makes (RFC 8954 allows
// 1 to 32 bytes; 16 is what most responders expect).
const NonceSize = 16

// Request returns a DER OCSP request for cert, issued by issuer, with a
// SHA-1 CertID (the one every responder answers). If nonce is not nil it
// is sent in the nonce extension; pass the same value to Verify. It
// returns the extension value Verify expects back.
func Request(cert, issuer *x509.Certificate, nonce []byte) ([]byte, error) {
	der, err := xocsp.CreateRequest(cert, issuer, &xocsp.RequestOptions{Hash: crypto.SHA1})
	if err != nil {
		return nil, fmt.Errorf("building the OCSP request: %w", err)
	}
	if nonce == nil {
		return der, nil
	}
	if len(nonce) < 1 || len(nonce) > 32 {
		return nil, fmt.Errorf("nonce of %d bytes: RFC 8954 allows 1 to 32", len(nonce))
	}
	// OCSPRequest ::= SEQUENCE { tbsRequest TBSRequest, ... }; CreateRequest
	// writes no signature and no extensions, so the nonce goes last in
	// TBSRequest as requestExtensions [2] EXPLICIT Extensions.
	in := cryptobyte.String(der)
	var req, tbs cryptobyte.String
	if !in.ReadASN1(&req, casn1.SEQUENCE) || !req.ReadASN1(&tbs, casn1.SEQUENCE) || !req.Empty() {
		return nil, errors.New("building the OCSP request: unexpected encoding from x/crypto/ocsp")
	}
	var b cryptobyte.Builder
	b.AddASN1(casn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1(casn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddBytes(tbs)
			b.AddASN1(casn1.Tag(2).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
				b.AddASN1(casn1.SEQUENCE, func(b *cryptobyte.Builder) {
					b.AddASN1(casn1.SEQUENCE, func(b *cryptobyte.Builder) {
						b.AddASN1ObjectIdentifier(oidNonce)
						b.AddASN1OctetString(nonceValue(nonce))
					})
				})
			})
		})
	})
	return b.Bytes()
}

// nonceValue is the nonce extension's extnValue: the nonce as an OCTET
// STRING (RFC 8954).
func nonceValue(nonce []byte) []byte {
	var b cryptobyte.Builder
	b.AddASN1OctetString(nonce)
	return b.BytesOrPanic()
}

// checkNonce checks that r echoes the nonce sent, in responseExtensions
// (RFC 8954) or, as responders built on x/crypto/ocsp put it, in the
// single response's extensions. Some responders echo the bare nonce
// rather than its OCTET STRING; both carry the same random bytes and are
// accepted.
func checkNonce(r *xocsp.Response, exts []pkix.Extension, nonce []byte) error {
	for _, e := range append(exts, r.Extensions...) {
		if !e.Id.Equal(oidNonce) {
			continue
		}
		if bytes.Equal(e.Value, nonceValue(nonce)) || bytes.Equal(e.Value, nonce) {
			return nil
		}
		return reject(CheckNonce, nil, "the response's nonce is not the one sent (a replayed or cached response)")
	}
	return reject(CheckNonce, nil, "a nonce was sent and the response carries none")
}
