package xroad

import (
	"crypto/rand"
	"crypto/sha1"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/config"
	"github.com/hsmsigner/hsmsigner/signer/xroad/xroadpb"
)

// setPolicy puts a policy in force on the rig: admins by uid, and client
// rules.
func (r *rig) setPolicy(t *testing.T, admins []uint32, clients ...config.ClientRule) {
	t.Helper()
	p, err := config.NewPolicy(config.Admins{UIDs: admins}, clients)
	if err != nil {
		t.Fatal(err)
	}
	r.svc.SetPolicy(p)
}

// me is this process's uid, the caller of every connection of the tests.
func me() uint32 { return uint32(os.Getuid()) }

// wantCoded checks that err is X-Road's error with fault code fault.
func wantCoded(t *testing.T, err error, fault string) {
	t.Helper()
	ce := codedOf(err)
	if status.Code(err) != codes.Internal || ce == nil || ce.GetFaultCode() != fault || ce.GetFaultString() == "" {
		t.Fatalf("got %v (%v), want INTERNAL with CodedExceptionProto %s", err, ce, fault)
	}
}

// TestXRoadHandshakeIsBounded: connections that never send a TLS
// ClientHello are closed by the server within the handshake timeout, not
// held (a goroutine and a descriptor each) for gRPC's two minutes.
func TestXRoadHandshakeIsBounded(t *testing.T) {
	r := newRig(t, rigOptions{})
	const n = 20
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", r.addr)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			// Silent: the server must give up and close.
			c.SetReadDeadline(time.Now().Add(20 * time.Second))
			if _, err := c.Read(make([]byte, 1)); err == nil {
				errs <- nil
			} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("a silent connection: %v", err)
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Fatalf("silent connections were held %v, want at most 15s", d)
	}
}

// TestXRoadClientCertMustBeTheKeystores: the client certificate must be
// one of the keystore's certificates itself; a certificate that chains
// to it (signed with the keystore's key) is not one, nor an expired copy.
func TestXRoadClientCertMustBeTheKeystores(t *testing.T) {
	r := newRig(t, rigOptions{})
	ca := r.ks.cert.Leaf
	if ca == nil {
		var err error
		if ca, err = x509.ParseCertificate(r.ks.cert.Certificate[0]); err != nil {
			t.Fatal(err)
		}
	}
	leaf := func(tmpl *x509.Certificate) tls.Certificate {
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, ca.PublicKey, r.ks.cert.PrivateKey)
		if err != nil {
			t.Fatal(err)
		}
		return tls.Certificate{Certificate: [][]byte{der, ca.Raw}, PrivateKey: r.ks.cert.PrivateKey}
	}
	issued := leaf(&x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "not the keystore's"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	tc := &tls.Config{Certificates: []tls.Certificate{issued}, RootCAs: r.ks.pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
	_, err := xroadpb.NewTokenServiceClient(r.xroadConn(t, tc)).GetHSMOperationalInfo(ctxT(t), &xroadpb.Empty{})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("a certificate issued with the keystore's key: %v, want no TLS session (UNAVAILABLE)", err)
	}
	// TLS below 1.2 is refused.
	old := &tls.Config{Certificates: []tls.Certificate{r.ks.cert}, RootCAs: r.ks.pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}
	if _, err := xroadpb.NewTokenServiceClient(r.xroadConn(t, old)).GetHSMOperationalInfo(ctxT(t), &xroadpb.Empty{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("TLS 1.1: %v, want no TLS session", err)
	}
	// The keystore's own certificate still works.
	if _, err := xroadpb.NewTokenServiceClient(r.xroadConn(t, nil)).GetHSMOperationalInfo(ctxT(t), &xroadpb.Empty{}); err != nil {
		t.Fatalf("the keystore's certificate: %v", err)
	}
}

// authKeyFile makes X-Road's software token key file for GetAuthKey,
// under PIN pin; it returns the rig option that serves it.
func authKeyFile(t *testing.T, pin string) rigOptions {
	t.Helper()
	dir := t.TempDir()
	p12 := filepath.Join(dir, "6a1f2ab54e3c0d1e9f8a7b6c5d4e3f2a1b0c9d8e.p12")
	key, crt := filepath.Join(dir, "auth.key"), filepath.Join(dir, "auth.crt")
	for _, args := range [][]string{
		{"req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", crt, "-subj", "/CN=ss1/O=Agency/C=EE", "-days", "30"},
		{"pkcs12", "-export", "-inkey", key, "-in", crt, "-name", "auth", "-passout", "pass:" + pin, "-out", p12},
	} {
		if out, err := exec.Command("openssl", args...).CombinedOutput(); err != nil {
			t.Fatalf("openssl %v: %v\n%s", args, err, out)
		}
	}
	pinFile := filepath.Join(dir, "softtoken.pin")
	os.WriteFile(pinFile, []byte(pin+"\n"), 0o600)
	return rigOptions{extra: "auth_key_file = \"" + p12 + "\"\nauth_key_password = \"file:" + pinFile + "\""}
}

// TestXRoadGetAuthKeyNeedsAuthUsage: GetAuthKey hands out the software
// token's PIN, so a client rule must grant the usage auth; a client that
// may only sign (with some member's key) gets Signer.AccessDenied, and
// the refusal is audited without the PIN.
func TestXRoadGetAuthKeyNeedsAuthUsage(t *testing.T) {
	const pin = "soft-token-pin-9431"
	r := newRig(t, authKeyFile(t, pin))
	keys := xroadpb.NewKeyServiceClient(r.xroadConn(t, nil))
	cases := []struct {
		name   string
		usages []string
		fault  string
	}{
		{"client for sign only", []string{"sign"}, "Signer.AccessDenied"},
		{"client for sign and auth", []string{"sign", "auth"}, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r.setPolicy(t, nil, config.ClientRule{Name: "xroad", UIDs: []uint32{me()}, Keys: []string{"*"}, Usages: c.usages, Members: []string{"EE/GOV/70000310"}})
			ak, err := keys.GetAuthKey(ctxT(t), &xroadpb.GetAuthKeyReq{})
			if c.fault != "" {
				wantCoded(t, err, c.fault)
				if ak.GetPassword() != "" || strings.Contains(err.Error(), pin) {
					t.Fatal("the refusal gave out the PIN")
				}
				return
			}
			if err != nil || ak.GetPassword() != pin {
				t.Fatalf("GetAuthKey: %v", err)
			}
		})
	}
	audit, _ := os.ReadFile(filepath.Join(r.dir, "audit.jsonl"))
	if strings.Contains(string(audit), pin) || !strings.Contains(string(audit), "GetAuthKey") {
		t.Fatal("the audit log holds the PIN, or does not name the refused GetAuthKey")
	}
}

