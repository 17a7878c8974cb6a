package state_test

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/hsmsigner/hsmsigner/signer/state"
)

func TestOpenCreatesFileWithMode0600(t *testing.T) {
	_, path := openStore(t)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o600 {
		t.Fatalf("mode = %04o, want 0600", got)
	}
}

func TestOpenBadPaths(t *testing.T) {
	dir := t.TempDir()
	notDir := filepath.Join(dir, "plain")
	if err := os.WriteFile(notDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	loose := filepath.Join(dir, "loose.db")
	if err := os.WriteFile(loose, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(loose, 0o644); err != nil { // in case of a strict umask
		t.Fatal(err)
	}
	garbage := filepath.Join(dir, "garbage.db")
	if err := os.WriteFile(garbage, bytes.Repeat([]byte("not a bbolt file "), 1000), 0o600); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		path    string
		wantIs  error
		wantMsg string
	}{
		{"empty path", "", state.ErrInvalid, "empty"},
		{"missing parent", filepath.Join(dir, "nope", "state.db"), fs.ErrNotExist, "does not exist"},
		{"parent is a file", filepath.Join(notDir, "state.db"), nil, "not a directory"},
		{"group readable file", loose, state.ErrPermissions, "chmod 600"},
		{"not a bbolt file", garbage, state.ErrCorrupt, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := state.Open(context.Background(), tt.path)
			if err == nil {
				s.Close()
				t.Fatal("Open succeeded")
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("error %v does not wrap %v", err, tt.wantIs)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("error %q does not mention %q", err, tt.wantMsg)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(dir, "nope")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Open created the missing directory: %v", err)
	}
}

func TestOpenCanceledContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	path := filepath.Join(t.TempDir(), "state.db")
	if _, err := state.Open(ctx, path); !errors.Is(err, context.Canceled) {
		t.Fatalf("Open = %v, want context.Canceled", err)
	}
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Open with a canceled context created the file: %v", err)
	}
}

func TestSecondOpenIsLocked(t *testing.T) {
	_, path := openStore(t)

	start := time.Now()
	s2, err := state.Open(context.Background(), path)
	elapsed := time.Since(start)
	if err == nil {
		s2.Close()
		t.Fatal("second Open succeeded while the first is open")
	}
	if !errors.Is(err, state.ErrLocked) {
		t.Fatalf("second Open = %v, want ErrLocked", err)
	}
	if !strings.Contains(err.Error(), "in use by another signerd") {
		t.Errorf("error %q does not say the file is in use", err)
	}
	if elapsed > 3*time.Second {
		t.Errorf("second Open took %v; want about the 1s lock timeout", elapsed)
	}
}

func TestOpenLockWaitFollowsContextDeadline(t *testing.T) {
	_, path := openStore(t)
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := state.Open(ctx, path)
	if !errors.Is(err, state.ErrLocked) {
		t.Fatalf("Open = %v, want ErrLocked", err)
	}
	if elapsed := time.Since(start); elapsed > 900*time.Millisecond {
		t.Errorf("Open waited %v despite a 150ms deadline", elapsed)
	}
}

// TestOpenLockedAcrossProcesses runs this test binary again as a second
// process that tries to open the same file.
func TestOpenLockedAcrossProcesses(t *testing.T) {
	if path := os.Getenv("STATE_TEST_CHILD_OPEN"); path != "" {
		s, err := state.Open(context.Background(), path)
		switch {
		case errors.Is(err, state.ErrLocked):
			os.Stdout.WriteString("CHILD: locked\n")
		case err != nil:
			os.Stdout.WriteString("CHILD: other error: " + err.Error() + "\n")
		default:
			s.Close()
			os.Stdout.WriteString("CHILD: opened\n")
		}
		return
	}

	s, path := openStore(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	run := func() string {
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestOpenLockedAcrossProcesses$", "-test.count=1")
		cmd.Env = append(os.Environ(), "STATE_TEST_CHILD_OPEN="+path)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("child: %v\n%s", err, out)
		}
		return string(out)
	}
	if out := run(); !strings.Contains(out, "CHILD: locked") {
		t.Fatalf("child while parent holds the file:\n%s", out)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if out := run(); !strings.Contains(out, "CHILD: opened") {
		t.Fatalf("child after parent closed the file:\n%s", out)
	}
	// openStore's cleanup closes s again; a second Close is harmless.
}

// setSchemaVersion rewrites the schema version with bbolt directly.
func setSchemaVersion(t *testing.T, path, v string) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("meta")).Put([]byte("schema_version"), []byte(v))
	})
	if err != nil {
		t.Fatal(err)
	}
}

