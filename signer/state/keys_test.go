package state_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/hsmsigner/hsmsigner/signer/state"
)

const tok = "8a4b2c1d9e0f7a6b"

func TestKeyCRUD(t *testing.T) {
	ctx := context.Background()
	s, _ := openStore(t)

	rec := state.KeyRecord{Token: tok, ID: "A1B2C3D4", Label: "sign-1", Usage: state.UsageSign, Spec: "rsa-3072"}
	if err := s.PutKey(ctx, rec); err != nil {
		t.Fatalf("PutKey: %v", err)
	}

	got, err := s.GetKey(ctx, tok, "a1b2c3d4")
	if err != nil {
		t.Fatalf("GetKey: %v", err)
	}
	if got.ID != "a1b2c3d4" {
		t.Errorf("ID = %q, want lower-case a1b2c3d4", got.ID)
	}
	if got.Label != rec.Label || got.Usage != rec.Usage || got.Spec != rec.Spec || got.Token != tok {
		t.Errorf("GetKey = %+v, want fields of %+v", got, rec)
	}
	if got.CreatedAt.IsZero() || !got.UpdatedAt.Equal(got.CreatedAt) {
		t.Errorf("timestamps on create: created %v updated %v", got.CreatedAt, got.UpdatedAt)
	}
	if _, err := s.GetKey(ctx, tok, "A1B2C3D4"); err != nil {
		t.Errorf("GetKey with upper-case id: %v", err)
	}

	// Update keeps CreatedAt, moves UpdatedAt.
	rec.Usage = state.UsageAuth
	if err := s.PutKey(ctx, rec); err != nil {
		t.Fatal(err)
	}
	upd, err := s.GetKey(ctx, tok, rec.ID)
	if err != nil {
		t.Fatal(err)
	}
	if upd.Usage != state.UsageAuth || !upd.CreatedAt.Equal(got.CreatedAt) || upd.UpdatedAt.Before(got.UpdatedAt) {
		t.Errorf("after update: %+v (first write %+v)", upd, got)
	}

	if err := s.RenameKey(ctx, tok, rec.ID, "Auth key of the server"); err != nil {
		t.Fatalf("RenameKey: %v", err)
	}
	if got, _ := s.GetKey(ctx, tok, rec.ID); got.Name != "Auth key of the server" || got.Usage != state.UsageAuth {
		t.Errorf("after rename: %+v", got)
	}

	other := state.KeyRecord{Token: "0000000000000001", ID: "ff", Usage: state.UsageTSA}
	if err := s.PutKey(ctx, other); err != nil {
		t.Fatal(err)
	}
	list, err := s.ListKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].Token != other.Token || list[1].Token != tok {
		t.Fatalf("ListKeys = %+v, want 2 ordered by token", list)
	}

	if err := s.DeleteKey(ctx, tok, rec.ID); err != nil {
		t.Fatalf("DeleteKey: %v", err)
	}
	if _, err := s.GetKey(ctx, tok, rec.ID); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("GetKey after delete = %v, want ErrNotFound", err)
	}
	if err := s.DeleteKey(ctx, tok, rec.ID); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("second DeleteKey = %v, want ErrNotFound", err)
	}
	if err := s.RenameKey(ctx, tok, rec.ID, "x"); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("RenameKey of a deleted key = %v, want ErrNotFound", err)
	}
	// The label was freed with the key.
	if err := s.CreateKey(ctx, state.KeyRecord{Token: tok, ID: "02", Label: "sign-1"}); err != nil {
		t.Errorf("CreateKey reusing the label of a deleted key: %v", err)
	}
}

func TestKeyValidation(t *testing.T) {
	ctx := context.Background()
	s, _ := openStore(t)
	good := state.KeyRecord{Token: tok, ID: "0a0b", Usage: state.UsageSign}
	tests := []struct {
		name string
		mod  func(*state.KeyRecord)
	}{
		{"empty token", func(r *state.KeyRecord) { r.Token = "" }},
		{"token with slash", func(r *state.KeyRecord) { r.Token = "ab/cd" }},
		{"token with padding", func(r *state.KeyRecord) { r.Token = "abcd    " }},
		{"token too long", func(r *state.KeyRecord) { r.Token = strings.Repeat("a", 65) }},
		{"empty id", func(r *state.KeyRecord) { r.ID = "" }},
		{"id not hex", func(r *state.KeyRecord) { r.ID = "xyz0" }},
		{"id odd length", func(r *state.KeyRecord) { r.ID = "abc" }},
		{"unknown usage", func(r *state.KeyRecord) { r.Usage = "encrypt" }},
		{"usage wrong case", func(r *state.KeyRecord) { r.Usage = "SIGN" }},
		{"label with newline", func(r *state.KeyRecord) { r.Label = "a\nb" }},
		{"name not utf-8", func(r *state.KeyRecord) { r.Name = "\xff\xfe" }},
		{"name too long", func(r *state.KeyRecord) { r.Name = strings.Repeat("n", 1025) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := good
			tt.mod(&rec)
			for op, f := range map[string]func(context.Context, state.KeyRecord) error{"PutKey": s.PutKey, "CreateKey": s.CreateKey} {
				if err := f(ctx, rec); !errors.Is(err, state.ErrInvalid) {
					t.Errorf("%s(%+v) = %v, want ErrInvalid", op, rec, err)
				}
			}
		})
	}
	if keys, err := s.ListKeys(ctx); err != nil || len(keys) != 0 {
		t.Fatalf("invalid input left %d keys (%v)", len(keys), err)
	}
	for _, tc := range []struct{ token, id string }{{"", "01"}, {tok, ""}, {tok, "zz"}} {
		if _, err := s.GetKey(ctx, tc.token, tc.id); !errors.Is(err, state.ErrInvalid) {
			t.Errorf("GetKey(%q, %q) = %v, want ErrInvalid", tc.token, tc.id, err)
		}
		if err := s.DeleteKey(ctx, tc.token, tc.id); !errors.Is(err, state.ErrInvalid) {
			t.Errorf("DeleteKey(%q, %q) = %v, want ErrInvalid", tc.token, tc.id, err)
		}
	}
	if err := s.PutKey(ctx, good); err != nil {
		t.Fatal(err)
	}
	if err := s.RenameKey(ctx, tok, good.ID, "bad\x00name"); !errors.Is(err, state.ErrInvalid) {
		t.Errorf("RenameKey to a name with NUL = %v, want ErrInvalid", err)
	}
	err := s.UpdateKey(ctx, tok, good.ID, func(r *state.KeyRecord) error { r.ID = "0c0d"; return nil })
	if !errors.Is(err, state.ErrInvalid) {
		t.Errorf("UpdateKey changing the id = %v, want ErrInvalid", err)
	}
	if keys, _ := s.ListKeys(ctx); len(keys) != 1 || keys[0].ID != good.ID || keys[0].Name != "" {
		t.Errorf("after refused updates: %+v", keys)
	}
}

