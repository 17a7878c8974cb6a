package audit

import (
	"bufio"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/hsmsigner/hsmsigner/hsm/sigalg"
)

// OpCheckpoint is the Op of a checkpoint line, which Log.Checkpoint
// appends: a statement naming an earlier line of the log (its seq and
// hash) and the time, signed with an audit key in the HSM.
const OpCheckpoint = "audit.checkpoint"

// StatementHeader is the first line of a checkpoint statement; "v1" is
// the version of the statement's form.
const StatementHeader = "hsmsigner audit checkpoint v1"

// CheckpointWindow is how far a checkpoint line may follow the line its
// statement names: at most this many seqs. Log.Checkpoint signs the
// durable head while other lines go on being written; a checkpoint that
// would land further away is not written, and a verifier keeps only the
// hashes of this many recent lines.
const CheckpointWindow = 1 << 16

// maxSignatureSize bounds a checkpoint's signature (RSA 8192 is 1 KiB).
const maxSignatureSize = 2048

// Errors of checkpoints that callers test with errors.Is.
var (
	// ErrNothingToCheckpoint means the newest durable line is the last
	// checkpoint line: there is nothing new to anchor.
	ErrNothingToCheckpoint = errors.New("audit: nothing new since the last checkpoint")
	// ErrCheckpoint means a checkpoint could not be made: signing failed,
	// or its signature is not one a verifier accepts. Nothing was written.
	ErrCheckpoint = errors.New("audit: checkpoint failed")
)

// Statement is what a checkpoint signs: the seq and SHA-256 of a line of
// the log (0 and ZeroHash for an empty log) and when it was signed.
//
// Its text, which is what is signed, is exactly four lines, each ended by
// a newline:
//
//	hsmsigner audit checkpoint v1
//	<seq in decimal, no leading zeros>
//	<hash: 64 lower-case hex digits>
//	<time in RFC 3339, UTC, whole seconds: 2006-01-02T15:04:05Z>
//
// The signature is over the SHA-256 of the text (the checkpoint line's
// digest field), by the algorithm the line names (SHA256withECDSA,
// SHA256withRSA, SHA256withRSAandMGF1), as a transparency log signs its
// tree heads: a verifier needs the text, the signature and the public key,
// and no HSM.
type Statement struct {
	Seq  uint64
	Hash string
	Time time.Time
}

// Text returns the statement's canonical text.
func (s Statement) Text() string {
	return StatementHeader + "\n" + strconv.FormatUint(s.Seq, 10) + "\n" + s.Hash + "\n" +
		s.Time.UTC().Format(time.RFC3339) + "\n"
}

// Digest returns the SHA-256 of the statement's text: what is signed.
func (s Statement) Digest() []byte {
	sum := sha256.Sum256([]byte(s.Text()))
	return sum[:]
}

// ParseStatement reads a statement's text. It accepts the canonical text
// only: any other form, even one that means the same, is refused.
func ParseStatement(text string) (Statement, error) {
	parts := strings.Split(text, "\n")
	if len(parts) != 5 || parts[4] != "" {
		return Statement{}, errors.New("statement is not four lines each ended by a newline")
	}
	if parts[0] != StatementHeader {
		return Statement{}, fmt.Errorf("statement header %q, want %q", parts[0], StatementHeader)
	}
	seq, err := strconv.ParseUint(parts[1], 10, 64)
	if err != nil {
		return Statement{}, fmt.Errorf("statement seq %q is not a number", parts[1])
	}
	if !isHash(parts[2]) {
		return Statement{}, fmt.Errorf("statement hash %q is not 64 lower-case hex digits", parts[2])
	}
	t, err := time.Parse(time.RFC3339, parts[3])
	if err != nil {
		return Statement{}, fmt.Errorf("statement time %q is not RFC 3339", parts[3])
	}
	s := Statement{Seq: seq, Hash: parts[2], Time: t.UTC()}
	if s.Text() != text {
		return Statement{}, errors.New("statement is not in its canonical form (seq without leading zeros, time in UTC whole seconds)")
	}
	if seq == 0 && s.Hash != ZeroHash {
		return Statement{}, errors.New("statement seq 0 with a hash other than zeros")
	}
	return s, nil
}

