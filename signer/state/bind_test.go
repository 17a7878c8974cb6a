package state_test

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/hsmsigner/hsmsigner/signer/state"
)

// TestBindKey: a key is bound to one member, once; the binding survives
// every write of the record but its deletion, and a transaction that binds
// and then fails leaves the key unbound.
func TestBindKey(t *testing.T) {
	ctx := context.Background()
	s, _ := openStore(t)
	const id = "a1b2c3d4"
	if err := s.PutKey(ctx, state.KeyRecord{Token: tok, ID: id, Usage: state.UsageSign}); err != nil {
		t.Fatal(err)
	}
	member := func() string {
		t.Helper()
		r, err := s.GetKey(ctx, tok, id)
		if err != nil {
			t.Fatal(err)
		}
		return r.Member
	}

	// A failed transaction binds nothing.
	errLater := errors.New("a later step failed")
	err := s.Update(ctx, func(tx *state.Tx) error {
		if err := tx.BindKey(tok, id, "EE/GOV/A"); err != nil {
			return err
		}
		return errLater
	})
	if !errors.Is(err, errLater) || member() != "" {
		t.Fatalf("after a failed transaction: %v, member %q; want the error and no binding", err, member())
	}

	steps := []struct {
		name    string
		do      func() error
		wantErr error
		want    string
	}{
		{"bind", func() error { return s.BindKey(ctx, tok, "A1B2C3D4", "EE/GOV/A") }, nil, "EE/GOV/A"},
		{"bind again to the same member", func() error { return s.BindKey(ctx, tok, id, "EE/GOV/A") }, nil, "EE/GOV/A"},
		{"bind to another member", func() error { return s.BindKey(ctx, tok, id, "EE/GOV/B") }, state.ErrBound, "EE/GOV/A"},
		{"bind to no member", func() error { return s.BindKey(ctx, tok, id, "") }, state.ErrInvalid, "EE/GOV/A"},
		{"rename keeps it", func() error { return s.RenameKey(ctx, tok, id, "renamed") }, nil, "EE/GOV/A"},
		{"put without it", func() error {
			return s.PutKey(ctx, state.KeyRecord{Token: tok, ID: id, Usage: state.UsageSign})
		}, state.ErrBound, "EE/GOV/A"},
		{"put with another", func() error {
			return s.PutKey(ctx, state.KeyRecord{Token: tok, ID: id, Usage: state.UsageSign, Member: "EE/GOV/B"})
		}, state.ErrBound, "EE/GOV/A"},
		{"update clearing it", func() error {
			return s.UpdateKey(ctx, tok, id, func(r *state.KeyRecord) error { r.Member = ""; return nil })
		}, state.ErrBound, "EE/GOV/A"},
		{"unknown key", func() error { return s.BindKey(ctx, tok, "ff", "EE/GOV/A") }, state.ErrNotFound, "EE/GOV/A"},
		{"control character", func() error { return s.BindKey(ctx, "0000000000000009", "ff", "EE\n") }, state.ErrInvalid, "EE/GOV/A"},
	}
	for _, st := range steps {
		err := st.do()
		if st.wantErr == nil && err != nil || st.wantErr != nil && !errors.Is(err, st.wantErr) {
			t.Fatalf("%s: %v, want %v", st.name, err, st.wantErr)
		}
		if got := member(); got != st.want {
			t.Fatalf("%s: member %q, want %q", st.name, got, st.want)
		}
	}

	// Deleting the record releases the binding: a key recorded again under
	// the same id starts unbound.
	if err := s.DeleteKey(ctx, tok, id); err != nil {
		t.Fatal(err)
	}
	if err := s.PutKey(ctx, state.KeyRecord{Token: tok, ID: id, Usage: state.UsageSign}); err != nil {
		t.Fatal(err)
	}
	if got := member(); got != "" {
		t.Fatalf("after delete and put: member %q, want none", got)
	}
	if err := s.BindKey(ctx, tok, id, "EE/GOV/B"); err != nil {
		t.Fatal(err)
	}
}

// TestBindKeyMembers: a key recorded before bindings were is bound at
// once to every member its records name; the binding then never changes,
// and a request for one of its members keeps it as it is.
func TestBindKeyMembers(t *testing.T) {
	ctx := context.Background()
	s, _ := openStore(t)
	const id = "c0ffee"
	if err := s.PutKey(ctx, state.KeyRecord{Token: tok, ID: id, Usage: state.UsageSign}); err != nil {
		t.Fatal(err)
	}
	members := func() []string {
		t.Helper()
		r, err := s.GetKey(ctx, tok, id)
		if err != nil {
			t.Fatal(err)
		}
		return r.Members()
	}
	ab := []string{"EE/GOV/A", "EE/GOV/B"}
	steps := []struct {
		name    string
		do      func() error
		wantErr error
		want    []string
	}{
		{"no member", func() error { return s.BindKeyMembers(ctx, tok, id, nil) }, state.ErrInvalid, nil},
		{"an empty member", func() error { return s.BindKeyMembers(ctx, tok, id, []string{"", "EE/GOV/A"}) }, state.ErrInvalid, nil},
		{"bind to B and A, twice named", func() error {
			return s.BindKeyMembers(ctx, tok, id, []string{"EE/GOV/B", "EE/GOV/A", "EE/GOV/B"})
		}, nil, ab},
		{"bind again to the same", func() error { return s.BindKeyMembers(ctx, tok, id, ab) }, nil, ab},
		{"bind to A alone", func() error { return s.BindKeyMembers(ctx, tok, id, []string{"EE/GOV/A"}) }, state.ErrBound, ab},
		{"a request for B keeps it", func() error { return s.BindKey(ctx, tok, id, "EE/GOV/B") }, nil, ab},
		{"a request for C", func() error { return s.BindKey(ctx, tok, id, "EE/GOV/C") }, state.ErrBound, ab},
		{"rename keeps it", func() error { return s.RenameKey(ctx, tok, id, "renamed") }, nil, ab},
		{"update dropping B", func() error {
			return s.UpdateKey(ctx, tok, id, func(r *state.KeyRecord) error { r.MoreMembers = nil; return nil })
		}, state.ErrBound, ab},
		{"update naming A twice", func() error {
			return s.UpdateKey(ctx, tok, id, func(r *state.KeyRecord) error { r.MoreMembers = []string{"EE/GOV/A"}; return nil })
		}, state.ErrInvalid, ab},
		{"unknown key", func() error { return s.BindKeyMembers(ctx, tok, "ff", ab) }, state.ErrNotFound, ab},
	}
	for _, st := range steps {
		err := st.do()
		if st.wantErr == nil && err != nil || st.wantErr != nil && !errors.Is(err, st.wantErr) {
			t.Fatalf("%s: %v, want %v", st.name, err, st.wantErr)
		}
		if got := members(); !slices.Equal(got, st.want) {
			t.Fatalf("%s: members %q, want %q", st.name, got, st.want)
		}
	}
}
