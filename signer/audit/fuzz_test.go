package audit

import (
	"bytes"
	"crypto"
	"errors"
	"testing"
)

// FuzzVerify feeds Verify arbitrary logs. It must never panic; what it
// accepts must be a clean chain, and what it refuses a *VerifyError that
// wraps ErrTampered and names a line the input has or would have next.
// With the key of testdata/checkpoint-key.pem it must accept no more than
// without, and never anchor beyond the last line. Seeds:
// testdata/fuzz/FuzzVerify (a valid log and broken ones, logs with
// checkpoints signed by that key, and a forged one).
func FuzzVerify(f *testing.F) {
	keys := VerifyOptions{Keys: []crypto.PublicKey{fixtureKey(f).Public()}}
	f.Fuzz(func(t *testing.T, data []byte) {
		ksum, kerr := VerifyWith(bytes.NewReader(data), keys)
		sum, err := Verify(bytes.NewReader(data))
		if kerr == nil && err != nil {
			t.Fatalf("accepted with the key, refused without: %v", err)
		}
		if kerr == nil && (ksum.AnchoredSeq > ksum.LastSeq || ksum.Checkpoints != sum.Checkpoints || !ksum.SignaturesChecked) {
			t.Fatalf("summary with the key %+v, without %+v", ksum, sum)
		}
		if kerr != nil {
			var ve *VerifyError
			if !errors.As(kerr, &ve) || !errors.Is(kerr, ErrTampered) {
				t.Fatalf("error with the key %v is not a *VerifyError wrapping ErrTampered", kerr)
			}
		}
		lines := bytes.Count(data, []byte("\n"))
		if err == nil {
			if len(data) > 0 && data[len(data)-1] != '\n' {
				t.Fatal("accepted a log whose last line has no newline")
			}
			if sum.Lines != lines || sum.LastSeq != uint64(lines) {
				t.Fatalf("summary %+v for %d lines", sum, lines)
			}
			if lines > 0 {
				last := data[bytes.LastIndexByte(data[:len(data)-1], '\n')+1 : len(data)-1]
				if sum.LastHash != lineHash(last) {
					t.Fatal("LastHash is not the hash of the last line")
				}
			}
			return
		}
		var ve *VerifyError
		if !errors.As(err, &ve) || !errors.Is(err, ErrTampered) {
			t.Fatalf("error %v is not a *VerifyError wrapping ErrTampered", err)
		}
		if ve.Line < 1 || ve.Line > lines+1 || sum.Lines > ve.Line {
			t.Fatalf("error at line %d of %d lines, %d verified: %v", ve.Line, lines, sum.Lines, err)
		}
		switch ve.Reason {
		case ReasonEdited, ReasonRemoved, ReasonReordered, ReasonMalformed, ReasonTruncated, ReasonCheckpoint:
		default:
			t.Fatalf("reason %q without a head file: %v", ve.Reason, err)
		}
	})
}
