package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hsmsigner/hsmsigner/cmd/internal/daemontest"
	"github.com/hsmsigner/hsmsigner/signer"
	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/audit"
	"github.com/hsmsigner/hsmsigner/signer/client"
	"github.com/hsmsigner/hsmsigner/signer/state"
	softhsmtest "github.com/hsmsigner/hsmsigner/softhsm-test"
)

// Environment variables of TestCrashConsistency (make crash sets them).
const (
	crashRoundsEnv = "SIGNERD_CRASH_ROUNDS" // rounds; 50 when unset
	crashSeedEnv   = "SIGNERD_CRASH_SEED"   // the seed of a failed run, to repeat it
)

// crashAdmins is the number of officers changing keys and certificates
// concurrently in each round, beside one signing client.
const crashAdmins = 2

// crashCert is a certificate of a key, as the model knows it.
type crashCert struct {
	hash   string
	pem    []byte
	member string
	status signerv1.CertStatus
	active bool
}

// crashKey is a key an officer generated, as the model knows it.
type crashKey struct {
	id, label, name string
	pub             *ecdsa.PublicKey
	cert            *crashCert // nil: none imported
}

// crashOp is an admin call sent and not yet answered: after a kill its
// change may or may not have been made.
type crashOp struct {
	kind   string // generate, rename, import, status, activate, deactivate, delete
	keyID  string
	label  string     // generate
	name   string     // rename
	cert   *crashCert // import, status, activate, deactivate: the cert after the change
	before crashCert  // status, activate, deactivate: the cert before it
}

// crashOfficer is one admin connection's keys and its call in flight;
// its calls are sequential, so at most one change of its keys is in doubt.
type crashOfficer struct {
	n       int
	keys    map[string]*crashKey
	pending *crashOp
	made    int // labels and members made so far
}

// crashCA issues sign certificates for the officers' keys.
type crashCA struct {
	key    *ecdsa.PrivateKey
	cert   *x509.Certificate
	serial int64
	mu     sync.Mutex
}

func newCrashCA(t *testing.T) *crashCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Crash CA", Country: []string{"EE"}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &crashCA{key: key, cert: cert, serial: 1}
}

// issue makes a sign certificate of member for pub, PEM with its issuer.
func (ca *crashCA) issue(pub *ecdsa.PublicKey, member string) (*crashCert, error) {
	ca.mu.Lock()
	ca.serial++
	serial := ca.serial
	ca.mu.Unlock()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: member, Organization: []string{"Agency"}, Country: []string{"EE"}, SerialNumber: member},
		NotBefore:    time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(der)
	p := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	p = append(p, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw})...)
	return &crashCert{hash: hex.EncodeToString(sum[:]), pem: p, member: member, status: signerv1.CertStatus_CERT_STATUS_SAVED}, nil
}

// crashFigures are what a run of TestCrashConsistency found.
type crashFigures struct {
	rounds, kills, acked, signed, tornSealed int
	unrecorded, missing, inDoubt             int
	noID, noPublic                           int // damaged key objects
}

