package xroad

import (
	"bytes"
	"crypto"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/hsmsigner/hsmsigner/signer/config"
	"github.com/hsmsigner/hsmsigner/signer/xroad/xroadpb"
)

func sha256Of(b []byte) []byte {
	h := sha256.Sum256(b)
	return h[:]
}

// clientID is an X-Road member id.
func clientID(instance, class, code string) *xroadpb.ClientIdProto {
	return &xroadpb.ClientIdProto{XroadInstance: instance, MemberClass: class, MemberCode: code, ObjectType: xroadpb.XRoadObjectType_MEMBER}
}

// TestProxySequence replays what X-Road's proxy asks of its signer, over
// mutual TLS with a keystore made like X-Road's, against SoftHSM and the
// dev CA's openssl OCSP responder: GetHSMOperationalInfo,
// GetMemberSigningInfo, GetTokenBatchSigningEnabled, Sign with SHA-256,
// 384 and 512 for RSA PKCS#1, RSA-PSS and ECDSA (each verified by
// openssl against the certificate's public key), GetOcspResponses and
// SetOcspResponses.
func TestProxySequence(t *testing.T) {
	r := newRig(t, rigOptions{})
	r.ca.StartOCSPResponder(t, 60)
	rsaKey, rsaCert := r.signCert(t, "agency-rsa", "RSA2048", "EE/GOV/70000310")
	ecKey, ecCert := r.signCert(t, "agency-ec", "EC-P256", "EE/COM/12345678")
	r.refreshOCSP(t, rsaCert)
	r.refreshOCSP(t, ecCert)

	cc := r.xroadConn(t, nil)
	tokens, keys, ocsps := xroadpb.NewTokenServiceClient(cc), xroadpb.NewKeyServiceClient(cc), xroadpb.NewOcspServiceClient(cc)
	ctx := ctxT(t)
	op, err := tokens.GetHSMOperationalInfo(ctx, &xroadpb.Empty{})
	if err != nil || !op.GetOperational() {
		t.Fatalf("GetHSMOperationalInfo: %v %v", op, err)
	}
	dir := t.TempDir()
	data := filepath.Join(dir, "message.xml")
	msg := []byte("<message>signed by the security server</message>")
	os.WriteFile(data, msg, 0o600)

	members := []struct {
		id   *xroadpb.ClientIdProto
		key  string
		cert *x509.Certificate
		mech string
		algs []string
	}{
		{clientID("EE", "GOV", "70000310"), rsaKey, rsaCert, "CKM_RSA_PKCS",
			[]string{"SHA256withRSA", "SHA384withRSA", "SHA512withRSA", "SHA256withRSAandMGF1", "SHA384withRSAandMGF1", "SHA512withRSAandMGF1"}},
		{clientID("EE", "COM", "12345678"), ecKey, ecCert, "CKM_ECDSA", []string{"SHA256withECDSA", "SHA384withECDSA", "SHA512withECDSA"}},
	}
	for _, m := range members {
		si, err := tokens.GetMemberSigningInfo(ctx, &xroadpb.GetMemberSigningInfoReq{MemberId: m.id})
		if err != nil {
			t.Fatalf("GetMemberSigningInfo %v: %v", m.id, err)
		}
		if si.GetKeyId() != m.key || si.GetSignMechanismName() != m.mech || !bytes.Equal(si.GetCert().GetCertificateBytes(), m.cert.Raw) ||
			len(si.GetCert().GetOcspBytes()) == 0 || !si.GetCert().GetActive() {
			t.Fatalf("GetMemberSigningInfo %v: key %s mech %s, %d OCSP bytes", m.id, si.GetKeyId(), si.GetSignMechanismName(), len(si.GetCert().GetOcspBytes()))
		}
		// A subsystem signs with its member's certificate.
		sub := clientID(m.id.GetXroadInstance(), m.id.GetMemberClass(), m.id.GetMemberCode())
		subsystem := "Registry"
		sub.SubsystemCode, sub.ObjectType = &subsystem, xroadpb.XRoadObjectType_SUBSYSTEM
		if ssi, err := tokens.GetMemberSigningInfo(ctx, &xroadpb.GetMemberSigningInfoReq{MemberId: sub}); err != nil || ssi.GetKeyId() != m.key {
			t.Fatalf("subsystem of %v: %v %v", m.id, ssi, err)
		}
		b, err := tokens.GetTokenBatchSigningEnabled(ctx, &xroadpb.GetTokenBatchSigningEnabledReq{KeyId: si.GetKeyId()})
		if err != nil || !b.GetBatchingSigningEnabled() {
			t.Fatalf("GetTokenBatchSigningEnabled: %v %v", b, err)
		}
		pub := filepath.Join(dir, m.key+".pub.pem")
		der, _ := x509.MarshalPKIXPublicKey(m.cert.PublicKey)
		os.WriteFile(pub, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600)
		for _, alg := range m.algs {
			hash := map[string]crypto.Hash{"SHA256": crypto.SHA256, "SHA384": crypto.SHA384, "SHA512": crypto.SHA512}[alg[:6]]
			h := hash.New()
			h.Write(msg)
			sig, err := keys.Sign(ctx, &xroadpb.SignReq{KeyId: si.GetKeyId(), SignatureAlgorithmId: alg, Digest: h.Sum(nil)})
			if err != nil {
				t.Fatalf("Sign %s: %v", alg, err)
			}
			sigPath := filepath.Join(dir, alg+".sig")
			os.WriteFile(sigPath, sig.GetSignature(), 0o600)
			args := []string{"dgst", "-" + strings.ToLower(alg[:6]), "-verify", pub, "-signature", sigPath}
			if strings.HasSuffix(alg, "MGF1") {
				args = append(args, "-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:digest")
			}
			if out, err := exec.Command("openssl", append(args, data)...).CombinedOutput(); err != nil || !strings.Contains(string(out), "Verified OK") {
				t.Fatalf("openssl verify %s: %v\n%s", alg, err, out)
			}
		}
	}

	// OCSP responses by SHA-1 hex, as the proxy asks; an unknown hash is
	// left out of the map.
	s1 := sha1.Sum(rsaCert.Raw)
	h1 := hex.EncodeToString(s1[:])
	unknown := strings.Repeat("ab", 20)
	got, err := ocsps.GetOcspResponses(ctx, &xroadpb.GetOcspResponsesReq{CertHash: []string{h1, unknown}})
	if err != nil {
		t.Fatalf("GetOcspResponses: %v", err)
	}
	if _, ok := got.GetBase64EncodedResponses()[unknown]; ok || len(got.GetBase64EncodedResponses()) != 1 {
		t.Fatalf("GetOcspResponses: %v", got.GetBase64EncodedResponses())
	}
	resp, err := base64.StdEncoding.DecodeString(got.GetBase64EncodedResponses()[h1])
	if err != nil || len(resp) == 0 {
		t.Fatalf("response of %s: %v", h1, err)
	}
	if _, err := ocsps.SetOcspResponses(ctx, &xroadpb.SetOcspResponsesReq{CertHashes: []string{h1}, Base64EncodedResponses: []string{got.GetBase64EncodedResponses()[h1]}}); err != nil {
		t.Fatalf("SetOcspResponses: %v", err)
	}
	if _, err := ocsps.SetOcspResponses(ctx, &xroadpb.SetOcspResponsesReq{CertHashes: []string{h1, unknown}, Base64EncodedResponses: []string{"x"}}); status.Code(err) != codes.Internal || codedOf(err).GetFaultCode() != "Signer.InvalidRequest" {
		t.Fatalf("SetOcspResponses with unequal lists: %v", err)
	}
	// The admin service's lookup of a key by its certificate's SHA-256.
	kid, err := keys.GetKeyIdForCertHash(ctx, &xroadpb.GetKeyIdForCertHashReq{CertHash: strings.ToUpper(hex.EncodeToString(sha256Of(ecCert.Raw)))})
	if err != nil || kid.GetKeyId() != ecKey || kid.GetSignMechanismName() != "CKM_ECDSA" {
		t.Fatalf("GetKeyIdForCertHash: %v %v", kid, err)
	}
	// Signing through X-Road is audited as a Sign call of this uid.
	audit, _ := os.ReadFile(filepath.Join(r.dir, "audit.jsonl"))
	if n := strings.Count(string(audit), `"op":"sign"`); n < 9 {
		t.Fatalf("%d sign lines in the audit log, want 9 or more", n)
	}
}

