package xroad

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/xroad/xroadpb"
	"github.com/hsmsigner/hsmsigner/softhsm-test/devca"
)

// notServed are the X-Road rpcs signerd answers UNIMPLEMENTED, with the
// reason (the README's table says the same).
var notServed = map[string]bool{
	"InitSoftwareToken": true, "UpdateSoftwareTokenPin": true, "SetTokenFriendlyName": true,
	"GenerateKey": true, "SignCertificate": true,
	"SetRenewedCertHash": true, "SetRenewalError": true, "SetNextPlannedRenewal": true, "GenerateSelfSignedCert": true,
}

// TestEveryXRoadMethodIsServedOrSaysWhyNot calls every rpc of X-Road's
// four services: those signerd does not serve answer UNIMPLEMENTED with
// the reason, and every other one is served (whatever it answers to an
// empty request, it is not UNIMPLEMENTED).
func TestEveryXRoadMethodIsServedOrSaysWhyNot(t *testing.T) {
	r := newRig(t, rigOptions{})
	cc := r.xroadConn(t, nil)
	n := 0
	for _, sd := range []grpc.ServiceDesc{xroadpb.TokenService_ServiceDesc, xroadpb.KeyService_ServiceDesc, xroadpb.CertificateService_ServiceDesc, xroadpb.OcspService_ServiceDesc} {
		for _, m := range sd.Methods {
			n++
			t.Run(sd.ServiceName+"/"+m.MethodName, func(t *testing.T) {
				err := cc.Invoke(ctxT(t), "/"+sd.ServiceName+"/"+m.MethodName, &xroadpb.Empty{}, &xroadpb.Empty{})
				if notServed[m.MethodName] {
					if status.Code(err) != codes.Unimplemented || !strings.Contains(err.Error(), "signerd does not serve") {
						t.Fatalf("got %v, want UNIMPLEMENTED with the reason", err)
					}
					return
				}
				// Served; a served rpc may still refuse one form of its
				// request (DeleteKey keeping the key), saying why.
				if status.Code(err) == codes.Unimplemented && !strings.Contains(err.Error(), "signerd does not serve") {
					t.Fatalf("not served: %v", err)
				}
			})
		}
	}
	if n != 35 {
		t.Fatalf("%d rpcs in X-Road's four services, want 35: update the README's table", n)
	}
}

