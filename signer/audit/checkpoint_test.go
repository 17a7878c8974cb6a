package audit

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// fixtureKey is the P-256 key of testdata/checkpoint-key.pem, which signed
// the checkpoints of the FuzzVerify seeds.
func fixtureKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	data, err := os.ReadFile("testdata/checkpoint-key.pem")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(data)
	if b == nil {
		t.Fatal("no PEM block in testdata/checkpoint-key.pem")
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return k.(*ecdsa.PrivateKey)
}

// auditKey is a key that signs checkpoints as the HSM's audit key would.
type auditKey struct {
	name   string
	signer crypto.Signer
	alg    string
	opts   crypto.SignerOpts
}

func (k auditKey) pub() crypto.PublicKey { return k.signer.Public() }

func (k auditKey) sign(_ context.Context, digest []byte) (string, []byte, error) {
	sig, err := k.signer.Sign(rand.Reader, digest, k.opts)
	return k.alg, sig, err
}

func ecKey(t testing.TB) auditKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return auditKey{"ECDSA P-256", k, "SHA256withECDSA", crypto.SHA256}
}

func auditKeys(t testing.TB) []auditKey {
	t.Helper()
	r, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return []auditKey{
		ecKey(t),
		{"RSA PKCS#1 v1.5", r, "SHA256withRSA", crypto.SHA256},
		{"RSA-PSS", r, "SHA256withRSAandMGF1", &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}},
	}
}

