package state_test

import (
	"bytes"
	"context"
	"encoding/pem"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/hsmsigner/hsmsigner/signer/state"
)

func TestCertCRUD(t *testing.T) {
	ctx := context.Background()
	s, _ := openStore(t)
	der, nb, na := newCert(t, "member")
	rec := state.CertRecord{DER: der, Token: tok, KeyID: "0A0B", Member: "EE/COM/1", Status: state.StatusSaved, NotBefore: nb, NotAfter: na}
	if err := s.PutCert(ctx, rec); err != nil {
		t.Fatalf("PutCert: %v", err)
	}
	got, err := s.GetCert(ctx, sha256Hex(der))
	if err != nil {
		t.Fatalf("GetCert: %v", err)
	}
	if got.SHA256 != sha256Hex(der) || got.SHA1 != sha1Hex(der) || !bytes.Equal(got.DER, der) {
		t.Errorf("hashes or DER wrong: %+v", got)
	}
	if got.KeyID != "0a0b" || got.Member != "EE/COM/1" || got.Status != state.StatusSaved || got.Active {
		t.Errorf("fields: %+v", got)
	}
	if !got.NotBefore.Equal(nb) || !got.NotAfter.Equal(na) || got.ImportedAt.IsZero() || !got.UpdatedAt.Equal(got.ImportedAt) {
		t.Errorf("times: %+v", got)
	}

	// PutCert again replaces, keeping ImportedAt.
	rec.Status, rec.Active = state.StatusRegistered, true
	if err := s.PutCert(ctx, rec); err != nil {
		t.Fatal(err)
	}
	again, _ := s.GetCert(ctx, sha256Hex(der))
	if again.Status != state.StatusRegistered || !again.Active || !again.ImportedAt.Equal(got.ImportedAt) {
		t.Errorf("after replace: %+v", again)
	}

	if err := s.DeleteCert(ctx, strings.ToUpper(sha256Hex(der))); err != nil {
		t.Fatalf("DeleteCert: %v", err)
	}
	for _, q := range []string{sha256Hex(der), sha1Hex(der), sha1Hex(der)[:8]} {
		if _, err := s.GetCert(ctx, q); !errors.Is(err, state.ErrNotFound) {
			t.Errorf("GetCert(%s) after delete = %v, want ErrNotFound", q, err)
		}
	}
	if err := s.DeleteCert(ctx, sha256Hex(der)); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("second DeleteCert = %v, want ErrNotFound", err)
	}
}

func TestGetCertLookup(t *testing.T) {
	ctx := context.Background()
	s, _ := openStore(t)
	der, _, _ := newCert(t, "lookup")
	if err := s.PutCert(ctx, state.CertRecord{DER: der, Status: state.StatusSaved}); err != nil {
		t.Fatal(err)
	}
	a, b := collidingDERs(t)
	for _, d := range [][]byte{a, b} {
		if err := s.PutCert(ctx, state.CertRecord{DER: d, Status: state.StatusSaved}); err != nil {
			t.Fatal(err)
		}
	}
	h256, h1 := sha256Hex(der), sha1Hex(der)
	unknown := strings.Repeat("0", 64)
	if strings.HasPrefix(h256, "0000") || strings.HasPrefix(h1, "0000") {
		t.Fatalf("fixture hash starts with zeros; pick another")
	}
	tests := []struct {
		name  string
		query string
		want  []byte // DER expected, when no error
		err   error
	}{
		{"sha256", h256, der, nil},
		{"sha256 upper case", strings.ToUpper(h256), der, nil},
		{"sha1", h1, der, nil},
		{"sha256 prefix", h256[:8], der, nil},
		{"sha256 long prefix", h256[:50], der, nil},
		{"sha1 prefix", h1[:12], der, nil},
		{"ambiguous prefix", sha256Hex(a)[:8], nil, state.ErrAmbiguous},
		{"longer prefix resolves it", sha256Hex(a)[:64], a, nil},
		{"unknown sha256", unknown, nil, state.ErrNotFound},
		{"unknown prefix", "00000000", nil, state.ErrNotFound},
		{"prefix too short", h256[:7], nil, state.ErrInvalid},
		{"too long", h256 + "00", nil, state.ErrInvalid},
		{"not hex", "zzzzzzzz", nil, state.ErrInvalid},
		{"empty", "", nil, state.ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.GetCert(ctx, tt.query)
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("GetCert(%q) = %v, want %v", tt.query, err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("GetCert(%q): %v", tt.query, err)
			}
			if !bytes.Equal(got.DER, tt.want) {
				t.Fatalf("GetCert(%q) found %s, want %s", tt.query, got.SHA256, sha256Hex(tt.want))
			}
		})
	}
}

