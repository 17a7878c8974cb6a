package tsa

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"strings"
	"time"

	"github.com/digitorus/timestamp"
)

// MaxRequestSize bounds a TimeStampReq; a real one is well under 1 KiB.
const MaxRequestSize = 16 << 10

// DefaultAccuracy is the accuracy a token claims, and the largest clock
// error and step the guard lets pass, when Config leaves it out.
const DefaultAccuracy = time.Second

// Config says what an Issuer issues.
type Config struct {
	// Policy is the TSA policy of tokens whose request names none.
	Policy asn1.ObjectIdentifier
	// AcceptedPolicies are the policies a request may ask for; Policy is
	// always accepted.
	AcceptedPolicies []asn1.ObjectIdentifier
	// Hashes are the imprint algorithms accepted; nil means SHA-256,
	// SHA-384 and SHA-512. SHA-1 is never accepted.
	Hashes []crypto.Hash
	// Accuracy is claimed in each token; 0 means DefaultAccuracy.
	Accuracy time.Duration
	// SkipClockCheck issues whatever the kernel says of the clock. Only
	// for development machines without NTP.
	SkipClockCheck bool
}

func (c Config) accuracy() time.Duration {
	if c.Accuracy <= 0 {
		return DefaultAccuracy
	}
	return c.Accuracy
}

func (c Config) hashes() []crypto.Hash {
	if c.Hashes == nil {
		return []crypto.Hash{crypto.SHA256, crypto.SHA384, crypto.SHA512}
	}
	return c.Hashes
}

// oidTimeStamping is id-kp-timeStamping.
var oidTimeStamping = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 3, 8}

// oidExtKeyUsage is id-ce-extKeyUsage.
var oidExtKeyUsage = asn1.ObjectIdentifier{2, 5, 29, 37}

// Issuer issues time-stamp tokens. It is safe for concurrent use.
type Issuer struct {
	cfg    Config
	signer crypto.Signer
	cert   *x509.Certificate
	chain  []*x509.Certificate // issuers of cert, nearest first
	guard  *Guard
	now    func() time.Time
}

// CertificateProblem says why cert cannot be a TSA certificate for key
// pub at time now, or returns "": it must be the key's, valid now, and
// carry extendedKeyUsage timeStamping, critical, and nothing else
// (RFC 3161, 2.3).
func CertificateProblem(cert *x509.Certificate, pub crypto.PublicKey, now time.Time) string {
	if k, ok := cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !k.Equal(pub) {
		return "the certificate is not the TSA key's"
	}
	if p := validityProblem(cert, now); p != "" {
		return p
	}
	return TSACertificateProblem(cert)
}

// validityProblem says why cert is not valid at now, or returns "".
func validityProblem(cert *x509.Certificate, now time.Time) string {
	if now.Before(cert.NotBefore) || now.After(cert.NotAfter) {
		return fmt.Sprintf("the certificate is valid only from %s to %s", cert.NotBefore.UTC().Format(time.RFC3339), cert.NotAfter.UTC().Format(time.RFC3339))
	}
	return ""
}

// ErrCertificate means the certificate cannot sign time-stamp tokens.
var ErrCertificate = errors.New("unfit TSA certificate")

// NewIssuer returns an Issuer signing with signer under cert (chain: its
// issuers, nearest first, sent when a request asks for certificates). It
// refuses a certificate CertificateProblem refuses. clock nil means the
// kernel's. The Issuer makes its own Guard; NewIssuerGuarded shares one.
func NewIssuer(cfg Config, signer crypto.Signer, cert *x509.Certificate, chain []*x509.Certificate, clock ClockSource) (*Issuer, error) {
	return NewIssuerGuarded(cfg, signer, cert, chain, NewGuard(clock, cfg))
}

// NewIssuerGuarded is NewIssuer with the clock guard given: a service that
// makes a new Issuer whenever its certificate changes keeps one Guard, so
// a step of the clock is never forgotten.
func NewIssuerGuarded(cfg Config, signer crypto.Signer, cert *x509.Certificate, chain []*x509.Certificate, guard *Guard) (*Issuer, error) {
	if p := CertificateProblem(cert, signer.Public(), time.Now()); p != "" {
		return nil, fmt.Errorf("%w: %s", ErrCertificate, p)
	}
	if len(cfg.Policy) == 0 {
		return nil, errors.New("tsa: no default policy OID")
	}
	for _, h := range cfg.hashes() {
		if h == crypto.SHA1 || !h.Available() {
			return nil, fmt.Errorf("tsa: hash %v is not accepted", h)
		}
	}
	if guard == nil {
		return nil, errors.New("tsa: no clock guard")
	}
	return &Issuer{cfg: cfg, signer: signer, cert: cert, chain: chain, guard: guard, now: time.Now}, nil
}

// Issued describes a token issued, for the audit line.
type Issued struct {
	Serial  *big.Int
	GenTime time.Time
	Hash    crypto.Hash
	Imprint []byte
	Policy  asn1.ObjectIdentifier
	Nonce   *big.Int
}

// Refusal is why a request was refused, with the failInfo sent.
type Refusal struct {
	FailInfo timestamp.FailureInfo
	Reason   string
}