// TestCrashConsistency starts the real signerd on a real SoftHSM token,
// runs admin changes (key generate, rename, certificate import, status
// changes, activation, delete) on two admin connections and Sign calls on
// a client connection concurrently through the gRPC socket, SIGKILLs the
// daemon at a random moment, and starts it again, for
// SIGNERD_CRASH_ROUNDS rounds (50 by default; `make crash ROUNDS=500`).
// After every kill: the audit log verifies, or ends in exactly one torn
// line, which the documented recovery (--accept-audit-cut) seals; the
// state opens; every admin change acknowledged before the kill is there,
// a change in flight is there whole or not at all; every signature handed
// out has its ok audit line; and the token and the state agree, except
// for what a change in flight left between them, which the restarted
// daemon reports (`key list` shows a key pair it does not know, or a
// damaged key object, with a reconcile.unrecorded_key,
// reconcile.missing_key or reconcile.damaged_key line naming it) and the
// officer clears with `key delete` (`key delete no-id` for a private key
// object left without CKA_ID). The kill moment comes from a
// seeded math/rand; the seed is logged, and SIGNERD_CRASH_SEED repeats it.
func TestCrashConsistency(t *testing.T) {
	rounds := 50
	if v := os.Getenv(crashRoundsEnv); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("%s=%q: want a positive number", crashRoundsEnv, v)
		}
		rounds = n
	}
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv(crashSeedEnv); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("%s=%q: %v", crashSeedEnv, v, err)
		}
		seed = n
	}
	t.Logf("crash seed %d (repeat with %s=%d %s=%d)", seed, crashSeedEnv, seed, crashRoundsEnv, rounds)
	rng := mrand.New(mrand.NewPCG(seed, seed>>1|1))

	bin := daemontest.Build(t, signerdPkg)
	soft := softhsmtest.New(t)
	dir := t.TempDir()
	cfgPath := daemonConfig(t, dir, soft, `"*"`)
	h := &crashHarness{t: t, soft: soft, bin: bin, dir: dir, cfg: cfgPath, ca: newCrashCA(t)}
	for i := range crashAdmins {
		h.officers = append(h.officers, &crashOfficer{n: i, keys: map[string]*crashKey{}})
	}

	// The key the client signs with; never changed.
	d := h.start()
	c := h.dial()
	k, err := c.GenerateKey(ctxT(t), &signerv1.GenerateKeyRequest{Token: "t1", Label: "stable", Algorithm: "EC-P256", Usage: signerv1.KeyUsage_KEY_USAGE_SIGN})
	if err != nil {
		t.Fatal(err)
	}
	h.stable = k.GetId()
	c.Close()

	for r := range rounds {
		h.round(d, rng, r)
		d = h.start()
		h.check()
		h.fig.rounds++
	}
	d.Signal(syscall.SIGTERM)
	if err := d.Wait(time.Minute); err != nil {
		t.Fatalf("stop: %v\n%s", err, d.Output())
	}
	if _, err := audit.VerifyFile(h.auditPath()); err != nil {
		t.Fatalf("audit log after the last round: %v", err)
	}
	f := h.fig
	t.Logf("rounds %d, kills %d, admin changes acknowledged %d, in doubt at a kill %d, signatures acknowledged %d, torn audit lines sealed %d, unrecorded keys reported and deleted %d, records without a key reported and deleted %d, damaged key objects reported and deleted: without CKA_ID %d, without a public key %d",
		f.rounds, f.kills, f.acked, f.inDoubt, f.signed, f.tornSealed, f.unrecorded, f.missing, f.noID, f.noPublic)
}

// crashHarness runs TestCrashConsistency's daemon and model.
type crashHarness struct {
	t        *testing.T
	soft     *softhsmtest.Token
	bin      string
	dir, cfg string
	ca       *crashCA
	stable   string
	officers []*crashOfficer
	// signed holds the digests (hex) of signatures handed out since the
	// last check.
	signed []string
	// records are the key records in the state, read before the last start.
	records map[string]state.KeyRecord
	// startLine is the number of audit lines before the last start.
	startLine int
	fig       crashFigures
}

func (h *crashHarness) auditPath() string { return filepath.Join(h.dir, "audit.jsonl") }

func (h *crashHarness) dial() *client.Client {
	h.t.Helper()
	c, err := client.Dial(filepath.Join(h.dir, "run/signer.sock"))
	if err != nil {
		h.t.Fatal(err)
	}
	return c
}

