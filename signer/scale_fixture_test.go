package signer

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/state"
	softhsmtest "github.com/hsmsigner/hsmsigner/softhsm-test"
)

// rawP11 is a logged-in session on a SoftHSM token opened straight
// through PKCS#11, beside the daemon's hsm package: the fixture makes keys
// with it, and the benchmarks measure the raw counterpart of a call with
// it. A library the daemon has initialised already is shared, and left
// initialised on close.
type rawP11 struct {
	ctx  *pkcs11.Ctx
	slot uint
	s    pkcs11.SessionHandle
	own  bool // this rawP11 initialised the library and finalizes it
}

// openRawP11 opens a read-write session on soft and logs the user in
// (a login the daemon shares when it runs in this process: PKCS#11
// logins are the application's).
func openRawP11(tb testing.TB, soft *softhsmtest.Token) *rawP11 {
	tb.Helper()
	ctx := pkcs11.New(soft.ModulePath)
	if ctx == nil {
		tb.Fatal("cannot load the SoftHSM library")
	}
	r := &rawP11{ctx: ctx, own: true}
	if err := ctx.Initialize(); errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
		r.own = false
	} else if err != nil {
		tb.Fatal(err)
	}
	slots, err := ctx.GetSlotList(true)
	if err != nil {
		tb.Fatal(err)
	}
	found := false
	for _, s := range slots {
		if ti, err := ctx.GetTokenInfo(s); err == nil && strings.TrimSpace(ti.SerialNumber) == soft.Serial {
			r.slot, found = s, true
		}
	}
	if !found {
		tb.Fatalf("token %s not found", soft.Serial)
	}
	if r.s, err = ctx.OpenSession(r.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION); err != nil {
		tb.Fatal(err)
	}
	if err := ctx.Login(r.s, pkcs11.CKU_USER, string(soft.UserPIN)); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_USER_ALREADY_LOGGED_IN)) {
		tb.Fatal(err)
	}
	return r
}

// close closes the session and, when this rawP11 initialised the
// library, finalizes and unloads it.
func (r *rawP11) close() {
	_ = r.ctx.CloseSession(r.s)
	if r.own {
		_ = r.ctx.Finalize()
		r.ctx.Destroy()
	}
}

// ulongArray encodes CK_ULONGs in host byte order.
func rawULongs(vs ...uint) []byte {
	var out []byte
	for _, v := range vs {
		out = append(out, pkcs11.NewAttribute(0, v).Value...)
	}
	return out
}

// genEC makes an EC P-256 key pair with the template hsm.GenerateKey
// uses (so the daemon takes it as its own) and returns its public key.
func (r *rawP11) genEC(id []byte, label string) (*ecdsa.PublicKey, error) {
	params, _ := asn1.Marshal(asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7})
	common := func(class uint) []*pkcs11.Attribute {
		return []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, class),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_ID, id),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		}
	}
	pub := append(common(pkcs11.CKO_PUBLIC_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
		pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, params),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_MODIFIABLE, false),
	)
	priv := append(common(pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN_RECOVER, false),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
		pkcs11.NewAttribute(pkcs11.CKA_MODIFIABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_COPYABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_ALLOWED_MECHANISMS, rawULongs(pkcs11.CKM_ECDSA)),
	)
	pubH, _, err := r.ctx.GenerateKeyPair(r.s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_EC_KEY_PAIR_GEN, nil)}, pub, priv)
	if err != nil {
		return nil, fmt.Errorf("C_GenerateKeyPair: %w", err)
	}
	attrs, err := r.ctx.GetAttributeValue(r.s, pubH, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil)})
	if err != nil {
		return nil, fmt.Errorf("C_GetAttributeValue: %w", err)
	}
	var point []byte
	if _, err := asn1.Unmarshal(attrs[0].Value, &point); err != nil {
		return nil, fmt.Errorf("CKA_EC_POINT: %w", err)
	}
	return ecdsa.ParseUncompressedPublicKey(elliptic.P256(), point)
}

