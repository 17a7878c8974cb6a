package signer

import (
	"crypto/rand"
	"encoding/hex"
)

// ResultIntent is the Result of the line written before an admin change
// touches the HSM or the state (see linePlan.intent). The line of its outcome follows with the
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
