package hsm

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/asn1"
	"fmt"

	"github.com/miekg/pkcs11"
)

// CertObject is an X.509 certificate stored on a token.
type CertObject struct {
	ID    []byte // CKA_ID: the id of the key it belongs to
	Label string
	Cert  *x509.Certificate
}

// StoreCertificate writes cert to the token as a CKO_CERTIFICATE object
// with the CKA_ID of its key pair and label, and reports whether it
// created the object. Storing a certificate the token already holds with
// that id creates nothing (created is false): that object is not this
// call's to remove if what follows fails.
func (t *Token) StoreCertificate(ctx context.Context, id []byte, label string, cert *x509.Certificate) (created bool, err error) {
	if len(id) == 0 || cert == nil {
		return false, fmt.Errorf("%w: a certificate object needs a key id and a certificate", ErrInvalidArgument)
	}
	serial, err := asn1.Marshal(cert.SerialNumber)
	if err != nil {
		return false, fmt.Errorf("%w: certificate serial: %w", ErrInvalidArgument, err)
	}
	t.adminMu.Lock()
	defer t.adminMu.Unlock()
	pub, ok := cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok {
		return false, fmt.Errorf("%w: certificate public key of type %T", ErrInvalidArgument, cert.PublicKey)
	}
	err = t.withSession(ctx, func(s *session) error {
		// The certificate must belong to the key pair whose id it gets.
		e, err := t.keyByID(s, id)
		if err != nil {
			return err
		}
		if !pub.Equal(e.key.Public) {
			return fmt.Errorf("%w: the certificate's public key is not that of key %x", ErrInvalidArgument, id)
		}
		hs, err := t.find(s, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_CERTIFICATE),
			pkcs11.NewAttribute(pkcs11.CKA_ID, id),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE, cert.Raw),
		}, 1)
		if err != nil || len(hs) > 0 {
			return err
		}
		_, err = t.m.api.CreateObject(s.h, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_CERTIFICATE),
			pkcs11.NewAttribute(pkcs11.CKA_CERTIFICATE_TYPE, pkcs11.CKC_X_509),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),
			pkcs11.NewAttribute(pkcs11.CKA_MODIFIABLE, true),
			pkcs11.NewAttribute(pkcs11.CKA_ID, id),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
			pkcs11.NewAttribute(pkcs11.CKA_SUBJECT, cert.RawSubject),
			pkcs11.NewAttribute(pkcs11.CKA_ISSUER, cert.RawIssuer),
			pkcs11.NewAttribute(pkcs11.CKA_SERIAL_NUMBER, serial),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE, cert.Raw),
		})
		if err != nil {
			return p11err("C_CreateObject", err)
		}
		created = true
		return nil
	})
	return created, err
}

// Certificates lists the certificate objects on the token. Objects whose
// value is not a parseable X.509 certificate are skipped.
func (t *Token) Certificates(ctx context.Context) ([]CertObject, error) {
	var out []CertObject
	err := t.withSession(ctx, func(s *session) error {
		out = out[:0]
		hs, err := t.find(s, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_CERTIFICATE),
			pkcs11.NewAttribute(pkcs11.CKA_CERTIFICATE_TYPE, pkcs11.CKC_X_509),
		}, 1<<16)
		if err != nil {
			return err
		}
		for _, h := range hs {
			attrs, err := t.m.api.GetAttributeValue(s.h, h, []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_ID, nil),
				pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil),
				pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil),
			})
			if err != nil {
				return p11err("C_GetAttributeValue", err)
			}
			c, err := x509.ParseCertificate(attrs[2].Value)
			if err != nil {
				continue
			}
			out = append(out, CertObject{ID: attrs[0].Value, Label: string(attrs[1].Value), Cert: c})
		}
		return nil
	})
	return out, err
}

// DeleteCertificate destroys the certificate objects whose value is der.
// It returns ErrCertNotFound when there is none.
func (t *Token) DeleteCertificate(ctx context.Context, der []byte) error {
	t.adminMu.Lock()
	defer t.adminMu.Unlock()
	return t.withSession(ctx, func(s *session) error {
		hs, err := t.find(s, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_CERTIFICATE),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE, der),
		}, 64)
		if err != nil {
			return err
		}
		if len(hs) == 0 {
			return ErrCertNotFound
		}
		for _, h := range hs {
			if err := t.m.api.DestroyObject(s.h, h); err != nil && !isRV(err, pkcs11.CKR_OBJECT_HANDLE_INVALID) {
				return p11err("C_DestroyObject", err)
			}
		}
		return nil
	})
}
