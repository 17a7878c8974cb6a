package main

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
)

// stalledBackup answers BackupState with one chunk and then sends nothing
// more until the client goes away, as a daemon busy with a huge state
// would look to a client interrupted mid-copy.
type stalledBackup struct {
	signerv1.UnimplementedSignerServer
}

func (stalledBackup) BackupState(_ *signerv1.BackupStateRequest, stream signerv1.Signer_BackupStateServer) error {
	if err := stream.Send(&signerv1.BackupStateChunk{Data: []byte("part of the state")}); err != nil {
		return err
	}
	<-stream.Context().Done()
	return stream.Context().Err()
}

// TestStateBackupInterruptedLeavesNothing: Ctrl-C (SIGINT) while `state
// backup` receives the copy ends it with an error and leaves neither FILE
// nor the partial copy (part of the state database) beside it. Before,
// the signal killed signerctl without its deferred removal.
func TestStateBackupInterruptedLeavesNothing(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "signer.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	signerv1.RegisterSignerServer(srv, stalledBackup{})
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
	t.Setenv("SIGNER_SOCKET", sock)

	outDir := t.TempDir()
	out := filepath.Join(outDir, "signer.db.bak")
	type result struct {
		errs string
		code int
	}
	done := make(chan result, 1)
	go func() {
		_, errs, code := ctl(t, "state", "backup", "--out", out)
		done <- result{errs, code}
	}()
	// The partial file exists once the command runs (and, fixed, has its
	// signal handler); interrupt it then.
	deadline := time.Now().Add(30 * time.Second)
	for {
		ents, err := os.ReadDir(outDir)
		if err != nil {
			t.Fatal(err)
		}
		if len(ents) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("state backup made no partial file in 30 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	var r result
	select {
	case r = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("state backup did not end after SIGINT")
	}
	if r.code == 0 || !strings.Contains(r.errs, "cancel") {
		t.Errorf("interrupted state backup: exit %d, %q; want a failure that says it was cancelled", r.code, r.errs)
	}
	ents, err := os.ReadDir(outDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		t.Errorf("left behind after the interrupt: %s", e.Name())
	}
}
