package signer

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"

	"github.com/hsmsigner/hsmsigner/signer/audit"
)

// ResultIntent is the Result of the line written before an admin change
// touches the HSM or the state. The line of its outcome follows with the
// same op id; an intent without an outcome is a change cut short (a
// crash), and startup reconciliation reports what it may have left.
const ResultIntent = "intent"

// audit.Record.Detail of both lines ends with "op=<id>", 16 hex digits.
func withOpID(detail, id string) string {
	if detail == "" {
		return "op=" + id
	}
	return detail + " op=" + id
}

// newOpID returns a random id that pairs an intent line with its outcome.
func newOpID() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	return hex.EncodeToString(b[:])
}

// change runs an admin change for c between two audit lines: the intent,
// written before anything is touched, and the outcome, written after with
// the same op id. When the intent line cannot be written, nothing is done
// and the change is refused with ErrAudit. fn may fill in rec (the key id
// it made, a detail) for the outcome line. The outcome is written as
// audited writes any line: an outcome line that fails turns a success into
// ErrAudit (the change is done but its result is withheld).
func (s *Service) change(ctx context.Context, c caller, rec audit.Record, fn func(rec *audit.Record) error) error {
	id := newOpID()
	intent := auditRecord(c, rec, nil)
	intent.Result = ResultIntent
	intent.Detail = withOpID(rec.Detail, id)
	if err := s.audit.Append(context.WithoutCancel(ctx), intent); err != nil {
		s.auditFailed(rec.Op, nil, err)
		return fmt.Errorf("%w: %w (nothing was changed)", ErrAudit, err)
	}
	err := fn(&rec)
	rec.Detail = withOpID(rec.Detail, id)
	return s.audited(ctx, c, rec, err)
}