// Error says what was refused and why.
func (r *Refusal) Error() string {
	return fmt.Sprintf("time-stamp request refused (%s): %s", r.FailInfo, r.Reason)
}

// Name is the failInfo's name in RFC 3161 (e.g. "timeNotAvailable").
func (r *Refusal) Name() string {
	switch r.FailInfo {
	case timestamp.BadAlgorithm:
		return "badAlg"
	case timestamp.BadRequest:
		return "badRequest"
	case timestamp.BadDataFormat:
		return "badDataFormat"
	case timestamp.TimeNotAvailable:
		return "timeNotAvailable"
	case timestamp.UnacceptedPolicy:
		return "unacceptedPolicy"
	case timestamp.UnacceptedExtension:
		return "unacceptedExtension"
	case timestamp.AddInfoNotAvailable:
		return "addInfoNotAvailable"
	case timestamp.SystemFailure:
		return "systemFailure"
	}
	return fmt.Sprintf("failInfo(%d)", int(r.FailInfo))
}

func refuse(fi timestamp.FailureInfo, format string, args ...any) *Refusal {
	return &Refusal{FailInfo: fi, Reason: fmt.Sprintf(format, args...)}
}

// Ready reports why the issuer would refuse with timeNotAvailable now, or
// nil (see Guard.Ready).
func (is *Issuer) Ready() error { return is.guard.Ready() }

// Certificate returns the TSA certificate tokens are signed under.
func (is *Issuer) Certificate() *x509.Certificate { return is.cert }

// Issue answers the DER TimeStampReq req. resp is always a DER
// TimeStampResp: granted with the token, or a rejection. A rejection also
// returns a *Refusal; a token returns what was issued.
func (is *Issuer) Issue(ctx context.Context, req []byte) (resp []byte, issued *Issued, err error) {
	r, refusal := is.check(req)
	if refusal == nil {
		if err := ctx.Err(); err != nil {
			refusal = refuse(timestamp.SystemFailure, "the request was given up: %v", err)
		}
	}
	if refusal == nil {
		resp, issued, err = is.sign(r)
		if err != nil && !errors.As(err, &refusal) {
			refusal = refuse(timestamp.SystemFailure, "signing failed: %v", err)
		}
	}
	if refusal != nil {
		out, merr := timestamp.CreateErrorResponse(timestamp.Rejection, refusal.FailInfo)
		if merr != nil {
			return nil, nil, fmt.Errorf("tsa: encoding a rejection: %w", merr)
		}
		return out, nil, refusal
	}
	return resp, issued, nil
}

// check reads and checks a request, in the order RFC 3161 clients expect
// the failInfo: format, algorithm, policy, extensions, time.
func (is *Issuer) check(der []byte) (*timestamp.Request, *Refusal) {
	if len(der) > MaxRequestSize {
		return nil, refuse(timestamp.BadRequest, "request of %d bytes, at most %d", len(der), MaxRequestSize)
	}
	r, err := timestamp.ParseRequest(der)
	if err != nil {
		if strings.Contains(err.Error(), "unknown hash function") {
			return nil, refuse(timestamp.BadAlgorithm, "the imprint's hash algorithm is not known")
		}
		return nil, refuse(timestamp.BadDataFormat, "not a time-stamp request: %v", err)
	}
	if !slices.Contains(is.cfg.hashes(), r.HashAlgorithm) {
		return nil, refuse(timestamp.BadAlgorithm, "imprint hash %v is not accepted (accepted: %v)", r.HashAlgorithm, is.cfg.hashes())
	}
	if len(r.HashedMessage) != r.HashAlgorithm.Size() {
		return nil, refuse(timestamp.BadDataFormat, "a %v imprint of %d bytes, want %d", r.HashAlgorithm, len(r.HashedMessage), r.HashAlgorithm.Size())
	}
	if len(r.TSAPolicyOID) > 0 && !r.TSAPolicyOID.Equal(is.cfg.Policy) &&
		!slices.ContainsFunc(is.cfg.AcceptedPolicies, func(p asn1.ObjectIdentifier) bool { return p.Equal(r.TSAPolicyOID) }) {
		return nil, refuse(timestamp.UnacceptedPolicy, "policy %s is not accepted", r.TSAPolicyOID)
	}
	for _, e := range r.Extensions {
		if e.Critical {
			return nil, refuse(timestamp.UnacceptedExtension, "critical extension %s is not understood", e.Id)
		}
	}
	if err := is.Ready(); err != nil {
		return nil, refuse(timestamp.TimeNotAvailable, "%v", err)
	}
	return r, nil
}