// Checkpoint is a signed statement as a checkpoint line carries it, in
// its "checkpoint" field: {"statement": text, "alg": algorithm name,
// "sig": base64 signature}. A copy of it, shipped off the machine, anchors
// the log on its own (see VerifyOptions.Anchors).
type Checkpoint struct {
	// Statement is the statement's text (see Statement).
	Statement string `json:"statement"`
	// Algorithm names the signature algorithm, e.g. SHA256withECDSA.
	Algorithm string `json:"alg"`
	// Signature is the signature over the statement's SHA-256; ECDSA
	// signatures are DER.
	Signature []byte `json:"sig"`
}

// parse checks c's form and returns its statement and algorithm.
func (c *Checkpoint) parse() (Statement, sigalg.Algorithm, error) {
	st, err := ParseStatement(c.Statement)
	if err != nil {
		return Statement{}, sigalg.Algorithm{}, err
	}
	alg, err := checkpointAlgorithm(c.Algorithm)
	if err != nil {
		return Statement{}, sigalg.Algorithm{}, err
	}
	if len(c.Signature) == 0 || len(c.Signature) > maxSignatureSize {
		return Statement{}, sigalg.Algorithm{}, fmt.Errorf("signature of %d bytes", len(c.Signature))
	}
	return st, alg, nil
}

// checkpointAlgorithm accepts the algorithms a checkpoint may be signed
// with: any the appliance knows over SHA-256.
func checkpointAlgorithm(name string) (sigalg.Algorithm, error) {
	alg, err := sigalg.Parse(name)
	if err != nil {
		return sigalg.Algorithm{}, err
	}
	if alg.Hash != crypto.SHA256 || alg.Name != name {
		return sigalg.Algorithm{}, fmt.Errorf("algorithm %q: a checkpoint names SHA256withECDSA, SHA256withRSA or SHA256withRSAandMGF1", name)
	}
	return alg, nil
}

// verifySignature checks c's signature with one of keys.
func (c *Checkpoint) verifySignature(st Statement, alg sigalg.Algorithm, keys []crypto.PublicKey) error {
	digest := st.Digest()
	for _, k := range keys {
		if sigalg.Verify(k, alg, digest, c.Signature) == nil {
			return nil
		}
	}
	if len(keys) == 1 {
		return errors.New("its signature does not verify with the given key")
	}
	return fmt.Errorf("its signature verifies with none of the %d given keys", len(keys))
}

// SignFunc signs a checkpoint statement's digest (its SHA-256) and returns
// the algorithm's name and the signature. The appliance signs with an
// audit key in the HSM.
type SignFunc func(ctx context.Context, digest []byte) (algorithm string, signature []byte, err error)

// Checkpoint anchors the log: it signs a statement of the newest durable
// line (fsynced: in Buffered mode it may lag the last line written) with
// sign, then appends a checkpoint line (Op OpCheckpoint) carrying the
// statement and signature, and waits for it as Append does. r gives the
// line's uid, gid, pid, token and key (the audit key's id); the rest is
// set here. The signature is checked with pub, the audit key's public
// key, before anything is written: a checkpoint that would not verify is
// never logged.
//
// The log goes on taking records while sign runs; the checkpoint line
// lands up to CheckpointWindow lines after the line it names, or is not
// written. It returns ErrNothingToCheckpoint when the newest durable line
// is this Log's last checkpoint line, an error wrapping ErrCheckpoint when
// signing failed, and Append's errors.
func (l *Log) Checkpoint(ctx context.Context, r Record, pub crypto.PublicKey, sign SignFunc) (Checkpoint, error) {
	head, err := l.syncedHead()
	if err != nil {
		return Checkpoint{}, err
	}
	l.mu.Lock()
	last := l.lastCheckpoint
	l.mu.Unlock()
	if last != 0 && head.Seq <= last {
		return Checkpoint{}, ErrNothingToCheckpoint
	}
	st := Statement{Seq: head.Seq, Hash: head.Hash, Time: time.Now().UTC().Truncate(time.Second)}
	digest := st.Digest()
	algName, sig, err := sign(ctx, digest)
	if err != nil {
		return Checkpoint{}, fmt.Errorf("%w: signing: %w", ErrCheckpoint, err)
	}
	cp := Checkpoint{Statement: st.Text(), Algorithm: algName, Signature: sig}
	_, alg, err := cp.parse()
	if err == nil {
		err = cp.verifySignature(st, alg, []crypto.PublicKey{pub})
	}
	if err != nil {
		return Checkpoint{}, fmt.Errorf("%w: %w", ErrCheckpoint, err)
	}
	r.Time, r.Op, r.Digest, r.Count, r.Detail, r.Result = time.Time{}, OpCheckpoint, hex.EncodeToString(digest), 0, "", "ok"
	r.Checkpoint = &cp
	t, err := l.enqueue(r, st.Seq)
	if err != nil {
		return Checkpoint{}, err
	}
	if err := l.Wait(ctx, t); err != nil {
		return Checkpoint{}, err
	}
	return cp, nil
}