// TestCertHashesMatchOpenSSL checks the names the store gives a certificate
// against openssl's fingerprints, an independent implementation.
func TestCertHashesMatchOpenSSL(t *testing.T) {
	ctx := context.Background()
	s, _ := openStore(t)
	der, _, _ := newCert(t, "openssl")
	if err := s.PutCert(ctx, state.CertRecord{DER: der, Status: state.StatusSaved}); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetCert(ctx, sha256Hex(der)[:10])
	if err != nil {
		t.Fatal(err)
	}
	pemPath := filepath.Join(t.TempDir(), "cert.pem")
	if err := os.WriteFile(pemPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	for alg, want := range map[string]string{"-sha256": got.SHA256, "-sha1": got.SHA1} {
		out, err := exec.CommandContext(ctx, "openssl", "x509", "-in", pemPath, "-noout", "-fingerprint", alg).Output()
		if err != nil {
			t.Fatalf("openssl x509 %s: %v", alg, err)
		}
		_, fp, ok := strings.Cut(strings.TrimSpace(string(out)), "=")
		if !ok {
			t.Fatalf("openssl output %q", out)
		}
		if fp = strings.ToLower(strings.ReplaceAll(fp, ":", "")); fp != want {
			t.Errorf("openssl %s fingerprint %s, store has %s", alg, fp, want)
		}
	}
}

func TestCertValidation(t *testing.T) {
	ctx := context.Background()
	s, _ := openStore(t)
	der, nb, na := newCert(t, "valid")
	good := state.CertRecord{DER: der, Status: state.StatusSaved, NotBefore: nb, NotAfter: na}
	tests := []struct {
		name string
		mod  func(*state.CertRecord)
		err  error
	}{
		{"empty DER", func(r *state.CertRecord) { r.DER = nil }, state.ErrInvalid},
		{"DER not a sequence", func(r *state.CertRecord) { r.DER = []byte{0x02, 0x01, 0x05} }, state.ErrInvalid},
		{"DER garbage", func(r *state.CertRecord) { r.DER = []byte("-----BEGIN CERTIFICATE-----") }, state.ErrInvalid},
		{"DER trailing bytes", func(r *state.CertRecord) { r.DER = append(bytes.Clone(der), 0) }, state.ErrInvalid},
		{"chain entry garbage", func(r *state.CertRecord) { r.Chain = [][]byte{{0xff}} }, state.ErrInvalid},
		{"empty status", func(r *state.CertRecord) { r.Status = "" }, state.ErrInvalid},
		{"unknown status", func(r *state.CertRecord) { r.Status = "revoked" }, state.ErrInvalid},
		{"wrong sha256", func(r *state.CertRecord) { r.SHA256 = strings.Repeat("ab", 32) }, state.ErrInvalid},
		{"wrong sha1", func(r *state.CertRecord) { r.SHA1 = strings.Repeat("ab", 20) }, state.ErrInvalid},
		{"key id not hex", func(r *state.CertRecord) { r.KeyID = "nothex" }, state.ErrInvalid},
		{"token with slash", func(r *state.CertRecord) { r.Token = "a/b" }, state.ErrInvalid},
		{"member with control", func(r *state.CertRecord) { r.Member = "EE\tCOM" }, state.ErrInvalid},
		{"validity reversed", func(r *state.CertRecord) { r.NotBefore, r.NotAfter = na, nb }, state.ErrInvalid},
		{"given hashes upper case are fine", func(r *state.CertRecord) {
			r.SHA256, r.SHA1 = strings.ToUpper(sha256Hex(der)), strings.ToUpper(sha1Hex(der))
		}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := good
			tt.mod(&rec)
			err := s.PutCert(ctx, rec)
			if !errors.Is(err, tt.err) || (tt.err == nil && err != nil) {
				t.Fatalf("PutCert = %v, want %v", err, tt.err)
			}
			if tt.err == nil {
				return
			}
			certs, err := s.ListCerts(ctx, state.CertFilter{})
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range certs {
				if !bytes.Equal(c.DER, der) {
					t.Fatalf("refused certificate stored: %+v", c)
				}
			}
		})
	}
	for _, q := range []string{"", "abc", strings.Repeat("g", 64), strings.Repeat("a", 40)} {
		if err := s.DeleteCert(ctx, q); !errors.Is(err, state.ErrInvalid) {
			t.Errorf("DeleteCert(%q) = %v, want ErrInvalid (a full sha256 is required)", q, err)
		}
		if err := s.UpdateCert(ctx, q, func(*state.CertRecord) error { return nil }); !errors.Is(err, state.ErrInvalid) {
			t.Errorf("UpdateCert(%q) = %v, want ErrInvalid", q, err)
		}
	}
}

