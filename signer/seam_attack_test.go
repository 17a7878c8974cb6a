package signer

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	xocsp "golang.org/x/crypto/ocsp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hsmsigner/hsmsigner/hsm"
	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/audit"
	"github.com/hsmsigner/hsmsigner/signer/config"
	"github.com/hsmsigner/hsmsigner/signer/peercred"
	"github.com/hsmsigner/hsmsigner/softhsm-test/devca"
)

// The tests in this file attack the seam for in-process features
// (seam.go): KeySigner's checks at each signature, the crypto.Signer
// contract, the audit line of each signature, and the certificate change
// notifications.

// seamDaemon is a daemon whose test user may use keys of usage sign and
// tsa, with its audit log behind a switch.
func seamDaemon(t *testing.T) *testDaemon {
	t.Helper()
	return newDaemon(t, func(p *daemonParams) {
		p.ClientUsages = `"sign", "tsa"`
		p.SwitchAudit = true
	})
}

// me is the test process as a peer: the uid the test policy names.
func me() peercred.Peer {
	return peercred.Peer{UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), PID: int32(os.Getpid())}
}

// verifiesAs reports whether sig is a signature of digest by pub with the
// hash of opts (RSA-PSS for *rsa.PSSOptions).
func verifiesAs(pub crypto.PublicKey, digest, sig []byte, opts crypto.SignerOpts) bool {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		return ecdsa.VerifyASN1(k, digest, sig)
	case *rsa.PublicKey:
		if pss, ok := opts.(*rsa.PSSOptions); ok {
			return rsa.VerifyPSS(k, opts.HashFunc(), digest, sig, &rsa.PSSOptions{SaltLength: pss.SaltLength}) == nil
		}
		return rsa.VerifyPKCS1v15(k, opts.HashFunc(), digest, sig) == nil
	}
	return false
}

// TestSeamAttackUsagesAndKeyIDs: KeySigner refuses every usage that is
// not a key usage the seam serves (empty, unknown, another spelling, two
// usages at once, audit), a key whose usage is another, and a key id that
// is not hex in one spelling; an upper-case id is the same key, named in
// lower case. A key made outside signerd and never registered (no usage)
// is refused whatever usage is asked.
func TestSeamAttackUsagesAndKeyIDs(t *testing.T) {
	d := seamDaemon(t)
	ctx := testCtx(t)
	tool := newKeyAttrTool(t, d)
	tsaKey := d.genKey(t, "tsa", "EC-P256", signerv1.KeyUsage_KEY_USAGE_TSA).GetId()
	signKey := d.genKey(t, "sign", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN).GetId()
	authKey := d.genKey(t, "auth", "EC-P256", signerv1.KeyUsage_KEY_USAGE_AUTH).GetId()
	auditKey := d.genKey(t, "audit", "EC-P256", signerv1.KeyUsage_KEY_USAGE_AUDIT).GetId()
	// A key pair made beside signerd with the protection attributes
	// signerd asks for, but never registered: no state record, no usage.
	const unregistered = "5eed0000000000000000000000000001"
	tool.run(t, "gen", "--id", unregistered, "--label", "unregistered", "modifiable=false", "copyable=false")

	tests := []struct {
		name  string
		key   string
		usage string
		want  error // nil: a signer for the key
	}{
		{"tsa key as tsa", tsaKey, UsageTSA, nil},
		{"tsa key, upper-case id", strings.ToUpper(tsaKey), UsageTSA, nil},
		{"auth key as auth", authKey, UsageAuth, nil},
		{"sign key as tsa", signKey, UsageTSA, ErrPermission},
		{"tsa key as sign", tsaKey, UsageSign, ErrPermission},
		{"auth key as tsa", authKey, UsageTSA, ErrPermission},
		{"audit key as audit", auditKey, UsageAudit, ErrPermission},
		{"unregistered key, empty usage", unregistered, "", ErrInvalid},
		{"unregistered key as sign", unregistered, UsageSign, ErrPermission},
		{"unregistered key as tsa", unregistered, UsageTSA, ErrPermission},
		{"empty usage", tsaKey, "", ErrInvalid},
		{"unknown usage", tsaKey, "timestamping", ErrInvalid},
		{"upper-case usage", tsaKey, "TSA", ErrInvalid},
		{"usage with space", tsaKey, " tsa", ErrInvalid},
		{"two usages", tsaKey, "sign,tsa", ErrInvalid},
		{"id with space", " " + tsaKey, UsageTSA, ErrInvalid},
		{"id with trailing newline", tsaKey + "\n", UsageTSA, ErrInvalid},
		{"id with 0x", "0x" + tsaKey, UsageTSA, ErrInvalid},
		{"id with a token prefix", "t1/" + tsaKey, UsageTSA, ErrInvalid},
		{"empty id", "", UsageTSA, ErrInvalid},
		{"id of a key that is not there", "00ff00ff", UsageTSA, hsm.ErrKeyNotFound},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			op := fmt.Sprintf("feature.case%d", i)
			s, err := d.svc.KeySigner(ctx, Actor{Op: op}, tt.key, tt.usage)
			if tt.want != nil {
				if s != nil || !errors.Is(err, tt.want) {
					t.Fatalf("KeySigner(%q, %q) = %v, %v; want no signer and %v", tt.key, tt.usage, s, err, tt.want)
				}
				lines := auditLines(t, d, op)
				if len(lines) != 1 || lines[0].Result == "ok" {
					t.Fatalf("audit lines of the refusal: %+v; want one refusal", lines)
				}
				return
			}
			if err != nil {
				t.Fatalf("KeySigner(%q, %q): %v", tt.key, tt.usage, err)
			}
			as := s.(*AuditedSigner)
			if as.KeyID() != strings.ToLower(tt.key) {
				t.Fatalf("KeyID = %q, want %q", as.KeyID(), strings.ToLower(tt.key))
			}
			digest := sha("usage " + tt.name)
			sig, err := s.Sign(nil, digest, crypto.SHA256)
			if err != nil || !verifiesAs(s.Public(), digest, sig, crypto.SHA256) {
				t.Fatalf("Sign: %v (verifies: %v)", err, err == nil && verifiesAs(s.Public(), digest, sig, crypto.SHA256))
			}
			lines := auditLines(t, d, op)
			if len(lines) != 1 || lines[0].Key != strings.ToLower(tt.key) || lines[0].Result != "ok" {
				t.Fatalf("audit lines: %+v; want one ok line naming key %s", lines, strings.ToLower(tt.key))
			}
		})
	}

	t.Run("CertificatesOf an unknown or empty usage", func(t *testing.T) {
		for _, u := range []string{"", "TSA", "timestamping", "sign,tsa"} {
			if certs, err := d.svc.CertificatesOf(ctx, u); !errors.Is(err, ErrInvalid) {
				t.Errorf("CertificatesOf(%q) = %d certificates, %v; want ErrInvalid", u, len(certs), err)
			}
		}
	})
}