// TestXRoadRefusals checks what X-Road's signer would refuse, and the
// error it would give: an unknown member (Signer.UnknownMember), a member
// without a fresh good OCSP response (Signer.InternalError,
// member_has_no_suitable_certs), an unknown key, a caller the policy no
// longer names (Signer.AccessDenied), a client without a certificate or
// with one not in the keystore (no TLS session), and a connection from a
// non-loopback address.
func TestXRoadRefusals(t *testing.T) {
	r := newRig(t, rigOptions{})
	r.signCert(t, "no-ocsp", "EC-P256", "EE/GOV/11111111") // its CA names no responder
	cc := r.xroadConn(t, nil)
	tokens, keys := xroadpb.NewTokenServiceClient(cc), xroadpb.NewKeyServiceClient(cc)
	ctx := ctxT(t)
	cases := []struct {
		name        string
		call        func() error
		fault, code string
	}{
		{"unknown member", func() error {
			_, err := tokens.GetMemberSigningInfo(ctx, &xroadpb.GetMemberSigningInfoReq{MemberId: clientID("EE", "GOV", "99999999")})
			return err
		}, "Signer.UnknownMember", "member_certs_not_found"},
		{"no fresh OCSP", func() error {
			_, err := tokens.GetMemberSigningInfo(ctx, &xroadpb.GetMemberSigningInfoReq{MemberId: clientID("EE", "GOV", "11111111")})
			return err
		}, "Signer.InternalError", "member_has_no_suitable_certs"},
		{"member id with a slash", func() error {
			_, err := tokens.GetMemberSigningInfo(ctx, &xroadpb.GetMemberSigningInfoReq{MemberId: clientID("EE", "GOV/X", "1")})
			return err
		}, "Signer.InvalidRequest", "invalid_member_id"},
		{"unknown key", func() error {
			_, err := keys.Sign(ctx, &xroadpb.SignReq{KeyId: "00ff", SignatureAlgorithmId: "SHA256withECDSA", Digest: sha256Of([]byte("x"))})
			return err
		}, "Signer.KeyNotFound", "keynotfound"},
		{"no auth key configured", func() error {
			_, err := keys.GetAuthKey(ctx, &xroadpb.GetAuthKeyReq{})
			return err
		}, "Signer.KeyNotFound", "auth_key_not_found"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.call()
			ce := codedOf(err)
			if status.Code(err) != codes.Internal || ce.GetFaultCode() != c.fault || ce.GetTranslationCode() != c.code || ce.GetFaultString() == "" {
				t.Fatalf("got %v (%v), want INTERNAL with %s / %s", err, ce, c.fault, c.code)
			}
		})
	}

	// A policy that no longer names this uid: every call refused.
	p, err := config.NewPolicy(config.Admins{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	r.svc.SetPolicy(p)
	_, err = tokens.GetHSMOperationalInfo(ctx, &xroadpb.Empty{})
	if ce := codedOf(err); ce.GetFaultCode() != "Signer.AccessDenied" {
		t.Fatalf("a uid the policy does not name: %v", err)
	}
	audit, _ := os.ReadFile(filepath.Join(r.dir, "audit.jsonl"))
	if !strings.Contains(string(audit), `"op":"denied"`) {
		t.Fatal("the refusal of a uid the policy does not name was not audited")
	}

	// TLS: no client certificate, and one not in the keystore.
	other := newKeystore(t, t.TempDir(), "other")
	for name, tc := range map[string]*tls.Config{
		"no client certificate": {RootCAs: r.ks.pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12},
		"foreign certificate":   {Certificates: []tls.Certificate{other.cert}, RootCAs: r.ks.pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := xroadpb.NewTokenServiceClient(r.xroadConn(t, tc)).GetHSMOperationalInfo(ctx, &xroadpb.Empty{})
			if status.Code(err) != codes.Unavailable {
				t.Fatalf("got %v, want no TLS session (UNAVAILABLE)", err)
			}
		})
	}
}

