// Package sigalg names the signature algorithms of the appliance (X-Road
// and JOSE names), maps them to a scheme and a hash, and verifies
// signatures. It is pure Go, so that the cgo-free client can use it.
package sigalg

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"errors"
	"fmt"
	"strings"
)

// ErrUnknown means the algorithm name is not one the appliance knows.
var ErrUnknown = errors.New("unknown signature algorithm")

// ErrVerify means a signature does not verify.
var ErrVerify = errors.New("signature does not verify")

// Scheme is a signature scheme.
type Scheme int

// The signature schemes the appliance supports.
const (
	SchemeUnknown  Scheme = iota
	SchemePKCS1v15        // RSA PKCS#1 v1.5 with DigestInfo
	SchemePSS             // RSA-PSS, MGF1 with the same hash, salt = hash length
	SchemeECDSA           // ECDSA, DER-encoded signature
)

// String names the scheme.
func (s Scheme) String() string {
	switch s {
	case SchemePKCS1v15:
		return "RSA-PKCS1v15"
	case SchemePSS:
		return "RSA-PSS"
	case SchemeECDSA:
		return "ECDSA"
	}
	return "unknown"
}

// Algorithm is a signature algorithm over a digest: a scheme and a hash,
// and for the JOSE ECDSA names the curve the name binds.
type Algorithm struct {
	Name   string // canonical X-Road name, e.g. SHA256withRSA
	Hash   crypto.Hash
	Scheme Scheme
	// Curve is the curve an ECDSA algorithm requires of the key ("P-256",
	// "P-384", "P-521"), or empty when any curve will do. A JOSE name binds
	// its curve (RFC 7518, section 3.4: ES256 is P-256 with SHA-256, ES384
	// P-384 with SHA-384, ES512 P-521 with SHA-512); the X-Road names
	// (SHA384withECDSA, ...) do not, as X-Road signs with any hash on any
	// curve.
	Curve string
}

// String returns the canonical name.
func (a Algorithm) String() string { return a.Name }

// JOSE returns the JOSE name (RS256, PS256, ES256, ...).
func (a Algorithm) JOSE() string {
	prefix := map[Scheme]string{SchemePKCS1v15: "RS", SchemePSS: "PS", SchemeECDSA: "ES"}[a.Scheme]
	return fmt.Sprintf("%s%d", prefix, a.Hash.Size()*8)
}

// NeedsRSA reports whether the algorithm needs an RSA key (else EC).
func (a Algorithm) NeedsRSA() bool { return a.Scheme != SchemeECDSA }

// Parse accepts the X-Road names (SHA256withRSA,
// SHA256withRSAandMGF1, SHA256withECDSA, and 384 and 512 likewise) and the
// JOSE names (RS256, PS256, ES256, ...), case-insensitively. A JOSE ECDSA
// name sets Curve to the curve it binds.
func Parse(name string) (Algorithm, error) {
	n := strings.ToUpper(strings.TrimSpace(name))
	var bits string
	var scheme Scheme
	jose := false
	switch {
	case len(n) == 5 && (strings.HasPrefix(n, "RS") || strings.HasPrefix(n, "PS") || strings.HasPrefix(n, "ES")):
		bits = n[2:]
		scheme = map[string]Scheme{"RS": SchemePKCS1v15, "PS": SchemePSS, "ES": SchemeECDSA}[n[:2]]
		jose = true
	case strings.HasPrefix(n, "SHA") && len(n) > 6:
		bits = n[3:6]
		switch n[6:] {
		case "WITHRSA":
			scheme = SchemePKCS1v15
		case "WITHRSAANDMGF1":
			scheme = SchemePSS
		case "WITHECDSA":
			scheme = SchemeECDSA
		}
	}
	var h crypto.Hash
	switch bits {
	case "256":
		h = crypto.SHA256
	case "384":
		h = crypto.SHA384
	case "512":
		h = crypto.SHA512
	}
	if scheme == SchemeUnknown || h == 0 {
		return Algorithm{}, fmt.Errorf("%w: unknown algorithm %q (use e.g. SHA256withRSA, SHA256withRSAandMGF1, SHA256withECDSA, RS256, PS256, ES256)", ErrUnknown, name)
	}
	a := For(scheme, h)
	if jose && scheme == SchemeECDSA {
		a.Curve = joseCurve(h)
	}
	return a, nil
}

// joseCurve returns the curve the JOSE ECDSA name with hash h binds.
func joseCurve(h crypto.Hash) string {
	switch h {
	case crypto.SHA256:
		return "P-256"
	case crypto.SHA384:
		return "P-384"
	}
	return "P-521"
}

// ErrCurve means an ECDSA algorithm whose name binds a curve was used with
// a key on another curve.
var ErrCurve = errors.New("algorithm needs another curve")

