package signer

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/audit"
)

// backupChunkBytes is the size of each BackupState message's data.
const backupChunkBytes = 256 << 10

// BackupState implements signerv1.SignerServer: a consistent copy of the
// state database in chunks, the last one with the copy's size and SHA-256,
// audited with both.
func (s *Service) BackupState(_ *signerv1.BackupStateRequest, stream signerv1.Signer_BackupStateServer) error {
	ctx := stream.Context()
	_, err := handle(ctx, s, callerFrom(ctx), linePlan{}, audit.Record{Op: "state.backup"},
		func(rec *audit.Record) (struct{}, error) {
			w := &chunkSender{send: stream.Send, sum: sha256.New()}
			n, err := s.store.Backup(ctx, w)
			if err == nil {
				err = w.flush()
			}
			if err != nil {
				return struct{}{}, fmt.Errorf("backing up the state: %w", err)
			}
			sum := w.sum.Sum(nil)
			rec.Detail = fmt.Sprintf("size=%d sha256=%s", n, hex.EncodeToString(sum))
			if err := stream.Send(&signerv1.BackupStateChunk{Size: n, Sha256: sum}); err != nil {
				return struct{}{}, fmt.Errorf("backing up the state: %w", err)
			}
			return struct{}{}, nil
		})
	return err
}

// chunkSender is an io.Writer that sends what it is given in messages of
// backupChunkBytes, hashing it on the way.
type chunkSender struct {
	send func(*signerv1.BackupStateChunk) error
	sum  hash.Hash
	buf  []byte
}

func (c *chunkSender) Write(p []byte) (int, error) {
	c.sum.Write(p)
	n := len(p)
	for len(p) > 0 {
		if c.buf == nil {
			c.buf = make([]byte, 0, backupChunkBytes)
		}
		k := min(len(p), backupChunkBytes-len(c.buf))
		c.buf = append(c.buf, p[:k]...)
		p = p[k:]
		if len(c.buf) == backupChunkBytes {
			if err := c.flush(); err != nil {
				return 0, err
			}
		}
	}
	return n, nil
}

// flush sends what is buffered.
func (c *chunkSender) flush() error {
	if len(c.buf) == 0 {
		return nil
	}
	err := c.send(&signerv1.BackupStateChunk{Data: c.buf})
	c.buf = nil
	return err
}
