package audit

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
)

// Reason says what kind of damage a VerifyError found.
type Reason string

// The reasons a VerifyError gives.
const (
	// ReasonEdited: a line's bytes changed. The line whose hash no longer
	// matches the next line's prev (or the head file) is reported; it may
	// also be that the next line's prev was changed. A line whose seq was
	// changed while it still chains to its predecessor is reported too.
	ReasonEdited Reason = "edited"
	// ReasonRemoved: seq jumps forward; VerifyError.Missing lines are gone
	// before the reported line.
	ReasonRemoved Reason = "removed"
	// ReasonReordered: seq goes backwards, or jumps forward to a line whose
	// skipped seqs turn up later in the file.
	ReasonReordered Reason = "reordered"
	// ReasonMalformed: the line is not a JSON record with every required
	// field, or is longer than MaxLineSize.
	ReasonMalformed Reason = "malformed"
	// ReasonTruncated: the last line has no newline (a torn write, or a
	// cut in the middle of a line).
	ReasonTruncated Reason = "truncated"
	// ReasonCut: the head file records a later seq than the log's last
	// line; VerifyError.Missing lines were removed from the end.
	ReasonCut Reason = "cut"
)

// VerifyError reports the first bad line of a log. It wraps ErrTampered.
type VerifyError struct {
	// Line is the 1-based line number of the fault. For ReasonCut it is
	// the number the first missing line would have had.
	Line int
	// Seq is the seq the reported line carries (for ReasonCut: the first
	// missing seq); 0 if the line could not be read.
	Seq uint64
	// Reason classifies the fault.
	Reason Reason
	// Missing is the number of lines missing, for ReasonRemoved and
	// ReasonCut.
	Missing uint64
	// Detail explains the fault for a person.
	Detail string
}

// Error implements error.
func (e *VerifyError) Error() string {
	return fmt.Sprintf("line %d: %s: %s", e.Line, e.Reason, e.Detail)
}

// Unwrap returns ErrTampered.
func (e *VerifyError) Unwrap() error { return ErrTampered }

// Head is the content of a head file: the seq and hash of the last durable
// line of a log (0 and ZeroHash for an empty log).
type Head struct {
	Seq  uint64 `json:"seq"`
	Hash string `json:"hash"`
}

// Summary describes a log that verified. On error it describes the lines
// before the first bad one.
type Summary struct {
	// Lines is the number of lines.
	Lines int
	// LastSeq and LastHash are the seq and SHA-256 (hex) of the last line;
	// 0 and ZeroHash for an empty log.
	LastSeq  uint64
	LastHash string
	// Head is the head file VerifyFile compared the log with; nil from
	// Verify, or when the file has no head file (then a cut at the end
	// cannot be detected, and a caller should say so).
	Head *Head
}

// Verify reads a whole log and checks its chain: every line a complete JSON
// record, seq continuous from 1, prev the SHA-256 of the line before, the
// last line ended by a newline. On the first bad line it returns a
// *VerifyError (wrapping ErrTampered); an error reading r is returned
// wrapped as it is. Lines cut from the end cannot be seen without the head
// file: use VerifyFile for a log on disk.
func Verify(r io.Reader) (Summary, error) {
	sum, err := verify(context.Background(), r, nil)
	if err != nil {
		return sum, fmt.Errorf("audit: verify: %w", err)
	}
	return sum, nil
}

// VerifyFile verifies the log at path as Verify does, and compares it with
// its head file, path+".head", if there is one: a log that ends before the
// head's seq was cut (ReasonCut), and the line with the head's seq must
// have the head's hash (else ReasonEdited). A head that lags the log is
// normal after a crash. Verifying a log while signerd appends to it may
// report a torn last line.
func VerifyFile(path string) (Summary, error) {
	head, err := readHead(path + headSuffix)
	if err != nil {
		return Summary{}, err
	}
	f, err := os.Open(path)
	if err != nil {
		return Summary{}, fmt.Errorf("audit: %w", err)
	}
	defer f.Close()
	sum, err := verify(context.Background(), f, head)
	sum.Head = head
	if err != nil {
		return sum, fmt.Errorf("audit: verify %s: %w", path, err)
	}
	return sum, nil
}