// TestXRoadClientCannotReachAdmin: a client that is not an admin reaches
// no admin operation through X-Road: every one is Signer.AccessDenied,
// audited, and changes nothing (the token stays logged in, the key, its
// request and its certificate stay).
func TestXRoadClientCannotReachAdmin(t *testing.T) {
	r := newRig(t, rigOptions{})
	r.ca.StartOCSPResponder(t, 60)
	keyID, cert := r.signCert(t, "member-a", "EC-P256", "EE/GOV/A")
	r.refreshOCSP(t, cert)
	csr, err := r.admin.GenerateCSR(ctxT(t), &signerv1.GenerateCSRRequest{KeyId: keyID, Subject: "CN=again,O=Agency,C=EE", Member: "EE/GOV/A"})
	if err != nil {
		t.Fatal(err)
	}
	s1 := sha1.Sum(cert.Raw)
	certID := hex.EncodeToString(s1[:])
	certSHA256 := hex.EncodeToString(sha256Of(cert.Raw))
	r.setPolicy(t, nil, config.ClientRule{Name: "xroad", UIDs: []uint32{me()}, Keys: []string{"*"}, Usages: []string{"sign", "auth"}, Members: []string{"*"}})

	cc := r.xroadConn(t, nil)
	tokens, keys, certs := xroadpb.NewTokenServiceClient(cc), xroadpb.NewKeyServiceClient(cc), xroadpb.NewCertificateServiceClient(cc)
	ctx := ctxT(t)
	member := clientID("EE", "GOV", "A")
	calls := map[string]func() error{
		"ListTokens":   func() error { _, err := tokens.ListTokens(ctx, &xroadpb.Empty{}); return err },
		"GetTokenById": func() error { _, err := tokens.GetTokenById(ctx, &xroadpb.GetTokenByIdReq{TokenId: "t1"}); return err },
		"GetTokenByKey": func() error {
			_, err := tokens.GetTokenByKey(ctx, &xroadpb.GetTokenByKeyIdReq{KeyId: keyID})
			return err
		},
		"GetTokenAndKeyIdByCertRequestId": func() error {
			_, err := tokens.GetTokenAndKeyIdByCertRequestId(ctx, &xroadpb.GetTokenByCertRequestIdReq{CertRequestId: csr.GetId()})
			return err
		},
		"GetTokenAndKeyIdByCertHash": func() error {
			_, err := tokens.GetTokenAndKeyIdByCertHash(ctx, &xroadpb.GetTokenByCertHashReq{CertHash: certSHA256})
			return err
		},
		"ActivateToken login": func() error {
			_, err := tokens.ActivateToken(ctx, &xroadpb.ActivateTokenReq{TokenId: "t1", Activate: true, Pin: pinOf("1234")})
			return err
		},
		"ActivateToken logout": func() error {
			_, err := tokens.ActivateToken(ctx, &xroadpb.ActivateTokenReq{TokenId: "t1", Activate: false})
			return err
		},
		"GetKeyIdForCertHash": func() error {
			_, err := keys.GetKeyIdForCertHash(ctx, &xroadpb.GetKeyIdForCertHashReq{CertHash: certSHA256})
			return err
		},
		"SetKeyFriendlyName": func() error {
			_, err := keys.SetKeyFriendlyName(ctx, &xroadpb.SetKeyFriendlyNameReq{KeyId: keyID, FriendlyName: "pwned"})
			return err
		},
		"DeleteKey": func() error {
			_, err := keys.DeleteKey(ctx, &xroadpb.DeleteKeyReq{KeyId: keyID, DeleteFromDevice: true})
			return err
		},
		"GenerateCertRequest": func() error {
			_, err := certs.GenerateCertRequest(ctx, &xroadpb.GenerateCertRequestReq{KeyId: keyID, MemberId: member, SubjectName: "CN=x"})
			return err
		},
		"RegenerateCertRequest": func() error {
			_, err := certs.RegenerateCertRequest(ctx, &xroadpb.RegenerateCertRequestReq{CertRequestId: csr.GetId()})
			return err
		},
		"DeleteCertRequest": func() error {
			_, err := certs.DeleteCertRequest(ctx, &xroadpb.DeleteCertRequestReq{CertRequestId: csr.GetId()})
			return err
		},
		"ImportCert": func() error {
			_, err := certs.ImportCert(ctx, &xroadpb.ImportCertReq{CertData: cert.Raw, MemberId: member, InitialStatus: "registered"})
			return err
		},
		"ActivateCert": func() error {
			_, err := certs.ActivateCert(ctx, &xroadpb.ActivateCertReq{CertIdOrHash: certID, Active: false})
			return err
		},
		"SetCertStatus": func() error {
			_, err := certs.SetCertStatus(ctx, &xroadpb.SetCertStatusReq{CertId: certID, Status: "deletion in progress"})
			return err
		},
		"DeleteCert": func() error {
			_, err := certs.DeleteCert(ctx, &xroadpb.DeleteCertReq{CertId: certID})
			return err
		},
		"GetCertificateInfoForHash": func() error {
			_, err := certs.GetCertificateInfoForHash(ctx, &xroadpb.GetCertificateInfoForHashReq{CertHash: certSHA256})
			return err
		},
		"GetMemberCerts": func() error {
			_, err := certs.GetMemberCerts(ctx, &xroadpb.GetMemberCertsReq{MemberId: member})
			return err
		},
	}
	for name, call := range calls {
		t.Run(name, func(t *testing.T) { wantCoded(t, call(), "Signer.AccessDenied") })
	}
	// Nothing changed: the proxy's path still signs with the key.
	si, err := tokens.GetMemberSigningInfo(ctx, &xroadpb.GetMemberSigningInfoReq{MemberId: member})
	if err != nil || si.GetKeyId() != keyID || si.GetCert().GetId() != certID {
		t.Fatalf("after the refusals: %v %v", si, err)
	}
	if _, err := keys.Sign(ctx, &xroadpb.SignReq{KeyId: keyID, SignatureAlgorithmId: "SHA256withECDSA", Digest: sha256Of([]byte("m"))}); err != nil {
		t.Fatalf("Sign after the refusals: %v", err)
	}
	r.setPolicy(t, []uint32{me()})
	if c, err := r.admin.GetCSR(ctx, &signerv1.GetCSRRequest{Id: csr.GetId()}); err != nil || c.GetId() != csr.GetId() {
		t.Fatalf("the request after the refusals: %v", err)
	}
	audit, _ := os.ReadFile(filepath.Join(r.dir, "audit.jsonl"))
	if n := strings.Count(string(audit), `"op":"denied"`); n < len(calls) {
		t.Fatalf("%d refusals audited, want %d", n, len(calls))
	}
}

