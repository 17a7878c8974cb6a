package signer

import (
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/hsmsigner/hsmsigner/hsm"
)

// TestCodeOfUnavailableHSM: an HSM that is down says why, and the reason
// may wrap another sentinel (a network HSM gone is a token not found);
// the caller still gets UNAVAILABLE, never an answer about the key.
func TestCodeOfUnavailableHSM(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want codes.Code
	}{
		{"module down, token gone", fmt.Errorf("%w: module m: %w", hsm.ErrUnavailable,
			fmt.Errorf("%w: pkcs11:token=t (after C_Sign: CKR_DEVICE_ERROR)", hsm.ErrTokenNotFound)), codes.Unavailable},
		{"session opened on a token gone", fmt.Errorf("%w: %w", hsm.ErrUnavailable, hsm.ErrTokenNotFound), codes.Unavailable},
		{"token not found", fmt.Errorf("%w: pkcs11:token=t", hsm.ErrTokenNotFound), codes.NotFound},
		{"key not found", hsm.ErrKeyNotFound, codes.NotFound},
		{"unavailable", errors.Join(hsm.ErrUnavailable), codes.Unavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := codeOf(tt.err); got != tt.want {
				t.Fatalf("codeOf(%v) = %v; want %v", tt.err, got, tt.want)
			}
		})
	}
}