// syncedHead returns the newest line known fsynced. In Buffered mode it
// first fsyncs what was written, so that a checkpoint (at shutdown above
// all) covers every line written before it; the writer waits meanwhile.
func (l *Log) syncedHead() (Head, error) {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	l.mu.Lock()
	closed, failed, synced := l.closed, l.failed, l.synced
	l.mu.Unlock()
	switch {
	case closed:
		return Head{}, ErrClosed
	case failed != nil:
		return Head{}, failed
	case l.opts.Mode == Sync || synced.Seq == l.wseq:
		return synced, nil
	}
	// Holding wmu: no group is being written, and Close cannot close the
	// file before this fsync is done.
	h := Head{Seq: l.wseq, Hash: l.whash}
	if err := l.f.Sync(); err != nil {
		l.fail(fmt.Errorf("fsync: %w", err), nil, failFsync)
		l.mu.Lock()
		defer l.mu.Unlock()
		return Head{}, l.failed
	}
	l.mu.Lock()
	if h.Seq > l.synced.Seq {
		l.synced = h
	}
	l.mu.Unlock()
	return h, nil
}

// errCheckpointStale answers a checkpoint that would land more than
// CheckpointWindow lines after the line it names.
var errCheckpointStale = fmt.Errorf("%w: the checkpoint would land more than %d lines after the line it signs; try again", ErrCheckpoint, CheckpointWindow)

// ParsePublicKeys reads the PEM blocks of data: PUBLIC KEY (PKIX) blocks
// and CERTIFICATE blocks, whose subject public key is taken. Only ECDSA
// and RSA keys are accepted. Other blocks are refused.
func ParsePublicKeys(data []byte) ([]crypto.PublicKey, error) {
	var keys []crypto.PublicKey
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		var pub any
		switch b.Type {
		case "PUBLIC KEY":
			k, err := x509.ParsePKIXPublicKey(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("PEM block %d: %w", len(keys)+1, err)
			}
			pub = k
		case "CERTIFICATE":
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("PEM block %d: %w", len(keys)+1, err)
			}
			pub = c.PublicKey
		default:
			return nil, fmt.Errorf("PEM block %d is a %s; give a PUBLIC KEY or a CERTIFICATE", len(keys)+1, b.Type)
		}
		switch pub.(type) {
		case *ecdsa.PublicKey, *rsa.PublicKey:
		default:
			return nil, fmt.Errorf("PEM block %d: a %T key; audit keys are ECDSA or RSA", len(keys)+1, pub)
		}
		keys = append(keys, pub)
	}
	if len(keys) == 0 {
		return nil, errors.New("no PEM PUBLIC KEY or CERTIFICATE block")
	}
	if strings.TrimSpace(string(data)) != "" {
		return nil, errors.New("text after the last PEM block")
	}
	return keys, nil
}

// maxAnchorLine bounds a line ReadAnchors reads.
const maxAnchorLine = 1 << 20

// ReadAnchors reads checkpoints shipped off the machine: JSON lines, each
// with a "checkpoint" object as a checkpoint line carries it. Audit lines
// (grep'd from a copy of the log) and signerd's own "audit checkpoint"
// log lines (from journald or syslog) both have one. Lines that are not
// JSON objects, or have no checkpoint, are skipped; a checkpoint of the
// wrong form is an error.
func ReadAnchors(r io.Reader) ([]Checkpoint, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxAnchorLine)
	var out []Checkpoint
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if !strings.HasPrefix(line, "{") {
			continue
		}
		var f struct {
			Checkpoint *Checkpoint `json:"checkpoint"`
		}
		if json.Unmarshal([]byte(line), &f) != nil || f.Checkpoint == nil {
			continue
		}
		if _, _, err := f.Checkpoint.parse(); err != nil {
			return nil, fmt.Errorf("line %d: checkpoint: %w", n, err)
		}
		out = append(out, *f.Checkpoint)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("line %d: %w", n+1, err)
	}
	if len(out) == 0 {
		return nil, errors.New("no checkpoint found")
	}
	return out, nil
}