// start verifies the audit log and reads the state as an officer would
// after a crash, then starts the daemon: with --accept-audit-cut only when
// the log ends in a torn line.
func (h *crashHarness) start() *daemontest.Daemon {
	t := h.t
	t.Helper()
	args := []string{"--config", h.cfg}
	if _, err := os.Stat(h.auditPath()); err == nil {
		_, err := audit.VerifyFile(h.auditPath())
		var ve *audit.VerifyError
		switch {
		case err == nil:
		case errors.As(err, &ve) && ve.Reason == audit.ReasonTruncated:
			t.Logf("torn last audit line after the kill: %v", err)
			args = append(args, "--accept-audit-cut")
			h.fig.tornSealed++
		default:
			t.Fatalf("audit log after a kill: %v", err)
		}
	}
	st, err := state.Open(ctxT(t), filepath.Join(h.dir, "state", signer.StateFile))
	if err != nil {
		t.Fatalf("the state after a kill: %v", err)
	}
	recs, err := st.ListKeys(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	h.records = map[string]state.KeyRecord{}
	for _, r := range recs {
		h.records[r.ID] = r
	}
	h.startLine = 0
	if _, err := os.Stat(h.auditPath()); err == nil {
		h.startLine = len(readAudit(t, h.auditPath()))
	}
	return daemontest.Start(t, h.bin, nil, args...)
}

// round runs the officers and the client against d until a kill at a
// random moment, then waits for every call to end.
func (h *crashHarness) round(d *daemontest.Daemon, rng *mrand.Rand, r int) {
	t := h.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, o := range h.officers {
		orng := mrand.New(mrand.NewPCG(rng.Uint64(), uint64(o.n)))
		c := h.dial()
		wg.Go(func() {
			defer c.Close()
			for ctx.Err() == nil {
				acked, err := h.step(ctx, c, o, orng)
				if err != nil {
					t.Errorf("round %d, officer %d: %v", r, o.n, err)
					return
				}
				if !acked {
					return // the daemon is gone; its call stays in doubt
				}
				mu.Lock()
				h.fig.acked++
				mu.Unlock()
			}
		})
	}
	sc := h.dial()
	wg.Go(func() {
		defer sc.Close()
		for ctx.Err() == nil {
			dg := make([]byte, 32)
			_, _ = rand.Read(dg)
			_, err := sc.Sign(ctx, &signerv1.SignRequest{Key: &signerv1.SignRequest_KeyId{KeyId: h.stable}, Algorithm: "ES256", Digest: dg})
			if err != nil {
				return
			}
			mu.Lock()
			h.signed = append(h.signed, hex.EncodeToString(dg))
			h.fig.signed++
			mu.Unlock()
		}
	})
	// An admin change takes 20-200 ms here (fsyncs of the audit log,
	// the state and the token's files): a window of about a second
	// catches several of them, at every stage, in each round.
	wait := time.Duration(50+rng.IntN(1000)) * time.Millisecond
	time.Sleep(wait) // the kill moment, drawn from the seed
	if err := syscall.Kill(d.Pid(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = d.Wait(time.Minute)
	h.fig.kills++
	cancel()
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
}

// step makes one admin change of o's keys and reports whether it was
// acknowledged; a call the kill cut short is left in o.pending.
func (h *crashHarness) step(ctx context.Context, c *client.Client, o *crashOfficer, rng *mrand.Rand) (bool, error) {
	ids := make([]string, 0, len(o.keys))
	for id := range o.keys {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	if len(ids) < 3 || rng.IntN(6) == 0 {
		o.made++
		op := &crashOp{kind: "generate", label: fmt.Sprintf("crash-o%d-%d", o.n, o.made)}
		o.pending = op
		k, err := c.GenerateKey(ctx, &signerv1.GenerateKeyRequest{Token: "t1", Label: op.label, Algorithm: "EC-P256", Usage: signerv1.KeyUsage_KEY_USAGE_SIGN})
		if err != nil {
			return false, h.cutShort(ctx, err)
		}
		ck, err := keyOf(k)
		if err != nil {
			return false, err
		}
		o.keys[ck.id] = ck
		o.pending = nil
		return true, nil
	}
	k := o.keys[ids[rng.IntN(len(ids))]]
	var op *crashOp
	switch p := rng.IntN(10); {
	case p == 0:
		op = &crashOp{kind: "delete"}
	case p <= 2:
		op = &crashOp{kind: "rename", name: fmt.Sprintf("name-%d", rng.IntN(1000))}
	case k.cert == nil:
		o.made++
		cert, err := h.ca.issue(k.pub, fmt.Sprintf("EE/GOV/%d%03d", o.n+1, o.made))
		if err != nil {
			return false, err
		}
		op = &crashOp{kind: "import", cert: cert}
	case k.cert.status == signerv1.CertStatus_CERT_STATUS_SAVED:
		op = &crashOp{kind: "status", before: *k.cert}
		op.cert = &crashCert{hash: k.cert.hash, member: k.cert.member, status: signerv1.CertStatus_CERT_STATUS_REGISTERED, active: k.cert.active}
	case !k.cert.active:
		op = &crashOp{kind: "activate", before: *k.cert}
		op.cert = &crashCert{hash: k.cert.hash, member: k.cert.member, status: k.cert.status, active: true}
	default:
		op = &crashOp{kind: "deactivate", before: *k.cert}
		op.cert = &crashCert{hash: k.cert.hash, member: k.cert.member, status: k.cert.status, active: false}
	}
	op.keyID = k.id
	o.pending = op
	var err error
	switch op.kind {
	case "delete":
		_, err = c.DeleteKey(ctx, &signerv1.DeleteKeyRequest{KeyId: k.id, Force: true})
	case "rename":
		_, err = c.RenameKey(ctx, &signerv1.RenameKeyRequest{KeyId: k.id, Name: op.name})
	case "import":
		_, err = c.ImportCert(ctx, &signerv1.ImportCertRequest{Certificate: op.cert.pem, Member: op.cert.member})
	case "status":
		_, err = c.SetCertStatus(ctx, &signerv1.SetCertStatusRequest{Hash: op.cert.hash, Status: op.cert.status})
	case "activate":
		_, err = c.ActivateCert(ctx, &signerv1.CertRef{Hash: op.cert.hash})
	case "deactivate":
		_, err = c.DeactivateCert(ctx, &signerv1.CertRef{Hash: op.cert.hash})
	}
	if err != nil {
		return false, h.cutShort(ctx, err)
	}
	switch op.kind {
	case "delete":
		delete(o.keys, k.id)
	case "rename":
		k.name = op.name
	default:
		k.cert = op.cert
	}
	o.pending = nil
	return true, nil
}

// cutShort returns nil for the error of a call the kill cut short
// (UNAVAILABLE, or the round's end), and err for any other.
func (h *crashHarness) cutShort(ctx context.Context, err error) error {
	if ctx.Err() != nil || status.Code(err) == codes.Unavailable || status.Code(err) == codes.Canceled {
		return nil
	}
	return err
}

// damaged reports whether the daemon lists k as what a change cut short
// left of a key pair (hsm.Key.Damage).
func damaged(k *signerv1.Key) bool {
	return strings.Contains(k.GetAttributeProblem(), "damaged object")
}

// keyOf is the model of a key the daemon answered with.
func keyOf(k *signerv1.Key) (*crashKey, error) {
	pub, err := x509.ParsePKIXPublicKey(k.GetPublicKey())
	if err != nil {
		return nil, fmt.Errorf("key %s: public key: %w", k.GetId(), err)
	}
	ec, ok := pub.(*ecdsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("key %s: public key %T", k.GetId(), pub)
	}
	return &crashKey{id: k.GetId(), label: k.GetLabel(), name: k.GetName(), pub: ec}, nil
}

// check compares the restarted daemon with the model: see
// TestCrashConsistency. It resolves each change in doubt to what the
// daemon shows, and has the officer delete what a change cut short left
// on one side only.
func (h *crashHarness) check() {
	t := h.t
	t.Helper()
	ctx := ctxT(t)
	c := h.dial()
	defer c.Close()
	list, err := c.ListKeys(ctx, &signerv1.ListKeysRequest{})
	if err != nil {
		if os.Getenv("CRASH_DUMP") != "" {
			_ = exec.Command("cp", "-a", h.soft.Dir, os.Getenv("CRASH_DUMP")).Run()
			_ = exec.Command("cp", "-a", h.soft.ConfPath, os.Getenv("CRASH_DUMP")+".conf").Run()
			_ = os.WriteFile(os.Getenv("CRASH_DUMP")+".pin", h.soft.UserPIN, 0o600)
		}
		t.Fatal(err)
	}
	onToken := map[string]*signerv1.Key{}
	for _, k := range list.GetKeys() {
		onToken[k.GetId()] = k
	}
	cl, err := c.ListCerts(ctx, &signerv1.ListCertsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	certs := map[string]*signerv1.Certificate{}
	for _, ce := range cl.GetCertificates() {
		certs[ce.GetSha256()] = ce
	}
	lines := readAudit(t, h.auditPath())
	okDigests := map[string]bool{}
	reported := map[string]map[string]bool{} // key id: reconcile ops since the start
	for i, l := range lines {
		if l.Op == "sign" && l.Result == "ok" {
			okDigests[l.Digest] = true
		}
		if i >= h.startLine && (l.Op == signer.OpUnrecordedKey || l.Op == signer.OpMissingKey || l.Op == signer.OpDamagedKey) {
			if reported[l.Key] == nil {
				reported[l.Key] = map[string]bool{}
			}
			reported[l.Key][l.Op] = true
		}
	}
	for _, dg := range h.signed {
		if !okDigests[dg] {
			t.Fatalf("a signature of digest %s was handed out but has no ok audit line", dg)
		}
	}
	h.signed = nil

	// Every key of the model, and the change in doubt.
	known := map[string]bool{h.stable: true}
	var clear []string  // ids the officer deletes: on one side only, or damaged
	generating := false // or importing a certificate
	for _, o := range h.officers {
		if o.pending != nil && (o.pending.kind == "generate" || o.pending.kind == "import") {
			generating = true
		}
	}
	if _, there := onToken[signer.NoIDKeyRef]; there {
		// An object without CKA_ID: a key generation or a certificate
		// import cut short.
		if !generating {
			t.Fatalf("an object without CKA_ID on the token, and no key generation or certificate import in doubt")
		}
		if !reported[signer.NoIDKeyRef][signer.OpDamagedKey] {
			t.Fatalf("a private key object without CKA_ID on the token, and no %s line reports it", signer.OpDamagedKey)
		}
		h.fig.noID++
		clear = append(clear, signer.NoIDKeyRef)
		known[signer.NoIDKeyRef] = true
	}
	for _, o := range h.officers {
		op := o.pending
		o.pending = nil
		if op != nil {
			h.fig.inDoubt++
		}
		if op != nil && op.kind == "generate" {
			for id, k := range onToken {
				if k.GetLabel() != op.label {
					continue
				}
				if !k.GetKnown() {
					if !reported[id][signer.OpUnrecordedKey] {
						t.Fatalf("key %s (%s) is on the token without a record, and no %s line reports it", id, op.label, signer.OpUnrecordedKey)
					}
					if damaged(k) {
						if !reported[id][signer.OpDamagedKey] {
							t.Fatalf("key %s (%s) is damaged (%s), and no %s line reports it", id, op.label, k.GetAttributeProblem(), signer.OpDamagedKey)
						}
						h.fig.noPublic++
					}
					h.fig.unrecorded++
					clear = append(clear, id)
					known[id] = true
					continue
				}
				ck, err := keyOf(k)
				if err != nil {
					t.Fatal(err)
				}
				o.keys[id] = ck
			}
		}
		for id, k := range o.keys {
			known[id] = true
			got, there := onToken[id]
			_, recorded := h.records[id]
			if op != nil && op.keyID == id && op.kind == "delete" {
				switch {
				case there && got.GetKnown() && damaged(got):
					// Cut short between the public and the private key
					// object.
					if !reported[id][signer.OpDamagedKey] {
						t.Fatalf("key %s is damaged (%s) after a delete in flight, and no %s line reports it", id, got.GetAttributeProblem(), signer.OpDamagedKey)
					}
					h.fig.noPublic++
					clear = append(clear, id)
					delete(o.keys, id)
					continue
				case there && got.GetKnown():
					// Not deleted: still whole.
				case !there && !recorded:
					delete(o.keys, id)
					if k.cert != nil && certs[k.cert.hash] != nil {
						t.Fatalf("key %s was deleted but its certificate %s stays", id, k.cert.hash)
					}
					continue
				case !there && recorded:
					if !reported[id][signer.OpMissingKey] {
						t.Fatalf("key %s is recorded but not on the token, and no %s line reports it", id, signer.OpMissingKey)
					}
					h.fig.missing++
					clear = append(clear, id)
					delete(o.keys, id)
					continue
				default:
					t.Fatalf("key %s after a delete in flight: on the token %v, known %v, recorded %v", id, there, got.GetKnown(), recorded)
				}
			}
			if !there || !got.GetKnown() || !recorded || damaged(got) {
				t.Fatalf("key %s (%s), acknowledged, after the restart: on the token %v, recorded %v, listed known %v, problem %q", id, k.label, there, recorded, there && got.GetKnown(), got.GetAttributeProblem())
			}
			if op != nil && op.keyID == id && op.kind == "rename" && got.GetName() == op.name {
				k.name = op.name
			}
			if got.GetName() != k.name {
				t.Fatalf("key %s: name %q after the restart, acknowledged %q", id, got.GetName(), k.name)
			}
			if op != nil && op.keyID == id && op.kind == "import" {
				if ce := certs[op.cert.hash]; ce != nil {
					k.cert = op.cert
				}
			}
			if op != nil && op.keyID == id && (op.kind == "status" || op.kind == "activate" || op.kind == "deactivate") {
				if ce := certs[op.cert.hash]; ce != nil && ce.GetStatus() == op.cert.status && ce.GetActive() == op.cert.active {
					k.cert = op.cert
				}
			}
			if k.cert == nil {
				continue
			}
			ce := certs[k.cert.hash]
			if ce == nil || ce.GetKeyId() != id || ce.GetStatus() != k.cert.status || ce.GetActive() != k.cert.active {
				t.Fatalf("key %s: certificate %s after the restart is %v; acknowledged status %v, active %v", id, k.cert.hash, ce, k.cert.status, k.cert.active)
			}
		}
	}
	for id, k := range onToken {
		if !known[id] {
			t.Fatalf("key %s (%s, known %v) on the token is no acknowledged key and no key in doubt", id, k.GetLabel(), k.GetKnown())
		}
	}
	for id := range h.records {
		if !known[id] && !slices.Contains(clear, id) {
			if _, there := onToken[id]; !there {
				t.Fatalf("key record %s without a key on the token, and no delete in doubt", id)
			}
		}
	}
	for _, id := range clear {
		if _, err := c.DeleteKey(ctx, &signerv1.DeleteKeyRequest{KeyId: id, Force: true}); err != nil {
			t.Fatalf("the officer deletes key %s, which a change cut short left on one side only or damaged (%v): %v", id, reported[id], err)
		}
	}
}
