package hsm

import (
	"fmt"

	"github.com/hsmsigner/hsmsigner/hsm/sigalg"
)

// Algorithm is a signature algorithm over a digest; see package sigalg.
type Algorithm = sigalg.Algorithm

// Scheme is a signature scheme; see package sigalg.
type Scheme = sigalg.Scheme

// The signature schemes, as package sigalg defines them.
const (
	SchemeUnknown  = sigalg.SchemeUnknown
	SchemePKCS1v15 = sigalg.SchemePKCS1v15
	SchemePSS      = sigalg.SchemePSS
	SchemeECDSA    = sigalg.SchemeECDSA
)

// ParseAlgorithm accepts the X-Road and JOSE algorithm names; an unknown
// name is an error wrapping ErrAlgorithm.
func ParseAlgorithm(name string) (Algorithm, error) {
	a, err := sigalg.Parse(name)
	if err != nil {
		return Algorithm{}, fmt.Errorf("%w: %w", ErrAlgorithm, err)
	}
	return a, nil
}

// keyTypeFor returns the type of key alg needs.
func keyTypeFor(alg Algorithm) KeyType {
	if alg.NeedsRSA() {
		return KeyRSA
	}
	return KeyEC
}
