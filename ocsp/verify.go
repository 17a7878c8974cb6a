package ocsp

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"time"

	xocsp "golang.org/x/crypto/ocsp"
)

// Check names one of the checks Verify makes on a response.
type Check string

// The checks Verify makes, in the order it makes them.
const (
	// CheckParse: the bytes are not a well-formed, successful OCSP
	// response for the certificate (or the responder answered with an
	// error status such as tryLater).
	CheckParse Check = "parse"
	// CheckCertID: the response's CertID does not name the certificate
	// and its issuer (serial, issuer name hash and issuer key hash).
	CheckCertID Check = "certid"
	// CheckSignature: the response's signature verifies under no key
	// that may sign it.
	CheckSignature Check = "signature"
	// CheckResponder: the response is signed by a certificate the issuer
	// did not authorise: not issued by the issuer, without
	// id-kp-OCSPSigning, or outside its validity.
	CheckResponder Check = "responder"
	// CheckThisUpdateFuture: thisUpdate is later than now plus the
	// allowed clock skew.
	CheckThisUpdateFuture Check = "this_update_future"
	// CheckTooOld: thisUpdate is older than the freshness window.
	CheckTooOld Check = "too_old"
	// CheckNextUpdate: nextUpdate is present and has passed, or comes
	// before thisUpdate.
	CheckNextUpdate Check = "next_update_passed"
	// CheckNonce: a nonce was sent and the response does not carry it.
	CheckNonce Check = "nonce"
)

// RejectError is why Verify refused a response: the check that failed and
// a sentence saying how.
type RejectError struct {
	Check  Check
	Reason string
	Err    error // the underlying error, if any
}

// Error says which check failed and how.
func (e *RejectError) Error() string {
	return fmt.Sprintf("OCSP response rejected (%s): %s", e.Check, e.Reason)
}

// Unwrap returns the underlying error, if any.
func (e *RejectError) Unwrap() error { return e.Err }

func reject(c Check, err error, format string, args ...any) *RejectError {
	return &RejectError{Check: c, Reason: fmt.Sprintf(format, args...), Err: err}
}

// CheckOf returns the check named by a *RejectError in err's chain, or ""
// if there is none.
func CheckOf(err error) Check {
	var r *RejectError
	if errors.As(err, &r) {
		return r.Check
	}
	return ""
}

// Default values of Policy.
const (
	// DefaultFreshness is how old a response's thisUpdate may be before
	// it is no longer served (X-Road's default, 3,600 s).
	DefaultFreshness = time.Hour
	// DefaultMaxSkew is how far in the future thisUpdate may be.
	DefaultMaxSkew = 5 * time.Minute
)

// Policy is what a response must satisfy beyond naming the certificate
// and being signed by someone the issuer authorised.
type Policy struct {
	// Freshness is the largest age of thisUpdate a response may have.
	// Zero means DefaultFreshness.
	Freshness time.Duration
	// MaxSkew is how far in the future thisUpdate may lie, for clocks
	// that drift. Zero means DefaultMaxSkew; a negative value none.
	MaxSkew time.Duration
	// TrustedResponders may sign responses for any certificate, besides
	// the issuer and the responders it delegated.
	TrustedResponders []*x509.Certificate
}

func (p Policy) freshness() time.Duration {
	if p.Freshness <= 0 {
		return DefaultFreshness
	}
	return p.Freshness
}

func (p Policy) maxSkew() time.Duration {
	switch {
	case p.MaxSkew == 0:
		return DefaultMaxSkew
	case p.MaxSkew < 0:
		return 0
	}
	return p.MaxSkew
}

// Status is a certificate's status in a response.
type Status int

// The statuses a response gives.
const (
	StatusGood    Status = xocsp.Good
	StatusRevoked Status = xocsp.Revoked
	StatusUnknown Status = xocsp.Unknown
)

// String returns "good", "revoked" or "unknown".
func (s Status) String() string {
	switch s {
	case StatusGood:
		return "good"
	case StatusRevoked:
		return "revoked"
	case StatusUnknown:
		return "unknown"
	}
	return fmt.Sprintf("status(%d)", int(s))
}

// Response is a verified OCSP response.
type Response struct {
	// Raw is the response as the responder sent it (DER).
	Raw                    []byte
	Status                 Status
	ProducedAt, ThisUpdate time.Time
	// NextUpdate is zero when the responder gave none.
	NextUpdate       time.Time
	RevokedAt        time.Time
	RevocationReason int
	// SignedBy says who signed it: "issuer", "delegated responder <subject>"
	// or "trusted responder <subject>".
	SignedBy string
}

// StaleAt is when the response stops being usable under p: thisUpdate
// plus the freshness window, or nextUpdate if that comes first.
func (r *Response) StaleAt(p Policy) time.Time {
	t := r.ThisUpdate.Add(p.freshness())
	if !r.NextUpdate.IsZero() && r.NextUpdate.Before(t) {
		t = r.NextUpdate
	}
	return t
}

// Verify parses der as an OCSP response for cert, issued by issuer, and
// checks it against p at time now. nonce is the value of the nonce
// extension sent in the request (see Request), or nil if none was sent.
// A refusal is a *RejectError. A revoked or unknown status is not a
// refusal: the response is returned with that status.
func Verify(der []byte, cert, issuer *x509.Certificate, p Policy, now time.Time, nonce []byte) (*Response, error) {
	return verify(der, cert, issuer, p, now, nonce, false)
}

