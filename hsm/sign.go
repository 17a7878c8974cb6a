package hsm

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"fmt"
	"io"
	"math/big"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/hsmsigner/hsmsigner/hsm/sigalg"
	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// Sign signs digest with the private key whose CKA_ID is id, by alg. The
// digest length must be alg's hash size; the key type must fit the scheme.
// RSA signatures are verified with the public key before they are returned
// unless the token was opened WithRSAVerify(false). ECDSA signatures are
// returned DER-encoded.
func (t *Token) Sign(ctx context.Context, id []byte, alg Algorithm, digest []byte) ([]byte, error) {
	sig, _, err := t.sign(ctx, id, alg, digest)
	return sig, err
}

func (t *Token) sign(ctx context.Context, id []byte, alg Algorithm, digest []byte) ([]byte, Key, error) {
	if alg.Scheme == SchemeUnknown || !alg.Hash.Available() {
		return nil, Key{}, fmt.Errorf("%w: no algorithm given", ErrAlgorithm)
	}
	if len(digest) != alg.Hash.Size() {
		return nil, Key{}, fmt.Errorf("%w: %s needs a %d-byte digest, got %d bytes", ErrDigestLength, alg.Name, alg.Hash.Size(), len(digest))
	}
	mech, data := mechanism(alg, digest)
	var (
		sig []byte
		key Key
	)
	err := t.withSession(ctx, func(s *session) error {
		e, err := t.keyByID(s, id)
		if err != nil {
			return err
		}
		key = e.key
		if key.Type != keyTypeFor(alg) {
			return fmt.Errorf("%w: %s needs an %s key; key %x is %s", ErrAlgorithm, alg.Name, keyTypeFor(alg), id, key.Type)
		}
		if err := t.m.api.SignInit(s.h, mech, e.handle); err != nil {
			return p11err("C_SignInit", err)
		}
		sig, err = t.m.api.Sign(s.h, data)
		return p11err("C_Sign", err)
	})
	if err != nil {
		return nil, Key{}, err
	}
	sig, err = t.finish(key, alg, digest, sig)
	if err != nil {
		return nil, Key{}, err
	}
	return sig, key, nil
}

// finish turns the module's signature into the one returned: ECDSA's r‖s
// becomes DER; an RSA signature is verified with the public key unless
// verification is off.
func (t *Token) finish(key Key, alg Algorithm, digest, sig []byte) ([]byte, error) {
	switch alg.Scheme {
	case SchemeECDSA:
		der, err := ecdsaDER(sig)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrBadSignature, err)
		}
		return der, nil
	case SchemePKCS1v15, SchemePSS:
		if t.opts.verifyRSA {
			if err := sigalg.Verify(key.Public, alg, digest, sig); err != nil {
				return nil, fmt.Errorf("%w: key %x: %w", ErrBadSignature, key.ID, err)
			}
		}
	}
	return sig, nil
}

// mechanism returns the PKCS#11 mechanism and the data to sign for alg.
func mechanism(alg Algorithm, digest []byte) ([]*pkcs11.Mechanism, []byte) {
	switch alg.Scheme {
	case SchemePKCS1v15:
		prefix := sigalg.DigestInfoPrefix(alg.Hash)
		data := make([]byte, 0, len(prefix)+len(digest))
		return []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS, nil)}, append(append(data, prefix...), digest...)
	case SchemePSS:
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
// CMS and TLS expect.
func ecdsaDER(rs []byte) ([]byte, error) {
	if len(rs) == 0 || len(rs)%2 != 0 {
		return nil, fmt.Errorf("ECDSA signature of %d bytes is not r‖s", len(rs))
	}
	half := len(rs) / 2
	r := new(big.Int).SetBytes(rs[:half])
	s := new(big.Int).SetBytes(rs[half:])
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1BigInt(r)
		b.AddASN1BigInt(s)
	})
	return b.Bytes()
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

// AlgorithmFor picks the algorithm for key and crypto.SignerOpts.
func AlgorithmFor(key Key, opts crypto.SignerOpts) (Algorithm, error) {
	h := opts.HashFunc()
	switch h {
	case crypto.SHA256, crypto.SHA384, crypto.SHA512:
	default:
		return Algorithm{}, fmt.Errorf("%w: hash %v (SHA-256, SHA-384 or SHA-512 only)", ErrAlgorithm, h)
	}
	switch key.Public.(type) {
	case *ecdsa.PublicKey:
		return sigalg.For(SchemeECDSA, h), nil
	case *rsa.PublicKey:
		if pss, ok := opts.(*rsa.PSSOptions); ok {
			if pss.SaltLength != rsa.PSSSaltLengthAuto && pss.SaltLength != rsa.PSSSaltLengthEqualsHash && pss.SaltLength != h.Size() {
				return Algorithm{}, fmt.Errorf("%w: PSS salt length %d (only the hash length is supported)", ErrAlgorithm, pss.SaltLength)
			}
			return sigalg.For(SchemePSS, h), nil
		}
		return sigalg.For(SchemePKCS1v15, h), nil
	}
	return Algorithm{}, fmt.Errorf("%w: key type %T", ErrAlgorithm, key.Public)
}
