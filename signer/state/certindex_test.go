package state_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/hsmsigner/hsmsigner/signer/state"
)

// TestCertIndexSeesEveryChange checks that listing by member or by key,
// which goes through the certificate index, sees each change to the
// certificates at the next call: an import, a member changed, a
// deletion, a change rolled back (not seen), and a transaction's own
// uncommitted change (seen within it).
func TestCertIndexSeesEveryChange(t *testing.T) {
	st, _ := openStore(t)
	ctx := context.Background()
	const tok = "0123456789abcdef"
	put := func(n int, member, key string) string {
		t.Helper()
		der, nb, na := newCert(t, fmt.Sprintf("cert %d", n))
		if err := st.PutCert(ctx, state.CertRecord{DER: der, Token: tok, KeyID: key, Member: member, Status: state.StatusSaved, NotBefore: nb, NotAfter: na}); err != nil {
			t.Fatal(err)
		}
		return sha256Hex(der)
	}
	list := func(f state.CertFilter) []string {
		t.Helper()
		rs, err := st.ListCerts(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, r := range rs {
			out = append(out, r.SHA256)
		}
		return out
	}
	want := func(what string, f state.CertFilter, sums ...string) {
		t.Helper()
		slices.Sort(sums)
		if got := list(f); !slices.Equal(got, sums) {
			t.Fatalf("%s: ListCerts(%+v) = %v, want %v", what, f, got, sums)
		}
	}
	a1 := put(1, "EE/GOV/A", "aa01")
	b1 := put(2, "EE/GOV/B", "bb01")
	want("first", state.CertFilter{Member: "EE/GOV/A"}, a1)
	want("first by key", state.CertFilter{KeyID: "AA01"}, a1)
	want("first by token and key", state.CertFilter{Token: tok, KeyID: "bb01"}, b1)

	a2 := put(3, "EE/GOV/A", "aa02")
	want("an import", state.CertFilter{Member: "EE/GOV/A"}, a1, a2)
	want("an import, by key", state.CertFilter{KeyID: "aa02"}, a2)

	if err := st.UpdateCert(ctx, a2, func(r *state.CertRecord) error { r.Member = "EE/GOV/B"; return nil }); err != nil {
		t.Fatal(err)
	}
	want("a member changed (old member)", state.CertFilter{Member: "EE/GOV/A"}, a1)
	want("a member changed (new member)", state.CertFilter{Member: "EE/GOV/B"}, b1, a2)

	if err := st.DeleteCert(ctx, a1); err != nil {
		t.Fatal(err)
	}
	want("a deletion", state.CertFilter{Member: "EE/GOV/A"})
	want("a deletion, by key", state.CertFilter{KeyID: "aa01"})

	errRollback := errors.New("roll back")
	der, nb, na := newCert(t, "rolled back")
	err := st.Update(ctx, func(tx *state.Tx) error {
		if err := tx.PutCert(state.CertRecord{DER: der, Token: tok, KeyID: "cc01", Member: "EE/GOV/C", Status: state.StatusSaved, NotBefore: nb, NotAfter: na}); err != nil {
			return err
		}
		rs, err := tx.ListCerts(state.CertFilter{Member: "EE/GOV/C"})
		if err != nil {
			return err
		}
		if len(rs) != 1 || rs[0].SHA256 != sha256Hex(der) {
			t.Errorf("within the transaction: %d certificates of EE/GOV/C, want its own", len(rs))
		}
		return errRollback
	})
	if !errors.Is(err, errRollback) {
		t.Fatal(err)
	}
	want("a change rolled back", state.CertFilter{Member: "EE/GOV/C"})
	want("after a roll back, by key", state.CertFilter{KeyID: "cc01"})
	c1 := put(4, "EE/GOV/C", "cc02")
	want("an import after a roll back", state.CertFilter{Member: "EE/GOV/C"}, c1)
	want("all", state.CertFilter{}, b1, a2, c1)
}

// TestCertIndexAfterRestoreAtTheSameVersion: a state file put back in
// place (a restore) whose certificates version equals the one the index
// was built at, with other records, is listed as it is: the reopened
// Store builds its own index. A second Store on the same file is refused
// while the first holds it, so two indexes never serve one file.
func TestCertIndexAfterRestoreAtTheSameVersion(t *testing.T) {
	ctx := context.Background()
	st, path := openStore(t)
	der, nb, na := newCert(t, "moved")
	sum := sha256Hex(der)
	if err := st.PutCert(ctx, state.CertRecord{DER: der, KeyID: "aa01", Member: "EE/GOV/A", Status: state.StatusSaved, NotBefore: nb, NotAfter: na}); err != nil {
		t.Fatal(err)
	}
	if _, err := state.Open(ctx, path); !errors.Is(err, state.ErrLocked) {
		t.Fatalf("a second Store on the open file: %v, want ErrLocked", err)
	}

	// The copy, made now, then changed on its own: the certificate deleted.
	copyPath := filepath.Join(t.TempDir(), "copy.db")
	var buf bytes.Buffer
	if _, err := st.Backup(ctx, &buf); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(copyPath, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	cp, err := state.Open(ctx, copyPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := cp.DeleteCert(ctx, sum); err != nil {
		t.Fatal(err)
	}
	if err := cp.Close(); err != nil {
		t.Fatal(err)
	}

	// The original moves the certificate to member B (one change too, so
	// the same certificates version) and indexes it.
	if err := st.UpdateCert(ctx, sum, func(r *state.CertRecord) error { r.Member = "EE/GOV/B"; return nil }); err != nil {
		t.Fatal(err)
	}
	if rs, err := st.ListCerts(ctx, state.CertFilter{Member: "EE/GOV/B"}); err != nil || len(rs) != 1 {
		t.Fatalf("before the restore: %d certificates of EE/GOV/B (%v), want 1", len(rs), err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	// Restore the copy over the original and reopen it in this process.
	if err := os.Rename(copyPath, path); err != nil {
		t.Fatal(err)
	}
	re, err := state.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer re.Close()
	for _, f := range []state.CertFilter{{Member: "EE/GOV/A"}, {Member: "EE/GOV/B"}, {KeyID: "aa01"}} {
		rs, err := re.ListCerts(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		if len(rs) != 0 {
			t.Errorf("after the restore, ListCerts(%+v) = %d certificates, want none (the copy deleted it)", f, len(rs))
		}
	}
}
