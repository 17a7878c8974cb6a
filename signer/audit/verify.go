package audit

import (
	"bufio"
	"context"
	"crypto"
	"crypto/sha256"
	"encoding/hex"
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
	// ReasonCut: the head file, or a shipped checkpoint
	// (VerifyOptions.Anchors), records a later seq than the log's last
	// line; VerifyError.Missing lines were removed from the end.
	ReasonCut Reason = "cut"
	// ReasonCheckpoint: a checkpoint does not match the log. Either a
	// checkpoint line's statement names a line whose hash is not the one
	// it states (a line up to it was changed, removed or inserted after it
	// was checkpointed, and the chain recomputed), or its signature does
	// not verify with the given keys (the checkpoint was forged or its
	// statement rewritten), or a line differs from what a shipped
	// checkpoint signed.
	ReasonCheckpoint Reason = "checkpoint"
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
	// Checkpoints is the number of checkpoint lines, each of whose
	// statement names the line it should; with VerifyOptions.Keys, each
	// signature verified too.
	Checkpoints int
	// SignaturesChecked reports whether checkpoint signatures were
	// checked (VerifyOptions.Keys given). Without it, whoever can write
	// the log can rewrite it and its checkpoints' statements unseen.
	SignaturesChecked bool
	// AnchoredSeq is the highest seq that a checkpoint with a verified
	// signature, in the log or shipped (VerifyOptions.Anchors), vouches
	// for; the lines up to it cannot have been rewritten without the
	// audit key. The lines after it (LastSeq - AnchoredSeq of them) are
	// unanchored. 0 without keys.
	AnchoredSeq uint64
	// Anchors is the number of shipped checkpoints that matched the log.
	Anchors int
}

// VerifyOptions are what VerifyWith and VerifyFileWith check beyond the
// chain.
type VerifyOptions struct {
	// Keys are the audit keys' public keys (ECDSA or RSA; see
	// ParsePublicKeys). Every checkpoint line's signature must verify
	// with one of them. Without keys, checkpoint statements are checked
	// against the chain but signatures are not.
	Keys []crypto.PublicKey
	// Anchors are checkpoints shipped off the machine (see ReadAnchors).
	// Each must verify with Keys, and the log's line at each one's seq
	// must have the hash it states, or the log was rewritten or cut.
	Anchors []Checkpoint
}

// anchor is a shipped checkpoint's claim on one line.
type anchor struct {
	hash string
	time string
}

// verifier holds what verify checks beyond the chain.
type verifier struct {
	keys    []crypto.PublicKey
	anchors map[uint64]anchor
	maxSeq  uint64 // the highest seq an anchor names
	// recent holds the hashes of the last CheckpointWindow lines, the
	// line of seq s at (s-1) % CheckpointWindow.
	recent [][sha256.Size]byte
}

// newVerifier checks the shipped checkpoints of opts.
func newVerifier(opts VerifyOptions) (*verifier, error) {
	v := &verifier{keys: opts.Keys}
	if len(opts.Anchors) > 0 && len(opts.Keys) == 0 {
		return nil, errors.New("shipped checkpoints need the audit key to be verified: give its public key")
	}
	for i := range opts.Anchors {
		c := &opts.Anchors[i]
		st, alg, err := c.parse()
		if err == nil {
			err = c.verifySignature(st, alg, opts.Keys)
		}
		if err != nil {
			return nil, fmt.Errorf("shipped checkpoint %d: %w", i+1, err)
		}
		if st.Seq == 0 {
			continue
		}
		a := anchor{hash: st.Hash, time: st.Time.Format("2006-01-02T15:04:05Z")}
		if v.anchors == nil {
			v.anchors = map[uint64]anchor{}
		}
		if prev, ok := v.anchors[st.Seq]; ok && prev.hash != a.hash {
			return nil, fmt.Errorf("%w: shipped checkpoints signed at %s and %s both vouch for seq %d, with different hashes: two different logs were signed with the audit key",
				ErrTampered, prev.time, a.time, st.Seq)
		}
		v.anchors[st.Seq] = a
		v.maxSeq = max(v.maxSeq, st.Seq)
	}
	return v, nil
}

// remember keeps the hash of the line of seq.
func (v *verifier) remember(seq uint64, sum [sha256.Size]byte) {
	if len(v.recent) < CheckpointWindow {
		v.recent = append(v.recent, sum)
		return
	}
	v.recent[(seq-1)%CheckpointWindow] = sum
}

// checkpoint checks the checkpoint line n (seq seq) whose fields are f,
// once the lines before it have verified, and returns the seq its
// statement vouches for and whether its signature was verified.
func (v *verifier) checkpoint(n int, seq uint64, f *lineFields) (uint64, bool, error) {
	fail := func(reason Reason, format string, a ...any) (uint64, bool, error) {
		return 0, false, &VerifyError{Line: n, Seq: seq, Reason: reason, Detail: fmt.Sprintf(format, a...)}
	}
	st, alg, err := f.Checkpoint.parse()
	if err != nil {
		return fail(ReasonMalformed, "checkpoint: %v", err)
	}
	if f.Digest != hex.EncodeToString(st.Digest()) {
		return fail(ReasonCheckpoint, "checkpoint digest %q is not the SHA-256 of its statement", f.Digest)
	}
	if st.Seq >= seq || seq-st.Seq > CheckpointWindow {
		return fail(ReasonCheckpoint, "the checkpoint's statement names seq %d; it must name one of the %d lines before it", st.Seq, CheckpointWindow)
	}
	want := ZeroHash
	if st.Seq > 0 {
		h := v.recent[(st.Seq-1)%CheckpointWindow]
		want = hex.EncodeToString(h[:])
	}
	if st.Hash != want {
		return fail(ReasonCheckpoint, "the checkpoint signed at %s vouches for seq %d with hash %s, but that line's hash is %s: lines up to seq %d were changed, removed or inserted after the checkpoint (and the chain recomputed), or the checkpoint was edited",
			st.Time.Format("2006-01-02T15:04:05Z"), st.Seq, st.Hash, want, st.Seq)
	}
	if len(v.keys) == 0 {
		return st.Seq, false, nil
	}
	if err := f.Checkpoint.verifySignature(st, alg, v.keys); err != nil {
		return fail(ReasonCheckpoint, "the checkpoint vouching for seq %d: %v: it was forged, or its statement rewritten along with the lines before it", st.Seq, err)
	}
	return st.Seq, true, nil
}

