package signer

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/hsmsigner/hsmsigner/hsm/sigalg"
	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/softhsm-test/devca"
)

const member = "EE/GOV/70000310"

// csrFor makes a request for key k and checks it with openssl req -verify.
func (d *testDaemon) csrFor(t testing.TB, k *signerv1.Key, subject, member string) *x509.CertificateRequest {
	t.Helper()
	r, err := d.client.GenerateCSR(testCtx(t), &signerv1.GenerateCSRRequest{KeyId: k.GetId(), Subject: subject, Member: member, DnsNames: []string{"ss1.example.test"}})
	if err != nil {
		t.Fatalf("GenerateCSR: %v", err)
	}
	p := filepath.Join(t.TempDir(), "req.pem")
	if err := os.WriteFile(p, r.GetCsr(), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("openssl", "req", "-verify", "-noout", "-in", p).CombinedOutput(); err != nil {
		t.Fatalf("openssl req -verify: %v\n%s", err, out)
	}
	b, _ := pem.Decode(r.GetCsr())
	csr, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return csr
}

func (d *testDaemon) issue(t testing.TB, ca *devca.CA, csr *x509.CertificateRequest, usage string, v devca.Validity) *x509.Certificate {
	t.Helper()
	c, err := ca.Sign(testCtx(t), csr.Raw, usage, v)
	if err != nil {
		t.Fatalf("dev CA: %v", err)
	}
	return c
}

func pemOf(certs ...*x509.Certificate) []byte {
	var b []byte
	for _, c := range certs {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return b
}

// TestOfficerWorkflow is the officer's walkthrough end to end: key, CSR,
// the dev CA signs it, import, register, activate, GetSigningInfo, sign,
// and openssl verifies the signature against the certificate and the chain.
func TestOfficerWorkflow(t *testing.T) {
	d := newDaemon(t)
	ca := devca.New(t)
	k := d.genKey(t, "member-sign", "RSA2048", signerv1.KeyUsage_KEY_USAGE_SIGN)
	csr := d.csrFor(t, k, "CN=Agency,O=Agency,C=EE,serialNumber=70000310", member)
	if csrs, _ := d.client.ListCSRs(testCtx(t), &signerv1.ListCSRsRequest{}); len(csrs.GetCsrs()) != 1 || csrs.GetCsrs()[0].GetMember() != member {
		t.Fatalf("requests kept: %v", csrs)
	}
	cert := d.issue(t, ca, csr, "sign", devca.Current)

	imported, err := d.client.ImportCert(testCtx(t), &signerv1.ImportCertRequest{Certificate: pemOf(append([]*x509.Certificate{cert}, ca.Chain()...)...)})
	if err != nil {
		t.Fatalf("ImportCert: %v", err)
	}
	if imported.GetKeyId() != k.GetId() || imported.GetMember() != member || imported.GetStatus() != signerv1.CertStatus_CERT_STATUS_SAVED ||
		imported.GetActive() || len(imported.GetChain()) != 2 {
		t.Fatalf("imported %+v", imported)
	}
	if csrs, _ := d.client.ListCSRs(testCtx(t), &signerv1.ListCSRsRequest{}); len(csrs.GetCsrs()) != 0 {
		t.Fatalf("the answered request is still open: %v", csrs)
	}
	// The same certificate again changes nothing.
	again, err := d.client.ImportCert(testCtx(t), &signerv1.ImportCertRequest{Certificate: cert.Raw})
	if err != nil || again.GetSha256() != imported.GetSha256() || len(again.GetChain()) != 2 {
		t.Fatalf("second import: %v, %v", again, err)
	}
	// It is on the token beside its key.
	objs, err := d.svc.tokens[0].tok.Certificates(testCtx(t))
	if err != nil || len(objs) != 1 || hexOf(objs[0].ID) != k.GetId() {
		t.Fatalf("certificate objects on the token: %v, %v", objs, err)
	}
	// openssl checks the chain the daemon returns.
	dir := t.TempDir()
	got, err := d.client.GetCert(testCtx(t), &signerv1.CertRef{Hash: imported.GetSha1()[:10]})
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(got.GetDer())
	var chain []*x509.Certificate
	for _, c := range got.GetChain() {
		cc, _ := x509.ParseCertificate(c)
		chain = append(chain, cc)
	}
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	leafPEM := write("leaf.pem", pemOf(leaf))
	if out, err := exec.Command("openssl", "verify", "-CAfile", write("root.pem", pemOf(chain[1])), "-untrusted", write("int.pem", pemOf(chain[0])), leafPEM).CombinedOutput(); err != nil {
		t.Fatalf("openssl verify: %v\n%s", err, out)
	}

	// Not yet registered and active: no signing info.
	_, err = d.client.GetSigningInfo(testCtx(t), &signerv1.GetSigningInfoRequest{Member: member})
	wantCode(t, err, codes.FailedPrecondition, "no active sign certificate")
	if _, err := d.client.ActivateCert(testCtx(t), &signerv1.CertRef{Hash: imported.GetSha256()}); err != nil {
		t.Fatal(err)
	}
	_, err = d.client.GetSigningInfo(testCtx(t), &signerv1.GetSigningInfoRequest{Member: member})
	wantCode(t, err, codes.FailedPrecondition, "no registered")
	for _, st := range []signerv1.CertStatus{signerv1.CertStatus_CERT_STATUS_REGISTRATION_IN_PROGRESS, signerv1.CertStatus_CERT_STATUS_REGISTERED} {
		if _, err := d.client.SetCertStatus(testCtx(t), &signerv1.SetCertStatusRequest{Hash: imported.GetSha256(), Status: st}); err != nil {
			t.Fatal(err)
		}
	}
	si, err := d.client.GetSigningInfo(testCtx(t), &signerv1.GetSigningInfoRequest{Member: member})
	if err != nil {
		t.Fatalf("GetSigningInfo: %v", err)
	}
	if si.GetKeyId() != k.GetId() || si.GetAlgorithm() != "SHA256withRSA" || len(si.GetChain()) != 2 || si.GetOcspResponse() != nil {
		t.Fatalf("signing info %+v", si)
	}
	// Sign as the security server would, and verify against the
	// certificate with openssl.
	msg := []byte("<SOAP-ENV:Envelope>…</SOAP-ENV:Envelope>")
	alg, _ := sigalg.Parse(si.GetAlgorithm())
	h := alg.Hash.New()
	h.Write(msg)
	resp, err := d.client.Sign(testCtx(t), &signerv1.SignRequest{Key: &signerv1.SignRequest_KeyId{KeyId: si.GetKeyId()}, Algorithm: si.GetAlgorithm(), Digest: h.Sum(nil)})
	if err != nil {
		t.Fatal(err)
	}
	pubPEM, err := exec.Command("openssl", "x509", "-in", leafPEM, "-pubkey", "-noout").Output()
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("openssl", "dgst", "-sha256", "-verify", write("pub.pem", pubPEM), "-signature", write("sig", resp.GetSignature()), write("msg", msg)).CombinedOutput(); err != nil {
		t.Fatalf("openssl verify of the signature against the certificate: %v\n%s", err, out)
	}
	// Sign by certificate hash too; refused once the certificate is inactive.
	byCert := &signerv1.SignRequest{Key: &signerv1.SignRequest_CertHash{CertHash: imported.GetSha256()}, Algorithm: "SHA256withRSA", Digest: h.Sum(nil)}
	if _, err := d.client.Sign(testCtx(t), byCert); err != nil {
		t.Fatalf("sign by certificate: %v", err)
	}
	if _, err := d.client.DeactivateCert(testCtx(t), &signerv1.CertRef{Hash: imported.GetSha256()}); err != nil {
		t.Fatal(err)
	}
	_, err = d.client.Sign(testCtx(t), byCert)
	wantCode(t, err, codes.FailedPrecondition, "not active")

	// Everything survives a restart.
	d.restart()
	got, err = d.client.GetCert(testCtx(t), &signerv1.CertRef{Hash: imported.GetSha256()})
	if err != nil || got.GetStatus() != signerv1.CertStatus_CERT_STATUS_REGISTERED || got.GetActive() {
		t.Fatalf("after restart: %v, %v", got, err)
	}
}

func TestCSRExtensionsByUsage(t *testing.T) {
	d := newDaemon(t)
	tests := []struct {
		keyAlg string
		usage  signerv1.KeyUsage
		ku     x509.KeyUsage
		eku    []x509.ExtKeyUsage
	}{
		{"EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN, x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment, nil},
		{"RSA2048", signerv1.KeyUsage_KEY_USAGE_AUTH, x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment, nil},
		{"EC-P256", signerv1.KeyUsage_KEY_USAGE_AUTH, x509.KeyUsageDigitalSignature, nil},
		{"EC-P256", signerv1.KeyUsage_KEY_USAGE_TSA, x509.KeyUsageDigitalSignature, []x509.ExtKeyUsage{x509.ExtKeyUsageTimeStamping}},
	}
	ca := devca.New(t)
	for i, tt := range tests {
		t.Run(tt.usage.String()+"-"+tt.keyAlg, func(t *testing.T) {
			k := d.genKey(t, "k"+string(rune('a'+i)), tt.keyAlg, tt.usage)
			csr := d.csrFor(t, k, "CN=ss1,O=Agency,C=EE", "")
			// The dev CA honours the request's profile; the issued
			// certificate shows the extensions asked for.
			cert := d.issue(t, ca, csr, usageString(tt.usage), devca.Current)
			if cert.KeyUsage != tt.ku {
				t.Fatalf("key usage %b, want %b", cert.KeyUsage, tt.ku)
			}
			if tt.eku != nil && (len(cert.ExtKeyUsage) != 1 || cert.ExtKeyUsage[0] != tt.eku[0]) {
				t.Fatalf("EKU %v, want %v", cert.ExtKeyUsage, tt.eku)
			}
			found := false
			for _, e := range csr.Extensions {
				if e.Id.Equal([]int{2, 5, 29, 15}) {
					found = e.Critical
				}
			}
			if !found {
				t.Fatal("the request asks for no critical key usage")
			}
		})
	}
}

func usageString(u signerv1.KeyUsage) string {
	return map[signerv1.KeyUsage]string{signerv1.KeyUsage_KEY_USAGE_SIGN: "sign", signerv1.KeyUsage_KEY_USAGE_AUTH: "auth", signerv1.KeyUsage_KEY_USAGE_TSA: "tsa"}[u]
}

func TestCertBadInput(t *testing.T) {
	d := newDaemon(t)
	ca := devca.New(t)
	signKey := d.genKey(t, "sign", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	csr := d.csrFor(t, signKey, "CN=Agency,O=Agency,C=EE", member)
	expired := d.issue(t, ca, csr, "sign", devca.Expired)
	future := d.issue(t, ca, csr, "sign", devca.NotYetValid)
	wrongUsage := d.issue(t, ca, csr, "tsa", devca.Current)
	// A certificate for a key on no token: a key made outside any HSM.
	outside, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	outsideCSR, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "Other"}}, outside)
	if err != nil {
		t.Fatal(err)
	}
	parsedCSR, _ := x509.ParseCertificateRequest(outsideCSR)
	foreign := d.issue(t, ca, parsedCSR, "sign", devca.Current)
	pkcs8, err := x509.MarshalPKCS8PrivateKey(outside)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8})
	brokenKeyPEM := []byte("-----BEGIN EC PRIVATE KEY-----\nSECRET-not-base64\n-----END EC PRIVATE KEY-----\n")
	secret := pem.EncodeToMemory(&pem.Block{Type: "X", Bytes: pkcs8})[len("-----BEGIN X-----\n"):][:40]

	imp := func(b []byte, force bool) error {
		_, err := d.client.ImportCert(testCtx(t), &signerv1.ImportCertRequest{Certificate: b, Force: force, Member: member})
		return err
	}
	tests := []struct {
		name     string
		call     func() error
		code     codes.Code
		contains string
	}{
		{"malformed DN", func() error {
			_, err := d.client.GenerateCSR(testCtx(t), &signerv1.GenerateCSRRequest{KeyId: signKey.GetId(), Subject: "CN=a,,O=b"})
			return err
		}, codes.InvalidArgument, ""},
		{"unknown DN attribute", func() error {
			_, err := d.client.GenerateCSR(testCtx(t), &signerv1.GenerateCSRRequest{KeyId: signKey.GetId(), Subject: "XX=a"})
			return err
		}, codes.InvalidArgument, "XX"},
		{"garbage bytes", func() error { return imp([]byte("\x30\x03garbage"), false) }, codes.InvalidArgument, "not an X.509 certificate"},
		{"PEM with a private key", func() error { return imp(keyPEM, false) }, codes.InvalidArgument, "private key"},
		{"PEM with a malformed private key", func() error { return imp(brokenKeyPEM, false) }, codes.InvalidArgument, "private key"},
		{"DER private key", func() error { return imp(pkcs8, false) }, codes.InvalidArgument, "private key"},
		{"certificate then a private key", func() error { return imp(append(pemOf(foreign), keyPEM...), false) }, codes.InvalidArgument, "private key"},
		{"expired", func() error { return imp(expired.Raw, false) }, codes.FailedPrecondition, "expired"},
		{"not yet valid", func() error { return imp(future.Raw, false) }, codes.FailedPrecondition, "not valid before"},
		{"wrong usage", func() error { return imp(wrongUsage.Raw, false) }, codes.InvalidArgument, "sign key"},
		{"key on no token", func() error { return imp(foreign.Raw, false) }, codes.FailedPrecondition, "matches no key"},
		{"activate an unknown certificate", func() error {
			_, err := d.client.ActivateCert(testCtx(t), &signerv1.CertRef{Hash: strings.Repeat("ab", 32)})
			return err
		}, codes.NotFound, ""},
		{"member with no certificate", func() error {
			_, err := d.client.GetSigningInfo(testCtx(t), &signerv1.GetSigningInfoRequest{Member: "EE/GOV/none"})
			return err
		}, codes.FailedPrecondition, "no sign certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			wantCode(t, err, tt.code, tt.contains)
			if strings.Contains(err.Error(), "SECRET") || strings.Contains(err.Error(), string(secret)) {
				t.Fatal("the error echoes the key material")
			}
		})
	}
	// An expired certificate is accepted when forced, but never used.
	if err := imp(expired.Raw, true); err != nil {
		t.Fatalf("forced import: %v", err)
	}
	sum := hexSHA256(expired.Raw)
	for _, call := range []func() error{
		func() error { _, err := d.client.ActivateCert(testCtx(t), &signerv1.CertRef{Hash: sum}); return err },
		func() error {
			_, err := d.client.SetCertStatus(testCtx(t), &signerv1.SetCertStatusRequest{Hash: sum, Status: signerv1.CertStatus_CERT_STATUS_REGISTERED})
			return err
		},
	} {
		if err := call(); err != nil {
			t.Fatal(err)
		}
	}
	_, err = d.client.GetSigningInfo(testCtx(t), &signerv1.GetSigningInfoRequest{Member: member})
	wantCode(t, err, codes.FailedPrecondition, "expired")
	// Activating a deleted certificate.
	if _, err := d.client.DeleteCert(testCtx(t), &signerv1.CertRef{Hash: sum}); err != nil {
		t.Fatal(err)
	}
	_, err = d.client.ActivateCert(testCtx(t), &signerv1.CertRef{Hash: sum})
	wantCode(t, err, codes.NotFound, "")
	if objs, _ := d.svc.tokens[0].tok.Certificates(testCtx(t)); len(objs) != 0 {
		t.Fatalf("deleted certificate still on the token: %d objects", len(objs))
	}
}