// checkpointedLog writes a log of counts[0] records, a checkpoint,
// counts[1] records, a checkpoint, and so on, and returns its path.
func checkpointedLog(t testing.TB, k auditKey, counts ...int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := Open(t.Context(), path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	i := 0
	for j, n := range counts {
		for range n {
			if err := l.Append(t.Context(), sampleRecord(i)); err != nil {
				t.Fatal(err)
			}
			i++
		}
		if j < len(counts)-1 {
			if _, err := l.Checkpoint(t.Context(), Record{UID: 0, GID: 0, PID: 1, Token: "audit", Key: "a0d1"}, k.pub(), k.sign); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

var (
	seqField       = regexp.MustCompile(`"seq":[0-9]+,`)
	prevField      = regexp.MustCompile(`"prev":"[0-9a-f]{64}"}$`)
	statementField = regexp.MustCompile(`"statement":"(?:[^"\\]|\\.)*"`)
	digestField    = regexp.MustCompile(`"digest":"[^"]*"`)
)

// rechain does what someone who can write the log does after removing
// lines: renumber every line, recompute every prev and, with statements,
// make each checkpoint's statement name the line before it again (its
// signature cannot be redone without the audit key). It returns the
// lines and the new head.
func rechain(t testing.TB, lines [][]byte, statements bool) ([][]byte, Head) {
	t.Helper()
	prev := ZeroHash
	out := make([][]byte, len(lines))
	for i, line := range lines {
		line = seqField.ReplaceAll(line, []byte(`"seq":`+strconv.Itoa(i+1)+`,`))
		line = prevField.ReplaceAll(line, []byte(`"prev":"`+prev+`"}`))
		if statements && bytes.Contains(line, []byte(`"op":"`+OpCheckpoint+`"`)) {
			var f lineFields
			if err := json.Unmarshal(line, &f); err != nil {
				t.Fatal(err)
			}
			old, err := ParseStatement(f.Checkpoint.Statement)
			if err != nil {
				t.Fatal(err)
			}
			st := Statement{Seq: uint64(i), Hash: prev, Time: old.Time}
			text, _ := json.Marshal(st.Text())
			line = statementField.ReplaceAll(line, append([]byte(`"statement":`), text...))
			line = digestField.ReplaceAll(line, []byte(`"digest":"`+hex.EncodeToString(st.Digest())+`"`))
		}
		out[i] = line
		prev = lineHash(line)
	}
	return out, Head{Seq: uint64(len(out)), Hash: prev}
}

// writeForged writes lines and head over the log at path and its head file.
func writeForged(t testing.TB, path string, lines [][]byte, head Head) {
	t.Helper()
	if err := os.WriteFile(path, joinLines(lines), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := writeHead(path+headSuffix, head); err != nil {
		t.Fatal(err)
	}
}

// isCheckpoint reports whether line is a checkpoint line.
func isCheckpoint(line []byte) bool {
	return bytes.Contains(line, []byte(`"op":"`+OpCheckpoint+`"`))
}

func wantVerifyError(t testing.TB, err error, line int, reason Reason) *VerifyError {
	t.Helper()
	var ve *VerifyError
	if !errors.As(err, &ve) || !errors.Is(err, ErrTampered) {
		t.Fatalf("error %v, want a *VerifyError wrapping ErrTampered", err)
	}
	if ve.Line != line || ve.Reason != reason {
		t.Fatalf("got line %d, %s (%v); want line %d, %s", ve.Line, ve.Reason, err, line, reason)
	}
	return ve
}

func TestCheckpointAnchorsTheLog(t *testing.T) {
	for _, k := range auditKeys(t) {
		t.Run(k.name, func(t *testing.T) {
			// 3 records, checkpoint (seq 4, vouching for 3), 2 records,
			// checkpoint (seq 7, vouching for 6), 1 record.
			path := checkpointedLog(t, k, 3, 2, 1)
			lines := readLines(t, path)
			var f lineFields
			if _, _, err := parseLineFields(lines[3], &f); err != nil || f.Checkpoint == nil || *f.Op != OpCheckpoint {
				t.Fatalf("line 4 is not a checkpoint: %s (%v)", lines[3], err)
			}
			st, err := ParseStatement(f.Checkpoint.Statement)
			if err != nil || st.Seq != 3 || st.Hash != lineHash(lines[2]) || f.Checkpoint.Algorithm != k.alg {
				t.Fatalf("checkpoint %+v, statement %+v, %v", f.Checkpoint, st, err)
			}
			if f.Digest != hex.EncodeToString(st.Digest()) || *f.Key != "a0d1" || *f.Token != "audit" {
				t.Fatalf("checkpoint line %s", lines[3])
			}

			sum, err := VerifyFileWith(path, VerifyOptions{Keys: []crypto.PublicKey{k.pub()}})
			if err != nil {
				t.Fatal(err)
			}
			if sum.Lines != 8 || sum.Checkpoints != 2 || !sum.SignaturesChecked || sum.AnchoredSeq != 6 {
				t.Fatalf("summary %+v; want 8 lines, 2 checkpoints checked, anchored to seq 6", sum)
			}
			sum, err = VerifyFile(path)
			if err != nil || sum.Checkpoints != 2 || sum.SignaturesChecked || sum.AnchoredSeq != 0 {
				t.Fatalf("without keys: %+v, %v", sum, err)
			}
			other := ecKey(t)
			_, err = VerifyFileWith(path, VerifyOptions{Keys: []crypto.PublicKey{other.pub()}})
			wantVerifyError(t, err, 4, ReasonCheckpoint)
			// Any of several keys will do (an audit key replaced).
			if _, err := VerifyFileWith(path, VerifyOptions{Keys: []crypto.PublicKey{other.pub(), k.pub()}}); err != nil {
				t.Fatal(err)
			}
			// Open continues a checkpointed log.
			l, err := Open(t.Context(), path, Options{})
			if err != nil {
				t.Fatal(err)
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestRewrittenChainFailsWithTheAuditKey is the security review's attack
// (issue 9, finding 6): delete a line, recompute the chain and the head
// file. The chain alone cannot tell, as before checkpoints; the audit
// key's public key can.
func TestRewrittenChainFailsWithTheAuditKey(t *testing.T) {
	k := ecKey(t)
	keys := VerifyOptions{Keys: []crypto.PublicKey{k.pub()}}
	// Lines 1-5 records, 6 checkpoint (vouching for 5), 7-11 records,
	// 12 checkpoint (vouching for 11), 13-14 records.
	orig := checkpointedLog(t, k, 5, 5, 2)
	origLines := readLines(t, orig)
	var shipped []Checkpoint
	for _, line := range origLines {
		var f lineFields
		if _, _, err := parseLineFields(line, &f); err == nil && f.Checkpoint != nil {
			shipped = append(shipped, *f.Checkpoint)
		}
	}
	if len(shipped) != 2 {
		t.Fatalf("%d checkpoints in the log, want 2", len(shipped))
	}
	// deleteLine3 removes line 3, a sign line the attacker wants gone.
	deleteLine3 := func(lines [][]byte) [][]byte {
		return append(append([][]byte{}, lines[:2]...), lines[3:]...)
	}

	t.Run("statements rewritten too", func(t *testing.T) {
		path := checkpointedLog(t, k, 5, 5, 2)
		forged, head := rechain(t, deleteLine3(readLines(t, path)), true)
		writeForged(t, path, forged, head)
		// What the chain alone says: the rewrite passes.
		if sum, err := VerifyFile(path); err != nil || sum.Lines != 13 {
			t.Fatalf("without the key the rewritten chain should pass, as it always did: %+v, %v", sum, err)
		}
		// With the key: the first checkpoint after the cut (now line 5)
		// vouches for a statement it never signed.
		_, err := VerifyFileWith(path, keys)
		ve := wantVerifyError(t, err, 5, ReasonCheckpoint)
		if !strings.Contains(ve.Detail, "signature does not verify") {
			t.Fatalf("detail %q", ve.Detail)
		}
	})
	t.Run("statements left as signed", func(t *testing.T) {
		path := checkpointedLog(t, k, 5, 5, 2)
		forged, head := rechain(t, deleteLine3(readLines(t, path)), false)
		writeForged(t, path, forged, head)
		// The statement still names seq 5 with the old hash: caught even
		// without the key.
		_, err := VerifyFile(path)
		wantVerifyError(t, err, 5, ReasonCheckpoint)
		_, err = VerifyFileWith(path, keys)
		wantVerifyError(t, err, 5, ReasonCheckpoint)
	})
	t.Run("checkpoints after the cut removed", func(t *testing.T) {
		path := checkpointedLog(t, k, 5, 5, 2)
		var kept [][]byte
		for _, line := range deleteLine3(readLines(t, path)) {
			if !isCheckpoint(line) {
				kept = append(kept, line)
			}
		}
		forged, head := rechain(t, kept, true)
		writeForged(t, path, forged, head)
		// The log on its own now has no checkpoint: nothing is anchored,
		// and the verifier says so.
		sum, err := VerifyFileWith(path, keys)
		if err != nil || sum.Checkpoints != 0 || sum.AnchoredSeq != 0 || sum.LastSeq != 11 {
			t.Fatalf("summary %+v, %v; want no checkpoint and nothing anchored", sum, err)
		}
		// The checkpoints shipped off the machine catch it: line 5 is
		// not the line they vouch for at seq 5.
		_, err = VerifyFileWith(path, VerifyOptions{Keys: keys.Keys, Anchors: shipped})
		wantVerifyError(t, err, 5, ReasonCheckpoint)
	})
	t.Run("cut at the end, head file rewritten", func(t *testing.T) {
		// The log the shipped checkpoints came from, its last 5 lines
		// (the second checkpoint among them) cut.
		path := filepath.Join(t.TempDir(), "audit.log")
		lines := origLines[:9]
		writeForged(t, path, lines, Head{Seq: 9, Hash: lineHash(lines[8])})
		if _, err := VerifyFileWith(path, keys); err != nil {
			t.Fatalf("the log alone: %v", err)
		}
		_, err := VerifyFileWith(path, VerifyOptions{Keys: keys.Keys, Anchors: shipped})
		ve := wantVerifyError(t, err, 10, ReasonCut)
		if ve.Missing != 2 {
			t.Fatalf("missing %d, want 2 (the last shipped checkpoint vouches for seq 11)", ve.Missing)
		}
	})
	t.Run("shipped checkpoints match the untouched log", func(t *testing.T) {
		sum, err := VerifyFileWith(orig, VerifyOptions{Keys: keys.Keys, Anchors: shipped})
		if err != nil || sum.Anchors != 2 || sum.AnchoredSeq != 11 {
			t.Fatalf("summary %+v, %v", sum, err)
		}
	})
}

func TestShippedCheckpointsNeedTheKey(t *testing.T) {
	k := ecKey(t)
	path := checkpointedLog(t, k, 2, 1)
	anchors, err := ReadAnchors(bytes.NewReader(joinLines(readLines(t, path))))
	if err != nil || len(anchors) != 1 {
		t.Fatalf("anchors %v, %v", anchors, err)
	}
	if _, err := VerifyFileWith(path, VerifyOptions{Anchors: anchors}); err == nil || errors.Is(err, ErrTampered) {
		t.Fatalf("anchors without a key: %v; want an error that is not tampering", err)
	}
	other := ecKey(t)
	if _, err := VerifyFileWith(path, VerifyOptions{Keys: []crypto.PublicKey{other.pub()}, Anchors: anchors}); err == nil || !strings.Contains(err.Error(), "shipped checkpoint 1") {
		t.Fatalf("anchor signed by another key: %v", err)
	}
	// Two signed statements for one seq with different hashes: proof of
	// two histories.
	st, _ := ParseStatement(anchors[0].Statement)
	st.Hash = strings.Repeat("ab", 32)
	_, _, sig := mustSign(t, k, st)
	fork := append(anchors, Checkpoint{Statement: st.Text(), Algorithm: k.alg, Signature: sig})
	if _, err := VerifyFileWith(path, VerifyOptions{Keys: []crypto.PublicKey{k.pub()}, Anchors: fork}); !errors.Is(err, ErrTampered) || !strings.Contains(err.Error(), "different hashes") {
		t.Fatalf("conflicting anchors: %v", err)
	}
}

func mustSign(t testing.TB, k auditKey, st Statement) (Statement, string, []byte) {
	t.Helper()
	alg, sig, err := k.sign(t.Context(), st.Digest())
	if err != nil {
		t.Fatal(err)
	}
	return st, alg, sig
}

func TestCheckpointRefusals(t *testing.T) {
	k := ecKey(t)
	errHSM := errors.New("token not logged in")
	tests := []struct {
		name string
		sign SignFunc
	}{
		{"signing fails", func(context.Context, []byte) (string, []byte, error) { return "", nil, errHSM }},
		{"signed by another key", ecKey(t).sign},
		{"garbage signature", func(context.Context, []byte) (string, []byte, error) { return k.alg, []byte{1, 2, 3}, nil }},
		{"empty signature", func(context.Context, []byte) (string, []byte, error) { return k.alg, nil, nil }},
		{"not over SHA-256", func(ctx context.Context, d []byte) (string, []byte, error) {
			_, sig, err := k.sign(ctx, d)
			return "SHA384withECDSA", sig, err
		}},
		{"alias instead of the canonical name", func(ctx context.Context, d []byte) (string, []byte, error) {
			_, sig, err := k.sign(ctx, d)
			return "ES256", sig, err
		}},
		{"unknown algorithm", func(ctx context.Context, d []byte) (string, []byte, error) {
			_, sig, err := k.sign(ctx, d)
			return "SHA256withDSA", sig, err
		}},
	}
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := Open(t.Context(), path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := l.Append(t.Context(), sampleRecord(0)); err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := l.Checkpoint(t.Context(), Record{}, k.pub(), tt.sign)
			if !errors.Is(err, ErrCheckpoint) {
				t.Fatalf("Checkpoint: %v, want ErrCheckpoint", err)
			}
			if seq, _ := l.Head(); seq != 1 {
				t.Fatalf("a refused checkpoint was written: head seq %d", seq)
			}
		})
	}
	if _, err := l.Checkpoint(t.Context(), Record{}, k.pub(), k.sign); err != nil {
		t.Fatal(err)
	}
	// Nothing new since: no second checkpoint.
	if _, err := l.Checkpoint(t.Context(), Record{}, k.pub(), k.sign); !errors.Is(err, ErrNothingToCheckpoint) {
		t.Fatalf("checkpoint of a checkpoint: %v, want ErrNothingToCheckpoint", err)
	}
	if err := l.Append(t.Context(), sampleRecord(1)); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Checkpoint(t.Context(), Record{}, k.pub(), k.sign); err != nil {
		t.Fatalf("checkpoint after a new line: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Checkpoint(t.Context(), Record{}, k.pub(), k.sign); !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: %v, want ErrClosed", err)
	}
	sum, err := VerifyFileWith(path, VerifyOptions{Keys: []crypto.PublicKey{k.pub()}})
	if err != nil || sum.Lines != 4 || sum.Checkpoints != 2 || sum.AnchoredSeq != 3 {
		t.Fatalf("summary %+v, %v", sum, err)
	}
}

// TestCheckpointTooFarBehind: a checkpoint whose line would land more than
// CheckpointWindow lines after the line it signs (the log went on while
// the HSM was slow) is not written, and the next one is.
func TestCheckpointTooFarBehind(t *testing.T) {
	k := ecKey(t)
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := Open(t.Context(), path, Options{Mode: Buffered, FlushEvery: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	slow := func(ctx context.Context, d []byte) (string, []byte, error) {
		var last Ticket
		for i := range CheckpointWindow {
			tk, err := l.Enqueue(sampleRecord(i))
			if err != nil {
				return "", nil, err
			}
			last = tk
		}
		if err := l.Wait(ctx, last); err != nil {
			return "", nil, err
		}
		return k.sign(ctx, d)
	}
	if _, err := l.Checkpoint(t.Context(), Record{}, k.pub(), slow); !errors.Is(err, ErrCheckpoint) {
		t.Fatalf("a checkpoint %d lines late: %v, want ErrCheckpoint", CheckpointWindow+1, err)
	}
	if seq, _ := l.Head(); seq != CheckpointWindow {
		t.Fatalf("head seq %d, want %d: the late checkpoint was written", seq, CheckpointWindow)
	}
	if _, err := l.Checkpoint(t.Context(), Record{}, k.pub(), k.sign); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	sum, err := VerifyFileWith(path, VerifyOptions{Keys: []crypto.PublicKey{k.pub()}})
	if err != nil || sum.Checkpoints != 1 || sum.AnchoredSeq != CheckpointWindow {
		t.Fatalf("summary %+v, %v", sum, err)
	}
}

// TestBufferedCheckpointCoversWrittenLines: in Buffered mode the
// checkpoint fsyncs first, so it vouches for every line written before
// it, not only the last fsynced one.
func TestBufferedCheckpointCoversWrittenLines(t *testing.T) {
	k := ecKey(t)
	path := filepath.Join(t.TempDir(), "audit.log")
	p := &probeFile{}
	l, err := open(t.Context(), path, Options{Mode: Buffered, FlushEvery: time.Hour}, probe(p))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for i := range 3 {
		if err := l.Append(t.Context(), sampleRecord(i)); err != nil {
			t.Fatal(err)
		}
	}
	before := p.syncs.Load()
	cp, err := l.Checkpoint(t.Context(), Record{}, k.pub(), k.sign)
	if err != nil {
		t.Fatal(err)
	}
	st, err := ParseStatement(cp.Statement)
	if err != nil || st.Seq != 3 {
		t.Fatalf("statement %+v, %v; want seq 3", st, err)
	}
	if p.syncs.Load() == before {
		t.Fatal("the checkpoint vouched for lines without an fsync")
	}
}

func TestStatementText(t *testing.T) {
	h := strings.Repeat("0a", 32)
	good := "hsmsigner audit checkpoint v1\n42\n" + h + "\n2026-11-27T10:48:09Z\n"
	st, err := ParseStatement(good)
	if err != nil || st.Seq != 42 || st.Hash != h || !st.Time.Equal(time.Date(2026, 11, 27, 10, 48, 9, 0, time.UTC)) {
		t.Fatalf("ParseStatement: %+v, %v", st, err)
	}
	if st.Text() != good {
		t.Fatalf("Text() = %q", st.Text())
	}
	if sum := sha256.Sum256([]byte(good)); !bytes.Equal(st.Digest(), sum[:]) {
		t.Fatal("Digest is not the SHA-256 of the text")
	}
	for name, text := range map[string]string{
		"no final newline":  strings.TrimSuffix(good, "\n"),
		"extra line":        good + "x\n",
		"other header":      strings.Replace(good, "v1", "v2", 1),
		"leading zero":      strings.Replace(good, "\n42\n", "\n042\n", 1),
		"signed seq":        strings.Replace(good, "\n42\n", "\n+42\n", 1),
		"upper-case hash":   strings.Replace(good, h, strings.ToUpper(h), 1),
		"short hash":        strings.Replace(good, h, h[:62], 1),
		"time not UTC":      strings.Replace(good, "10:48:09Z", "11:48:09+01:00", 1),
		"fractional second": strings.Replace(good, "09Z", "09.5Z", 1),
		"CRLF":              strings.ReplaceAll(good, "\n", "\r\n"),
		"seq 0, hash set":   strings.Replace(good, "\n42\n", "\n0\n", 1),
		"empty":             "",
	} {
		if _, err := ParseStatement(text); err == nil {
			t.Errorf("%s: %q accepted", name, text)
		}
	}
}

func TestParsePublicKeys(t *testing.T) {
	k := fixtureKey(t)
	der, err := x509.MarshalPKIXPublicKey(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "audit"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	certDER, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: certDER})
	edPub, _, _ := ed25519.GenerateKey(rand.Reader)
	edDER, _ := x509.MarshalPKIXPublicKey(edPub)
	privDER, _ := x509.MarshalPKCS8PrivateKey(k)
	tests := []struct {
		name string
		data []byte
		keys int
	}{
		{"public key", pubPEM, 1},
		{"certificate", certPEM, 1},
		{"both, with text before", append(append([]byte("audit key of node 1\n"), pubPEM...), certPEM...), 2},
		{"private key", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: privDER}), 0},
		{"Ed25519", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: edDER}), 0},
		{"no PEM", []byte("not a key"), 0},
		{"text after", append(append([]byte{}, pubPEM...), "junk"...), 0},
		{"broken DER", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte{0x30, 1}}), 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			keys, err := ParsePublicKeys(tt.data)
			if tt.keys == 0 {
				if err == nil {
					t.Fatalf("accepted: %v", keys)
				}
				return
			}
			if err != nil || len(keys) != tt.keys {
				t.Fatalf("%d keys, %v; want %d", len(keys), err, tt.keys)
			}
			if !k.PublicKey.Equal(keys[0]) {
				t.Fatal("another key")
			}
		})
	}
}

func TestReadAnchors(t *testing.T) {
	k := ecKey(t)
	path := checkpointedLog(t, k, 2, 1, 1)
	lines := readLines(t, path)
	var cp lineFields
	if _, _, err := parseLineFields(lines[2], &cp); err != nil || cp.Checkpoint == nil {
		t.Fatalf("line 3: %v", err)
	}
	// signerd's own log line for a checkpoint, as journald keeps it.
	slogLine, _ := json.Marshal(map[string]any{"time": "2026-11-27T10:48:09Z", "level": "INFO", "msg": "audit checkpoint", "checkpoint": cp.Checkpoint})
	var in bytes.Buffer
	in.WriteString("signerd started\n")
	in.Write(joinLines(lines))
	in.Write(slogLine)
	in.WriteString("\n{not json\n")
	anchors, err := ReadAnchors(&in)
	if err != nil || len(anchors) != 3 {
		t.Fatalf("%d anchors, %v; want 3", len(anchors), err)
	}
	if _, err := ReadAnchors(strings.NewReader("nothing here\n")); err == nil {
		t.Fatal("no checkpoint accepted")
	}
	bad := strings.Replace(string(slogLine), "SHA256withECDSA", "MD5withRSA", 1)
	if _, err := ReadAnchors(strings.NewReader(bad)); err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Fatalf("malformed checkpoint: %v", err)
	}
}

// TestCheckpointLineTampering: damage to a checkpoint line itself.
func TestCheckpointLineTampering(t *testing.T) {
	k := ecKey(t)
	keys := VerifyOptions{Keys: []crypto.PublicKey{k.pub()}}
	tests := []struct {
		name   string
		change func(t testing.TB, l [][]byte) [][]byte
		line   int
		reason Reason
		// withoutKey: also found without the key.
		withoutKey bool
	}{
		{"checkpoint on a sign line", func(t testing.TB, l [][]byte) [][]byte {
			l[0] = mustReplace(t, l[0], `"result":"ok"`, `"result":"ok","checkpoint":{"statement":"x","alg":"y","sig":"AA=="}`)
			return l
		}, 1, ReasonMalformed, true},
		{"checkpoint op without a checkpoint", func(t testing.TB, l [][]byte) [][]byte {
			l[0] = mustReplace(t, l[0], `"op":"sign"`, `"op":"`+OpCheckpoint+`"`)
			return l
		}, 1, ReasonMalformed, true},
		{"digest not of the statement", func(t testing.TB, l [][]byte) [][]byte {
			l[2] = digestField.ReplaceAll(l[2], []byte(`"digest":"`+strings.Repeat("0", 64)+`"`))
			return l
		}, 3, ReasonCheckpoint, true},
		{"signature of another statement", func(t testing.TB, l [][]byte) [][]byte {
			var f lineFields
			_, _, _ = parseLineFields(l[2], &f)
			st, _ := ParseStatement(f.Checkpoint.Statement)
			st.Time = st.Time.Add(time.Hour)
			text, _ := json.Marshal(st.Text())
			l[2] = statementField.ReplaceAll(l[2], append([]byte(`"statement":`), text...))
			l[2] = digestField.ReplaceAll(l[2], []byte(`"digest":"`+hex.EncodeToString(st.Digest())+`"`))
			return l
		}, 3, ReasonCheckpoint, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := checkpointedLog(t, k, 2, 2)
			forged, head := rechain(t, tt.change(t, readLines(t, path)), false)
			writeForged(t, path, forged, head)
			_, err := VerifyFileWith(path, keys)
			wantVerifyError(t, err, tt.line, tt.reason)
			_, err = VerifyFile(path)
			if tt.withoutKey {
				wantVerifyError(t, err, tt.line, tt.reason)
			} else if err != nil {
				t.Fatalf("without the key: %v", err)
			}
		})
	}
}