// storeCert puts a certificate object on the token, as
// hsm.Token.StoreCertificate does.
func (r *rawP11) storeCert(id []byte, label string, cert *x509.Certificate) error {
	serial, err := asn1.Marshal(cert.SerialNumber)
	if err != nil {
		return err
	}
	_, err = r.ctx.CreateObject(r.s, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_CERTIFICATE),
		pkcs11.NewAttribute(pkcs11.CKA_CERTIFICATE_TYPE, pkcs11.CKC_X_509),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),
		pkcs11.NewAttribute(pkcs11.CKA_MODIFIABLE, true),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_SUBJECT, cert.RawSubject),
		pkcs11.NewAttribute(pkcs11.CKA_ISSUER, cert.RawIssuer),
		pkcs11.NewAttribute(pkcs11.CKA_SERIAL_NUMBER, serial),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE, cert.Raw),
	})
	if err != nil {
		return fmt.Errorf("C_CreateObject: %w", err)
	}
	return nil
}

// findAll returns the handles of every object matching tmpl.
func (r *rawP11) findAll(tmpl []*pkcs11.Attribute) ([]pkcs11.ObjectHandle, error) {
	if err := r.ctx.FindObjectsInit(r.s, tmpl); err != nil {
		return nil, err
	}
	var out []pkcs11.ObjectHandle
	for {
		hs, _, err := r.ctx.FindObjects(r.s, 256)
		if err != nil {
			_ = r.ctx.FindObjectsFinal(r.s)
			return nil, err
		}
		if len(hs) == 0 {
			break
		}
		out = append(out, hs...)
	}
	return out, r.ctx.FindObjectsFinal(r.s)
}

// listKeys is the raw counterpart of listing: one search per key class,
// and the attributes ListKeys shows read from each key object with one
// C_GetAttributeValue. It returns the number of private keys.
func (r *rawP11) listKeys() (int, error) {
	privs, err := r.findAll([]*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY)})
	if err != nil {
		return 0, err
	}
	q := []uint{pkcs11.CKA_ID, pkcs11.CKA_LABEL, pkcs11.CKA_KEY_TYPE, pkcs11.CKA_PRIVATE,
		pkcs11.CKA_SENSITIVE, pkcs11.CKA_EXTRACTABLE, pkcs11.CKA_ALWAYS_SENSITIVE, pkcs11.CKA_NEVER_EXTRACTABLE,
		pkcs11.CKA_SIGN, pkcs11.CKA_DECRYPT, pkcs11.CKA_UNWRAP, pkcs11.CKA_DERIVE, pkcs11.CKA_SIGN_RECOVER,
		pkcs11.CKA_MODIFIABLE, pkcs11.CKA_COPYABLE, pkcs11.CKA_ALLOWED_MECHANISMS}
	for _, h := range privs {
		tmpl := make([]*pkcs11.Attribute, len(q))
		for i, t := range q {
			tmpl[i] = pkcs11.NewAttribute(t, nil)
		}
		if _, err := r.ctx.GetAttributeValue(r.s, h, tmpl); err != nil {
			return 0, err
		}
	}
	pubs, err := r.findAll([]*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY)})
	if err != nil {
		return 0, err
	}
	for _, h := range pubs {
		if _, err := r.ctx.GetAttributeValue(r.s, h, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_ID, nil), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, nil),
			pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, nil), pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil),
		}); err != nil {
			return 0, err
		}
	}
	return len(privs), nil
}

// signWith signs digest with the private key whose CKA_ID is id, looking
// its handle up in handles first (filled on first use).
func (r *rawP11) signWith(handles map[string]pkcs11.ObjectHandle, id, digest []byte) ([]byte, error) {
	h, ok := handles[string(id)]
	if !ok {
		hs, err := r.findAll([]*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_ID, id),
		})
		if err != nil {
			return nil, err
		}
		if len(hs) != 1 {
			return nil, fmt.Errorf("%d private keys with id %x", len(hs), id)
		}
		h = hs[0]
		handles[string(id)] = h
	}
	if err := r.ctx.SignInit(r.s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)}, h); err != nil {
		return nil, err
	}
	return r.ctx.Sign(r.s, digest)
}