// TestXRoadMemberIsolation: a client rule for member A alone gets none of
// member B's signing information, signatures with B's key or B's OCSP
// responses; A's work, with the key id in any case.
func TestXRoadMemberIsolation(t *testing.T) {
	r := newRig(t, rigOptions{})
	r.ca.StartOCSPResponder(t, 60)
	keyA, certA := r.signCert(t, "member-a", "EC-P256", "EE/GOV/A")
	keyB, certB := r.signCert(t, "member-b", "RSA2048", "EE/GOV/B")
	r.refreshOCSP(t, certA)
	r.refreshOCSP(t, certB)
	r.setPolicy(t, nil, config.ClientRule{Name: "a", UIDs: []uint32{me()}, Keys: []string{"*"}, Usages: []string{"sign"}, Members: []string{"EE/GOV/A"}})
	cc := r.xroadConn(t, nil)
	tokens, keys, ocsps := xroadpb.NewTokenServiceClient(cc), xroadpb.NewKeyServiceClient(cc), xroadpb.NewOcspServiceClient(cc)
	ctx := ctxT(t)

	if si, err := tokens.GetMemberSigningInfo(ctx, &xroadpb.GetMemberSigningInfoReq{MemberId: clientID("EE", "GOV", "A")}); err != nil || si.GetKeyId() != keyA {
		t.Fatalf("A's signing info: %v %v", si, err)
	}
	_, err := tokens.GetMemberSigningInfo(ctx, &xroadpb.GetMemberSigningInfoReq{MemberId: clientID("EE", "GOV", "B")})
	wantCoded(t, err, "Signer.AccessDenied")
	sub := clientID("EE", "GOV", "B")
	subsystem := "Sub"
	sub.SubsystemCode, sub.ObjectType = &subsystem, xroadpb.XRoadObjectType_SUBSYSTEM
	_, err = tokens.GetMemberSigningInfo(ctx, &xroadpb.GetMemberSigningInfoReq{MemberId: sub})
	wantCoded(t, err, "Signer.AccessDenied")

	for _, id := range []string{keyA, strings.ToUpper(keyA)} {
		if _, err := keys.Sign(ctx, &xroadpb.SignReq{KeyId: id, SignatureAlgorithmId: "SHA256withECDSA", Digest: sha256Of([]byte("m"))}); err != nil {
			t.Fatalf("Sign with A's key as %q: %v", id, err)
		}
	}
	_, err = keys.Sign(ctx, &xroadpb.SignReq{KeyId: keyB, SignatureAlgorithmId: "SHA256withRSA", Digest: sha256Of([]byte("m"))})
	wantCoded(t, err, "Signer.AccessDenied")
	if _, err := tokens.GetTokenBatchSigningEnabled(ctx, &xroadpb.GetTokenBatchSigningEnabledReq{KeyId: keyB}); codedOf(err) == nil {
		t.Fatalf("GetTokenBatchSigningEnabled for B's key: %v", err)
	}

	hA, hB := sha1.Sum(certA.Raw), sha1.Sum(certB.Raw)
	a, b := hex.EncodeToString(hA[:]), hex.EncodeToString(hB[:])
	got, err := ocsps.GetOcspResponses(ctx, &xroadpb.GetOcspResponsesReq{CertHash: []string{a, b, hex.EncodeToString(sha256Of(certB.Raw))}})
	if err != nil {
		t.Fatal(err)
	}
	if m := got.GetBase64EncodedResponses(); len(m) != 1 || m[a] == "" {
		t.Fatalf("GetOcspResponses for A and B: %v", m)
	}
	// Nor can A's client replace B's responses.
	respA, _ := base64.StdEncoding.DecodeString(got.GetBase64EncodedResponses()[a])
	if _, err := ocsps.SetOcspResponses(ctx, &xroadpb.SetOcspResponsesReq{CertHashes: []string{b}, Base64EncodedResponses: []string{base64.StdEncoding.EncodeToString(respA)}}); err != nil {
		t.Fatalf("SetOcspResponses for B: %v (a refused response is left out, not an error)", err)
	}
	r.setPolicy(t, []uint32{me()}, config.ClientRule{Name: "all", UIDs: []uint32{me()}, Keys: []string{"*"}, Usages: []string{"sign"}, Members: []string{"*"}})
	if si, err := tokens.GetMemberSigningInfo(ctx, &xroadpb.GetMemberSigningInfoReq{MemberId: clientID("EE", "GOV", "B")}); err != nil || si.GetKeyId() != keyB {
		t.Fatalf("B's signing info after A's client tried to replace its response: %v %v", si, err)
	}
}

