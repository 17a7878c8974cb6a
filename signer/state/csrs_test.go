package state_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hsmsigner/hsmsigner/signer/state"
)

func TestCSRCRUD(t *testing.T) {
	ctx := context.Background()
	s, _ := openStore(t)
	der := newCSR(t, "member")
	rec := state.CSRRecord{ID: "b-2", Token: tok, KeyID: "0A", Member: "EE/COM/1", Subject: "CN=member", DER: der}
	if err := s.PutCSR(ctx, rec); err != nil {
		t.Fatalf("PutCSR: %v", err)
	}
	got, err := s.GetCSR(ctx, "b-2")
	if err != nil {
		t.Fatalf("GetCSR: %v", err)
	}
	if got.KeyID != "0a" || got.Subject != "CN=member" || !bytes.Equal(got.DER, der) || got.CreatedAt.IsZero() {
		t.Errorf("GetCSR = %+v", got)
	}
	// Replacing keeps CreatedAt; a given CreatedAt is kept as given.
	rec.Subject = "CN=other"
	if err := s.PutCSR(ctx, rec); err != nil {
		t.Fatal(err)
	}
	if again, _ := s.GetCSR(ctx, "b-2"); again.Subject != "CN=other" || !again.CreatedAt.Equal(got.CreatedAt) {
		t.Errorf("after replace: %+v", again)
	}
	when := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	if err := s.PutCSR(ctx, state.CSRRecord{ID: "a.1", Token: tok, KeyID: "0b", DER: der, CreatedAt: when}); err != nil {
		t.Fatal(err)
	}
	list, err := s.ListCSRs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].ID != "a.1" || list[1].ID != "b-2" || !list[0].CreatedAt.Equal(when) {
		t.Fatalf("ListCSRs = %+v", list)
	}
	if err := s.DeleteCSR(ctx, "b-2"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetCSR(ctx, "b-2"); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("GetCSR after delete = %v, want ErrNotFound", err)
	}
	if err := s.DeleteCSR(ctx, "b-2"); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("second DeleteCSR = %v, want ErrNotFound", err)
	}
}

func TestCSRValidation(t *testing.T) {
	ctx := context.Background()
	s, _ := openStore(t)
	good := state.CSRRecord{ID: "x", Token: tok, KeyID: "01", DER: newCSR(t, "v")}
	tests := []struct {
		name string
		mod  func(*state.CSRRecord)
	}{
		{"empty id", func(r *state.CSRRecord) { r.ID = "" }},
		{"id with slash", func(r *state.CSRRecord) { r.ID = "a/b" }},
		{"id with space", func(r *state.CSRRecord) { r.ID = "a b" }},
		{"id too long", func(r *state.CSRRecord) { r.ID = strings.Repeat("a", 129) }},
		{"no token", func(r *state.CSRRecord) { r.Token = "" }},
		{"no key id", func(r *state.CSRRecord) { r.KeyID = "" }},
		{"key id not hex", func(r *state.CSRRecord) { r.KeyID = "g0" }},
		{"empty DER", func(r *state.CSRRecord) { r.DER = nil }},
		{"DER garbage", func(r *state.CSRRecord) { r.DER = []byte("CSR") }},
		{"subject with newline", func(r *state.CSRRecord) { r.Subject = "CN=a\nCN=b" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := good
			tt.mod(&rec)
			if err := s.PutCSR(ctx, rec); !errors.Is(err, state.ErrInvalid) {
				t.Fatalf("PutCSR = %v, want ErrInvalid", err)
			}
		})
	}
	if list, err := s.ListCSRs(ctx); err != nil || len(list) != 0 {
		t.Fatalf("invalid input stored %d CSRs (%v)", len(list), err)
	}
	for _, id := range []string{"", "a/b"} {
		if _, err := s.GetCSR(ctx, id); !errors.Is(err, state.ErrInvalid) {
			t.Errorf("GetCSR(%q) = %v, want ErrInvalid", id, err)
		}
		if err := s.DeleteCSR(ctx, id); !errors.Is(err, state.ErrInvalid) {
			t.Errorf("DeleteCSR(%q) = %v, want ErrInvalid", id, err)
		}
	}
}
