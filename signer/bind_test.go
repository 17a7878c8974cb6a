package signer

import (
	"context"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/config"
	"github.com/hsmsigner/hsmsigner/signer/state"
	"github.com/hsmsigner/hsmsigner/softhsm-test/devca"
)

const memberA, memberB = "EE/GOV/A", "EE/GOV/B"

// signWith signs a digest with key id through the test daemon's client.
func (d *testDaemon) signWith(t testing.TB, id string) error {
	_, err := d.client.Sign(testCtx(t), signReq(id, sha("bind "+id)))
	return err
}

// boundMember is the member the API says key id is bound to.
func (d *testDaemon) boundMember(t testing.TB, id string) string {
	t.Helper()
	k, err := d.client.GetKey(testCtx(t), &signerv1.GetKeyRequest{KeyId: id})
	if err != nil {
		t.Fatal(err)
	}
	return k.GetBoundMember()
}

// TestRequestBindsKeyToItsMember is the review's finding: a client allowed
// only member A signed with B's fresh key while B's request was pending.
// A request that names a member binds the key to it at once, the binding
// outlives the request and the certificate, and a rule restricted to
// member A gets no key but A's, whatever its keys say.
func TestRequestBindsKeyToItsMember(t *testing.T) {
	d := newDaemon(t, func(p *daemonParams) { p.Members = `"` + memberA + `"` }) // keys = ["*"]
	ca := devca.New(t)
	kb := d.genKey(t, "b", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)

	// Bound to nobody yet: a rule restricted to members never gets it.
	wantCode(t, d.signWith(t, kb.GetId()), codes.PermissionDenied, "")
	csrB := d.csrFor(t, kb, "CN=B,C=EE", memberB)
	if got := d.boundMember(t, kb.GetId()); got != memberB {
		t.Fatalf("after B's request the key is bound to %q, want %q", got, memberB)
	}
	wantCode(t, d.signWith(t, kb.GetId()), codes.PermissionDenied, memberB)

	// The key serves B alone: a request or a certificate for A is refused
	// and leaves nothing behind.
	_, err := d.client.GenerateCSR(testCtx(t), &signerv1.GenerateCSRRequest{KeyId: kb.GetId(), Subject: "CN=A,C=EE", Member: memberA})
	wantCode(t, err, codes.FailedPrecondition, "bound to member")
	if csrs, err := d.client.ListCSRs(testCtx(t), &signerv1.ListCSRsRequest{}); err != nil || len(csrs.GetCsrs()) != 1 {
		t.Fatalf("requests after the refused one: %v, %v; want B's alone", csrs, err)
	}
	certB := d.issue(t, ca, csrB, "sign", devca.Current)
	_, err = d.client.ImportCert(testCtx(t), &signerv1.ImportCertRequest{Certificate: certB.Raw, Member: memberA})
	wantCode(t, err, codes.FailedPrecondition, "bound to member")
	if certs, err := d.client.ListCerts(testCtx(t), &signerv1.ListCertsRequest{}); err != nil || len(certs.GetCertificates()) != 0 {
		t.Fatalf("certificates after the refused import: %v, %v", certs, err)
	}

	// Answered, and its certificate deleted: still B's.
	sum := d.activeRegistered(t, certB, memberB)
	wantCode(t, d.signWith(t, kb.GetId()), codes.PermissionDenied, memberB)
	if _, err := d.client.DeleteCert(testCtx(t), &signerv1.CertRef{Hash: sum}); err != nil {
		t.Fatal(err)
	}
	wantCode(t, d.signWith(t, kb.GetId()), codes.PermissionDenied, memberB)
	if got := d.boundMember(t, kb.GetId()); got != memberB {
		t.Fatalf("after its certificate was deleted the key is bound to %q, want %q", got, memberB)
	}

	// A's key: usable by A's client from A's request on, before any
	// certificate; a later request without a member keeps the binding.
	ka := d.genKey(t, "a", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	wantCode(t, d.signWith(t, ka.GetId()), codes.PermissionDenied, "")
	d.csrFor(t, ka, "CN=A,C=EE", memberA)
	if err := d.signWith(t, ka.GetId()); err != nil {
		t.Fatalf("A's client with A's key: %v", err)
	}
	d.csrFor(t, ka, "CN=A2,C=EE", "")
	csrs, err := d.client.ListCSRs(testCtx(t), &signerv1.ListCSRsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range csrs.GetCsrs() {
		if _, err := d.client.DeleteCSR(testCtx(t), &signerv1.DeleteCSRRequest{Id: c.GetId()}); err != nil {
			t.Fatal(err)
		}
	}
	// The binding is in the state: it survives the requests and a restart.
	d.restart()
	if err := d.signWith(t, ka.GetId()); err != nil {
		t.Fatalf("A's key after its requests were deleted and a restart: %v", err)
	}
	wantCode(t, d.signWith(t, kb.GetId()), codes.PermissionDenied, memberB)
	if got := d.boundMember(t, ka.GetId()); got != memberA {
		t.Fatalf("A's key is bound to %q after a restart", got)
	}

	// Only deleting the key releases its binding, with its record.
	if _, err := d.client.DeleteKey(testCtx(t), &signerv1.DeleteKeyRequest{KeyId: kb.GetId(), Force: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.svc.store.GetKey(testCtx(t), d.svc.tokens[0].tok.Serial(), kb.GetId()); err == nil {
		t.Fatal("the deleted key's record stayed")
	}
}

// TestKeyRecordedBeforeBindings: a state written before bindings were
// recorded has keys without one whose certificates name a member. Such a
// key serves the members its certificates name: other members' clients
// may not sign with it, and no request or certificate for another member
// is taken for it.
func TestKeyRecordedBeforeBindings(t *testing.T) {
	d := newDaemon(t, func(p *daemonParams) { p.Members = `"` + memberA + `"` })
	ca := devca.New(t)
	k := d.genKey(t, "old", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	// B's certificate recorded as the old daemon did: no binding.
	cert := d.issue(t, ca, d.csrFor(t, k, "CN=B,C=EE", ""), "sign", devca.Current)
	err := d.svc.store.PutCert(testCtx(t), state.CertRecord{DER: cert.Raw, Token: d.svc.tokens[0].tok.Serial(), KeyID: k.GetId(),
		Member: memberB, Status: state.StatusRegistered, Active: true, NotBefore: cert.NotBefore.UTC(), NotAfter: cert.NotAfter.UTC()})
	if err != nil {
		t.Fatal(err)
	}
	d.svc.forgetKeyRefs()
	if got := d.boundMember(t, k.GetId()); got != "" {
		t.Fatalf("bound to %q; the old record has no binding", got)
	}
	wantCode(t, d.signWith(t, k.GetId()), codes.PermissionDenied, memberB)
	_, err = d.client.GenerateCSR(testCtx(t), &signerv1.GenerateCSRRequest{KeyId: k.GetId(), Subject: "CN=A,C=EE", Member: memberA})
	wantCode(t, err, codes.FailedPrecondition, "bound to member")
	wantCode(t, d.signWith(t, k.GetId()), codes.PermissionDenied, memberB)
	// A request for B binds it as a new one would.
	d.csrFor(t, k, "CN=B2,C=EE", memberB)
	if got := d.boundMember(t, k.GetId()); got != memberB {
		t.Fatalf("bound to %q after B's request, want %q", got, memberB)
	}
}

// TestKeyCacheDropsAFillOverlappingAChange: a fill of the key cache that
// read the state before a binding committed is not stored, so the next
// call sees the binding.
func TestKeyCacheDropsAFillOverlappingAChange(t *testing.T) {
	d := newDaemon(t)
	k := d.genKey(t, "k", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	// A rule with no members that names the key: it may use the key while
	// it is bound to nobody, and no longer once it is bound.
	p, err := config.NewPolicy(config.Admins{UIDs: []uint32{uint32(os.Getuid())}}, []config.ClientRule{
		{Name: "named", UIDs: []uint32{uint32(os.Getuid())}, Keys: []string{k.GetId()}, Usages: []string{config.UsageSign}},
	})
	if err != nil {
		t.Fatal(err)
	}
	d.svc.SetPolicy(p)
	if err := d.signWith(t, k.GetId()); err != nil {
		t.Fatalf("the unbound key its rule names: %v", err)
	}
	d.svc.forgetKeyRefs()
	var once sync.Once
	bound := make(chan error, 1)
	d.svc.keyHooks.Store(&keyCacheHooks{filled: func(id string) {
		if id != k.GetId() {
			return
		}
		// The fill has read the key unbound; bind it now, before the
		// fill stores what it read.
		once.Do(func() {
			_, err := d.client.GenerateCSR(testCtx(t), &signerv1.GenerateCSRRequest{KeyId: id, Subject: "CN=B,C=EE", Member: memberB})
			bound <- err
		})
	}})
	_ = d.signWith(t, k.GetId()) // admitted before the binding: either answer is right
	if err := <-bound; err != nil {
		t.Fatal(err)
	}
	d.svc.keyHooks.Store(nil)
	wantCode(t, d.signWith(t, k.GetId()), codes.PermissionDenied, memberB)
}

// TestKeyCacheClearedAfterCommit: every admin change that alters what a
// key serves clears the key cache only once the change is committed, so
// a fill between the clear and the commit cannot bring back the old
// state. The cache's clear hook reads the state at each clear.
func TestKeyCacheClearedAfterCommit(t *testing.T) {
	d := newDaemon(t)
	ca := devca.New(t)
	k := d.genKey(t, "k", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	serial := d.svc.tokens[0].tok.Serial()
	type seen struct {
		member string
		certs  int
	}
	var mu sync.Mutex
	var last seen
	clears := 0
	d.svc.keyHooks.Store(&keyCacheHooks{cleared: func() {
		ctx := context.Background()
		kr, _ := d.svc.store.GetKey(ctx, serial, k.GetId())
		cs, _ := d.svc.store.ListCerts(ctx, state.CertFilter{KeyID: k.GetId()})
		mu.Lock()
		last, clears = seen{kr.Member, len(cs)}, clears+1
		mu.Unlock()
	}})
	t.Cleanup(func() { d.svc.keyHooks.Store(nil) })
	wantSeen := func(step string, want seen) {
		t.Helper()
		mu.Lock()
		defer mu.Unlock()
		if clears == 0 {
			t.Fatalf("%s: the cache was not cleared", step)
		}
		if last != want {
			t.Fatalf("%s: at the cache's clear the state held %+v, want %+v (cleared before the commit)", step, last, want)
		}
		clears = 0
	}
	csr := d.csrFor(t, k, "CN=B,C=EE", memberB)
	wantSeen("request", seen{memberB, 0})
	c, err := d.client.ImportCert(testCtx(t), &signerv1.ImportCertRequest{Certificate: d.issue(t, ca, csr, "sign", devca.Current).Raw})
	if err != nil {
		t.Fatal(err)
	}
	wantSeen("import", seen{memberB, 1})
	if _, err := d.client.DeleteCert(testCtx(t), &signerv1.CertRef{Hash: c.GetSha256()}); err != nil {
		t.Fatal(err)
	}
	wantSeen("certificate delete", seen{memberB, 0})
	if _, err := d.client.DeleteKey(testCtx(t), &signerv1.DeleteKeyRequest{KeyId: k.GetId()}); err != nil {
		t.Fatal(err)
	}
	wantSeen("key delete", seen{"", 0})
}

// churnKey is a key of the churn test and the member its request names.
type churnKey struct{ id, member string }

// churnKeys are the keys that exist now, bound or not yet.
type churnKeys struct {
	mu    sync.Mutex
	keys  []churnKey
	added chan struct{} // a key was added
}

func (c *churnKeys) add(k churnKey) {
	c.mu.Lock()
	c.keys = append(c.keys, k)
	c.mu.Unlock()
	select {
	case c.added <- struct{}{}:
	default:
	}
}

func (c *churnKeys) remove(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, k := range c.keys {
		if k.id == id {
			c.keys = append(c.keys[:i], c.keys[i+1:]...)
			return
		}
	}
}

// pick returns one of the keys at random, waiting while there is none;
// false once stop is closed.
func (c *churnKeys) pick(r *rand.Rand, stop <-chan struct{}) (churnKey, bool) {
	for {
		c.mu.Lock()
		if n := len(c.keys); n > 0 {
			k := c.keys[r.IntN(n)]
			c.mu.Unlock()
			return k, true
		}
		c.mu.Unlock()
		select {
		case <-c.added:
		case <-stop:
			return churnKey{}, false
		}
	}
}

// signTally counts signatures made, by the signing client's member and
// the member the key's request names.
type signTally struct {
	mu sync.Mutex
	n  map[[2]string]int
}

func (s *signTally) add(client, key string) {
	s.mu.Lock()
	s.n[[2]string{client, key}]++
	s.mu.Unlock()
}

func (s *signTally) get(client, key string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n[[2]string{client, key}]
}

// TestNoCrossMemberSignatureUnderChurn hammers key generation, requests
// (each naming member A or B), the dev CA's certificates, imports and
// deletions, while a client allowed only member A (this process) and,
// when the test runs as root, a client allowed only member B (signerctl
// run as uid 65534) sign with whatever keys exist at the moment, over
// the daemon's socket. No signature may be made with a key of the other
// member, whatever state its request, certificate or the key cache is in.
func TestNoCrossMemberSignatureUnderChurn(t *testing.T) {
	const nobody = 65534
	asRoot := os.Getuid() == 0
	d := newDaemon(t, func(p *daemonParams) {
		p.Members = `"` + memberA + `"` // keys = ["*"]
		if asRoot {
			p.Group = strconv.Itoa(nobody) // the socket's group, so nobody can reach it
			p.ExtraPolicy = fmt.Sprintf("\n  [[policy.client]]\n  name = \"member-b\"\n  uids = [%d]\n  keys = [\"*\"]\n  usages = [\"sign\"]\n  members = [%q]\n", nobody, memberB)
		}
	})
	var signerctl string
	if asRoot {
		for p := d.dir; p != os.TempDir() && p != "/"; p = filepath.Dir(p) {
			if err := os.Chmod(p, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		signerctl = buildSignerctl(t)
	} else {
		t.Log("not root: only member A's client signs (member B's runs as uid 65534)")
	}
	ca := devca.New(t)
	ctx := testCtx(t)
	live := &churnKeys{added: make(chan struct{}, 1)}
	tally := &signTally{n: map[[2]string]int{}}
	stop := make(chan struct{})
	errs := make(chan error, 16)

	// signAsB signs with key id as member B's client; ok reports a
	// signature, and err anything but a refusal or a key gone.
	signAsB := func(id string, digest []byte) (ok bool, err error) {
		cmd := exec.Command(signerctl, "--socket", d.sock, "sign", "--key", id, "--alg", "ES256", hex.EncodeToString(digest))
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
		out, err := cmd.CombinedOutput()
		switch {
		case err == nil:
			return true, nil
		case strings.Contains(string(out), "PermissionDenied"), strings.Contains(string(out), "NotFound"):
			return false, nil
		}
		return false, fmt.Errorf("signerctl sign as member B's client: %v: %s", err, out)
	}
	signAsA := func(id string, digest []byte) (bool, error) {
		_, err := d.client.Sign(ctx, signReq(id, digest))
		switch status.Code(err) {
		case codes.OK:
			return true, nil
		case codes.PermissionDenied, codes.NotFound:
			return false, nil
		}
		return false, fmt.Errorf("sign as member A's client: %w", err)
	}
	var signers sync.WaitGroup
	signer := func(member string, seed uint64, sign func(string, []byte) (bool, error)) {
		defer signers.Done()
		r := rand.New(rand.NewPCG(seed, 1))
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			k, ok := live.pick(r, stop)
			if !ok {
				return
			}
			signed, err := sign(k.id, sha(fmt.Sprintf("%s %d", member, i)))
			if err != nil {
				errs <- err
				return
			}
			if signed {
				tally.add(member, k.member)
			}
		}
	}
	signers.Add(2)
	go signer(memberA, 1, signAsA)
	go signer(memberA, 2, signAsA)
	if asRoot {
		signers.Add(1)
		go signer(memberB, 3, signAsB)
	}

	// Two officers, each making and unmaking keys for A and B in turn.
	const officers, cycles = 2, 6
	var admins sync.WaitGroup
	lifecycle := func(o, i int) error {
		member := []string{memberA, memberB}[(o+i)%2]
		k, err := d.client.GenerateKey(ctx, &signerv1.GenerateKeyRequest{Token: "t1", Label: fmt.Sprintf("o%d-%d", o, i), Algorithm: "EC-P256", Usage: signerv1.KeyUsage_KEY_USAGE_SIGN})
		if err != nil {
			return err
		}
		live.add(churnKey{k.GetId(), member})
		defer live.remove(k.GetId())
		r, err := d.client.GenerateCSR(ctx, &signerv1.GenerateCSRRequest{KeyId: k.GetId(), Subject: "CN=" + member + ",C=EE", Member: member, Format: signerv1.CsrFormat_CSR_FORMAT_DER})
		if err != nil {
			return err
		}
		cert, err := ca.Sign(ctx, r.GetCsr(), devca.UsageSign, devca.Current)
		if err != nil {
			return err
		}
		c, err := d.client.ImportCert(ctx, &signerv1.ImportCertRequest{Certificate: cert.Raw})
		if err != nil {
			return err
		}
		if _, err := d.client.DeleteCert(ctx, &signerv1.CertRef{Hash: c.GetSha256()}); err != nil {
			return err
		}
		_, err = d.client.DeleteKey(ctx, &signerv1.DeleteKeyRequest{KeyId: k.GetId(), Force: true})
		return err
	}
	for o := range officers {
		admins.Add(1)
		go func() {
			defer admins.Done()
			for i := range cycles {
				if err := lifecycle(o, i); err != nil {
					errs <- fmt.Errorf("officer %d, cycle %d: %w", o, i, err)
					return
				}
			}
		}()
	}
	admins.Wait()
	close(stop)
	signers.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("signatures (client's member, key's member): %v", tally.n)
	if n := tally.get(memberA, memberB); n != 0 {
		t.Errorf("member A's client made %d signature(s) with member B's keys", n)
	}
	if n := tally.get(memberB, memberA); n != 0 {
		t.Errorf("member B's client made %d signature(s) with member A's keys", n)
	}

	// The clients are not refused everything: each signs with its own
	// member's key and not with the other's.
	ka := d.genKey(t, "final-a", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	kb := d.genKey(t, "final-b", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	d.csrFor(t, ka, "CN=A,C=EE", memberA)
	d.csrFor(t, kb, "CN=B,C=EE", memberB)
	for _, tc := range []struct {
		client string
		sign   func(string, []byte) (bool, error)
		key    *signerv1.Key
		want   bool
	}{
		{memberA, signAsA, ka, true}, {memberA, signAsA, kb, false},
		{memberB, signAsB, kb, true}, {memberB, signAsB, ka, false},
	} {
		if tc.client == memberB && !asRoot {
			continue
		}
		got, err := tc.sign(tc.key.GetId(), sha("final"))
		if err != nil || got != tc.want {
			t.Errorf("member %s's client with key %s: signed %v, %v; want signed %v", tc.client, tc.key.GetLabel(), got, err, tc.want)
		}
	}
}