// TestXRoadActivateTokenLoginLimit: ActivateToken with a PIN spends the
// uid's login attempts as LoginToken does; beyond the limit the token is
// not asked. No PIN is in an error or the audit log.
func TestXRoadActivateTokenLoginLimit(t *testing.T) {
	r := newRig(t, rigOptions{limits: "login_attempts_per_minute = 2"})
	tokens := xroadpb.NewTokenServiceClient(r.xroadConn(t, nil))
	ctx := ctxT(t)
	const wrong = "wrong-pin-5501"
	for i := range 2 {
		_, err := tokens.ActivateToken(ctx, &xroadpb.ActivateTokenReq{TokenId: "t1", Activate: true, Pin: pinOf(wrong)})
		if codedOf(err) == nil || strings.Contains(err.Error(), wrong) {
			t.Fatalf("attempt %d: %v", i+1, err)
		}
	}
	_, err := tokens.ActivateToken(ctx, &xroadpb.ActivateTokenReq{TokenId: "t1", Activate: true, Pin: pinOf(wrong)})
	if codedOf(err) == nil || !strings.Contains(err.Error(), "login_attempts_per_minute") {
		t.Fatalf("the third attempt in a minute: %v, want the limit", err)
	}
	audit, _ := os.ReadFile(filepath.Join(r.dir, "audit.jsonl"))
	if strings.Contains(string(audit), wrong) {
		t.Fatal("the audit log holds the PIN tried")
	}
}