// scaleFixture is one SoftHSM token with n EC P-256 sign keys, each with
// an active, registered certificate of its own member, recorded in the
// state as signerctl would have left them; grow adds keys with the daemon
// stopped, and start serves it.
type scaleFixture struct {
	soft    *softhsmtest.Token
	dir     string
	d       *testDaemon
	ca      *ecdsa.PrivateKey
	caCert  *x509.Certificate
	keyIDs  []string // hex
	members []string // members[i] is the member of keyIDs[i]
}

func newScaleFixture(tb testing.TB) *scaleFixture {
	tb.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Scale CA", Country: []string{"EE"}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &caKey.PublicKey, caKey)
	if err != nil {
		tb.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	return &scaleFixture{soft: softhsmtest.New(tb), dir: newDaemonDir(tb), ca: caKey, caCert: caCert}
}

// memberOf names the member of the fixture's i-th key.
func memberOf(i int) string { return fmt.Sprintf("EE/GOV/%08d", i) }

// grow stops the daemon, if it runs, and adds keys until there are n:
// the key pair and its certificate object on the token through raw
// PKCS#11, the key and certificate records in the state in one commit.
func (f *scaleFixture) grow(tb testing.TB, n int) {
	tb.Helper()
	if f.d != nil {
		f.d.stop()
		f.d = nil
	}
	if n <= len(f.keyIDs) {
		return
	}
	r := openRawP11(tb, f.soft)
	defer r.close()
	now := time.Now().UTC()
	var keys []state.KeyRecord
	var certs []state.CertRecord
	for i := len(f.keyIDs); i < n; i++ {
		id := sha256.Sum256(fmt.Appendf(nil, "%s/%d", f.soft.Serial, i))
		label := fmt.Sprintf("member-%02d", i)
		pub, err := r.genEC(id[:16], label)
		if err != nil {
			tb.Fatal(err)
		}
		member := memberOf(i)
		cert := f.issue(tb, pub, member, int64(i+2))
		if err := r.storeCert(id[:16], label, cert); err != nil {
			tb.Fatal(err)
		}
		idHex := hex.EncodeToString(id[:16])
		keys = append(keys, state.KeyRecord{Token: f.soft.Serial, ID: idHex, Label: label, Usage: state.UsageSign, Spec: "EC-P256", Member: member, CreatedAt: now})
		certs = append(certs, state.CertRecord{DER: cert.Raw, Chain: [][]byte{f.caCert.Raw}, Token: f.soft.Serial, KeyID: idHex, Member: member,
			Status: state.StatusRegistered, Active: true, NotBefore: cert.NotBefore, NotAfter: cert.NotAfter})
		f.keyIDs = append(f.keyIDs, idHex)
		f.members = append(f.members, member)
	}
	ctx := context.Background()
	st, err := state.Open(ctx, filepath.Join(f.dir, "state", StateFile))
	if err != nil {
		tb.Fatal(err)
	}
	defer st.Close()
	err = st.Update(ctx, func(tx *state.Tx) error {
		for _, k := range keys {
			if err := tx.CreateKey(k); err != nil {
				return err
			}
		}
		for _, c := range certs {
			if err := tx.PutCert(c); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
}

// issue makes a sign certificate for pub, issued by the fixture's CA.
func (f *scaleFixture) issue(tb testing.TB, pub *ecdsa.PublicKey, member string, serial int64) *x509.Certificate {
	tb.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: member, Organization: []string{"Agency"}, Country: []string{"EE"}, SerialNumber: member},
		NotBefore:    time.Now().Add(-time.Hour), NotAfter: time.Now().Add(300 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, f.caCert, pub, f.ca)
	if err != nil {
		tb.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	return cert
}

// start starts the daemon on the fixture's token and state, and returns
// how long the start took (open the state and the audit log, load the
// module, find the token, log in, reconcile).
func (f *scaleFixture) start(tb testing.TB) time.Duration {
	tb.Helper()
	if f.d != nil {
		f.d.stop()
	}
	t0 := time.Now()
	f.d = newDaemonOn(tb, f.soft, f.dir)
	return time.Since(t0)
}

// listKeys lists the keys through the daemon's socket.
func (f *scaleFixture) listKeys(ctx context.Context) (*signerv1.ListKeysResponse, error) {
	return f.d.client.ListKeys(ctx, &signerv1.ListKeysRequest{})
}
