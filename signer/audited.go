package signer

import (
	"context"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hsmsigner/hsmsigner/signer/audit"
)

// linePlan says how the audit lines of an operation are written.
type linePlan struct {
	// intent writes a line before the operation touches anything (an
	// admin change): see ResultIntent. When it cannot be written, nothing
	// is done and the operation is refused with ErrAudit.
	intent bool
	// counted leaves out the line of a PERMISSION_DENIED beyond the uid's
	// refusals_per_second: the refusal is counted for the uid's summary
	// line instead.
	counted bool
	// queue, when set, queues the outcome line (a call of a stream) and
	// keeps its ticket there: the caller waits for the ticket before the
	// result goes out (see withAudit). Otherwise the line is durable
	// before handle returns.
	queue *queuedLine
}

// queuedLine is the ticket of an outcome line that was queued.
type queuedLine struct {
	ticket audit.Ticket
	queued bool // ticket holds a queued line
}

// handle runs the business of c's operation, fn, between its audit
// lines as plan says, and returns fn's result once its outcome line is
// written. rec is the line as known before the call; fn fills in what it
// learns (the key, its token, a detail) in the record it is given. When a
// line cannot be written the failure is logged and counted, a success
// becomes ErrAudit (its result withheld) and a failure stays as it was.
func handle[T any](ctx context.Context, s *Service, c caller, plan linePlan, rec audit.Record, fn func(rec *audit.Record) (T, error)) (T, error) {
	var zero T
	id := ""
	if plan.intent {
		id = newOpID()
		intent := auditRecord(c, rec, nil)
		intent.Result = ResultIntent
		intent.Detail = withOpID(rec.Detail, id)
		if err := s.audit.Append(context.WithoutCancel(ctx), intent); err != nil {
			s.auditFailed(rec.Op, nil, err)
			return zero, fmt.Errorf("%w: %w (nothing was changed)", ErrAudit, err)
		}
	}
	v, err := fn(&rec)
	if id != "" {
		rec.Detail = withOpID(rec.Detail, id)
	}
	if err := s.writeLine(ctx, c, plan, rec, err); err != nil {
		return zero, err
	}
	return v, nil
}

// writeLine writes the line of c's operation with the result err, as
// plan says, and returns the result the caller gets: err, or ErrAudit
// for a success whose line could not be written.
func (s *Service) writeLine(ctx context.Context, c caller, plan linePlan, rec audit.Record, err error) error {
	if plan.counted && codeOf(err) == codes.PermissionDenied && !s.limits.refusalLine(c.peer, rec.Op) {
		return err
	}
	line := auditRecord(c, rec, err)
	var aerr error
	if plan.queue != nil {
		plan.queue.ticket, aerr = s.audit.Enqueue(line)
		plan.queue.queued = aerr == nil
	} else {
		aerr = s.audit.Append(context.WithoutCancel(ctx), line)
	}
	if aerr != nil {
		return s.auditFailure(rec.Op, err, aerr)
	}
	return err
}

// auditFailure is the result of an operation of op whose result was err
// and whose line could not be written (aerr): the failure is logged and
// counted (signerd_audit_failures_total); a success becomes ErrAudit, and
// a refusal or failure stays what it was, never turned into success.
func (s *Service) auditFailure(op string, err, aerr error) error {
	s.auditFailed(op, err, aerr)
	if err == nil {
		return fmt.Errorf("%w: %w", ErrAudit, aerr)
	}
	return err
}

// audited appends one audit line for c's operation with the result of err
// and returns err, or an ErrAudit error when the line could not be written
// (then the operation's result must not be returned). A refusal stays a
// refusal when its line fails (see auditFailure).
func (s *Service) audited(ctx context.Context, c caller, r audit.Record, err error) error {
	return s.writeLine(ctx, c, linePlan{}, r, err)
}

// auditedOrCounted audits the result of c's operation as audited does,
// except a PERMISSION_DENIED beyond the uid's refusals_per_second: that
// one is counted for the uid's summary line instead of written alone. It
// returns err, or the audit log's failure as audited does.
func (s *Service) auditedOrCounted(ctx context.Context, c caller, r audit.Record, err error) error {
	return s.writeLine(ctx, c, linePlan{counted: true}, r, err)
}

// auditFailed logs and counts an audit line for op, whose result was
// err, that could not be written.
func (s *Service) auditFailed(op string, err, aerr error) {
	s.metrics.auditFailures.Inc()
	result := "ok"
	if st, ok := status.FromError(err); ok && err != nil {
		result = st.Code().String()
	} else if err != nil {
		result = codeOf(err).String()
	}
	s.log.Error("audit append failed", "op", op, "result", result, "error", aerr.Error())
}

// auditRecord completes r with the caller and the result of err.
func auditRecord(c caller, r audit.Record, err error) audit.Record {
	r.UID, r.GID, r.PID = int64(c.peer.UID), int64(c.peer.GID), int64(c.peer.PID)
	if c.remote != "" {
		r.UID, r.GID, r.PID = -1, -1, -1
	}
	r.Result = "ok"
	if err != nil {
		r.Result = codeOf(err).String() + ": " + err.Error()
	}
	return r
}