func readSchemaVersion(t *testing.T, path string) string {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var v string
	err = db.View(func(tx *bolt.Tx) error {
		v = string(tx.Bucket([]byte("meta")).Get([]byte("schema_version")))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestSchemaVersion(t *testing.T) {
	tests := []struct {
		name    string
		version string // written before reopening; "" keeps what Open wrote
		wantErr error
	}{
		{"fresh file reopens", "", nil},
		{"current version", "1", nil},
		{"newer version refused", "2", state.ErrSchemaVersion},
		{"much newer version refused", "1000", state.ErrSchemaVersion},
		{"garbage version", "one", state.ErrCorrupt},
		{"zero version", "0", state.ErrCorrupt},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state.db")
			s, err := state.Open(context.Background(), path)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if got := readSchemaVersion(t, path); got != "1" {
				t.Fatalf("new file has schema version %q, want 1", got)
			}
			if tt.version != "" {
				setSchemaVersion(t, path, tt.version)
			}
			s, err = state.Open(context.Background(), path)
			if err == nil {
				s.Close()
			}
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
				t.Fatalf("reopen = %v, want %v", err, tt.wantErr)
			}
			if tt.version != "" {
				if got := readSchemaVersion(t, path); got != tt.version {
					t.Errorf("schema version after refused open = %q, want %q untouched", got, tt.version)
				}
			}
		})
	}
}

func TestOpenRefusesForeignBboltFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "other.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucket([]byte("something_else"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if _, err := state.Open(context.Background(), path); !errors.Is(err, state.ErrCorrupt) {
		t.Fatalf("Open of a foreign bbolt file = %v, want ErrCorrupt", err)
	}
}

// TestReopenKeepsEverything writes one of each record, closes the file, opens
// it again (a restart) and finds everything as it was.
func TestReopenKeepsEverything(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := state.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	der, nb, na := newCert(t, "member sign")
	chain, _, _ := newCert(t, "CA")
	key := state.KeyRecord{Token: "0123456789abcdef", ID: "00112233445566778899aabbccddeeff", Label: "sign-1", Name: "Signing key", Usage: state.UsageSign, Spec: "ec-p256"}
	cert := state.CertRecord{DER: der, Chain: [][]byte{chain}, Token: key.Token, KeyID: key.ID, Member: "EE/COM/12345", Status: state.StatusRegistered, Active: true, NotBefore: nb, NotAfter: na}
	csr := state.CSRRecord{ID: "csr-1", Token: key.Token, KeyID: key.ID, Member: "EE/COM/12345", Subject: "CN=member", DER: newCSR(t, "member")}
	if err := s.CreateKey(ctx, key); err != nil {
		t.Fatal(err)
	}
	if err := s.PutCert(ctx, cert); err != nil {
		t.Fatal(err)
	}
	if err := s.PutCSR(ctx, csr); err != nil {
		t.Fatal(err)
	}
	type snapshot struct {
		keys  []state.KeyRecord
		certs []state.CertRecord
		csrs  []state.CSRRecord
	}
	take := func(s *state.Store) snapshot {
		var snap snapshot
		var err error
		if snap.keys, err = s.ListKeys(ctx); err != nil {
			t.Fatal(err)
		}
		if snap.certs, err = s.ListCerts(ctx, state.CertFilter{}); err != nil {
			t.Fatal(err)
		}
		if snap.csrs, err = s.ListCSRs(ctx); err != nil {
			t.Fatal(err)
		}
		return snap
	}
	before := take(s)
	if len(before.keys) != 1 || len(before.certs) != 1 || len(before.csrs) != 1 {
		t.Fatalf("before restart: %d keys, %d certs, %d csrs; want 1 each", len(before.keys), len(before.certs), len(before.csrs))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s, err = state.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	after := take(s)
	if !reflect.DeepEqual(before, after) {
		t.Fatalf("after restart:\n%+v\nbefore:\n%+v", after, before)
	}
	// The label index survived too.
	dup := key
	dup.ID = "ff"
	if err := s.CreateKey(ctx, dup); !errors.Is(err, state.ErrExists) {
		t.Errorf("CreateKey with a taken label after restart = %v, want ErrExists", err)
	}
	if _, err := s.GetCert(ctx, sha1Hex(der)); err != nil {
		t.Errorf("GetCert by sha1 after restart: %v", err)
	}
}

func TestClosedStore(t *testing.T) {
	ctx := context.Background()
	s, err := state.Open(ctx, filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ListKeys(ctx); !errors.Is(err, state.ErrClosed) {
		t.Errorf("ListKeys after Close = %v, want ErrClosed", err)
	}
	if err := s.PutKey(ctx, state.KeyRecord{Token: "t", ID: "01"}); !errors.Is(err, state.ErrClosed) {
		t.Errorf("PutKey after Close = %v, want ErrClosed", err)
	}
}

func TestCanceledContextWritesNothing(t *testing.T) {
	s, _ := openStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	called := false
	err := s.Update(ctx, func(*state.Tx) error { called = true; return nil })
	if !errors.Is(err, context.Canceled) || called {
		t.Fatalf("Update with canceled context = %v (fn called: %v), want context.Canceled without a call", err, called)
	}
	if err := s.PutKey(ctx, state.KeyRecord{Token: "t", ID: "01"}); !errors.Is(err, context.Canceled) {
		t.Fatalf("PutKey with canceled context = %v", err)
	}
	if _, err := s.GetKey(ctx, "t", "01"); !errors.Is(err, context.Canceled) {
		t.Fatalf("GetKey with canceled context = %v", err)
	}
	keys, err := s.ListKeys(context.Background())
	if err != nil || len(keys) != 0 {
		t.Fatalf("ListKeys = %v, %v; want nothing written", keys, err)
	}
}