// VerifyRevocation checks der as Verify does but as evidence of a
// revocation, which does not expire: it must say "revoked", and neither
// its age, nor a passed nextUpdate, nor a delegated responder's
// certificate expired since the response was produced refuses it. A
// certificate revoked stays revoked (RFC 5280); only a later good
// response lifts a certificateHold (see the Watcher).
func VerifyRevocation(der []byte, cert, issuer *x509.Certificate, p Policy, now time.Time) (*Response, error) {
	r, err := verify(der, cert, issuer, p, now, nil, true)
	if err != nil {
		return nil, err
	}
	if r.Status != StatusRevoked {
		return nil, reject(CheckParse, nil, "the response says %s, not revoked", r.Status)
	}
	return r, nil
}

func verify(der []byte, cert, issuer *x509.Certificate, p Policy, now time.Time, nonce []byte, evidence bool) (*Response, error) {
	if cert == nil || issuer == nil {
		return nil, reject(CheckParse, nil, "no certificate or issuer to check the response against")
	}
	// The signature is checked below, not by ParseResponseForCert: given
	// the issuer it would refuse a response signed by an intermediate CA
	// that embeds its own certificate, and it never looks at a delegated
	// responder's extended key usage.
	r, err := xocsp.ParseResponseForCert(der, cert, nil)
	if err != nil {
		var re xocsp.ResponseError
		switch {
		case errors.As(err, &re):
			return nil, reject(CheckParse, err, "the responder answered %q, not a response", re.Status.String())
		case strings.Contains(err.Error(), "embedded certificate"):
			return nil, reject(CheckSignature, err, "the response's signature does not verify under the certificate it carries")
		}
		return nil, reject(CheckParse, err, "not an OCSP response for certificate serial %s: %v", cert.SerialNumber, err)
	}
	ids, exts, err := parseResponseData(r.TBSResponseData)
	if err != nil {
		return nil, reject(CheckParse, err, "cannot read the response data: %v", err)
	}
	for _, e := range exts {
		if e.Critical && !e.Id.Equal(oidNonce) {
			return nil, reject(CheckParse, nil, "the response has a critical extension %s this verifier does not know", e.Id)
		}
	}
	if err := checkCertID(ids, cert, issuer); err != nil {
		return nil, err
	}
	signerAt := now
	if evidence {
		signerAt = r.ProducedAt
	}
	signedBy, err := checkSigner(r, issuer, p, signerAt)
	if err != nil {
		return nil, err
	}
	if !r.NextUpdate.IsZero() && r.NextUpdate.Before(r.ThisUpdate) {
		return nil, reject(CheckNextUpdate, nil, "nextUpdate %s comes before thisUpdate %s",
			r.NextUpdate.UTC().Format(time.RFC3339), r.ThisUpdate.UTC().Format(time.RFC3339))
	}
	if r.ThisUpdate.After(now.Add(p.maxSkew())) {
		return nil, reject(CheckThisUpdateFuture, nil, "thisUpdate %s is %s ahead of this machine's clock (allowed skew %s)",
			r.ThisUpdate.UTC().Format(time.RFC3339), r.ThisUpdate.Sub(now).Round(time.Second), p.maxSkew())
	}
	if age := now.Sub(r.ThisUpdate); age > p.freshness() && !evidence {
		return nil, reject(CheckTooOld, nil, "thisUpdate %s is %s old, more than the freshness window %s",
			r.ThisUpdate.UTC().Format(time.RFC3339), age.Round(time.Second), p.freshness())
	}
	if !r.NextUpdate.IsZero() && !r.NextUpdate.After(now) && !evidence {
		return nil, reject(CheckNextUpdate, nil, "nextUpdate %s has passed", r.NextUpdate.UTC().Format(time.RFC3339))
	}
	if nonce != nil {
		if err := checkNonce(r, exts, nonce); err != nil {
			return nil, err
		}
	}
	return &Response{
		Raw:              bytes.Clone(der),
		Status:           Status(r.Status),
		ProducedAt:       r.ProducedAt,
		ThisUpdate:       r.ThisUpdate,
		NextUpdate:       r.NextUpdate,
		RevokedAt:        r.RevokedAt,
		RevocationReason: r.RevocationReason,
		SignedBy:         signedBy,
	}, nil
}

// checkSigner finds who signed r and whether the issuer authorised them:
// the issuer itself, a responder certificate embedded in r that the issuer
// issued with id-kp-OCSPSigning and that is valid now, or a configured
// trusted responder.
func checkSigner(r *xocsp.Response, issuer *x509.Certificate, p Policy, now time.Time) (string, error) {
	if r.CheckSignatureFrom(issuer) == nil {
		return "issuer", nil
	}
	for _, t := range p.TrustedResponders {
		if r.CheckSignatureFrom(t) == nil {
			return "trusted responder " + t.Subject.String(), nil
		}
	}
	d := r.Certificate
	if d == nil {
		return "", reject(CheckSignature, nil, "the signature verifies neither under the issuer %q nor under a trusted responder, and the response carries no responder certificate", issuer.Subject)
	}
	// ParseResponseForCert has checked that d's key signed the response.
	if err := d.CheckSignatureFrom(issuer); err != nil {
		return "", reject(CheckResponder, err, "responder certificate %q was not issued by the certificate's issuer %q", d.Subject, issuer.Subject)
	}
	ocspSigning := false
	for _, u := range d.ExtKeyUsage {
		ocspSigning = ocspSigning || u == x509.ExtKeyUsageOCSPSigning
	}
	if !ocspSigning {
		return "", reject(CheckResponder, nil, "responder certificate %q lacks extended key usage id-kp-OCSPSigning", d.Subject)
	}
	if now.Before(d.NotBefore) || now.After(d.NotAfter) {
		return "", reject(CheckResponder, nil, "responder certificate %q is valid only from %s to %s", d.Subject,
			d.NotBefore.UTC().Format(time.RFC3339), d.NotAfter.UTC().Format(time.RFC3339))
	}
	return "delegated responder " + d.Subject.String(), nil
}
