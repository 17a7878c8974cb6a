package state_test

import (
	"bytes"
	"context"
	"encoding/asn1"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hsmsigner/hsmsigner/signer/state"
)

// stalledWriter is a reader of the backup that takes its first write and
// then stops reading until released, as a client that stops reading the
// BackupState stream does.
type stalledWriter struct {
	started chan struct{}
	release chan struct{}
	buf     bytes.Buffer
}

func (w *stalledWriter) Write(p []byte) (int, error) {
	if w.buf.Len() == 0 {
		close(w.started)
		<-w.release
	}
	return w.buf.Write(p)
}

// TestBackupDoesNotHoldWritersBehindASlowReader: a backup whose reader
// stops reading must not keep bbolt's read transaction open, for a write
// that grows the file waits for every read transaction to end (bbolt
// remaps the file under an exclusive lock). An admin change that grows
// the state commits while the backup's reader is stalled, and the copy,
// once read, is the state as it was before that change.
func TestBackupDoesNotHoldWritersBehindASlowReader(t *testing.T) {
	s, _ := openStore(t)
	ctx := context.Background()
	small := seqDER(t, 1)
	if err := s.PutCert(ctx, state.CertRecord{DER: small, Status: state.StatusSaved, Member: "A"}); err != nil {
		t.Fatal(err)
	}

	w := &stalledWriter{started: make(chan struct{}), release: make(chan struct{})}
	backupDone := make(chan error, 1)
	go func() {
		_, err := s.Backup(ctx, w)
		backupDone <- err
	}()
	released := false
	release := func() {
		if !released {
			released = true
			close(w.release)
		}
	}
	defer release()
	select {
	case <-w.started:
	case err := <-backupDone:
		t.Fatalf("Backup ended before writing: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("Backup wrote nothing in 30 s")
	}

	// A certificate record of 8 MiB grows the file past its mapping.
	big, err := asn1.Marshal(struct{ B []byte }{make([]byte, 8<<20)})
	if err != nil {
		t.Fatal(err)
	}
	putDone := make(chan error, 1)
	go func() {
		putDone <- s.PutCert(ctx, state.CertRecord{DER: big, Status: state.StatusSaved, Member: "B"})
	}()
	select {
	case err := <-putDone:
		if err != nil {
			t.Fatalf("PutCert: %v", err)
		}
	case <-time.After(30 * time.Second):
		release()
		<-putDone
		t.Fatal("a write that grows the state waited for a backup whose reader stopped reading")
	}

	release()
	if err := <-backupDone; err != nil {
		t.Fatalf("Backup: %v", err)
	}
	copyPath := filepath.Join(t.TempDir(), "copy.db")
	if err := os.WriteFile(copyPath, w.buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := state.Open(ctx, copyPath)
	if err != nil {
		t.Fatalf("Open the copy: %v", err)
	}
	defer c.Close()
	if _, err := c.GetCert(ctx, sha256Hex(small)); err != nil {
		t.Fatalf("the copy lacks the certificate committed before the backup: %v", err)
	}
	if _, err := c.GetCert(ctx, sha256Hex(big)); !errors.Is(err, state.ErrNotFound) {
		t.Fatalf("the copy has the certificate committed after the backup began (err %v)", err)
	}
}