// CheckCurve returns nil when alg may be used with pub, or an error
// wrapping ErrCurve when alg binds a curve (a JOSE ECDSA name) and pub is
// an ECDSA key on another one.
func CheckCurve(pub crypto.PublicKey, alg Algorithm) error {
	k, ok := pub.(*ecdsa.PublicKey)
	if !ok || alg.Curve == "" || k.Curve.Params().Name == alg.Curve {
		return nil
	}
	return fmt.Errorf("%w: %s needs a %s key; the key is %s", ErrCurve, alg.JOSE(), alg.Curve, k.Curve.Params().Name)
}

// For builds the algorithm of scheme and hash with its canonical
// name.
func For(scheme Scheme, h crypto.Hash) Algorithm {
	suffix := map[Scheme]string{SchemePKCS1v15: "withRSA", SchemePSS: "withRSAandMGF1", SchemeECDSA: "withECDSA"}[scheme]
	return Algorithm{Name: fmt.Sprintf("SHA%d%s", h.Size()*8, suffix), Hash: h, Scheme: scheme}
}

// DigestInfoPrefix returns the DER prefix of the PKCS#1 v1.5 DigestInfo
// for h (RFC 8017, section 9.2, note 1).
func DigestInfoPrefix(h crypto.Hash) []byte {
	switch h {
	case crypto.SHA256:
		return []byte{0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20}
	case crypto.SHA384:
		return []byte{0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0x04, 0x30}
	case crypto.SHA512:
		return []byte{0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00, 0x04, 0x40}
	}
	return nil
}

// Verify checks sig over digest with pub by alg. ECDSA signatures are DER.
func Verify(pub crypto.PublicKey, alg Algorithm, digest, sig []byte) error {
	if len(digest) != alg.Hash.Size() {
		return fmt.Errorf("%w: %s needs a %d-byte digest", ErrVerify, alg.Name, alg.Hash.Size())
	}
	switch k := pub.(type) {
	case *rsa.PublicKey:
		var err error
		switch alg.Scheme {
		case SchemePSS:
			err = rsa.VerifyPSS(k, alg.Hash, digest, sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: alg.Hash})
		case SchemePKCS1v15:
			err = rsa.VerifyPKCS1v15(k, alg.Hash, digest, sig)
		default:
			return fmt.Errorf("%w: %s with an RSA key", ErrVerify, alg.Name)
		}
		if err != nil {
			return fmt.Errorf("%w: %w", ErrVerify, err)
		}
		return nil
	case *ecdsa.PublicKey:
		if alg.Scheme != SchemeECDSA {
			return fmt.Errorf("%w: %s with an EC key", ErrVerify, alg.Name)
		}
		if err := CheckCurve(k, alg); err != nil {
			return fmt.Errorf("%w: %w", ErrVerify, err)
		}
		if !ecdsa.VerifyASN1(k, digest, sig) {
			return ErrVerify
		}
		return nil
	}
	return fmt.Errorf("%w: public key type %T", ErrVerify, pub)
}

// ErrUnsupported means crypto.SignerOpts ask for what the appliance does
// not do: a hash other than SHA-256/384/512, a PSS salt other than the hash
// length, or a key type other than RSA and ECDSA.
var ErrUnsupported = errors.New("unsupported signer options")

// ForSignerOpts picks the algorithm for a public key and the options a
// crypto.Signer receives: the hash from opts, RSA-PSS for *rsa.PSSOptions
// (salt = hash length; PSSSaltLengthAuto and PSSSaltLengthEqualsHash mean
// the same here), PKCS#1 v1.5 for other RSA options, ECDSA for EC keys.
func ForSignerOpts(pub crypto.PublicKey, opts crypto.SignerOpts) (Algorithm, error) {
	h := opts.HashFunc()
	switch h {
	case crypto.SHA256, crypto.SHA384, crypto.SHA512:
	default:
		return Algorithm{}, fmt.Errorf("%w: hash %v (SHA-256, SHA-384 or SHA-512 only)", ErrUnsupported, h)
	}
	switch pub.(type) {
	case *ecdsa.PublicKey:
		return For(SchemeECDSA, h), nil
	case *rsa.PublicKey:
		if pss, ok := opts.(*rsa.PSSOptions); ok {
			if pss.SaltLength != rsa.PSSSaltLengthAuto && pss.SaltLength != rsa.PSSSaltLengthEqualsHash && pss.SaltLength != h.Size() {
				return Algorithm{}, fmt.Errorf("%w: PSS salt length %d (only the hash length is supported)", ErrUnsupported, pss.SaltLength)
			}
			return For(SchemePSS, h), nil
		}
		return For(SchemePKCS1v15, h), nil
	}
	return Algorithm{}, fmt.Errorf("%w: key type %T", ErrUnsupported, pub)
}