// auditLines returns the daemon's audit lines of op.
func auditLines(t *testing.T, d *testDaemon, op string) []audit.Record {
	t.Helper()
	var out []audit.Record
	for _, r := range d.auditLines(t) {
		if r.Op == op {
			out = append(out, r)
		}
	}
	return out
}

// TestSeamAttackNilPeerAndMembers: an actor without a peer (the daemon's
// own feature) never gets a key that serves a member: such a key signs
// only for a peer the policy lets use it. A key of no member is the
// daemon's to use for a feature of its usage.
func TestSeamAttackNilPeerAndMembers(t *testing.T) {
	d := seamDaemon(t)
	ctx := testCtx(t)
	bound := d.genKey(t, "member-key", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	d.csrFor(t, bound, "CN=member,C=EE", member) // binds the key to member
	unbound := d.genKey(t, "free-key", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	p := me()
	tests := []struct {
		name  string
		actor Actor
		key   string
		want  error
	}{
		{"no peer, a member's key", Actor{Op: "feature.self_member"}, bound.GetId(), ErrPermission},
		{"no peer, a key of no member", Actor{Op: "feature.self_free"}, unbound.GetId(), nil},
		{"a peer allowed the member", Actor{Op: "feature.peer_member", Peer: &p}, bound.GetId(), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := d.svc.KeySigner(ctx, tt.actor, tt.key, UsageSign)
			if !errors.Is(err, tt.want) || (tt.want == nil) != (s != nil) {
				t.Fatalf("KeySigner = %v, %v; want %v", s, err, tt.want)
			}
		})
	}
}

// TestSeamAttackChecksAtEachSignature: what changes after KeySigner
// returned is seen at the next signature: a policy reload that takes the
// key from the actor's peer, the peer struct changed by the feature, the
// token logged out, the key deleted, and the key destroyed and made again
// under its id behind signerd's back (whose signatures would not verify
// with the signer's Public). Each is refused, audited, and no signature
// leaves.
func TestSeamAttackChecksAtEachSignature(t *testing.T) {
	d := seamDaemon(t)
	ctx := testCtx(t)
	tool := newKeyAttrTool(t, d)
	signOnce := func(t *testing.T, s crypto.Signer, what string) error {
		t.Helper()
		digest := sha(what)
		sig, err := s.Sign(nil, digest, crypto.SHA256)
		if err == nil && !verifiesAs(s.Public(), digest, sig, crypto.SHA256) {
			t.Fatalf("%s: a signature that does not verify with the signer's Public left the seam", what)
		}
		if err != nil && sig != nil {
			t.Fatalf("%s: a signature left with the error %v", what, err)
		}
		return err
	}

	t.Run("policy reload", func(t *testing.T) {
		k := d.genKey(t, "reload", "EC-P256", signerv1.KeyUsage_KEY_USAGE_TSA).GetId()
		p := me()
		s, err := d.svc.KeySigner(ctx, Actor{Op: "feature.reload", Peer: &p}, k, UsageTSA)
		if err != nil {
			t.Fatal(err)
		}
		if err := signOnce(t, s, "before"); err != nil {
			t.Fatal(err)
		}
		before := d.svc.policy.Load()
		d.svc.SetPolicy(testPolicy(t)) // usage sign only
		defer d.svc.SetPolicy(before)
		if err := signOnce(t, s, "after"); !errors.Is(err, ErrPermission) {
			t.Fatalf("after the reload: %v; want ErrPermission", err)
		}
	})

	t.Run("the feature changes its peer", func(t *testing.T) {
		k := d.genKey(t, "peer", "EC-P256", signerv1.KeyUsage_KEY_USAGE_TSA).GetId()
		p := me()
		s, err := d.svc.KeySigner(ctx, Actor{Op: "feature.peer", Peer: &p}, k, UsageTSA)
		if err != nil {
			t.Fatal(err)
		}
		p.PID = 1 // the struct the feature handed in, reused for another request
		if err := signOnce(t, s, "peer changed"); err != nil {
			t.Fatal(err)
		}
		lines := auditLines(t, d, "feature.peer")
		if len(lines) != 1 || lines[0].PID != int64(os.Getpid()) {
			t.Fatalf("audit lines %+v; want one naming the peer KeySigner was given (pid %d)", lines, os.Getpid())
		}
	})

	t.Run("token logged out", func(t *testing.T) {
		k := d.genKey(t, "logout", "EC-P256", signerv1.KeyUsage_KEY_USAGE_TSA).GetId()
		s, err := d.svc.KeySigner(ctx, Actor{Op: "feature.logout"}, k, UsageTSA)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := d.client.LogoutToken(ctx, &signerv1.LogoutTokenRequest{Token: "t1"}); err != nil {
			t.Fatal(err)
		}
		defer func() {
			if _, err := d.client.LoginToken(ctx, &signerv1.LoginTokenRequest{Token: "t1", Pin: d.soft.UserPIN}); err != nil {
				t.Fatal(err)
			}
		}()
		if err := signOnce(t, s, "logged out"); err == nil {
			t.Fatal("signed while the token is logged out")
		}
		var lines []audit.Record
		lines = auditLines(t, d, "feature.logout")
		if len(lines) != 1 || lines[0].Result == "ok" {
			t.Fatalf("audit lines %+v; want one failure", lines)
		}
		// A KeySigner asked while the token is logged out fails.
		if s, err := d.svc.KeySigner(ctx, Actor{Op: "feature.logout_new"}, k, UsageTSA); err == nil || s != nil {
			t.Fatalf("KeySigner while logged out = %v, %v; want an error", s, err)
		}
	})

	t.Run("key deleted", func(t *testing.T) {
		k := d.genKey(t, "deleted", "EC-P256", signerv1.KeyUsage_KEY_USAGE_TSA).GetId()
		s, err := d.svc.KeySigner(ctx, Actor{Op: "feature.deleted"}, k, UsageTSA)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := d.client.DeleteKey(ctx, &signerv1.DeleteKeyRequest{KeyId: k}); err != nil {
			t.Fatal(err)
		}
		if err := signOnce(t, s, "deleted"); err == nil {
			t.Fatal("signed with a deleted key")
		}
	})

	for _, tt := range []struct{ name, keyAlg, gen string }{
		{"key made again under its id, EC", "EC-P256", ""},
		{"key made again under its id, RSA", "RSA2048", "--rsa-bits=2048"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			k := d.genKey(t, "again-"+tt.keyAlg, tt.keyAlg, signerv1.KeyUsage_KEY_USAGE_TSA).GetId()
			s, err := d.svc.KeySigner(ctx, Actor{Op: "feature.again"}, k, UsageTSA)
			if err != nil {
				t.Fatal(err)
			}
			if err := signOnce(t, s, "the first key"); err != nil {
				t.Fatal(err)
			}
			tool.run(t, "destroy", "--id", k)
			args := []string{"--id", k, "--label", "again-" + tt.keyAlg}
			if tt.gen != "" {
				args = append(args, tt.gen)
			}
			tool.run(t, "gen", append(args, "modifiable=false", "copyable=false")...)
			for i := range 2 {
				if err := signOnce(t, s, fmt.Sprintf("the second key, %d", i)); err == nil {
					t.Fatal("signed with another key than the signer's")
				}
			}
		})
	}
}

