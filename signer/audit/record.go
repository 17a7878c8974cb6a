package audit

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// ZeroHash is the Prev of the first line of a chain, and the hash Head
// reports for an empty log: 64 zeros.
const ZeroHash = "0000000000000000000000000000000000000000000000000000000000000000"

// MaxLineSize is the longest line, without its newline, that the log
// writes or that Verify accepts. The field bounds below keep every record
// well inside it; Append refuses one that would still not fit.
const MaxLineSize = 64 << 10

// Bounds, in bytes, on the string fields of a record. A field longer than
// its bound, one that begins with FieldHashPrefix, or one that is not
// valid UTF-8, is written as FieldHash of its value: "sha256:<64 hex digits> len=<bytes>", the SHA-256
// and length of the field's text as the caller gave it (for Digest, the
// hex text). So a record is never refused for the size of what a caller
// sent, and a value in the log that begins with "sha256:" is always such
// a replacement. Verify accepts either form.
const (
	MaxOpLen     = 128
	MaxTokenLen  = 256
	MaxKeyLen    = 256  // a CKA_ID of 128 bytes in hex
	MaxDigestLen = 128  // a SHA-512 digest in hex, the largest the appliance signs
	MaxDetailLen = 1024 // free text
	MaxResultLen = 1024 // an error text
)

// FieldHashPrefix begins every field value that FieldHash replaced.
const FieldHashPrefix = "sha256:"

// FieldHash returns what the log writes in place of a field value that is
// too long (or begins with FieldHashPrefix): "sha256:<hex> len=<n>", with
// the lower-case hex SHA-256 of v and its length in bytes.
func FieldHash(v string) string {
	sum := sha256.Sum256([]byte(v))
	return FieldHashPrefix + hex.EncodeToString(sum[:]) + " len=" + strconv.Itoa(len(v))
}

// boundField returns v, or FieldHash(v) when v is longer than limit,
// could be taken for a replacement, or is not valid UTF-8 (which JSON
// would write as U+FFFD, so that two values made one line).
func boundField(v string, limit int) string {
	if len(v) <= limit && !strings.HasPrefix(v, FieldHashPrefix) && utf8.ValidString(v) {
		return v
	}
	return FieldHash(v)
}

// OpCutAcknowledged is the Op of the line Open appends when Options.AcceptCut
// lets it continue a log that was cut at the end.
const OpCutAcknowledged = "audit.cut_acknowledged"

// Errors that callers test with errors.Is.
var (
	// ErrTampered means the log or its head file does not hold an unbroken
	// chain: a line was edited, removed, reordered, cut or torn. Every
	// *VerifyError wraps it.
	ErrTampered = errors.New("audit: log tampered with or damaged")
	// ErrClosed means Append was called after Close.
	ErrClosed = errors.New("audit: log closed")
	// ErrInUse means another Log (in this or another process) holds the
	// file.
	ErrInUse = errors.New("audit: log in use by another writer")
	// ErrInvalidRecord means Append refused the record: a required field is
	// empty, a value is out of range, or the line would exceed MaxLineSize.
	// Nothing was written.
	ErrInvalidRecord = errors.New("audit: invalid record")
	// ErrFailed means a write, fsync or head update failed; the record was
	// not written. After a failed write or head update the next record
	// tries again; after a failed fsync the log accepts nothing more until
	// it is opened again. The error that caused it is wrapped too.
	ErrFailed = errors.New("audit: log failed")
)

