package signer

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/hsmsigner/hsmsigner/signer/audit"
	"github.com/hsmsigner/hsmsigner/signer/peercred"
)

// Ops of the lines reconciliation writes.
const (
	// OpUnrecordedKey: the token holds a key pair that the state has no
	// record of (an operation cut short between the HSM and the state, or
	// a key made outside signerd).
	OpUnrecordedKey = "reconcile.unrecorded_key"
	// OpMissingKey: the state records a key that the token no longer
	// holds (deleted outside signerd, or a deletion cut short).
	OpMissingKey = "reconcile.missing_key"
	// OpDamagedKey: the token holds objects that are no whole key pair
	// (hsm.Key.Damage: a private key object without CKA_ID, without its
	// public key object or with one not its own, or sharing its id; public
	// key or certificate objects without CKA_ID or without a private key;
	// an operation cut short by a crash) and cannot be used.
	OpDamagedKey = "reconcile.damaged_key"
)

// reconciler remembers what reconciliation has reported in this process,
// so that each difference is audited once, not at every login.
type reconciler struct {
	mu       sync.Mutex
	reported map[string]bool // op + token serial + key id
}

// firstReport reports whether op for the key is new, and remembers it.
func (r *reconciler) firstReport(op, serial, id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.reported == nil {
		r.reported = map[string]bool{}
	}
	k := op + "\x00" + serial + "\x00" + id
	if r.reported[k] {
		return false
	}
	r.reported[k] = true
	return true
}

// self is the daemon as the caller of the lines it writes on its own.
func self() caller {
	return caller{peer: peercred.Peer{UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), PID: int32(os.Getpid())}}
}

// reconcileToken compares the key pairs on t with the state's records of
// t and audits each difference once per process: a key pair without a
// record, and a record without a key pair. A token that is not logged in
// shows no private keys and is skipped (its login reconciles it).
func (s *Service) reconcileToken(ctx context.Context, t *tokenEntry) error {
	if !t.tok.LoggedIn() {
		return nil
	}
	keys, err := t.tok.ListKeys(ctx)
	if isTokenUnusable(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("token %q: listing keys: %w", t.name, err)
	}
	recs, err := s.store.ListKeys(ctx)
	if err != nil {
		return fmt.Errorf("token %q: reading key records: %w", t.name, err)
	}
	serial := t.tok.Serial()
	recorded := map[string]bool{}
	for _, r := range recs {
		if r.Token == serial {
			recorded[r.ID] = true
		}
	}
	onToken := map[string]bool{}
	var errs []error
	for _, k := range keys {
		if k.Damage != "" {
			ref := k.IDHex()
			if len(k.ID) == 0 {
				ref = NoIDKeyRef
			}
			if s.reconciled.firstReport(OpDamagedKey, serial, ref) {
				s.log.Warn("token holds a damaged key object", "token", t.name, "key", ref, "label", k.Label, "damage", k.Damage)
				errs = append(errs, s.auditSelf(ctx, audit.Record{Op: OpDamagedKey, Token: t.name, Key: ref,
					Detail: fmt.Sprintf("label=%q: damaged object: %s; delete it (signerctl key delete %s)", k.Label, k.Damage, ref)}))
			}
			if len(k.ID) == 0 {
				continue // no record can name it
			}
		}
		id := k.IDHex()
		onToken[id] = true
		if recorded[id] || !s.reconciled.firstReport(OpUnrecordedKey, serial, id) {
			continue
		}
		s.log.Warn("token holds a key the state does not record", "token", t.name, "key", id, "label", k.Label)
		detail := fmt.Sprintf("label=%q: on the token but not recorded; register it (signerctl key rename --usage) or delete it", k.Label)
		if k.Damage != "" {
			// Damaged: nothing to register.
			detail = fmt.Sprintf("label=%q: on the token but not recorded, and damaged; delete it (signerctl key delete %s)", k.Label, id)
		}
		errs = append(errs, s.auditSelf(ctx, audit.Record{Op: OpUnrecordedKey, Token: t.name, Key: id, Detail: detail}))
	}
	for _, r := range recs {
		if r.Token != serial || onToken[r.ID] || !s.reconciled.firstReport(OpMissingKey, serial, r.ID) {
			continue
		}
		s.log.Warn("state records a key the token does not hold", "token", t.name, "key", r.ID, "label", r.Label)
		errs = append(errs, s.auditSelf(ctx, audit.Record{Op: OpMissingKey, Token: t.name, Key: r.ID,
			Detail: fmt.Sprintf("label=%q: recorded but not on the token; delete the record (signerctl key delete)", r.Label)}))
	}
	return errors.Join(errs...)
}

// reconcileAll reconciles every logged-in token; a failure is logged, not
// returned: reconciliation reports, it never stops the daemon.
func (s *Service) reconcileAll(ctx context.Context) {
	for _, t := range s.tokens {
		if err := s.reconcileToken(ctx, t); err != nil {
			s.log.Error("reconciling the token with the state", "token", t.name, "error", err.Error())
		}
	}
}

// auditSelf appends a line the daemon writes on its own behalf.
func (s *Service) auditSelf(ctx context.Context, r audit.Record) error {
	return s.audited(ctx, self(), r, nil)
}