func TestListCertsFilter(t *testing.T) {
	ctx := context.Background()
	s, _ := openStore(t)
	recs := []state.CertRecord{
		{Token: tok, KeyID: "01", Member: "EE/COM/1", Status: state.StatusRegistered},
		{Token: tok, KeyID: "01", Member: "EE/COM/1", Status: state.StatusSaved},
		{Token: tok, KeyID: "02", Member: "EE/COM/2", Status: state.StatusRegistered},
		{Token: "other", KeyID: "03", Status: state.StatusGlobalError},
	}
	byHash := map[string]int{}
	for i := range recs {
		recs[i].DER, _, _ = newCert(t, "c")
		byHash[sha256Hex(recs[i].DER)] = i
		if err := s.PutCert(ctx, recs[i]); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name   string
		filter state.CertFilter
		want   []int
	}{
		{"all", state.CertFilter{}, []int{0, 1, 2, 3}},
		{"member", state.CertFilter{Member: "EE/COM/1"}, []int{0, 1}},
		{"key id any case", state.CertFilter{KeyID: "01"}, []int{0, 1}},
		{"status", state.CertFilter{Status: state.StatusRegistered}, []int{0, 2}},
		{"member and status", state.CertFilter{Member: "EE/COM/1", Status: state.StatusRegistered}, []int{0}},
		{"token", state.CertFilter{Token: "other"}, []int{3}},
		{"no match", state.CertFilter{Member: "nobody"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.ListCerts(ctx, tt.filter)
			if err != nil {
				t.Fatal(err)
			}
			seen := map[int]bool{}
			for i, c := range got {
				seen[byHash[c.SHA256]] = true
				if i > 0 && got[i-1].SHA256 >= c.SHA256 {
					t.Errorf("not ordered by sha256")
				}
			}
			want := map[int]bool{}
			for _, i := range tt.want {
				want[i] = true
			}
			if len(got) != len(tt.want) || !reflect.DeepEqual(seen, want) {
				t.Fatalf("got records %v, want %v", seen, want)
			}
		})
	}
	for _, f := range []state.CertFilter{{KeyID: "xx"}, {Status: "bogus"}} {
		if _, err := s.ListCerts(ctx, f); !errors.Is(err, state.ErrInvalid) {
			t.Errorf("ListCerts(%+v) = %v, want ErrInvalid", f, err)
		}
	}
}

func TestUpdateCert(t *testing.T) {
	ctx := context.Background()
	s, _ := openStore(t)
	der, _, _ := newCert(t, "upd")
	h := sha256Hex(der)
	if err := s.PutCert(ctx, state.CertRecord{DER: der, Member: "EE/COM/1", Status: state.StatusSaved}); err != nil {
		t.Fatal(err)
	}
	before, err := s.GetCert(ctx, h)
	if err != nil {
		t.Fatal(err)
	}
	errBoom := errors.New("boom")

	tests := []struct {
		name string
		fn   func(*state.CertRecord) error
		err  error
	}{
		{"fn error after changing fields", func(r *state.CertRecord) error {
			r.Status, r.Active, r.Member = state.StatusRegistered, true, "changed"
			return errBoom
		}, errBoom},
		{"fn changes DER", func(r *state.CertRecord) error { r.DER = seqDER(t, 1); return nil }, state.ErrInvalid},
		{"fn changes sha256", func(r *state.CertRecord) error { r.SHA256 = strings.Repeat("0", 64); return nil }, state.ErrInvalid},
		{"fn sets bad status", func(r *state.CertRecord) error { r.Status = "nope"; return nil }, state.ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := s.UpdateCert(ctx, h, tt.fn); !errors.Is(err, tt.err) {
				t.Fatalf("UpdateCert = %v, want %v", err, tt.err)
			}
			after, err := s.GetCert(ctx, h)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(after, before) {
				t.Fatalf("record changed by failed update:\n%+v\nwas\n%+v", after, before)
			}
		})
	}

	if err := s.UpdateCert(ctx, h, func(r *state.CertRecord) error {
		r.Status, r.Active = state.StatusRegistered, true
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	after, _ := s.GetCert(ctx, h)
	if after.Status != state.StatusRegistered || !after.Active || after.Member != "EE/COM/1" || !after.ImportedAt.Equal(before.ImportedAt) {
		t.Errorf("after update: %+v", after)
	}
	if err := s.UpdateCert(ctx, strings.Repeat("0", 64), func(*state.CertRecord) error { return nil }); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("UpdateCert of unknown = %v, want ErrNotFound", err)
	}
}