// Verify reads a whole log and checks its chain: every line a complete JSON
// record, seq continuous from 1, prev the SHA-256 of the line before, the
// last line ended by a newline. On the first bad line it returns a
// *VerifyError (wrapping ErrTampered); an error reading r is returned
// wrapped as it is. Lines cut from the end cannot be seen without the head
// file: use VerifyFile for a log on disk.
func Verify(r io.Reader) (Summary, error) {
	return VerifyWith(r, VerifyOptions{})
}

// VerifyWith is Verify with checkpoint signatures checked against
// opts.Keys and the log compared with the shipped checkpoints
// opts.Anchors. A checkpoint that does not match is reported as
// ReasonCheckpoint. Lines after Summary.AnchoredSeq are not anchored: a
// caller should say how many.
func VerifyWith(r io.Reader, opts VerifyOptions) (Summary, error) {
	v, err := newVerifier(opts)
	if err != nil {
		return Summary{}, fmt.Errorf("audit: verify: %w", err)
	}
	sum, err := verify(context.Background(), r, nil, v)
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
	return VerifyFileWith(path, VerifyOptions{})
}

// VerifyFileWith is VerifyFile with the checks of VerifyWith.
func VerifyFileWith(path string, opts VerifyOptions) (Summary, error) {
	v, err := newVerifier(opts)
	if err != nil {
		return Summary{}, fmt.Errorf("audit: verify %s: %w", path, err)
	}
	head, err := readHead(path + headSuffix)
	if err != nil {
		return Summary{}, err
	}
	f, err := os.Open(path)
	if err != nil {
		return Summary{}, fmt.Errorf("audit: %w", err)
	}
	defer f.Close()
	sum, err := verify(context.Background(), f, head, v)
	sum.Head = head
	if err != nil {
		return sum, fmt.Errorf("audit: verify %s: %w", path, err)
	}
	return sum, nil
}

// verify checks the log in r; with a head it also checks the end against
// it; with v, its checkpoints and shipped checkpoints (nil: statements
// only).
func verify(ctx context.Context, r io.Reader, head *Head, v *verifier) (Summary, error) {
	if v == nil {
		v = &verifier{}
	}
	br := bufio.NewReaderSize(r, MaxLineSize+1)
	sum := Summary{LastHash: ZeroHash, SignaturesChecked: len(v.keys) > 0}
	var f lineFields
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
				if err := checkEnd(sum, head); err != nil {
					return sum, err
				}
				return sum, v.checkEnd(sum)
			}
			return sum, &VerifyError{Line: n, Reason: ReasonTruncated,
				Detail: fmt.Sprintf("last line (%d bytes) has no newline: torn write or cut in mid-line", len(data))}
		default:
			return sum, fmt.Errorf("reading log: %w", err)
		}
		line := data[:len(data)-1]
		seq, prev, err := parseLineFields(line, &f)
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
		digest := sha256.Sum256(line)
		hash := hex.EncodeToString(digest[:])
		if head != nil && seq == head.Seq && hash != head.Hash {
			return sum, &VerifyError{Line: n, Seq: seq, Reason: ReasonEdited,
				Detail: fmt.Sprintf("line %d (seq %d) was changed: its SHA-256 does not match the head file", n, seq)}
		}
		if a, ok := v.anchors[seq]; ok {
			if a.hash != hash {
				return sum, &VerifyError{Line: n, Seq: seq, Reason: ReasonCheckpoint,
					Detail: fmt.Sprintf("line %d (seq %d) is not the line a shipped checkpoint signed at %s vouches for: the log was rewritten up to here", n, seq, a.time)}
			}
			sum.Anchors++
			sum.AnchoredSeq = max(sum.AnchoredSeq, seq)
		}
		if f.Checkpoint != nil {
			vouched, signed, err := v.checkpoint(n, seq, &f)
			if err != nil {
				return sum, err
			}
			sum.Checkpoints++
			if signed {
				sum.AnchoredSeq = max(sum.AnchoredSeq, vouched)
			}
		}
		v.remember(seq, digest)
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

// checkEnd compares the end of a log that verified with the shipped
// checkpoints.
func (v *verifier) checkEnd(sum Summary) error {
	if v.maxSeq <= sum.LastSeq {
		return nil
	}
	a := v.anchors[v.maxSeq]
	missing := v.maxSeq - sum.LastSeq
	return &VerifyError{Line: sum.Lines + 1, Seq: sum.LastSeq + 1, Reason: ReasonCut, Missing: missing,
		Detail: fmt.Sprintf("a shipped checkpoint signed at %s vouches for seq %d but the log ends at seq %d: at least %d lines were removed from its end",
			a.time, v.maxSeq, sum.LastSeq, missing)}
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
