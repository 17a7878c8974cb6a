package state

import (
	"bytes"
	"context"
	"fmt"
)

// maxOCSPResponse bounds a stored OCSP response; the fetcher's own cap is
// far below it.
const maxOCSPResponse = 1 << 20

// LoadOCSPResponses returns every stored OCSP response (DER), by the
// SHA-256 of its certificate. Entries whose key is not a SHA-256 are
// skipped: they cannot name a certificate.
func (s *Store) LoadOCSPResponses(ctx context.Context) (map[[32]byte][]byte, error) {
	out := map[[32]byte][]byte{}
	err := s.View(ctx, func(tx *Tx) error {
		b, err := tx.bucket(bucketOCSP, false)
		if err != nil {
			return err
		}
		return b.ForEach(func(k, v []byte) error {
			if len(k) == 32 {
				out[[32]byte(k)] = bytes.Clone(v)
			}
			return nil
		})
	})
	return out, err
}

// SaveOCSPResponse stores der as the OCSP response of the certificate
// with SHA-256 cert, replacing the one stored before.
func (s *Store) SaveOCSPResponse(ctx context.Context, cert [32]byte, der []byte) error {
	if len(der) == 0 || len(der) > maxOCSPResponse {
		return fmt.Errorf("%w: OCSP response of %d bytes", ErrInvalid, len(der))
	}
	return s.Update(ctx, func(tx *Tx) error {
		b, err := tx.bucket(bucketOCSP, true)
		if err != nil {
			return err
		}
		if err := b.Put(cert[:], der); err != nil {
			return fmt.Errorf("state: store OCSP response: %w", err)
		}
		return nil
	})
}

// DeleteOCSPResponse removes the stored OCSP response of the certificate
// with SHA-256 cert; removing one that is not there is not an error.
func (s *Store) DeleteOCSPResponse(ctx context.Context, cert [32]byte) error {
	return s.Update(ctx, func(tx *Tx) error {
		b, err := tx.bucket(bucketOCSP, true)
		if err != nil {
			return err
		}
		if err := b.Delete(cert[:]); err != nil {
			return fmt.Errorf("state: delete OCSP response: %w", err)
		}
		return nil
	})
}
