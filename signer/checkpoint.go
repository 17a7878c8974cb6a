package signer

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/hsmsigner/hsmsigner/hsm"
	"github.com/hsmsigner/hsmsigner/hsm/sigalg"
	"github.com/hsmsigner/hsmsigner/signer/audit"
)

// checkpointer is what the service needs of the audit log to anchor it.
type checkpointer interface {
	Checkpoint(ctx context.Context, r audit.Record, pub crypto.PublicKey, sign audit.SignFunc) (audit.Checkpoint, error)
}

// checkpointTimeout bounds one checkpoint made on the interval.
const checkpointTimeout = 30 * time.Second

// RunCheckpoints anchors the audit log until ctx is done: every
// [server] audit_checkpoint_interval it signs the log's head with the
// audit key (Checkpoint), and once more when ctx is done, so that the
// lines of the last calls are anchored too. Call it on a goroutine of its
// own, cancel ctx after the last call has been served (after the gRPC
// server's GracefulStop) and wait for it to return before Close. A
// checkpoint that fails is logged and counted, and tried again at the
// next interval; signing never waits on it. With the interval 0 it
// returns at once.
//
// It returns at most [server] shutdown_timeout after ctx is done, even
// when a signature hangs in the HSM (a PKCS#11 call does not end with its
// context): a checkpoint that has not returned by its deadline is left to
// finish on its own (after Close its line is refused), no other is
// started while it runs, and the shutdown goes on without it.
func (s *Service) RunCheckpoints(ctx context.Context) {
	every := s.cfg.Server.AuditCheckpointInterval
	if every <= 0 || s.checkpoints == nil {
		return
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	var running <-chan struct{} // closed when the checkpoint under way returns; nil if none is
	for {
		select {
		case <-ctx.Done():
			final, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.Server.ShutdownTimeout)
			defer cancel()
			if running == nil || checkpointReturned(final, running) {
				running = s.goCheckpoint(final)
				if checkpointReturned(final, running) {
					return
				}
			}
			s.log.Error("audit checkpoint at shutdown did not return within shutdown_timeout (HSM not answering?); stopping without it",
				"timeout", s.cfg.Server.ShutdownTimeout.String())
			return
		case <-tick.C:
			if running != nil && !checkpointReturned(nil, running) {
				s.log.Error("audit checkpoint skipped: the last one has not returned yet (HSM not answering?)")
				continue
			}
			cctx, cancel := context.WithTimeout(ctx, min(every, checkpointTimeout))
			running = s.goCheckpoint(cctx)
			checkpointReturned(cctx, running)
			cancel()
		}
	}
}

// goCheckpoint runs Checkpoint(ctx) on a goroutine of its own and returns
// a channel closed when it returns.
func (s *Service) goCheckpoint(ctx context.Context) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = s.Checkpoint(ctx)
	}()
	return done
}

// checkpointReturned waits for done until ctx is done (not at all with a
// nil ctx) and reports whether done is closed.
func checkpointReturned(ctx context.Context, done <-chan struct{}) bool {
	if ctx != nil {
		select {
		case <-done:
			return true
		case <-ctx.Done():
		}
	}
	select {
	case <-done:
		return true
	default:
		return false
	}
}

// Checkpoint signs the audit log's durable head with the audit key,
// through the token's session pool like any signature, and appends the
// checkpoint line. The key is [server] audit_checkpoint_key, or else the
// one key of usage "audit"; it must have usage "audit". Success is logged
// with the checkpoint itself (for shipping off the machine) and counted;
// a failure is logged at error level and counted. It returns
// audit.ErrNothingToCheckpoint, logged at debug level only, when no line
// was written since the last checkpoint.
func (s *Service) Checkpoint(ctx context.Context) (audit.Checkpoint, error) {
	cp, t, k, err := s.checkpoint(ctx)
	switch {
	case errors.Is(err, audit.ErrNothingToCheckpoint):
		s.log.Debug("audit checkpoint: no line since the last one")
		return cp, err
	case err != nil:
		s.metrics.checkpointFailures.Inc()
		s.log.Error("audit checkpoint failed; trying again at the next interval", "error", err.Error())
		return cp, err
	}
	s.metrics.checkpoints.Inc()
	s.metrics.lastCheckpoint.SetToCurrentTime()
	st, _ := audit.ParseStatement(cp.Statement)
	s.log.Info("audit checkpoint", "seq", st.Seq, "hash", st.Hash, "token", t.name, "key", k.IDHex(),
		slog.Any("checkpoint", cp))
	return cp, nil
}

