package hsm

import (
	"context"
	"fmt"

	"github.com/hsmsigner/hsmsigner/hsm/sigalg"
)

// SignMany signs each digest with the key whose CKA_ID is id, by alg, as
// Sign does (a key whose attributes do not hold is refused with
// ErrKeyAttributes; an algorithm that does not fit the key's type, or a
// JOSE name whose curve is not the key's, with ErrAlgorithm), on one pool
// session held for the whole batch, so that a batch pays for one session
// hand-over and one key lookup. The key's attributes are read again during
// the batch as for single signatures, once KeyRecheckInterval has passed
// since the last read; a key that no longer holds fails the whole batch
// with ErrKeyAttributes. Every digest's length is checked before the first
// signature is made: a bad batch signs nothing. After a recovered failure
// the batch resumes where it stopped.
func (t *Token) SignMany(ctx context.Context, id []byte, alg sigalg.Algorithm, digests [][]byte) ([][]byte, error) {
	if alg.Scheme == sigalg.SchemeUnknown || !alg.Hash.Available() {
		return nil, fmt.Errorf("%w: no algorithm given", ErrAlgorithm)
	}
	for i, d := range digests {
		if len(d) != alg.Hash.Size() {
			err := fmt.Errorf("%w: %s needs a %d-byte digest, got %d bytes", ErrDigestLength, alg.Name, alg.Hash.Size(), len(d))
			if len(digests) > 1 {
				err = fmt.Errorf("digest %d: %w", i, err)
			}
			return nil, err
		}
	}
	sigs := make([][]byte, len(digests))
	var key Key
	done := 0
	err := t.withSession(ctx, func(s *session) error {
		e, err := t.keyByID(s, id)
		if err != nil {
			return err
		}
		key = e.key
		if e.problem != nil {
			return fmt.Errorf("key %x on token %q: %w", id, t.label, e.problem)
		}
		if key.Type != keyTypeFor(alg) {
			return fmt.Errorf("%w: %s needs an %s key; key %x is %s", ErrAlgorithm, alg.Name, keyTypeFor(alg), id, key.Type)
		}
		if err := sigalg.CheckCurve(key.Public, alg); err != nil {
			return fmt.Errorf("%w: key %x: %w", ErrAlgorithm, id, err)
		}
		for ; done < len(digests); done++ {
			if done%64 == 0 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			// The attributes are trusted as long as for a single Sign:
			// a long batch reads them again, and stops at a key that no
			// longer holds (no signature of the batch is returned).
			if now := t.m.opts.now(); stale(e, now) {
				if e, err = t.recheck(s, e, now); err != nil {
					return err
				}
				if e.problem != nil {
					return fmt.Errorf("key %x on token %q (read again during the batch, at digest %d): %w", id, t.label, done, e.problem)
				}
			}
			mech, data := mechanism(alg, digests[done])
			if err := t.m.api.SignInit(s.h, mech, e.handle); err != nil {
				return t.signRefused(s, e, p11err("C_SignInit", err))
			}
			sig, err := t.m.api.Sign(s.h, data)
			if err != nil {
				return t.signRefused(s, e, p11err("C_Sign", err))
			}
			sigs[done] = sig
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for i := range sigs {
		if sigs[i], err = t.finish(key, alg, digests[i], sigs[i]); err != nil {
			if len(digests) > 1 {
				err = fmt.Errorf("digest %d: %w", i, err)
			}
			return nil, err
		}
	}
	return sigs, nil
}