// Record is one audit line. Its JSON form, field for field and in this
// order, is the line in the file.
type Record struct {
	// Time is when the operation happened, written as RFC 3339 with
	// nanoseconds in UTC. Append sets it to the current time if zero.
	Time time.Time `json:"time"`
	// Seq numbers the lines of a log from 1 without gaps. Append sets it.
	Seq uint64 `json:"seq"`
	// UID, GID and PID identify the caller (SO_PEERCRED); -1 if unknown.
	UID int64 `json:"uid"`
	GID int64 `json:"gid"`
	PID int64 `json:"pid"`
	// Op names the operation, e.g. "sign", "sign_batch", "key.generate",
	// "token.login", "denied". Required.
	Op string `json:"op"`
	// Token is the token label, if any.
	Token string `json:"token"`
	// Key is the key id in hex, if any.
	Key string `json:"key"`
	// Digest is the signed digest in hex (for a batch, its Merkle root or
	// the digest of the digests), if any.
	Digest string `json:"digest,omitempty"`
	// Count is the number of signatures of a batch operation.
	Count int `json:"count,omitempty"`
	// Detail is free text for anything else worth keeping.
	Detail string `json:"detail,omitempty"`
	// Result is "ok" or a short error text. Required.
	Result string `json:"result"`
	// Checkpoint is the signed statement of a line of Op OpCheckpoint, and
	// is set on no other line. Only Log.Checkpoint writes one.
	Checkpoint *Checkpoint `json:"checkpoint,omitempty"`
	// Prev is the SHA-256 (hex) of the previous line without its newline;
	// ZeroHash for the first line. Append sets it.
	Prev string `json:"prev"`
}

// body is the part of a line between seq and prev, encoded by Append on the
// caller's goroutine so that the writer only splices in time, seq and prev.
type body struct {
	UID    int64  `json:"uid"`
	GID    int64  `json:"gid"`
	PID    int64  `json:"pid"`
	Op     string `json:"op"`
	Token  string `json:"token"`
	Key    string `json:"key"`
	Digest string `json:"digest,omitempty"`
	Count  int    `json:"count,omitempty"`
	Detail string `json:"detail,omitempty"`
	Result string `json:"result"`

	Checkpoint *Checkpoint `json:"checkpoint,omitempty"`
}

// lineOverhead bounds what the writer adds around a body: the time (at
// most 35 bytes in RFC 3339 with nanoseconds), the seq (at most 20
// digits), the prev hash and the field names.
const lineOverhead = len(`{"time":"","seq":,,"prev":""}`) + 35 + 20 + 64

// encodeBody checks r and encodes its body fields, each string field
// bounded (see MaxDetailLen). A checkpoint record is refused: only
// Log.Checkpoint, through encodeCheckpointBody, writes one.
func encodeBody(r *Record) ([]byte, error) {
	if r.Op == OpCheckpoint || r.Checkpoint != nil {
		return nil, fmt.Errorf("%w: a checkpoint is written by Log.Checkpoint only", ErrInvalidRecord)
	}
	return encodeAnyBody(r)
}

// encodeAnyBody is encodeBody without the checkpoint refusal.
func encodeAnyBody(r *Record) ([]byte, error) {
	switch {
	case r.Op == "":
		return nil, fmt.Errorf("%w: empty op", ErrInvalidRecord)
	case r.Result == "":
		return nil, fmt.Errorf("%w: empty result", ErrInvalidRecord)
	case r.Count < 0:
		return nil, fmt.Errorf("%w: negative count %d", ErrInvalidRecord, r.Count)
	case r.Time.UTC().Year() < 0 || r.Time.UTC().Year() > 9999:
		return nil, fmt.Errorf("%w: time %v out of range", ErrInvalidRecord, r.Time)
	}
	b, err := json.Marshal(body{
		UID: r.UID, GID: r.GID, PID: r.PID,
		Op:         boundField(r.Op, MaxOpLen),
		Token:      boundField(r.Token, MaxTokenLen),
		Key:        boundField(r.Key, MaxKeyLen),
		Digest:     boundField(r.Digest, MaxDigestLen),
		Count:      r.Count,
		Detail:     boundField(r.Detail, MaxDetailLen),
		Result:     boundField(r.Result, MaxResultLen),
		Checkpoint: r.Checkpoint,
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidRecord, err)
	}
	if len(b)+lineOverhead > MaxLineSize {
		return nil, fmt.Errorf("%w: line of about %d bytes exceeds %d", ErrInvalidRecord, len(b)+lineOverhead, MaxLineSize)
	}
	return b, nil
}