func TestKeyLabelsUniquePerToken(t *testing.T) {
	ctx := context.Background()
	s, _ := openStore(t)
	a := state.KeyRecord{Token: tok, ID: "01", Label: "L"}
	if err := s.CreateKey(ctx, a); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		op   func() error
		want error
	}{
		{"CreateKey same id", func() error { return s.CreateKey(ctx, state.KeyRecord{Token: tok, ID: "01", Label: "other"}) }, state.ErrExists},
		{"CreateKey same label", func() error { return s.CreateKey(ctx, state.KeyRecord{Token: tok, ID: "02", Label: "L"}) }, state.ErrExists},
		{"PutKey same label other id", func() error { return s.PutKey(ctx, state.KeyRecord{Token: tok, ID: "03", Label: "L"}) }, state.ErrExists},
		{"same label other token", func() error { return s.CreateKey(ctx, state.KeyRecord{Token: "other", ID: "02", Label: "L"}) }, nil},
		{"empty labels do not collide", func() error {
			if err := s.CreateKey(ctx, state.KeyRecord{Token: tok, ID: "04"}); err != nil {
				return err
			}
			return s.CreateKey(ctx, state.KeyRecord{Token: tok, ID: "05"})
		}, nil},
		{"PutKey same id keeps its label", func() error { return s.PutKey(ctx, state.KeyRecord{Token: tok, ID: "01", Label: "L", Name: "n"}) }, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.op(); !errors.Is(err, tt.want) || (tt.want == nil && err != nil) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
	for _, id := range []string{"02", "03"} {
		if _, err := s.GetKey(ctx, tok, id); !errors.Is(err, state.ErrNotFound) {
			t.Errorf("refused key %s was stored: %v", id, err)
		}
	}

	// Relabelling frees the old label and takes the new one.
	if err := s.UpdateKey(ctx, tok, "01", func(r *state.KeyRecord) error { r.Label = "M"; return nil }); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateKey(ctx, state.KeyRecord{Token: tok, ID: "06", Label: "L"}); err != nil {
		t.Errorf("old label not freed by relabel: %v", err)
	}
	if err := s.CreateKey(ctx, state.KeyRecord{Token: tok, ID: "07", Label: "M"}); !errors.Is(err, state.ErrExists) {
		t.Errorf("new label not taken by relabel: %v", err)
	}
	// Relabelling onto a taken label is refused and changes nothing.
	err := s.UpdateKey(ctx, tok, "01", func(r *state.KeyRecord) error { r.Label = "L"; return nil })
	if !errors.Is(err, state.ErrExists) {
		t.Errorf("relabel onto a taken label = %v, want ErrExists", err)
	}
	if got, _ := s.GetKey(ctx, tok, "01"); got.Label != "M" {
		t.Errorf("label after refused relabel = %q, want M", got.Label)
	}
}

func TestCreateKeyConcurrentDuplicateLabel(t *testing.T) {
	ctx := context.Background()
	s, _ := openStore(t)
	const n = 8
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			errs[i] = s.CreateKey(ctx, state.KeyRecord{Token: tok, ID: fmt.Sprintf("%02x", i), Label: "shared", Usage: state.UsageSign})
		})
	}
	close(start)
	wg.Wait()

	winners := 0
	for i, err := range errs {
		switch {
		case err == nil:
			winners++
		case !errors.Is(err, state.ErrExists):
			t.Errorf("goroutine %d: %v, want nil or ErrExists", i, err)
		}
	}
	if winners != 1 {
		t.Fatalf("%d goroutines created the label, want exactly 1", winners)
	}
	keys, err := s.ListKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || keys[0].Label != "shared" {
		t.Fatalf("stored keys = %+v, want the one winner", keys)
	}
}