func TestCSRForKeyNotLoggedIn(t *testing.T) {
	d := newDaemon(t)
	k := d.genKey(t, "k", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	if _, err := d.client.LogoutToken(testCtx(t), &signerv1.LogoutTokenRequest{Token: "t1"}); err != nil {
		t.Fatal(err)
	}
	_, err := d.client.GenerateCSR(testCtx(t), &signerv1.GenerateCSRRequest{KeyId: k.GetId(), Subject: "CN=x,C=EE"})
	wantCode(t, err, codes.FailedPrecondition, "not logged in")
}

// activeRegistered imports cert for member, registers and activates it.
func (d *testDaemon) activeRegistered(t *testing.T, cert *x509.Certificate, member string) string {
	t.Helper()
	c, err := d.client.ImportCert(testCtx(t), &signerv1.ImportCertRequest{Certificate: cert.Raw, Member: member})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.client.SetCertStatus(testCtx(t), &signerv1.SetCertStatusRequest{Hash: c.GetSha256(), Status: signerv1.CertStatus_CERT_STATUS_REGISTERED}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.client.ActivateCert(testCtx(t), &signerv1.CertRef{Hash: c.GetSha256()}); err != nil {
		t.Fatal(err)
	}
	return c.GetSha256()
}

func TestSigningInfoNewestValidWins(t *testing.T) {
	d := newDaemon(t)
	ca := devca.New(t)
	older := d.genKey(t, "older", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	newer := d.genKey(t, "newer", "EC-P384", signerv1.KeyUsage_KEY_USAGE_SIGN)
	d.activeRegistered(t, d.issue(t, ca, d.csrFor(t, older, "CN=A,O=A,C=EE", member), "sign", devca.Current), member)
	d.activeRegistered(t, d.issue(t, ca, d.csrFor(t, newer, "CN=A,O=A,C=EE", member), "sign", devca.Current), member)
	si, err := d.client.GetSigningInfo(testCtx(t), &signerv1.GetSigningInfoRequest{Member: member})
	if err != nil {
		t.Fatal(err)
	}
	if si.GetKeyId() != newer.GetId() || si.GetAlgorithm() != "SHA384withECDSA" {
		t.Fatalf("signing info names key %s (%s); want the newer %s", si.GetKeyId(), si.GetAlgorithm(), newer.GetId())
	}
}

func TestDeleteKeyWithCertificates(t *testing.T) {
	d := newDaemon(t)
	ca := devca.New(t)
	k := d.genKey(t, "k", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	sum := d.activeRegistered(t, d.issue(t, ca, d.csrFor(t, k, "CN=A,C=EE", member), "sign", devca.Current), member)
	d.csrFor(t, k, "CN=B,C=EE", member) // an open request too
	_, err := d.client.DeleteKey(testCtx(t), &signerv1.DeleteKeyRequest{KeyId: k.GetId()})
	wantCode(t, err, codes.FailedPrecondition, "certificate")
	if _, err := d.client.DeleteKey(testCtx(t), &signerv1.DeleteKeyRequest{KeyId: k.GetId(), Force: true}); err != nil {
		t.Fatalf("forced delete: %v", err)
	}
	_, err = d.client.GetCert(testCtx(t), &signerv1.CertRef{Hash: sum})
	wantCode(t, err, codes.NotFound, "")
	if csrs, _ := d.client.ListCSRs(testCtx(t), &signerv1.ListCSRsRequest{}); len(csrs.GetCsrs()) != 0 {
		t.Fatal("the key's requests stayed")
	}
	if objs, _ := d.svc.tokens[0].tok.Certificates(testCtx(t)); len(objs) != 0 {
		t.Fatal("the key's certificate stayed on the token")
	}
	if _, err := d.svc.store.GetKey(testCtx(t), d.svc.tokens[0].tok.Serial(), k.GetId()); err == nil {
		t.Fatal("the key's record stayed")
	}
}

// TestMemberPolicy: a client allowed member A may get A's signing info and
// sign with A's key, and with no other member's.
func TestMemberPolicy(t *testing.T) {
	const memberA, memberB = "EE/GOV/A", "EE/GOV/B"
	d := newDaemon(t, func(p *daemonParams) { p.Members = `"` + memberA + `"` })
	ca := devca.New(t)
	ka := d.genKey(t, "a", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	kb := d.genKey(t, "b", "EC-P256", signerv1.KeyUsage_KEY_USAGE_SIGN)
	d.activeRegistered(t, d.issue(t, ca, d.csrFor(t, ka, "CN=A,C=EE", memberA), "sign", devca.Current), memberA)
	d.activeRegistered(t, d.issue(t, ca, d.csrFor(t, kb, "CN=B,C=EE", memberB), "sign", devca.Current), memberB)
	si, err := d.client.GetSigningInfo(testCtx(t), &signerv1.GetSigningInfoRequest{Member: memberA})
	if err != nil || si.GetKeyId() != ka.GetId() {
		t.Fatalf("member A: %v, %v", si, err)
	}
	sign := func(id string) error {
		_, err := d.client.Sign(testCtx(t), &signerv1.SignRequest{Key: &signerv1.SignRequest_KeyId{KeyId: id}, Algorithm: "ES256", Digest: sha("x")})
		return err
	}
	if err := sign(ka.GetId()); err != nil {
		t.Fatalf("A's key: %v", err)
	}
	wantCode(t, sign(kb.GetId()), codes.PermissionDenied, memberB)
	_, err = d.client.GetSigningInfo(testCtx(t), &signerv1.GetSigningInfoRequest{Member: memberB})
	wantCode(t, err, codes.PermissionDenied, memberB)
}
