package state_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"testing"

	"github.com/hsmsigner/hsmsigner/signer/state"
)

// TestOCSPResponsesSurviveReopen checks the OCSP cache in the state file:
// saved responses come back after a reopen, a save replaces, a delete
// removes, and an empty or oversized response is refused.
func TestOCSPResponsesSurviveReopen(t *testing.T) {
	ctx := context.Background()
	s, path := openStore(t)
	a, b := sha256.Sum256([]byte("a")), sha256.Sum256([]byte("b"))
	for _, c := range []struct {
		cert [32]byte
		der  []byte
	}{{a, []byte("first")}, {a, []byte("second")}, {b, []byte("other")}} {
		if err := s.SaveOCSPResponse(ctx, c.cert, c.der); err != nil {
			t.Fatal(err)
		}
	}
	for _, bad := range [][]byte{nil, make([]byte, 1<<20+1)} {
		if err := s.SaveOCSPResponse(ctx, a, bad); !errors.Is(err, state.ErrInvalid) {
			t.Fatalf("response of %d bytes: %v, want ErrInvalid", len(bad), err)
		}
	}
	if err := s.DeleteOCSPResponse(ctx, b); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteOCSPResponse(ctx, b); err != nil {
		t.Fatalf("deleting an absent response: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := state.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	got, err := s2.LoadOCSPResponses(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || !bytes.Equal(got[a], []byte("second")) {
		t.Fatalf("after reopen: %q, want only a's second response", got)
	}
}