// verify checks the log in r; with a head it also checks the end against it.
func verify(ctx context.Context, r io.Reader, head *Head) (Summary, error) {
	br := bufio.NewReaderSize(r, MaxLineSize+1)
	sum := Summary{LastHash: ZeroHash}
	for {
		if sum.Lines%4096 == 0 {
			if err := ctx.Err(); err != nil {
				return sum, err
			}
		}
		n := sum.Lines + 1
		data, err := br.ReadSlice('\n')
		switch {
		case err == nil:
		case errors.Is(err, bufio.ErrBufferFull):
			return sum, &VerifyError{Line: n, Reason: ReasonMalformed,
				Detail: fmt.Sprintf("line longer than %d bytes", MaxLineSize)}
		case errors.Is(err, io.EOF):
			if len(data) == 0 {
				return sum, checkEnd(sum, head)
			}
			return sum, &VerifyError{Line: n, Reason: ReasonTruncated,
				Detail: fmt.Sprintf("last line (%d bytes) has no newline: torn write or cut in mid-line", len(data))}
		default:
			return sum, fmt.Errorf("reading log: %w", err)
		}
		line := data[:len(data)-1]
		seq, prev, err := parseLine(line)
		if err != nil {
			return sum, &VerifyError{Line: n, Reason: ReasonMalformed, Detail: err.Error()}
		}
		want := sum.LastSeq + 1
		chained := prev == sum.LastHash
		switch {
		case seq == want && !chained && n == 1:
			return sum, &VerifyError{Line: 1, Seq: seq, Reason: ReasonEdited,
				Detail: "the first line's prev is not all zeros: it was changed, or lines before it were removed"}
		case seq == want && !chained:
			return sum, &VerifyError{Line: n - 1, Seq: sum.LastSeq, Reason: ReasonEdited,
				Detail: fmt.Sprintf("line %d (seq %d) was changed: its SHA-256 does not match the prev of line %d (or that prev was changed)",
					n-1, sum.LastSeq, n)}
		case seq != want && chained:
			return sum, &VerifyError{Line: n, Seq: seq, Reason: ReasonEdited,
				Detail: fmt.Sprintf("seq was changed: the line chains to the line before but has seq %d, want %d", seq, want)}
		case seq < want:
			return sum, &VerifyError{Line: n, Seq: seq, Reason: ReasonReordered,
				Detail: fmt.Sprintf("seq %d follows seq %d: lines moved or repeated", seq, sum.LastSeq)}
		case seq > want:
			at, found, err := findSeq(br, n, want, seq)
			if err != nil {
				return sum, err
			}
			if found > 0 {
				return sum, &VerifyError{Line: n, Seq: seq, Reason: ReasonReordered,
					Detail: fmt.Sprintf("seq %d follows seq %d, and seq %d comes later at line %d: lines moved", seq, sum.LastSeq, found, at)}
			}
			detail := fmt.Sprintf("1 line (seq %d) missing before this line", want)
			if seq-want > 1 {
				detail = fmt.Sprintf("%d lines (seq %d to %d) missing before this line", seq-want, want, seq-1)
			}
			return sum, &VerifyError{Line: n, Seq: seq, Reason: ReasonRemoved, Missing: seq - want, Detail: detail}
		}
		hash := lineHash(line)
		if head != nil && seq == head.Seq && hash != head.Hash {
			return sum, &VerifyError{Line: n, Seq: seq, Reason: ReasonEdited,
				Detail: fmt.Sprintf("line %d (seq %d) was changed: its SHA-256 does not match the head file", n, seq)}
		}
		sum.Lines, sum.LastSeq, sum.LastHash = n, seq, hash
	}
}

// checkEnd compares the end of a log that verified with its head.
func checkEnd(sum Summary, head *Head) error {
	if head == nil || head.Seq <= sum.LastSeq {
		return nil
	}
	missing := head.Seq - sum.LastSeq
	lines := "the last line was"
	if missing > 1 {
		lines = fmt.Sprintf("the last %d lines were", missing)
	}
	return &VerifyError{Line: sum.Lines + 1, Seq: sum.LastSeq + 1, Reason: ReasonCut, Missing: missing,
		Detail: fmt.Sprintf("the head file records seq %d but the log ends at seq %d: %s removed",
			head.Seq, sum.LastSeq, lines)}
}

// findSeq reads the rest of a log after line n for a line whose seq is in
// [lo, hi), and returns its line number and seq (0, 0 if there is none).
// Lines that do not parse are skipped.
func findSeq(br *bufio.Reader, n int, lo, hi uint64) (line int, seq uint64, err error) {
	var f struct {
		Seq *uint64 `json:"seq"`
	}
	long := false // inside a line longer than the buffer
	for {
		data, err := br.ReadSlice('\n')
		switch {
		case err == nil:
		case errors.Is(err, bufio.ErrBufferFull):
			long = true
			continue
		case errors.Is(err, io.EOF):
			return 0, 0, nil
		default:
			return 0, 0, fmt.Errorf("reading log: %w", err)
		}
		n++
		if long {
			long = false
			continue
		}
		f.Seq = nil
		if json.Unmarshal(data, &f) == nil && f.Seq != nil && *f.Seq >= lo && *f.Seq < hi {
			return n, *f.Seq, nil
		}
	}
}