// TestSeamAttackSignerOpts: the crypto.Signer contract at its edges. A
// nil opts, a nil *rsa.PSSOptions, a hash the seam does not sign with,
// RSA-PSS options on an EC key or with another salt length, and a digest
// whose length is not the hash's are refused with a clear error and no
// panic; what is accepted verifies with the signer's Public as opts say.
func TestSeamAttackSignerOpts(t *testing.T) {
	d := seamDaemon(t)
	ctx := testCtx(t)
	signers := map[string]crypto.Signer{}
	for _, alg := range []string{"EC-P256", "RSA2048"} {
		k := d.genKey(t, "opts-"+alg, alg, signerv1.KeyUsage_KEY_USAGE_TSA).GetId()
		s, err := d.svc.KeySigner(ctx, Actor{Op: "feature.opts"}, k, UsageTSA)
		if err != nil {
			t.Fatal(err)
		}
		signers[alg] = s
	}
	d256, d384, d512 := sha256.Sum256([]byte("m")), sha512.Sum384([]byte("m")), sha512.Sum512([]byte("m"))
	var nilPSS *rsa.PSSOptions
	tests := []struct {
		name   string
		key    string
		digest []byte
		opts   crypto.SignerOpts
		ok     bool
	}{
		{"EC SHA-256", "EC-P256", d256[:], crypto.SHA256, true},
		{"EC SHA-384", "EC-P256", d384[:], crypto.SHA384, true},
		{"EC SHA-512", "EC-P256", d512[:], crypto.SHA512, true},
		{"RSA PKCS#1 SHA-256", "RSA2048", d256[:], crypto.SHA256, true},
		{"RSA PSS auto salt", "RSA2048", d256[:], &rsa.PSSOptions{Hash: crypto.SHA256, SaltLength: rsa.PSSSaltLengthAuto}, true},
		{"RSA PSS salt = hash", "RSA2048", d384[:], &rsa.PSSOptions{Hash: crypto.SHA384, SaltLength: rsa.PSSSaltLengthEqualsHash}, true},
		{"EC nil opts", "EC-P256", d256[:], nil, false},
		{"RSA nil opts", "RSA2048", d256[:], nil, false},
		{"RSA nil PSS options", "RSA2048", d256[:], nilPSS, false},
		{"EC nil PSS options", "EC-P256", d256[:], nilPSS, false},
		{"EC with PSS options", "EC-P256", d256[:], &rsa.PSSOptions{Hash: crypto.SHA256}, false},
		{"RSA PSS salt 20", "RSA2048", d256[:], &rsa.PSSOptions{Hash: crypto.SHA256, SaltLength: 20}, false},
		{"RSA PSS without a hash", "RSA2048", d256[:], &rsa.PSSOptions{}, false},
		{"EC SHA-256 opts, SHA-384 digest", "EC-P256", d384[:], crypto.SHA256, false},
		{"EC SHA-384 opts, SHA-256 digest", "EC-P256", d256[:], crypto.SHA384, false},
		{"RSA SHA-512 opts, SHA-256 digest", "RSA2048", d256[:], crypto.SHA512, false},
		{"RSA PSS SHA-256, SHA-512 digest", "RSA2048", d512[:], &rsa.PSSOptions{Hash: crypto.SHA256}, false},
		{"EC no hash (pre-hashed raw)", "EC-P256", d256[:], crypto.Hash(0), false},
		{"RSA SHA-1", "RSA2048", d256[:20], crypto.SHA1, false},
		{"RSA MD5+SHA1", "RSA2048", make([]byte, 36), crypto.MD5SHA1, false},
		{"EC an unknown hash", "EC-P256", d256[:], crypto.Hash(99), false},
		{"EC nil digest", "EC-P256", nil, crypto.SHA256, false},
		{"EC empty digest", "EC-P256", []byte{}, crypto.SHA256, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := signers[tt.key]
			var sig []byte
			var err error
			func() {
				defer func() {
					if r := recover(); r != nil {
						t.Fatalf("Sign panicked: %v", r)
					}
				}()
				sig, err = s.Sign(nil, tt.digest, tt.opts)
			}()
			if !tt.ok {
				if err == nil || sig != nil || (!errors.Is(err, ErrInvalid) && !errors.Is(err, hsm.ErrAlgorithm) && !errors.Is(err, hsm.ErrDigestLength)) {
					t.Fatalf("Sign = %x, %v; want no signature and ErrInvalid, hsm.ErrAlgorithm or hsm.ErrDigestLength", sig, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Sign: %v", err)
			}
			if !verifiesAs(s.Public(), tt.digest, sig, tt.opts) {
				t.Fatal("the signature does not verify with the signer's Public as opts say")
			}
		})
	}
}

// TestSeamAttackAuditFailureUnderLoad: signers on several goroutines
// while the audit log fails and recovers under them: every signature that
// leaves the seam has its ok line in the real audit log, and while the
// log fails no signature leaves at all (ErrAudit).
func TestSeamAttackAuditFailureUnderLoad(t *testing.T) {
	d := seamDaemon(t)
	ctx := testCtx(t)
	k := d.genKey(t, "load", "EC-P256", signerv1.KeyUsage_KEY_USAGE_TSA).GetId()
	const workers, each = 6, 30
	s, err := d.svc.KeySigner(ctx, Actor{Op: "feature.load"}, k, UsageTSA)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("the log fails throughout", func(t *testing.T) {
		d.audit.set(failingAudit{})
		defer d.audit.set(nil)
		var wg sync.WaitGroup
		errs := make(chan error, workers*each)
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range each {
					sig, err := s.Sign(nil, sha(fmt.Sprintf("fail %d %d", w, i)), crypto.SHA256)
					if sig != nil || !errors.Is(err, ErrAudit) {
						errs <- fmt.Errorf("Sign = %x, %v; want no signature and ErrAudit", sig, err)
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
	})

	t.Run("the log fails and recovers", func(t *testing.T) {
		var mu sync.Mutex
		signed := map[string]bool{} // digests whose signature left
		var wg sync.WaitGroup
		var done sync.WaitGroup
		done.Add(workers)
		stop := make(chan struct{})
		wg.Add(1)
		go func() { // flips the log between failing and working
			defer wg.Done()
			defer d.audit.set(nil)
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				if n%2 == 0 {
					d.audit.set(failingAudit{})
				} else {
					d.audit.set(nil)
				}
				if _, err := d.svc.KeySigner(ctx, Actor{Op: "feature.flip"}, k, UsageTSA); err != nil && !errors.Is(err, ErrAudit) {
					t.Errorf("KeySigner: %v", err) // paces the flips by a call's length
				}
			}
		}()
		var refused, ok int
		for w := range workers {
			go func() {
				defer done.Done()
				for i := range each {
					digest := sha(fmt.Sprintf("flip %d %d", w, i))
					sig, err := s.Sign(nil, digest, crypto.SHA256)
					mu.Lock()
					switch {
					case err == nil && sig != nil:
						signed[hexOf(digest)] = true
						ok++
					case errors.Is(err, ErrAudit) && sig == nil:
						refused++
					default:
						t.Errorf("Sign = %x, %v; want a signature, or none and ErrAudit", sig, err)
					}
					mu.Unlock()
				}
			}()
		}
		done.Wait()
		close(stop)
		wg.Wait()
		lined := map[string]bool{}
		for _, l := range auditLines(t, d, "feature.load") {
			if l.Result == "ok" {
				lined[l.Digest] = true
			}
		}
		for dg := range signed {
			if !lined[dg] {
				t.Errorf("a signature of digest %s left without its ok audit line", dg)
			}
		}
		t.Logf("%d signatures out, %d withheld", ok, refused)
	})
}

// importedTSACert makes a tsa key, has a dev CA certify it and imports
// the certificate (not activated); it returns the certificate's hash.
// importedTSACert makes a tsa key, has a dev CA certify it and imports
// the certificate; took is how long the ImportCert call alone took.
func importedTSACert(t *testing.T, d *testDaemon) (keyID, hash string, took time.Duration) {
	t.Helper()
	k := d.genKey(t, "tsa-cert", "EC-P256", signerv1.KeyUsage_KEY_USAGE_TSA)
	ca := devca.New(t)
	c := d.issue(t, ca, d.csrFor(t, k, "CN=tsa,C=EE", ""), "tsa", devca.Current)
	var chain [][]byte
	for _, cc := range ca.Chain() {
		chain = append(chain, cc.Raw)
	}
	start := time.Now()
	imp, err := d.client.ImportCert(testCtx(t), &signerv1.ImportCertRequest{Certificate: c.Raw, Chain: chain})
	if err != nil {
		t.Fatal(err)
	}
	return k.GetId(), imp.GetSha256(), time.Since(start)
}

// TestSeamAttackCertificateHooks: OnCertificatesChanged hooks that call
// back into the service (CertificatesOf, KeySigner and a signature,
// OnCertificatesChanged), one that panics and one that blocks: the
// changing call returns, its change committed, within a bound; every
// other hook is still told; the daemon goes on serving.
func TestSeamAttackCertificateHooks(t *testing.T) {
	d := seamDaemon(t)
	ctx := testCtx(t)
	release := make(chan struct{})
	defer close(release)
	var blocked sync.Once
	blocking := make(chan struct{})
	d.svc.OnCertificatesChanged(func() { // blocks until the test ends
		blocked.Do(func() { close(blocking) })
		<-release
	})
	d.svc.OnCertificatesChanged(func() { panic("a feature's bug") })
	type seen struct {
		active int
		signed error
	}
	notes := make(chan seen, 64)
	late := make(chan struct{}, 64)
	var once sync.Once
	d.svc.OnCertificatesChanged(func() {
		once.Do(func() { d.svc.OnCertificatesChanged(func() { late <- struct{}{} }) })
		certs, err := d.svc.CertificatesOf(context.Background(), UsageTSA)
		if err != nil {
			t.Errorf("CertificatesOf in a hook: %v", err)
		}
		n := seen{active: len(certs)}
		if len(certs) > 0 {
			s, err := d.svc.KeySigner(context.Background(), Actor{Op: "feature.hook"}, certs[0].KeyID, UsageTSA)
			if err == nil {
				_, err = s.Sign(nil, sha("hook"), crypto.SHA256)
			}
			n.signed = err
		}
		notes <- n
	})
	next := func(what string) seen {
		t.Helper()
		select {
		case n := <-notes:
			return n
		case <-time.After(30 * time.Second):
			t.Fatalf("no notification after %s", what)
			return seen{}
		}
	}
	// fn returns how long the changing call alone took (the CA's work
	// around it is not counted).
	call := func(what string, fn func(context.Context) (time.Duration, error)) {
		t.Helper()
		cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		took, err := fn(cctx)
		if err != nil {
			t.Fatalf("%s with a blocking and a panicking hook: %v", what, err)
		}
		if took > certHookWait+5*time.Second {
			t.Fatalf("%s took %v with a blocking hook; want at most about %v", what, took, certHookWait)
		}
	}

	var hash string
	call("ImportCert", func(context.Context) (took time.Duration, err error) {
		_, hash, took = importedTSACert(t, d)
		return took, nil
	})
	<-blocking
	if n := next("import"); n.active != 0 {
		t.Fatalf("after import: %d active certificates seen, want 0", n.active)
	}
	call("ActivateCert", func(ctx context.Context) (time.Duration, error) {
		start := time.Now()
		_, err := d.client.ActivateCert(ctx, &signerv1.CertRef{Hash: hash})
		return time.Since(start), err
	})
	if n := next("activation"); n.active != 1 || n.signed != nil {
		t.Fatalf("after activation: %d active certificates seen, signing in the hook: %v; want 1, signed", n.active, n.signed)
	}
	select {
	case <-late:
	case <-time.After(30 * time.Second):
		t.Fatal("a hook registered from a hook was not told of the activation")
	}
	call("DeactivateCert", func(ctx context.Context) (time.Duration, error) {
		start := time.Now()
		_, err := d.client.DeactivateCert(ctx, &signerv1.CertRef{Hash: hash})
		return time.Since(start), err
	})
	if n := next("deactivation"); n.active != 0 {
		t.Fatalf("after deactivation: %d active certificates seen, want 0", n.active)
	}
	if _, err := d.client.GetStatus(ctx, &signerv1.GetStatusRequest{}); err != nil {
		t.Fatalf("the daemon after the hooks: %v", err)
	}
}

// TestSeamAttackEveryMethodsRole: the role of every rpc of the service,
// spelled out, so that a role changed by mistake fails here; and each
// caller kind (admin, client, both, neither, a peer the policy does not
// name) is admitted exactly where its role is.
func TestSeamAttackEveryMethodsRole(t *testing.T) {
	want := map[string]role{
		signerv1.Signer_GetStatus_FullMethodName:        roleAny,
		signerv1.Signer_GetKey_FullMethodName:           roleAny,
		signerv1.Signer_GetTSAStatus_FullMethodName:     roleAny,
		signerv1.Signer_ListTokens_FullMethodName:       roleAdmin,
		signerv1.Signer_GetToken_FullMethodName:         roleAdmin,
		signerv1.Signer_LoginToken_FullMethodName:       roleAdmin,
		signerv1.Signer_LogoutToken_FullMethodName:      roleAdmin,
		signerv1.Signer_ChangePin_FullMethodName:        roleAdmin,
		signerv1.Signer_GenerateKey_FullMethodName:      roleAdmin,
		signerv1.Signer_ListKeys_FullMethodName:         roleAdmin,
		signerv1.Signer_DeleteKey_FullMethodName:        roleAdmin,
		signerv1.Signer_RenameKey_FullMethodName:        roleAdmin,
		signerv1.Signer_GenerateCSR_FullMethodName:      roleAdmin,
		signerv1.Signer_ListCSRs_FullMethodName:         roleAdmin,
		signerv1.Signer_GetCSR_FullMethodName:           roleAdmin,
		signerv1.Signer_DeleteCSR_FullMethodName:        roleAdmin,
		signerv1.Signer_ImportCert_FullMethodName:       roleAdmin,
		signerv1.Signer_ListCerts_FullMethodName:        roleAdmin,
		signerv1.Signer_GetCert_FullMethodName:          roleAdmin,
		signerv1.Signer_ActivateCert_FullMethodName:     roleAdmin,
		signerv1.Signer_DeactivateCert_FullMethodName:   roleAdmin,
		signerv1.Signer_DeleteCert_FullMethodName:       roleAdmin,
		signerv1.Signer_SetCertStatus_FullMethodName:    roleAdmin,
		signerv1.Signer_GetOCSPStatus_FullMethodName:    roleAdmin,
		signerv1.Signer_RefreshOCSP_FullMethodName:      roleAdmin,
		signerv1.Signer_BackupState_FullMethodName:      roleAdmin,
		signerv1.Signer_Sign_FullMethodName:             roleClient,
		signerv1.Signer_SignBatch_FullMethodName:        roleClient,
		signerv1.Signer_SignStream_FullMethodName:       roleClient,
		signerv1.Signer_GetSigningInfo_FullMethodName:   roleClient,
		signerv1.Signer_GetOCSPResponses_FullMethodName: roleClient,
		signerv1.Signer_SetOCSPResponses_FullMethodName: roleClient,
		signerv1.Signer_Timestamp_FullMethodName:        roleClient,
	}
	var names []string
	for _, m := range signerv1.Signer_ServiceDesc.Methods {
		names = append(names, m.MethodName)
	}
	for _, st := range signerv1.Signer_ServiceDesc.Streams {
		names = append(names, st.StreamName)
	}
	if len(names) != len(want) {
		t.Errorf("the service has %d rpcs, this table %d: give each new rpc its role here", len(names), len(want))
	}
	me := uint32(os.Getuid())
	pol, err := config.NewPolicy(config.Admins{UIDs: []uint32{me}}, []config.ClientRule{
		{Name: "c", UIDs: []uint32{me + 1, me + 2}, Keys: []string{"*"}, Usages: []string{UsageSign}},
	})
	if err != nil {
		t.Fatal(err)
	}
	callers := map[string]caller{
		"admin":     callerOf(pol, peercred.Peer{UID: me}),
		"client":    callerOf(pol, peercred.Peer{UID: me + 1}),
		"stranger":  callerOf(pol, peercred.Peer{UID: me + 3}),
		"anonymous": callerOf(pol, anonymousPeer()),
	}
	for _, name := range names {
		full := "/" + signerv1.Signer_ServiceDesc.ServiceName + "/" + name
		r, ok := want[full]
		if !ok {
			t.Errorf("rpc %s has no role in this table", full)
			continue
		}
		if got := methodRole(full); got != r {
			t.Errorf("%s: role %d, want %d", full, got, r)
		}
		for who, c := range callers {
			allowed := (r == roleAny && (who == "admin" || who == "client")) ||
				(r == roleAdmin && who == "admin") || (r == roleClient && who == "client")
			if got := c.mayCall(full); got != allowed {
				t.Errorf("%s by %s: mayCall = %v, want %v", full, who, got, allowed)
			}
		}
	}
}

// TestSeamAttackUnaryAndStreamDecideAlike: a Sign call and a call of a
// SignStream are admitted by the same access model: for each policy and
// each kind of key, both get the same code, the one the policy says.
func TestSeamAttackUnaryAndStreamDecideAlike(t *testing.T) {
	d := newDaemon(t)
	keys := map[string]string{
		"sign":   d.genKey(t, "sign", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN).GetId(),
		"tsa":    d.genKey(t, "tsa", "EC-P256", signerv1.KeyUsage_KEY_USAGE_TSA).GetId(),
		"auth":   d.genKey(t, "auth", "EC-P256", signerv1.KeyUsage_KEY_USAGE_AUTH).GetId(),
		"audit":  d.genKey(t, "audit", "EC-P256", signerv1.KeyUsage_KEY_USAGE_AUDIT).GetId(),
		"member": d.genKey(t, "member", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN).GetId(),
	}
	d.csrFor(t, &signerv1.Key{Id: keys["member"]}, "CN=m,C=EE", member)
	meUID := uint32(os.Getuid())
	policy := func(usages []string, members ...string) *config.Policy {
		var rules []config.ClientRule
		if usages != nil {
			rules = append(rules, config.ClientRule{Name: "c", UIDs: []uint32{meUID}, Keys: []string{"*"}, Usages: usages, Members: members})
		}
		p, err := config.NewPolicy(config.Admins{UIDs: []uint32{meUID}}, rules)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	policies := map[string]*config.Policy{
		"admin only":          policy(nil),
		"client of sign":      policy([]string{UsageSign}),
		"client of tsa":       policy([]string{UsageTSA}),
		"client of member":    policy([]string{UsageSign}, member),
		"client of another":   policy([]string{UsageSign}, "EE/GOV/other"),
		"client of every use": policy([]string{UsageSign, UsageAuth, UsageTSA, UsageAudit}, "*"),
	}
	allowed := map[string]bool{
		"client of sign/sign": true, "client of tsa/tsa": true, "client of member/member": true,
		"client of every use/sign": true, "client of every use/tsa": true, "client of every use/auth": true,
		"client of every use/audit": true, "client of every use/member": true,
	}
	before := d.svc.policy.Load()
	defer d.svc.SetPolicy(before)
	for pname, p := range policies {
		for kname, id := range keys {
			t.Run(pname+"/"+kname, func(t *testing.T) {
				d.svc.SetPolicy(p)
				_, uerr := d.client.SignerClient.Sign(testCtx(t), signReq(id, sha("u")))
				unary := status.Code(uerr)
				var streamed codes.Code
				s, err := d.client.SignerClient.SignStream(testCtx(t))
				if err != nil {
					t.Fatal(err)
				}
				// io.EOF from Send: the daemon has ended the stream already
				// (a refusal at admission can beat the send); Recv gives its
				// status.
				if err := s.Send(&signerv1.SignStreamRequest{Calls: []*signerv1.StreamedSign{{Id: 1, Request: signReq(id, sha("s"))}}}); err != nil && !errors.Is(err, io.EOF) {
					t.Fatal(err)
				}
				resp, err := s.Recv()
				switch {
				case err != nil:
					streamed = status.Code(err)
				case len(resp.GetResults()) != 1:
					t.Fatalf("stream results %v", resp.GetResults())
				case resp.GetResults()[0].GetError() != nil:
					streamed = codes.Code(resp.GetResults()[0].GetError().GetCode())
				}
				_ = s.CloseSend()
				if unary != streamed {
					t.Fatalf("Sign: %v (%v); SignStream call: %v", unary, uerr, streamed)
				}
				want := codes.PermissionDenied
				if allowed[pname+"/"+kname] {
					want = codes.OK
				}
				if unary != want {
					t.Fatalf("Sign and SignStream: %v (%v); want %v", unary, uerr, want)
				}
			})
		}
	}
}

// TestSeamAttackPolicyReloadRacesSignatures: a policy reload (SIGHUP)
// while a feature signs for a peer and clients call Sign: each signature
// is decided under one policy or the other, never half of each (-race),
// every signature out has its ok line, and once the denying policy is in
// force no further signature leaves.
func TestSeamAttackPolicyReloadRacesSignatures(t *testing.T) {
	d := seamDaemon(t)
	ctx := testCtx(t)
	k := d.genKey(t, "reload", "EC-P256", signerv1.KeyUsage_KEY_USAGE_TSA).GetId()
	allow, deny := d.svc.policy.Load(), testPolicy(t) // tsa allowed; sign only
	p := me()
	s, err := d.svc.KeySigner(ctx, Actor{Op: "feature.reload_race", Peer: &p}, k, UsageTSA)
	if err != nil {
		t.Fatal(err)
	}
	const workers, each = 4, 25
	var wg sync.WaitGroup
	var mu sync.Mutex
	signed := map[string]bool{}
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				if i%2 == w%2 {
					d.svc.SetPolicy(deny)
				} else {
					d.svc.SetPolicy(allow)
				}
				digest := sha(fmt.Sprintf("race %d %d", w, i))
				sig, err := s.Sign(nil, digest, crypto.SHA256)
				switch {
				case err == nil:
					mu.Lock()
					signed[hexOf(digest)] = true
					mu.Unlock()
				case errors.Is(err, ErrPermission) && sig == nil:
				default:
					t.Errorf("Sign = %x, %v; want a signature or ErrPermission", sig, err)
				}
				_, err = d.client.SignerClient.Sign(ctx, signReq(k, digest))
				if c := status.Code(err); c != codes.OK && c != codes.PermissionDenied {
					t.Errorf("Sign call: %v", err)
				}
			}
		}()
	}
	wg.Wait()
	d.svc.SetPolicy(deny)
	if sig, err := s.Sign(nil, sha("after"), crypto.SHA256); sig != nil || !errors.Is(err, ErrPermission) {
		t.Fatalf("under the denying policy: %x, %v; want ErrPermission", sig, err)
	}
	lined := map[string]bool{}
	for _, l := range auditLines(t, d, "feature.reload_race") {
		if l.Result == "ok" {
			lined[l.Digest] = true
		}
	}
	for dg := range signed {
		if !lined[dg] {
			t.Errorf("signature of %s out without its ok line", dg)
		}
	}
}

