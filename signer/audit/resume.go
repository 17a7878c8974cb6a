package audit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// resume finds where the chain of the log in f (size bytes) continues. It
// returns the seq and hash of its last line, what was lost when acceptCut
// let it pass a cut, a missing head file or a torn last line, and the size
// of the log it continues (smaller than size after a torn line is cut off;
// its bytes are kept beside the log).
func resume(ctx context.Context, f *os.File, size int64, headPath string, acceptCut bool) (last Head, cut string, newSize int64, err error) {
	last, cut, err = resumeAt(ctx, f, size, headPath, acceptCut)
	var ve *VerifyError
	if !acceptCut || !errors.As(err, &ve) || ve.Reason != ReasonTruncated {
		return last, cut, size, err
	}
	// A torn last line, from a crash in mid-write: keep its bytes in a
	// file of its own, cut them off and continue from the line before.
	off, terr := lastNewline(f, size)
	if terr != nil {
		return Head{}, "", 0, terr
	}
	torn := make([]byte, size-off)
	if _, terr := f.ReadAt(torn, off); terr != nil {
		return Head{}, "", 0, fmt.Errorf("reading the torn line: %w", terr)
	}
	keep := strings.TrimSuffix(headPath, headSuffix) + ".torn-" + time.Now().UTC().Format("20060102T150405Z")
	if terr := os.WriteFile(keep, torn, 0o600); terr != nil {
		return Head{}, "", 0, fmt.Errorf("keeping the torn line: %w", terr)
	}
	if terr := f.Truncate(off); terr != nil {
		return Head{}, "", 0, fmt.Errorf("cutting the torn line off: %w", terr)
	}
	last, cut, err = resumeAt(ctx, f, off, headPath, acceptCut)
	note := fmt.Sprintf("torn last line (%d bytes) cut off, kept in %s", len(torn), keep)
	if cut != "" {
		note += "; " + cut
	}
	return last, note, off, err
}

// lastNewline returns the offset just past the last newline in the first
// size bytes of f, or 0 when there is none.
func lastNewline(f io.ReaderAt, size int64) (int64, error) {
	n := min(size, MaxLineSize+1)
	tail := make([]byte, n)
	if _, err := f.ReadAt(tail, size-n); err != nil {
		return 0, fmt.Errorf("reading the end of the log: %w", err)
	}
	if i := bytes.LastIndexByte(tail, '\n'); i >= 0 {
		return size - n + int64(i) + 1, nil
	}
	if n < size {
		return 0, fmt.Errorf("%w: no line end in the last %d bytes", ErrTampered, n)
	}
	return 0, nil
}

// resumeAt is resume without the torn-line repair.
func resumeAt(ctx context.Context, f *os.File, size int64, headPath string, acceptCut bool) (last Head, cut string, err error) {
	head, herr := readHead(headPath)
	if herr != nil {
		if !acceptCut {
			return Head{}, "", fmt.Errorf("%w; verify the log and set AcceptCut to continue", herr)
		}
		cut = herr.Error()
	}
	last, ok, err := lastLine(f, size)
	if err != nil {
		return Head{}, "", err
	}
	if ok && head != nil && (head.Seq > last.Seq || head.Seq == last.Seq && head.Hash != last.Hash) {
		ok = false
	}
	if !ok {
		sum, err := verify(ctx, io.NewSectionReader(f, 0, size), head, nil)
		var ve *VerifyError
		switch {
		case err == nil:
			return Head{}, "", fmt.Errorf("%w: the end of the log does not chain, yet it verifies", ErrTampered)
		case acceptCut && errors.As(err, &ve) && ve.Reason == ReasonCut:
			return Head{Seq: sum.LastSeq, Hash: sum.LastHash}, ve.Detail, nil
		default:
			return Head{}, "", fmt.Errorf("refusing to continue the log: %w", err)
		}
	}
	if head == nil && herr == nil && last.Seq > 0 {
		if !acceptCut {
			return Head{}, "", fmt.Errorf("%w: head file %s is missing, so lines cut from the end would go unnoticed; verify the log and set AcceptCut to continue",
				ErrTampered, headPath)
		}
		cut = fmt.Sprintf("head file missing; the log ends at seq %d", last.Seq)
	}
	return last, cut, nil
}

// lastLine reads the end of the log in f (size bytes): the seq and hash of
// its last line. ok is false if the end does not look right: no final
// newline, a last line that is not a record, or that does not chain to the
// line before it.
func lastLine(f io.ReaderAt, size int64) (last Head, ok bool, err error) {
	if size == 0 {
		return Head{Hash: ZeroHash}, true, nil
	}
	n := min(size, 2*(MaxLineSize+1))
	tail := make([]byte, n)
	if _, err := f.ReadAt(tail, size-n); err != nil {
		return Head{}, false, fmt.Errorf("reading the end of the log: %w", err)
	}
	whole := n == size // tail starts at the beginning of the file
	if tail[n-1] != '\n' {
		return Head{}, false, nil
	}
	body := tail[:n-1]
	i := bytes.LastIndexByte(body, '\n')
	if i < 0 && !whole {
		return Head{}, false, nil
	}
	line := body[i+1:]
	seq, prev, err := parseLine(line)
	if err != nil {
		return Head{}, false, nil
	}
	last = Head{Seq: seq, Hash: lineHash(line)}
	if i < 0 {
		return last, seq == 1 && prev == ZeroHash, nil
	}
	body = body[:i]
	j := bytes.LastIndexByte(body, '\n')
	if j < 0 && !whole {
		return Head{}, false, nil
	}
	before := body[j+1:]
	pseq, _, err := parseLine(before)
	if err != nil || pseq+1 != seq || lineHash(before) != prev {
		return Head{}, false, nil
	}
	return last, true, nil
}