// TestXRoadHostileInput: odd or hostile requests get X-Road's error with
// a fault code and a message, never a panic or a bare gRPC error.
func TestXRoadHostileInput(t *testing.T) {
	r := newRig(t, rigOptions{})
	keyID, cert := r.signCert(t, "member-a", "EC-P256", "EE/GOV/A")
	cc := r.xroadConn(t, nil)
	tokens, keys, ocsps := xroadpb.NewTokenServiceClient(cc), xroadpb.NewKeyServiceClient(cc), xroadpb.NewOcspServiceClient(cc)
	certs := xroadpb.NewCertificateServiceClient(cc)
	ctx := ctxT(t)
	s1 := sha1.Sum(cert.Raw)
	h1 := hex.EncodeToString(s1[:])
	sign := func(id, alg string, digest []byte) func() error {
		return func() error {
			_, err := keys.Sign(ctx, &xroadpb.SignReq{KeyId: id, SignatureAlgorithmId: alg, Digest: digest})
			return err
		}
	}
	member := func(id *xroadpb.ClientIdProto) func() error {
		return func() error {
			_, err := tokens.GetMemberSigningInfo(ctx, &xroadpb.GetMemberSigningInfoReq{MemberId: id})
			return err
		}
	}
	many := make([]string, 10000)
	for i := range many {
		many[i] = h1
	}
	cases := []struct {
		name  string
		call  func() error
		fault string
	}{
		{"no member id", member(nil), "Signer.InvalidRequest"},
		{"member code with NUL", member(clientID("EE", "GOV", "A\x00")), "Signer.InvalidRequest"},
		{"member code with a newline", member(clientID("EE", "GOV", "A\nB")), "Signer.InvalidRequest"},
		{"member code with a space", member(clientID("EE", "GOV", "A B")), "Signer.InvalidRequest"},
		{"member code of 300 bytes", member(clientID("EE", "GOV", strings.Repeat("A", 300))), "Signer.InvalidRequest"},
		{"unknown algorithm", sign(keyID, "MD5withECDSA", sha256Of([]byte("m"))), "Signer.InvalidRequest"},
		{"no algorithm", sign(keyID, "", sha256Of([]byte("m"))), "Signer.InvalidRequest"},
		{"RSA algorithm for an EC key", sign(keyID, "SHA256withRSA", sha256Of([]byte("m"))), "Signer.InvalidRequest"},
		{"digest too short", sign(keyID, "SHA256withECDSA", []byte{1, 2, 3}), "Signer.InvalidRequest"},
		{"digest of SHA-512 for SHA-256", sign(keyID, "SHA256withECDSA", make([]byte, 64)), "Signer.InvalidRequest"},
		{"no digest", sign(keyID, "SHA256withECDSA", nil), "Signer.InvalidRequest"},
		{"key id not hex", sign("zz"+keyID, "SHA256withECDSA", sha256Of([]byte("m"))), "Signer.InvalidRequest"},
		{"key id with spaces", sign(" "+keyID+" ", "SHA256withECDSA", sha256Of([]byte("m"))), "Signer.InvalidRequest"},
		{"key id of 10000 characters", sign(strings.Repeat("ab", 5000), "SHA256withECDSA", sha256Of([]byte("m"))), "Signer.InvalidRequest"},
		{"no key id", sign("", "SHA256withECDSA", sha256Of([]byte("m"))), "Signer.InvalidRequest"},
		{"10000 cert hashes", func() error {
			_, err := ocsps.GetOcspResponses(ctx, &xroadpb.GetOcspResponsesReq{CertHash: many})
			return err
		}, "Signer.InvalidRequest"},
		{"response not base64", func() error {
			_, err := ocsps.SetOcspResponses(ctx, &xroadpb.SetOcspResponsesReq{CertHashes: []string{h1}, Base64EncodedResponses: []string{"%%%not base64"}})
			return err
		}, "Signer.InvalidRequest"},
		{"10000 responses", func() error {
			rs := make([]string, len(many))
			for i := range rs {
				rs[i] = "AAAA"
			}
			_, err := ocsps.SetOcspResponses(ctx, &xroadpb.SetOcspResponsesReq{CertHashes: many, Base64EncodedResponses: rs})
			return err
		}, "Signer.InvalidRequest"},
		{"unknown certificate status", func() error {
			_, err := certs.SetCertStatus(ctx, &xroadpb.SetCertStatusReq{CertId: h1, Status: "pwned"})
			return err
		}, "Signer.InvalidRequest"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { wantCoded(t, c.call(), c.fault) })
	}
	// A response that is base64 but no OCSP response is left out, and
	// the call answers.
	if _, err := ocsps.SetOcspResponses(ctx, &xroadpb.SetOcspResponsesReq{CertHashes: []string{h1}, Base64EncodedResponses: []string{base64.StdEncoding.EncodeToString([]byte("garbage"))}}); err != nil {
		t.Fatalf("a garbage response: %v", err)
	}
	// A request above the size limit is gRPC's RESOURCE_EXHAUSTED, before
	// any handler: X-Road's proxy sends nothing near it.
	big := make([]byte, 8<<20)
	if _, err := keys.Sign(ctx, &xroadpb.SignReq{KeyId: keyID, SignatureAlgorithmId: "SHA256withECDSA", Digest: big}, grpc.MaxCallSendMsgSize(16<<20)); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("an 8 MiB request: %v", err)
	}
	// The listener still serves.
	if _, err := keys.Sign(ctx, &xroadpb.SignReq{KeyId: keyID, SignatureAlgorithmId: "SHA256withECDSA", Digest: sha256Of([]byte("m"))}); err != nil {
		t.Fatalf("Sign after the hostile requests: %v", err)
	}
}

