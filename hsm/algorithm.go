package hsm

import (
	"fmt"

	"github.com/hsmsigner/hsmsigner/hsm/sigalg"
)

// ParseAlgorithm accepts the X-Road and JOSE algorithm names (see
// sigalg.Parse); an unknown name is an error wrapping ErrAlgorithm.
func ParseAlgorithm(name string) (sigalg.Algorithm, error) {
	a, err := sigalg.Parse(name)
	if err != nil {
		return sigalg.Algorithm{}, fmt.Errorf("%w: %w", ErrAlgorithm, err)
	}
	return a, nil
}

// keyTypeFor returns the type of key alg needs.
func keyTypeFor(alg sigalg.Algorithm) KeyType {
	if alg.NeedsRSA() {
		return KeyRSA
	}
	return KeyEC
}