// sign makes the token for r.
func (is *Issuer) sign(r *timestamp.Request) ([]byte, *Issued, error) {
	policy := r.TSAPolicyOID
	if len(policy) == 0 {
		policy = is.cfg.Policy
	}
	genTime := is.now().UTC().Truncate(time.Millisecond)
	// The Issuer may be kept past its certificate's end (signerd keeps
	// one until the certificates change): no token outside it.
	if p := validityProblem(is.cert, genTime); p != "" {
		return nil, nil, &Refusal{FailInfo: timestamp.SystemFailure, Reason: "the TSA certificate cannot sign at " + genTime.Format(time.RFC3339) + ": " + p}
	}
	t := &timestamp.Timestamp{
		HashAlgorithm:     r.HashAlgorithm,
		HashedMessage:     r.HashedMessage,
		Time:              genTime,
		Accuracy:          is.cfg.accuracy(),
		Policy:            policy,
		Nonce:             r.Nonce,
		AddTSACertificate: r.Certificates,
	}
	if r.Certificates {
		t.Certificates = is.chain
	}
	resp, err := t.CreateResponseWithOpts(is.cert, is.signer, crypto.SHA256)
	if err != nil {
		return nil, nil, err
	}
	// Read back what was issued, and check it is what was asked.
	got, err := readTSTInfo(resp)
	if err != nil {
		return nil, nil, fmt.Errorf("the token made does not parse: %w", err)
	}
	if !bytes.Equal(got.MessageImprint.HashedMessage, r.HashedMessage) || !got.MessageImprint.HashAlgorithm.Algorithm.Equal(hashOIDs[r.HashAlgorithm]) {
		return nil, nil, errors.New("the token made carries another imprint")
	}
	if (got.Nonce == nil) != (r.Nonce == nil) || (r.Nonce != nil && got.Nonce.Cmp(r.Nonce) != 0) {
		return nil, nil, errors.New("the token made carries another nonce")
	}
	return resp, &Issued{Serial: got.SerialNumber, GenTime: got.GenTime, Hash: r.HashAlgorithm, Imprint: got.MessageImprint.HashedMessage, Policy: got.Policy, Nonce: got.Nonce}, nil
}

// hashOIDs are the OIDs of the imprint hashes an Issuer may accept.
var hashOIDs = map[crypto.Hash]asn1.ObjectIdentifier{crypto.SHA256: oidSHA256, crypto.SHA384: oidSHA384, crypto.SHA512: oidSHA512}

// tstInfo is the part of RFC 3161's TSTInfo the read-back checks; the
// fields after the nonce are not read.
type tstInfo struct {
	Version        int
	Policy         asn1.ObjectIdentifier
	MessageImprint struct {
		HashAlgorithm pkix.AlgorithmIdentifier
		HashedMessage []byte
	}
	SerialNumber *big.Int
	GenTime      time.Time `asn1:"generalized"`
	Accuracy     struct {
		Seconds int `asn1:"optional"`
		Millis  int `asn1:"optional,tag:0"`
		Micros  int `asn1:"optional,tag:1"`
	} `asn1:"optional"`
	Ordering bool     `asn1:"optional,default:false"`
	Nonce    *big.Int `asn1:"optional"`
}

// readTSTInfo reads the TSTInfo of a granted DER TimeStampResp the
// Issuer made, with encoding/asn1 alone: the response is DER, and the
// signature was made by the Issuer's signer (in signerd, verified by the
// hsm package before it left the token, [module.token]
// verify_signatures). digitorus/timestamp's ParseResponse would convert
// BER to DER and verify the signature and the chain again, which costs
// more than the rest of the token, and its pkcs7.Parse is not safe for
// concurrent use.
func readTSTInfo(resp []byte) (*tstInfo, error) {
	var r struct {
		Status struct {
			Status int
		}
		Token struct {
			ContentType asn1.ObjectIdentifier
			SignedData  struct {
				Version          int
				DigestAlgorithms asn1.RawValue
				EncapContent     struct {
					ContentType asn1.ObjectIdentifier
					Content     []byte `asn1:"explicit,tag:0"`
				}
			} `asn1:"explicit,tag:0"`
		}
	}
	if rest, err := asn1.Unmarshal(resp, &r); err != nil || len(rest) > 0 {
		return nil, fmt.Errorf("not one DER TimeStampResp with a SignedData token (%v, %d bytes after)", err, len(rest))
	}
	if r.Status.Status != int(timestamp.Granted) || !r.Token.SignedData.EncapContent.ContentType.Equal(oidTSTInfo) {
		return nil, fmt.Errorf("status %d, content %s: not a granted TSTInfo", r.Status.Status, r.Token.SignedData.EncapContent.ContentType)
	}
	var info tstInfo
	if rest, err := asn1.Unmarshal(r.Token.SignedData.EncapContent.Content, &info); err != nil || len(rest) > 0 {
		return nil, fmt.Errorf("the TSTInfo does not parse (%v, %d bytes after)", err, len(rest))
	}
	return &info, nil
}

// oidTSTInfo is id-ct-TSTInfo.
var oidTSTInfo = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 16, 1, 4}

// String is the issued token in one audit line's detail.
func (i *Issued) String() string {
	s := fmt.Sprintf("serial=%s gen_time=%s imprint=%v:%s policy=%s", i.Serial.Text(16), i.GenTime.UTC().Format(time.RFC3339Nano), i.Hash, hex.EncodeToString(i.Imprint), i.Policy)
	if i.Nonce != nil {
		s += " nonce=" + i.Nonce.Text(16)
	}
	return s
}
