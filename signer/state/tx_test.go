package state_test

import (
	"context"
	"errors"
	"testing"

	"github.com/hsmsigner/hsmsigner/signer/state"
)

// counts returns how many keys, certificates and CSRs the store holds.
func counts(t *testing.T, s *state.Store) (keys, certs, csrs int) {
	t.Helper()
	err := s.View(context.Background(), func(tx *state.Tx) error {
		k, err := tx.ListKeys()
		if err != nil {
			return err
		}
		c, err := tx.ListCerts(state.CertFilter{})
		if err != nil {
			return err
		}
		r, err := tx.ListCSRs()
		if err != nil {
			return err
		}
		keys, certs, csrs = len(k), len(c), len(r)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return keys, certs, csrs
}

func TestUpdateFailingHalfwayLeavesNothing(t *testing.T) {
	ctx := context.Background()
	s, _ := openStore(t)
	der, _, _ := newCert(t, "half")
	errStop := errors.New("stop")

	tests := []struct {
		name string
		fail func(tx *state.Tx) error // runs after some writes succeeded
		want error
	}{
		{"fn returns its own error", func(*state.Tx) error { return errStop }, errStop},
		{"a later call is invalid", func(tx *state.Tx) error {
			return tx.PutCert(state.CertRecord{DER: der, Status: "bogus"})
		}, state.ErrInvalid},
		{"a later create collides", func(tx *state.Tx) error {
			return tx.CreateKey(state.KeyRecord{Token: tok, ID: "02", Label: "L"})
		}, state.ErrExists},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.Update(ctx, func(tx *state.Tx) error {
				if err := tx.CreateKey(state.KeyRecord{Token: tok, ID: "01", Label: "L", Usage: state.UsageSign}); err != nil {
					return err
				}
				if err := tx.PutCert(state.CertRecord{DER: der, Token: tok, KeyID: "01", Status: state.StatusSaved}); err != nil {
					return err
				}
				if err := tx.PutCSR(state.CSRRecord{ID: "c", Token: tok, KeyID: "01", DER: newCSR(t, "c")}); err != nil {
					return err
				}
				// Inside the transaction, the writes are visible.
				if _, err := tx.GetCert(sha1Hex(der)); err != nil {
					return err
				}
				return tt.fail(tx)
			})
			if !errors.Is(err, tt.want) {
				t.Fatalf("Update = %v, want %v", err, tt.want)
			}
			if k, c, r := counts(t, s); k+c+r != 0 {
				t.Fatalf("failed Update left %d keys, %d certs, %d CSRs", k, c, r)
			}
			// The label index was rolled back with the rest.
			if err := s.CreateKey(ctx, state.KeyRecord{Token: tok, ID: "09", Label: "L"}); err != nil {
				t.Fatalf("label still taken after rollback: %v", err)
			}
			if err := s.DeleteKey(ctx, tok, "09"); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestUpdatePanicRollsBack(t *testing.T) {
	s, _ := openStore(t)
	func() {
		defer func() {
			if recover() == nil {
				t.Fatal("panic did not propagate")
			}
		}()
		_ = s.Update(context.Background(), func(tx *state.Tx) error {
			if err := tx.PutKey(state.KeyRecord{Token: tok, ID: "01"}); err != nil {
				return err
			}
			panic("in the middle")
		})
	}()
	if k, _, _ := counts(t, s); k != 0 {
		t.Fatalf("panicking Update left %d keys", k)
	}
}

// TestDeleteKeyWithCertsInOneTransaction is the service's use: a key and all
// its certificates and CSRs go together.
func TestDeleteKeyWithCertsInOneTransaction(t *testing.T) {
	ctx := context.Background()
	s, _ := openStore(t)
	const id = "0badc0de"
	if err := s.CreateKey(ctx, state.KeyRecord{Token: tok, ID: id, Label: "k"}); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		der, _, _ := newCert(t, "k")
		if err := s.PutCert(ctx, state.CertRecord{DER: der, Token: tok, KeyID: id, Status: state.StatusSaved}); err != nil {
			t.Fatal(err)
		}
	}
	keep, _, _ := newCert(t, "other key")
	if err := s.PutCert(ctx, state.CertRecord{DER: keep, Token: tok, KeyID: "01", Status: state.StatusSaved}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutCSR(ctx, state.CSRRecord{ID: "r1", Token: tok, KeyID: id, DER: newCSR(t, "k")}); err != nil {
		t.Fatal(err)
	}

	err := s.Update(ctx, func(tx *state.Tx) error {
		certs, err := tx.ListCerts(state.CertFilter{Token: tok, KeyID: id})
		if err != nil {
			return err
		}
		for _, c := range certs {
			if err := tx.DeleteCert(c.SHA256); err != nil {
				return err
			}
		}
		csrs, err := tx.ListCSRs()
		if err != nil {
			return err
		}
		for _, r := range csrs {
			if r.Token == tok && r.KeyID == id {
				if err := tx.DeleteCSR(r.ID); err != nil {
					return err
				}
			}
		}
		return tx.DeleteKey(tok, id)
	})
	if err != nil {
		t.Fatal(err)
	}
	k, c, r := counts(t, s)
	if k != 0 || c != 1 || r != 0 {
		t.Fatalf("after delete: %d keys, %d certs, %d CSRs; want 0, 1, 0", k, c, r)
	}
	if _, err := s.GetCert(ctx, sha256Hex(keep)); err != nil {
		t.Fatalf("certificate of another key lost: %v", err)
	}
}

func TestViewIsReadOnly(t *testing.T) {
	ctx := context.Background()
	s, _ := openStore(t)
	der, _, _ := newCert(t, "ro")
	writes := []struct {
		name string
		op   func(tx *state.Tx) error
	}{
		{"PutKey", func(tx *state.Tx) error { return tx.PutKey(state.KeyRecord{Token: tok, ID: "01"}) }},
		{"CreateKey", func(tx *state.Tx) error { return tx.CreateKey(state.KeyRecord{Token: tok, ID: "01"}) }},
		{"RenameKey", func(tx *state.Tx) error { return tx.RenameKey(tok, "01", "n") }},
		{"DeleteKey", func(tx *state.Tx) error { return tx.DeleteKey(tok, "01") }},
		{"PutCert", func(tx *state.Tx) error { return tx.PutCert(state.CertRecord{DER: der, Status: state.StatusSaved}) }},
		{"UpdateCert", func(tx *state.Tx) error {
			return tx.UpdateCert(sha256Hex(der), func(*state.CertRecord) error { return nil })
		}},
		{"DeleteCert", func(tx *state.Tx) error { return tx.DeleteCert(sha256Hex(der)) }},
		{"PutCSR", func(tx *state.Tx) error {
			return tx.PutCSR(state.CSRRecord{ID: "c", Token: tok, KeyID: "01", DER: der})
		}},
		{"DeleteCSR", func(tx *state.Tx) error { return tx.DeleteCSR("c") }},
	}
	for _, w := range writes {
		t.Run(w.name, func(t *testing.T) {
			err := s.View(ctx, func(tx *state.Tx) error {
				if tx.Writable() {
					t.Error("View tx reports writable")
				}
				return w.op(tx)
			})
			if !errors.Is(err, state.ErrReadOnly) {
				t.Fatalf("%s in View = %v, want ErrReadOnly", w.name, err)
			}
		})
	}
}

func TestTxUnusableAfterFunctionReturns(t *testing.T) {
	s, _ := openStore(t)
	var kept *state.Tx
	if err := s.Update(context.Background(), func(tx *state.Tx) error { kept = tx; return nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := kept.ListKeys(); !errors.Is(err, state.ErrTxDone) {
		t.Errorf("ListKeys on a finished Tx = %v, want ErrTxDone", err)
	}
	if err := kept.PutKey(state.KeyRecord{Token: tok, ID: "01"}); !errors.Is(err, state.ErrTxDone) {
		t.Errorf("PutKey on a finished Tx = %v, want ErrTxDone", err)
	}
}