// TestSeamAttackRevokedAfterKeySigner: a signer made while the key's
// certificate chain was good signs no more once OCSP says its issuing CA
// is revoked, and CertificatesOf no longer offers the certificate.
func TestSeamAttackRevokedAfterKeySigner(t *testing.T) {
	ca := devca.New(t)
	ca.StartOCSPResponder(t, 60)
	rr := newRootResponder(t, ca)
	d := newDaemon(t, func(p *daemonParams) {
		p.OCSP = fmt.Sprintf("enabled = true\nresponders = [{issuer = %q, urls = [%q]}]", ca.RootPEM, rr.srv.URL)
	})
	ctx := testCtx(t)
	k, _, sum := d.activeSignCert(t, ca, "agency", member)
	interSum := sha256.Sum256(ca.Intermediate.Raw)
	if st := d.refreshOCSP(t, sum); !st.GetUsable() {
		t.Fatalf("leaf: %+v", st)
	}
	if st := d.refreshOCSP(t, hexOf(interSum[:])); st.GetStatus() != "good" {
		t.Fatalf("intermediate: %+v", st)
	}
	p := me()
	s, err := d.svc.KeySigner(ctx, Actor{Op: "feature.revoked", Peer: &p}, k.GetId(), UsageSign)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Sign(nil, sha("before"), crypto.SHA256); err != nil {
		t.Fatalf("before the revocation: %v", err)
	}
	if certs, err := d.svc.CertificatesOf(ctx, UsageSign); err != nil || len(certs) != 1 {
		t.Fatalf("CertificatesOf before the revocation: %d, %v; want 1", len(certs), err)
	}
	rr.status.Store(int64(xocsp.Revoked))
	if st := d.refreshOCSP(t, hexOf(interSum[:])); st.GetStatus() != "revoked" {
		t.Fatalf("intermediate after revocation: %+v", st)
	}
	sig, err := s.Sign(nil, sha("after"), crypto.SHA256)
	if sig != nil || !errors.Is(err, ErrPrecondition) || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("after the revocation: %x, %v; want no signature and ErrPrecondition naming the revocation", sig, err)
	}
	if lines := auditLines(t, d, "feature.revoked"); len(lines) != 2 || lines[1].Result == "ok" {
		t.Fatalf("audit lines %+v; want an ok line and a refusal", lines)
	}
	if certs, err := d.svc.CertificatesOf(ctx, UsageSign); err != nil || len(certs) != 0 {
		t.Fatalf("CertificatesOf after the revocation: %d, %v; want none", len(certs), err)
	}
}
