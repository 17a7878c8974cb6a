package hsm

import (
	"context"
	"crypto"
	"fmt"
	"io"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/hsmsigner/hsmsigner/hsm/sigalg"
)

// Sign signs digest with the private key whose CKA_ID is id, by alg. The
// digest length must be alg's hash size; the key type must fit the scheme,
// and the key's curve the JOSE name's (ES256 needs P-256, ES384 P-384,
// ES512 P-521; the X-Road names take any curve). A key whose protection
// attributes do not hold (Key.AttributeProblem) is refused with
// ErrKeyAttributes. Each signature is verified with the public key before
// it is returned, unless the token was opened WithVerify(false); one that
// does not verify is withheld with ErrBadSignature. ECDSA signatures are
// returned DER-encoded.
func (t *Token) Sign(ctx context.Context, id []byte, alg sigalg.Algorithm, digest []byte) ([]byte, error) {
	sigs, err := t.SignMany(ctx, id, alg, [][]byte{digest})
	if err != nil {
		return nil, err
	}
	return sigs[0], nil
}

// finish turns the module's signature into the one returned: ECDSA's r‖s
// becomes DER; then the signature is verified with the public key unless
// verification is off.
func (t *Token) finish(key Key, alg sigalg.Algorithm, digest, sig []byte) ([]byte, error) {
	if alg.Scheme == sigalg.SchemeECDSA {
		der, err := ecdsaDER(sig)
		if err != nil {
			return nil, fmt.Errorf("%w: key %x: %w", ErrBadSignature, key.ID, err)
		}
		sig = der
	}
	if t.opts.verifySig {
		if err := sigalg.Verify(key.Public, alg, digest, sig); err != nil {
			return nil, fmt.Errorf("%w: key %x: %w", ErrBadSignature, key.ID, err)
		}
	}
	return sig, nil
}

// mechanism returns the PKCS#11 mechanism and the data to sign for alg.
func mechanism(alg sigalg.Algorithm, digest []byte) ([]*pkcs11.Mechanism, []byte) {
	switch alg.Scheme {
	case sigalg.SchemePKCS1v15:
		prefix := sigalg.DigestInfoPrefix(alg.Hash)
		data := make([]byte, 0, len(prefix)+len(digest))
		return []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS, nil)}, append(append(data, prefix...), digest...)
	case sigalg.SchemePSS:
		var hashMech, mgf uint
		switch alg.Hash {
		case crypto.SHA256:
			hashMech, mgf = pkcs11.CKM_SHA256, pkcs11.CKG_MGF1_SHA256
		case crypto.SHA384:
			hashMech, mgf = pkcs11.CKM_SHA384, pkcs11.CKG_MGF1_SHA384
		default:
			hashMech, mgf = pkcs11.CKM_SHA512, pkcs11.CKG_MGF1_SHA512
		}
		params := pkcs11.NewPSSParams(hashMech, mgf, uint(alg.Hash.Size()))
		return []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_PSS, params)}, digest
	}
	return []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)}, digest
}

// ecdsaDER turns PKCS#11's r‖s into the DER SEQUENCE { r, s } that X.509,
// CMS and TLS expect, without going through big.Int.
func ecdsaDER(rs []byte) ([]byte, error) {
	if len(rs) == 0 || len(rs)%2 != 0 || len(rs) > 2*66 {
		return nil, fmt.Errorf("ECDSA signature of %d bytes is not r‖s", len(rs))
	}
	half := len(rs) / 2
	r, s := derInteger(rs[:half]), derInteger(rs[half:])
	if r == nil || s == nil {
		return nil, fmt.Errorf("ECDSA signature has a zero r or s")
	}
	body := 2 + len(r) + 2 + len(s)
	out := make([]byte, 0, 3+body)
	out = append(out, 0x30)
	if body >= 0x80 {
		out = append(out, 0x81)
	}
	out = append(out, byte(body), 0x02, byte(len(r)))
	out = append(out, r...)
	out = append(out, 0x02, byte(len(s)))
	return append(out, s...), nil
}

// derInteger returns the content octets of a DER INTEGER holding the
// unsigned big-endian b: leading zeros trimmed, a zero byte added when the
// top bit is set. It returns nil for zero, which ECDSA never yields.
func derInteger(b []byte) []byte {
	for len(b) > 0 && b[0] == 0 {
		b = b[1:]
	}
	if len(b) == 0 {
		return nil
	}
	if b[0]&0x80 != 0 {
		return append([]byte{0}, b...)
	}
	return b
}

// KeySigner is a key on a token seen as a crypto.Signer, for
// x509.CreateCertificateRequest, crypto/tls and RFC 3161 timestamping.
type KeySigner struct {
	t   *Token
	key Key
	// Timeout bounds each Sign call made through the crypto.Signer
	// interface, which carries no context. Default 30 s.
	Timeout time.Duration
}

// Signer returns the key with CKA_ID id as a crypto.Signer.
func (t *Token) Signer(ctx context.Context, id []byte) (*KeySigner, error) {
	k, err := t.KeyByID(ctx, id)
	if err != nil {
		return nil, err
	}
	return &KeySigner{t: t, key: k, Timeout: 30 * time.Second}, nil
}

// Public returns the public key.
func (s *KeySigner) Public() crypto.PublicKey { return s.key.Public }

// Key returns the key the signer uses.
func (s *KeySigner) Key() Key { return s.key }

// Sign implements crypto.Signer. opts chooses the hash; *rsa.PSSOptions
// chooses RSA-PSS, whose salt length must be the hash length (or
// PSSSaltLengthAuto / PSSSaltLengthEqualsHash, which mean the same here).
func (s *KeySigner) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), s.Timeout)
	defer cancel()
	return s.SignContext(ctx, digest, opts)
}

// SignContext is Sign with a context.
func (s *KeySigner) SignContext(ctx context.Context, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	alg, err := AlgorithmFor(s.key, opts)
	if err != nil {
		return nil, err
	}
	return s.t.Sign(ctx, s.key.ID, alg, digest)
}

// AlgorithmFor picks the algorithm for key and crypto.SignerOpts (see
// sigalg.ForSignerOpts); what the appliance does not do wraps ErrAlgorithm.
func AlgorithmFor(key Key, opts crypto.SignerOpts) (sigalg.Algorithm, error) {
	alg, err := sigalg.ForSignerOpts(key.Public, opts)
	if err != nil {
		return sigalg.Algorithm{}, fmt.Errorf("%w: %w", ErrAlgorithm, err)
	}
	return alg, nil
}