// appendLine appends the line for a record (time, seq, encoded body, prev)
// to dst, without a newline.
func appendLine(dst []byte, t time.Time, seq uint64, body []byte, prev string) []byte {
	dst = append(dst, `{"time":"`...)
	dst = t.UTC().AppendFormat(dst, time.RFC3339Nano)
	dst = append(dst, `","seq":`...)
	dst = strconv.AppendUint(dst, seq, 10)
	dst = append(dst, ',')
	dst = append(dst, body[1:len(body)-1]...) // without { and }
	dst = append(dst, `,"prev":"`...)
	dst = append(dst, prev...)
	dst = append(dst, `"}`...)
	return dst
}

// lineFields is a line as Verify reads it: pointers tell a missing field
// from a zero one.
type lineFields struct {
	Time   *string `json:"time"`
	Seq    *uint64 `json:"seq"`
	UID    *int64  `json:"uid"`
	GID    *int64  `json:"gid"`
	PID    *int64  `json:"pid"`
	Op     *string `json:"op"`
	Token  *string `json:"token"`
	Key    *string `json:"key"`
	Digest string  `json:"digest"`
	Count  int     `json:"count"`
	Detail string  `json:"detail"`
	Result *string `json:"result"`
	Prev   *string `json:"prev"`

	Checkpoint *Checkpoint `json:"checkpoint"`
}

// parseLine checks that line is a complete record and returns its seq and
// prev.
func parseLine(line []byte) (seq uint64, prev string, err error) {
	var f lineFields
	return parseLineFields(line, &f)
}

// parseLineFields is parseLine, which leaves the line's fields in f.
func parseLineFields(line []byte, f *lineFields) (seq uint64, prev string, err error) {
	*f = lineFields{}
	if err := json.Unmarshal(line, f); err != nil {
		return 0, "", fmt.Errorf("not a JSON record: %v", err)
	}
	var missing []string
	for _, m := range []struct {
		name    string
		present bool
	}{
		{"time", f.Time != nil}, {"seq", f.Seq != nil},
		{"uid", f.UID != nil}, {"gid", f.GID != nil}, {"pid", f.PID != nil},
		{"op", f.Op != nil}, {"token", f.Token != nil}, {"key", f.Key != nil},
		{"result", f.Result != nil}, {"prev", f.Prev != nil},
	} {
		if !m.present {
			missing = append(missing, m.name)
		}
	}
	if len(missing) > 0 {
		return 0, "", fmt.Errorf("missing fields %v", missing)
	}
	if _, err := time.Parse(time.RFC3339Nano, *f.Time); err != nil {
		return 0, "", fmt.Errorf("bad time %q", *f.Time)
	}
	switch {
	case *f.Seq == 0:
		return 0, "", errors.New("seq 0")
	case *f.Op == "":
		return 0, "", errors.New("empty op")
	case *f.Result == "":
		return 0, "", errors.New("empty result")
	case f.Count < 0:
		return 0, "", fmt.Errorf("negative count %d", f.Count)
	case !isHash(*f.Prev):
		return 0, "", fmt.Errorf("prev %q is not 64 lower-case hex digits", *f.Prev)
	case *f.Op == OpCheckpoint && f.Checkpoint == nil:
		return 0, "", errors.New("a checkpoint line without its checkpoint")
	case *f.Op != OpCheckpoint && f.Checkpoint != nil:
		return 0, "", fmt.Errorf("a checkpoint on a line of op %q", *f.Op)
	}
	return *f.Seq, *f.Prev, nil
}

// isHash reports whether s is a SHA-256 in lower-case hex.
func isHash(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// lineHash is the SHA-256 of a line without its newline, in hex.
func lineHash(line []byte) string {
	sum := sha256.Sum256(line)
	return hex.EncodeToString(sum[:])
}
