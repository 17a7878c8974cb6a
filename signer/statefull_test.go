package signer

import (
	"crypto/x509"
	"encoding/hex"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/state"
	softhsmtest "github.com/hsmsigner/hsmsigner/softhsm-test"
	"github.com/hsmsigner/hsmsigner/softhsm-test/devca"
	"github.com/hsmsigner/hsmsigner/softhsm-test/diskfull"
)

// newDaemonOnSmallDisk starts a daemon whose state directory is a tmpfs
// of 1 MiB, and returns it with a function that fills that disk (until
// ENOSPC; the returned function gives the room back).
func newDaemonOnSmallDisk(t *testing.T, edit ...func(*daemonParams)) (d *testDaemon, fill func() (unfill func())) {
	t.Helper()
	dir := newDaemonDir(t)
	stateDir := filepath.Join(dir, "state")
	diskfull.Mount(t, stateDir, 1<<20)
	d = newDaemonOn(t, softhsmtest.New(t), dir, edit...)
	filler := filepath.Join(stateDir, "filler")
	return d, func() func() { return diskfull.Fill(t, filler) }
}

// bigChain issues k a sign certificate of member and returns it with a
// chain of 40 KiB behind it: the root issues itself, so repeating it
// keeps the chain valid while its record needs pages of its own.
func bigChain(t *testing.T, d *testDaemon, ca *devca.CA, k *signerv1.Key) (*x509.Certificate, []*x509.Certificate) {
	t.Helper()
	cert := d.issue(t, ca, d.csrFor(t, k, "CN=Agency,O=Agency,C=EE", member), "sign", devca.Current)
	chain := append([]*x509.Certificate{cert}, ca.Chain()...)
	root := ca.Chain()[len(ca.Chain())-1]
	for len(pemOf(chain...)) < 40<<10 {
		chain = append(chain, root)
	}
	return cert, chain
}

// TestImportCertOnAFullStateDisk: a certificate import whose record
// cannot be written (its chain needs pages the full disk does not have)
// is refused UNAVAILABLE, naming the state file, and leaves nothing
// half-done: the token, read through PKCS#11, holds no certificate
// object; there is no record; the request it answers stays open and the
// key's record is as it was. With room again the same import is kept whole.
func TestImportCertOnAFullStateDisk(t *testing.T) {
	d, fill := newDaemonOnSmallDisk(t)
	ca := devca.New(t)
	k := d.genKey(t, "k", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	cert, chain := bigChain(t, d, ca, k)
	keyBefore, err := d.svc.store.GetKey(testCtx(t), d.svc.tokens[0].tok.Serial(), k.GetId())
	if err != nil {
		t.Fatal(err)
	}
	unfill := fill()
	_, err = d.client.ImportCert(testCtx(t), &signerv1.ImportCertRequest{Certificate: pemOf(chain...)})
	wantCode(t, err, codes.Unavailable, "state file cannot be written")
	if !strings.Contains(err.Error(), "removed from the token again") {
		t.Fatalf("ImportCert on a full state disk: %v; want it to say the certificate was removed from the token again", err)
	}
	objs, err := d.svc.tokens[0].tok.Certificates(testCtx(t))
	if err != nil || len(objs) != 0 {
		t.Fatalf("certificate objects on the token after the refused import: %d, %v; want none", len(objs), err)
	}
	sum := hexSHA256(cert.Raw)
	if _, err := d.svc.store.GetCert(testCtx(t), sum); !errors.Is(err, state.ErrNotFound) {
		t.Fatalf("the refused certificate's record: %v; want ErrNotFound", err)
	}
	if csrs, err := d.client.ListCSRs(testCtx(t), &signerv1.ListCSRsRequest{}); err != nil || len(csrs.GetCsrs()) != 1 {
		t.Fatalf("open requests after the refused import: %v, %v; want the one it answers", csrs, err)
	}
	if kr, err := d.svc.store.GetKey(testCtx(t), d.svc.tokens[0].tok.Serial(), k.GetId()); err != nil || kr.Member != keyBefore.Member || !kr.UpdatedAt.Equal(keyBefore.UpdatedAt) {
		t.Fatalf("the key's record after the refused import: %+v, %v; want it as before: %+v", kr, err, keyBefore)
	}

	unfill()
	imp, err := d.client.ImportCert(testCtx(t), &signerv1.ImportCertRequest{Certificate: pemOf(chain...)})
	if err != nil {
		t.Fatalf("the same import with room again: %v", err)
	}
	if imp.GetSha256() != sum || imp.GetMember() != member {
		t.Fatalf("imported %+v", imp)
	}
	if objs, err := d.svc.tokens[0].tok.Certificates(testCtx(t)); err != nil || len(objs) != 1 {
		t.Fatalf("certificate objects on the token after the import: %d, %v; want 1", len(objs), err)
	}
}

// TestImportCertOnAFullStateDiskKeepsAnObjectItFound: a certificate
// object already on the token before the import (put there by another
// tool, such as X-Road's own signer) is not the import's to remove when
// its record cannot be written: it stays, and the error says so.
func TestImportCertOnAFullStateDiskKeepsAnObjectItFound(t *testing.T) {
	d, fill := newDaemonOnSmallDisk(t)
	ca := devca.New(t)
	k := d.genKey(t, "k", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	cert, chain := bigChain(t, d, ca, k)
	tok := d.svc.tokens[0].tok
	id, err := hex.DecodeString(k.GetId())
	if err != nil {
		t.Fatal(err)
	}
	if created, err := tok.StoreCertificate(testCtx(t), id, "put there by another tool", cert); err != nil || !created {
		t.Fatalf("storing the certificate object beforehand: created %t, %v", created, err)
	}
	unfill := fill()
	_, err = d.client.ImportCert(testCtx(t), &signerv1.ImportCertRequest{Certificate: pemOf(chain...)})
	wantCode(t, err, codes.Unavailable, "state file cannot be written")
	if !strings.Contains(err.Error(), "left there") {
		t.Fatalf("ImportCert on a full state disk: %v; want it to say the object already on the token is left there", err)
	}
	objs, err := tok.Certificates(testCtx(t))
	if err != nil || len(objs) != 1 {
		t.Fatalf("certificate objects on the token after the refused import: %d, %v; want the one that was there", len(objs), err)
	}
	unfill()
	if _, err := d.client.ImportCert(testCtx(t), &signerv1.ImportCertRequest{Certificate: pemOf(chain...)}); err != nil {
		t.Fatalf("the same import with room again: %v", err)
	}
}