// pinOf is an ActivateToken PIN.
func pinOf(s string) *string { return &s }

// TestXRoadRefusesUnnamedUIDAtConnect: a connection from a uid the policy
// names nowhere is refused as soon as the kernel names it, before any TLS
// (a flood of them costs no handshake), and the refusal is audited.
func TestXRoadRefusesUnnamedUIDAtConnect(t *testing.T) {
	r := newRig(t, rigOptions{})
	r.setPolicy(t, nil)
	c, err := net.Dial("tcp", r.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("the server wrote to a uid the policy does not name")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("a connection of a uid the policy does not name was held for its TLS handshake")
	}
	audit, _ := os.ReadFile(filepath.Join(r.dir, "audit.jsonl"))
	if !strings.Contains(string(audit), `"op":"denied"`) || !strings.Contains(string(audit), "X-Road connection") {
		t.Fatalf("the refused connection was not audited: %s", audit)
	}
	// Named again, it connects.
	r.setPolicy(t, []uint32{me()}, config.ClientRule{Name: "xroad", UIDs: []uint32{me()}, Keys: []string{"*"}, Usages: []string{"sign"}, Members: []string{"*"}})
	if _, err := xroadpb.NewTokenServiceClient(r.xroadConn(t, nil)).GetHSMOperationalInfo(ctxT(t), &xroadpb.Empty{}); err != nil {
		t.Fatalf("named again: %v", err)
	}
}
