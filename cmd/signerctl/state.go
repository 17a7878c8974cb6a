package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/client"
)

func (a *app) stateCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "state",
		Short: "Back up signerd's state database while it runs (admin)",
	}
	cmd.AddCommand(a.stateBackupCommand())
	return cmd
}

func (a *app) stateBackupCommand() *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "backup --out FILE",
		Short: "Write a consistent copy of the state database (key usages and names, requests, certificates) to FILE",
		Long: `backup asks signerd for a copy of its state database as one read
transaction sees it (every admin change committed before it began), while
signing goes on, and writes it to FILE (mode 0600; an existing FILE is
refused). The copy's size and SHA-256 are checked against what signerd
sent and printed. Restore by stopping signerd, putting the copy in place
as state_dir/signer.db (owned by signerd's user, mode 0600) and starting
it: keys made in the HSM after the backup show as unknown (KNOWN no) and
are audited as reconcile.unrecorded_key. The keys themselves are in the
HSM, never in the state.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return errors.New("--out FILE is required")
			}
			// Ctrl-C or SIGTERM ends the copy through its context, so that
			// the partial copy (part of the state) is removed, not left
			// beside FILE by a process killed by the signal.
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			cmd.SetContext(ctx)
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				size, sum, err := backupState(ctx, c, out)
				if err != nil {
					return err
				}
				fmt.Fprintf(a.stdout, "wrote %s: %d bytes, sha256 %x\n", out, size, sum)
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "file to write the copy to (must not exist)")
	return cmd
}

// backupState streams the copy into a temporary file beside out, checks
// its size and SHA-256 against the last chunk, syncs it and renames it to
// out. On any error nothing is left at out.
func backupState(ctx context.Context, c *client.Client, out string) (int64, []byte, error) {
	if _, err := os.Lstat(out); err == nil {
		return 0, nil, fmt.Errorf("%s exists; give a new file", out)
	}
	tmp, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".partial-")
	if err != nil {
		return 0, nil, err
	}
	defer os.Remove(tmp.Name()) // after the rename, a no-op
	defer tmp.Close()
	if err := tmp.Chmod(0o600); err != nil {
		return 0, nil, err
	}
	stream, err := c.BackupState(ctx, &signerv1.BackupStateRequest{})
	if err != nil {
		return 0, nil, err
	}
	h := sha256.New()
	w := io.MultiWriter(tmp, h)
	var n int64
	for {
		chunk, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return 0, nil, errors.New("the copy ended without its size and checksum: not written")
		}
		if err != nil {
			return 0, nil, err
		}
		if _, err := w.Write(chunk.GetData()); err != nil {
			return 0, nil, err
		}
		n += int64(len(chunk.GetData()))
		if chunk.GetSha256() == nil {
			continue
		}
		if sum := h.Sum(nil); chunk.GetSize() != n || !bytes.Equal(chunk.GetSha256(), sum) {
			return 0, nil, fmt.Errorf("the copy received (%d bytes, sha256 %x) is not the one signerd sent (%d bytes, sha256 %x): not written", n, sum, chunk.GetSize(), chunk.GetSha256())
		}
		break
	}
	if err := tmp.Sync(); err != nil {
		return 0, nil, err
	}
	if err := tmp.Close(); err != nil {
		return 0, nil, err
	}
	// Link, not rename: a file made at out meanwhile is never replaced.
	if err := os.Link(tmp.Name(), out); err != nil {
		return 0, nil, err
	}
	return n, h.Sum(nil), nil
}