// TestGetAuthKey serves the software token's authentication key as
// X-Road's signer does: the file, its alias (the key id), the token's PIN
// and the certificate in the file; the answer is audited and names no PIN.
func TestGetAuthKey(t *testing.T) {
	dir := t.TempDir()
	soft := filepath.Join(dir, "softtoken")
	os.MkdirAll(soft, 0o700)
	const keyID = "6a1f2ab54e3c0d1e9f8a7b6c5d4e3f2a1b0c9d8e"
	p12 := filepath.Join(soft, keyID+".p12")
	key, crt := filepath.Join(dir, "auth.key"), filepath.Join(dir, "auth.crt")
	for _, args := range [][]string{
		{"req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", crt, "-subj", "/CN=ss1/O=Agency/C=EE", "-days", "30"},
		{"pkcs12", "-export", "-inkey", key, "-in", crt, "-name", keyID, "-passout", "pass:soft-token-pin", "-out", p12},
	} {
		if out, err := exec.Command("openssl", args...).CombinedOutput(); err != nil {
			t.Fatalf("openssl %v: %v\n%s", args, err, out)
		}
	}
	pin := filepath.Join(dir, "softtoken.pin")
	os.WriteFile(pin, []byte("soft-token-pin\n"), 0o600)
	r := newRig(t, rigOptions{extra: "auth_key_file = \"" + p12 + "\"\nauth_key_password = \"file:" + pin + "\""})
	// The proxy's rule grants the usage auth, which GetAuthKey needs.
	r.setPolicy(t, []uint32{me()}, config.ClientRule{Name: "xroad", UIDs: []uint32{me()}, Keys: []string{"*"}, Usages: []string{"sign", "auth"}, Members: []string{"*"}})
	keys := xroadpb.NewKeyServiceClient(r.xroadConn(t, nil))
	ss := &xroadpb.SecurityServerIdProto{XroadInstance: "EE", MemberClass: "GOV", MemberCode: "70000310", ServerCode: "ss1"}
	ak, err := keys.GetAuthKey(ctxT(t), &xroadpb.GetAuthKeyReq{SecurityServer: ss})
	if err != nil {
		t.Fatal(err)
	}
	pemCert, _ := os.ReadFile(crt)
	b, _ := pem.Decode(pemCert)
	if ak.GetAlias() != keyID || ak.GetKeyStoreFileName() != p12 || ak.GetPassword() != "soft-token-pin" || !bytes.Equal(ak.GetCert().GetCertificateBytes(), b.Bytes) {
		t.Fatalf("GetAuthKey: alias %q file %q password ok %v, cert ok %v", ak.GetAlias(), ak.GetKeyStoreFileName(), ak.GetPassword() == "soft-token-pin", bytes.Equal(ak.GetCert().GetCertificateBytes(), b.Bytes))
	}
	audit, _ := os.ReadFile(filepath.Join(r.dir, "audit.jsonl"))
	if !strings.Contains(string(audit), `"op":"xroad.auth_key"`) || !strings.Contains(string(audit), "EE/GOV/70000310/ss1") || strings.Contains(string(audit), "soft-token-pin") {
		t.Fatal("GetAuthKey was not audited with the security server, or the line holds the PIN")
	}
	// A wrong PIN is a clear refusal that does not repeat it.
	os.WriteFile(pin, []byte("not-the-pin\n"), 0o600)
	_, err = keys.GetAuthKey(ctxT(t), &xroadpb.GetAuthKeyReq{SecurityServer: ss})
	if codedOf(err) == nil || strings.Contains(err.Error(), "not-the-pin") || !strings.Contains(err.Error(), "auth_key_password") {
		t.Fatalf("wrong software token PIN: %v", err)
	}
}

// TestInsecureLoopback serves without TLS, as X-Road does with
// grpc-internal-tls-enabled=false: calls work without certificates, and
// the caller is still the uid the kernel names.
func TestInsecureLoopback(t *testing.T) {
	r := newRig(t, rigOptions{insecure: true})
	op, err := xroadpb.NewTokenServiceClient(r.dial(t, insecure.NewCredentials())).GetHSMOperationalInfo(ctxT(t), &xroadpb.Empty{})
	if err != nil || !op.GetOperational() {
		t.Fatalf("GetHSMOperationalInfo without TLS: %v %v", op, err)
	}
}