// TestAdminSurface walks the officer's path of X-Road's user interface
// through the X-Road protocol: tokens and keys listed, a request made in
// the HSM, the certificate imported with X-Road's initial status, its
// status set, activated, found by hash and by member, the key renamed,
// the token logged out and in again, and everything deleted.
func TestAdminSurface(t *testing.T) {
	r := newRig(t, rigOptions{})
	cc := r.xroadConn(t, nil)
	tokens, keys, certs := xroadpb.NewTokenServiceClient(cc), xroadpb.NewKeyServiceClient(cc), xroadpb.NewCertificateServiceClient(cc)
	ctx := ctxT(t)
	k, err := r.admin.GenerateKey(ctx, &signerv1.GenerateKeyRequest{Token: "t1", Label: "xr-sign", Algorithm: "RSA2048", Usage: signerv1.KeyUsage_KEY_USAGE_SIGN})
	if err != nil {
		t.Fatal(err)
	}
	lt, err := tokens.ListTokens(ctx, &xroadpb.Empty{})
	if err != nil || len(lt.GetTokens()) != 1 || lt.GetTokens()[0].GetId() != "t1" || !lt.GetTokens()[0].GetActive() || len(lt.GetTokens()[0].GetKeyInfo()) != 1 {
		t.Fatalf("ListTokens: %v %v", lt, err)
	}
	if ki := lt.GetTokens()[0].GetKeyInfo()[0]; ki.GetId() != k.GetId() || ki.GetUsage() != xroadpb.KeyUsageInfo_SIGNING || ki.GetSignMechanismName() != "CKM_RSA_PKCS" {
		t.Fatalf("key info: %v", ki)
	}
	member := clientID("EE", "GOV", "70000310")
	if _, err := certs.GenerateCertRequest(ctx, &xroadpb.GenerateCertRequestReq{KeyId: k.GetId(), MemberId: member, KeyUsage: xroadpb.KeyUsageInfo_AUTHENTICATION, SubjectName: "CN=x"}); codedOf(err) == nil {
		t.Fatalf("a request for another usage than the key's: %v", err)
	}
	req, err := certs.GenerateCertRequest(ctx, &xroadpb.GenerateCertRequestReq{KeyId: k.GetId(), MemberId: member, KeyUsage: xroadpb.KeyUsageInfo_SIGNING,
		SubjectName: "CN=Agency,O=Agency,C=EE,serialNumber=70000310", Format: xroadpb.CertificateRequestFormat_DER})
	if err != nil {
		t.Fatal(err)
	}
	if tk, err := tokens.GetTokenAndKeyIdByCertRequestId(ctx, &xroadpb.GetTokenByCertRequestIdReq{CertRequestId: req.GetCertReqId()}); err != nil || tk.GetKeyId() != k.GetId() {
		t.Fatalf("GetTokenAndKeyIdByCertRequestId: %v %v", tk, err)
	}
	again, err := certs.RegenerateCertRequest(ctx, &xroadpb.RegenerateCertRequestReq{CertRequestId: req.GetCertReqId(), Format: xroadpb.CertificateRequestFormat_PEM})
	if err != nil || !strings.HasPrefix(string(again.GetCertRequest()), "-----BEGIN CERTIFICATE REQUEST") || again.GetMemberId().GetMemberCode() != "70000310" {
		t.Fatalf("RegenerateCertRequest: %v %v", again, err)
	}
	cert, err := r.ca.Sign(ctx, req.GetCertRequest(), devca.UsageSign, devca.Current)
	if err != nil {
		t.Fatal(err)
	}
	var chain []byte
	chain = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
	for _, c := range r.ca.Chain() {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	imp, err := certs.ImportCert(ctx, &xroadpb.ImportCertReq{CertData: chain, InitialStatus: "registration in progress", MemberId: member})
	if err != nil || imp.GetKeyId() != k.GetId() {
		t.Fatalf("ImportCert: %v %v", imp, err)
	}
	sum := sha256.Sum256(cert.Raw)
	hash := hex.EncodeToString(sum[:])
	info, err := certs.GetCertificateInfoForHash(ctx, &xroadpb.GetCertificateInfoForHashReq{CertHash: strings.ToUpper(hash)})
	if err != nil || info.GetCertificateInfo().GetStatus() != "registration in progress" || info.GetCertificateInfo().GetActive() {
		t.Fatalf("GetCertificateInfoForHash: %v %v", info, err)
	}
	id := info.GetCertificateInfo().GetId()
	if _, err := certs.SetCertStatus(ctx, &xroadpb.SetCertStatusReq{CertId: id, Status: "registered"}); err != nil {
		t.Fatal(err)
	}
	if _, err := certs.SetCertStatus(ctx, &xroadpb.SetCertStatusReq{CertId: id, Status: "approved"}); codedOf(err).GetFaultCode() != "Signer.InvalidRequest" {
		t.Fatalf("an unknown status: %v", err)
	}
	if _, err := certs.ActivateCert(ctx, &xroadpb.ActivateCertReq{CertIdOrHash: id, Active: true}); err != nil {
		t.Fatal(err)
	}
	mc, err := certs.GetMemberCerts(ctx, &xroadpb.GetMemberCertsReq{MemberId: member})
	if err != nil || len(mc.GetCerts()) != 1 || !mc.GetCerts()[0].GetActive() || mc.GetCerts()[0].GetStatus() != "registered" || mc.GetCerts()[0].GetMemberId().GetMemberCode() != "70000310" {
		t.Fatalf("GetMemberCerts: %v %v", mc, err)
	}
	if tk, err := tokens.GetTokenAndKeyIdByCertHash(ctx, &xroadpb.GetTokenByCertHashReq{CertHash: hash}); err != nil || tk.GetKeyId() != k.GetId() || tk.GetTokenInfo().GetId() != "t1" {
		t.Fatalf("GetTokenAndKeyIdByCertHash: %v %v", tk, err)
	}
	if _, err := keys.SetKeyFriendlyName(ctx, &xroadpb.SetKeyFriendlyNameReq{KeyId: k.GetId(), FriendlyName: "Agency signing"}); err != nil {
		t.Fatal(err)
	}
	tk, err := tokens.GetTokenByKey(ctx, &xroadpb.GetTokenByKeyIdReq{KeyId: strings.ToUpper(k.GetId())})
	if err != nil || tk.GetKeyInfo()[0].GetFriendlyName() != "Agency signing" || len(tk.GetKeyInfo()[0].GetCerts()) != 1 {
		t.Fatalf("GetTokenByKey: %v %v", tk, err)
	}
	if m, err := keys.GetSignMechanism(ctx, &xroadpb.GetSignMechanismReq{KeyId: k.GetId()}); err != nil || m.GetSignMechanismName() != "CKM_RSA_PKCS" {
		t.Fatalf("GetSignMechanism: %v %v", m, err)
	}
	// Log out, and in with a wrong PIN and then the right one.
	if _, err := tokens.ActivateToken(ctx, &xroadpb.ActivateTokenReq{TokenId: "t1", Activate: false}); err != nil {
		t.Fatal(err)
	}
	if op, _ := tokens.GetHSMOperationalInfo(ctx, &xroadpb.Empty{}); op.GetOperational() {
		t.Fatal("operational with the token logged out")
	}
	wrong := "000000"
	if _, err := tokens.ActivateToken(ctx, &xroadpb.ActivateTokenReq{TokenId: "t1", Activate: true, Pin: &wrong}); codedOf(err) == nil || strings.Contains(err.Error(), wrong) {
		t.Fatalf("a wrong PIN: %v", err)
	}
	pin, _ := os.ReadFile(filepath.Join(r.dir, "user.pin"))
	right := strings.TrimSpace(string(pin))
	if _, err := tokens.ActivateToken(ctx, &xroadpb.ActivateTokenReq{TokenId: "t1", Activate: true, Pin: &right}); err != nil {
		t.Fatalf("the right PIN: %v", err)
	}
	if byID, err := tokens.GetTokenById(ctx, &xroadpb.GetTokenByIdReq{TokenId: "t1"}); err != nil || !byID.GetActive() {
		t.Fatalf("GetTokenById after login: %v %v", byID, err)
	}
	if _, err := tokens.GetTokenById(ctx, &xroadpb.GetTokenByIdReq{TokenId: "nope"}); codedOf(err).GetFaultCode() != "Signer.TokenNotFound" {
		t.Fatalf("an unknown token: %v", err)
	}
	// The request was answered by the import, so it is gone; a new one
	// is deleted.
	if _, err := certs.DeleteCertRequest(ctx, &xroadpb.DeleteCertRequestReq{CertRequestId: req.GetCertReqId()}); codedOf(err).GetFaultCode() != "Signer.CsrNotFound" {
		t.Fatalf("DeleteCertRequest of an answered request: %v", err)
	}
	req2, err := certs.GenerateCertRequest(ctx, &xroadpb.GenerateCertRequestReq{KeyId: k.GetId(), MemberId: member, SubjectName: "CN=Agency 2,O=Agency,C=EE"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := certs.DeleteCertRequest(ctx, &xroadpb.DeleteCertRequestReq{CertRequestId: req2.GetCertReqId()}); err != nil {
		t.Fatalf("DeleteCertRequest: %v", err)
	}
	if _, err := certs.DeleteCert(ctx, &xroadpb.DeleteCertReq{CertId: id}); err != nil {
		t.Fatalf("DeleteCert: %v", err)
	}
	if _, err := keys.DeleteKey(ctx, &xroadpb.DeleteKeyReq{KeyId: k.GetId()}); status.Code(err) != codes.Unimplemented {
		t.Fatalf("DeleteKey keeping the key on the device: %v", err)
	}
	if _, err := keys.DeleteKey(ctx, &xroadpb.DeleteKeyReq{KeyId: k.GetId(), DeleteFromDevice: true}); err != nil {
		t.Fatalf("DeleteKey: %v", err)
	}
	if _, err := r.admin.GetKey(ctx, &signerv1.GetKeyRequest{KeyId: k.GetId()}); status.Code(err) != codes.NotFound {
		t.Fatalf("the key is still there: %v", err)
	}
}