func (s *Service) checkpoint(ctx context.Context) (audit.Checkpoint, *tokenEntry, hsm.Key, error) {
	if s.checkpoints == nil {
		return audit.Checkpoint{}, nil, hsm.Key{}, fmt.Errorf("%w: no audit log", ErrPrecondition)
	}
	t, k, err := s.auditKey(ctx)
	if err != nil {
		return audit.Checkpoint{}, nil, hsm.Key{}, err
	}
	alg := sigalg.For(sigalg.SchemePKCS1v15, crypto.SHA256)
	if k.Type == hsm.KeyEC {
		alg = sigalg.For(sigalg.SchemeECDSA, crypto.SHA256)
	}
	sign := func(ctx context.Context, digest []byte) (string, []byte, error) {
		sig, err := t.tok.Sign(ctx, k.ID, alg, digest)
		return alg.Name, sig, err
	}
	r := audit.Record{UID: int64(os.Getuid()), GID: int64(os.Getgid()), PID: int64(os.Getpid()), Token: t.name, Key: k.IDHex()}
	cp, err := s.checkpoints.Checkpoint(ctx, r, k.Public, sign)
	if err != nil {
		return audit.Checkpoint{}, nil, hsm.Key{}, fmt.Errorf("audit key %s on token %q: %w", k.IDHex(), t.name, err)
	}
	return cp, t, k, nil
}

// auditKey finds the key that signs checkpoints: the configured one, or
// the one key the state records with usage "audit".
func (s *Service) auditKey(ctx context.Context) (*tokenEntry, hsm.Key, error) {
	idHex := s.cfg.Server.AuditCheckpointKey
	var t *tokenEntry
	if idHex != "" {
		ref, err := s.resolveKey(ctx, idHex)
		if err != nil {
			return nil, hsm.Key{}, fmt.Errorf("audit_checkpoint_key %s: %w", idHex, err)
		}
		if ref.usage != UsageAudit {
			return nil, hsm.Key{}, fmt.Errorf("%w: audit_checkpoint_key %s has usage %q; checkpoints are signed only with a key of usage audit", ErrPrecondition, idHex, ref.usage)
		}
		t = ref.tok
	} else {
		recs, err := s.store.ListKeys(ctx)
		if err != nil {
			return nil, hsm.Key{}, err
		}
		var ids, serials []string
		for _, r := range recs {
			if r.Usage == UsageAudit {
				ids, serials = append(ids, r.ID), append(serials, r.Token)
			}
		}
		switch len(ids) {
		case 0:
			return nil, hsm.Key{}, fmt.Errorf("%w: no key has usage audit; an officer generates one with `signerctl key generate --usage audit --algorithm EC-P256 --label audit`", ErrPrecondition)
		case 1:
			idHex = ids[0]
		default:
			return nil, hsm.Key{}, fmt.Errorf("%w: %d keys have usage audit (%s); name the one to use in [server] audit_checkpoint_key", ErrPrecondition, len(ids), strings.Join(ids, ", "))
		}
		if t = s.tokenBySerial(serials[0]); t == nil {
			return nil, hsm.Key{}, fmt.Errorf("%w: the audit key %s is on token %s, which is not configured", ErrPrecondition, idHex, serials[0])
		}
	}
	id, err := parseKeyID(idHex)
	if err != nil {
		return nil, hsm.Key{}, err
	}
	k, err := t.tok.KeyByID(ctx, id)
	if err != nil {
		return nil, hsm.Key{}, fmt.Errorf("audit key %s on token %q: %w", idHex, t.name, err)
	}
	return t, k, nil
}
