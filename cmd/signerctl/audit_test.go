package main

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hsmsigner/hsmsigner/signer/audit"
)

// checkpointedLog writes an audit log of two records, a checkpoint signed
// with k and one more record, and returns its path.
func checkpointedLog(t *testing.T, k *ecdsa.PrivateKey) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	l, err := audit.Open(t.Context(), path, audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	rec := audit.Record{UID: 1, GID: 1, PID: 1, Op: "sign", Key: "0a", Result: "ok"}
	sign := func(_ context.Context, d []byte) (string, []byte, error) {
		sig, err := k.Sign(rand.Reader, d, crypto.SHA256)
		return "SHA256withECDSA", sig, err
	}
	for i := range 3 {
		if i == 2 {
			if _, err := l.Checkpoint(t.Context(), audit.Record{Token: "t1", Key: "a0"}, k.Public(), sign); err != nil {
				t.Fatal(err)
			}
		}
		if err := l.Append(t.Context(), rec); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

func writePub(t *testing.T, k *ecdsa.PrivateKey) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "audit.pem")
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestAuditVerifyCheckpoints(t *testing.T) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	log := checkpointedLog(t, k)
	pub, otherPub := writePub(t, k), writePub(t, other)
	notPEM := filepath.Join(t.TempDir(), "not.pem")
	_ = os.WriteFile(notPEM, []byte("hello"), 0o600)
	tests := []struct {
		name     string
		args     []string
		code     int
		contains string
	}{
		{"no key", []string{log}, 0, "signatures not checked"},
		{"the audit key", []string{"--pub", pub, log}, 0, "anchored: seq 1 to 2"},
		{"unanchored line reported", []string{"--pub", pub, log}, 0, "2 line(s) after the last checkpoint are unanchored (seq 3 to 4)"},
		{"either of two keys", []string{"--pub", otherPub, "--pub", pub, log}, 0, "every signature verified"},
		{"another key", []string{"--pub", otherPub, log}, 1, "line 3: checkpoint"},
		{"shipped checkpoints", []string{"--pub", pub, "--checkpoints", log, log}, 0, "1 shipped checkpoint(s) given, 1 matched"},
		{"shipped checkpoints without a key", []string{"--checkpoints", log, log}, 1, "--checkpoints needs --pub"},
		{"no checkpoint in the shipped file", []string{"--pub", pub, "--checkpoints", notPEM, log}, 1, "no checkpoint found"},
		{"key file missing", []string{"--pub", pub + ".none", log}, 1, "--pub"},
		{"key file not PEM", []string{"--pub", notPEM, log}, 1, "no PEM"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errs, code := ctl(t, append([]string{"audit", "verify"}, tt.args...)...)
			if code != tt.code || !strings.Contains(out+errs, tt.contains) {
				t.Fatalf("exit %d, want %d; output does not mention %q:\n%s%s", code, tt.code, tt.contains, out, errs)
			}
		})
	}
}

// TestAttackVerifyPubFailsWhenNothingIsAnchored: whoever can write the
// log rewrites it at will and drops every checkpoint line (recomputing
// the chain and the head file), or empties it. Given the audit key,
// verify must not pass such a log: no line of it is vouched for by the
// key it was asked to check, so it fails (exit 1) rather than print
// "chain intact" with a warning on stderr and exit 0.
func TestAttackVerifyPubFailsWhenNothingIsAnchored(t *testing.T) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	pub := writePub(t, k)
	rewritten := filepath.Join(t.TempDir(), "audit.jsonl")
	l, err := audit.Open(t.Context(), rewritten, audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := l.Append(t.Context(), audit.Record{UID: 1, GID: 1, PID: 1, Op: "sign", Key: "0a", Result: "ok"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	emptied := filepath.Join(t.TempDir(), "audit.jsonl")
	if err := os.WriteFile(emptied, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ name, log string }{
		{"lines without a checkpoint", rewritten},
		{"empty log", emptied},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, errs, code := ctl(t, "audit", "verify", "--pub", pub, tt.log)
			if code == 0 || !strings.Contains(errs, "no line is anchored") {
				t.Fatalf("verify --pub: exit %d, want 1 and an error that no line is anchored:\n%s%s", code, out, errs)
			}
		})
	}
	// Without --pub nothing was asked of the key: the chain alone passes.
	if _, errs, code := ctl(t, "audit", "verify", rewritten); code != 0 {
		t.Fatalf("verify without --pub: exit %d\n%s", code, errs)
	}
}
