package xroad

import (
	"context"
	"encoding/base64"
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hsmsigner/hsmsigner/signer"
	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/xroad/xroadpb"
)

// The admin surface: X-Road's user interface manages tokens, keys,
// requests and certificates through these calls. Each maps onto the
// signer.v1 operations of the officer (admin role) where one does the
// same; the others are answered UNIMPLEMENTED with the reason (see the
// README's table).

// unimplemented answers an X-Road call signerd does not serve, and why.
func unimplemented(method, why string) error {
	return status.Errorf(codes.Unimplemented, "signerd does not serve X-Road's %s: %s", method, why)
}

// certStatusName is X-Road's spelling of a certificate status, as its
// keyconf.xml and user interface write it.
func certStatusName(st signerv1.CertStatus) string {
	switch st {
	case signerv1.CertStatus_CERT_STATUS_SAVED:
		return "saved"
	case signerv1.CertStatus_CERT_STATUS_REGISTRATION_IN_PROGRESS:
		return "registration in progress"
	case signerv1.CertStatus_CERT_STATUS_REGISTERED:
		return "registered"
	case signerv1.CertStatus_CERT_STATUS_DELETION_IN_PROGRESS:
		return "deletion in progress"
	case signerv1.CertStatus_CERT_STATUS_GLOBAL_ERROR:
		return "global error"
	}
	return ""
}

// certStatusOf reads X-Road's spelling of a certificate status.
func certStatusOf(name string) (signerv1.CertStatus, bool) {
	for st := signerv1.CertStatus_CERT_STATUS_SAVED; st <= signerv1.CertStatus_CERT_STATUS_GLOBAL_ERROR; st++ {
		if strings.EqualFold(certStatusName(st), strings.TrimSpace(name)) {
			return st, true
		}
	}
	return 0, false
}

// clientIDOf spells a signerd member identifier as an X-Road client id:
// INSTANCE/CLASS/CODE, or with a fourth part a subsystem; nil for
// anything else.
func clientIDOf(member string) *xroadpb.ClientIdProto {
	p := strings.Split(member, "/")
	if len(p) < 3 || len(p) > 4 {
		return nil
	}
	id := &xroadpb.ClientIdProto{XroadInstance: p[0], MemberClass: p[1], MemberCode: p[2], ObjectType: xroadpb.XRoadObjectType_MEMBER}
	if len(p) == 4 {
		id.SubsystemCode, id.ObjectType = &p[3], xroadpb.XRoadObjectType_SUBSYSTEM
	}
	return id
}

// certInfo is a signer.v1 certificate as X-Road describes it; its id is
// its SHA-1 hex, which every call taking a cert_id accepts back.
func certInfo(c *signerv1.Certificate) *xroadpb.CertificateInfoProto {
	return &xroadpb.CertificateInfoProto{MemberId: clientIDOf(c.GetMember()), Active: c.GetActive(), SavedToConfiguration: true,
		Status: certStatusName(c.GetStatus()), Id: c.GetSha1(), CertificateBytes: c.GetDer()}
}

// keyUsageOf is X-Road's usage of a signer.v1 key usage.
func keyUsageOf(u signerv1.KeyUsage) xroadpb.KeyUsageInfo {
	switch u {
	case signerv1.KeyUsage_KEY_USAGE_SIGN:
		return xroadpb.KeyUsageInfo_SIGNING
	case signerv1.KeyUsage_KEY_USAGE_AUTH:
		return xroadpb.KeyUsageInfo_AUTHENTICATION
	}
	return xroadpb.KeyUsageInfo_KEY_USAGE_UNSPECIFIED
}

// keyMechanism is X-Road's sign mechanism of a key.
func keyMechanism(k *signerv1.Key) string {
	if k.GetType() == "EC" {
		return mechECDSA
	}
	return mechRSAPKCS
}

// inventory is what the token calls describe: every token, key, request
// and certificate, read with the caller's admission.
type inventory struct {
	tokens []*signerv1.Token
	keys   []*signerv1.Key
	csrs   []*signerv1.CSR
	certs  []*signerv1.Certificate
}

// readInventory reads the inventory for a caller admitted as admin.
func (s *Server) readInventory(ctx context.Context) (*inventory, error) {
	inv := &inventory{}
	tl, err := s.svc.ListTokens(ctx, &signerv1.ListTokensRequest{})
	if err != nil {
		return nil, err
	}
	kl, err := s.svc.ListKeys(ctx, &signerv1.ListKeysRequest{})
	if err != nil {
		return nil, err
	}
	rl, err := s.svc.ListCSRs(ctx, &signerv1.ListCSRsRequest{})
	if err != nil {
		return nil, err
	}
	cl, err := s.svc.ListCerts(ctx, &signerv1.ListCertsRequest{})
	if err != nil {
		return nil, err
	}
	inv.tokens, inv.keys, inv.csrs, inv.certs = tl.GetTokens(), kl.GetKeys(), rl.GetCsrs(), cl.GetCertificates()
	return inv, nil
}

// keyInfo describes key k with its certificates and requests.
func (inv *inventory) keyInfo(k *signerv1.Key, available bool) *xroadpb.KeyInfoProto {
	ki := &xroadpb.KeyInfoProto{Available: available, Usage: keyUsageOf(k.GetUsage()), Id: k.GetId(), PublicKey: base64.StdEncoding.EncodeToString(k.GetPublicKey()),
		SignMechanismName: keyMechanism(k)}
	if k.GetName() != "" {
		n := k.GetName()
		ki.FriendlyName = &n
	}
	if k.GetLabel() != "" {
		l := k.GetLabel()
		ki.Label = &l
	}
	for _, c := range inv.certs {
		if c.GetKeyId() == k.GetId() {
			ki.Certs = append(ki.Certs, certInfo(c))
		}
	}
	for _, r := range inv.csrs {
		if r.GetKeyId() == k.GetId() {
			ki.CertRequests = append(ki.CertRequests, &xroadpb.CertRequestInfoProto{Id: r.GetId(), MemberId: clientIDOf(r.GetMember()), SubjectName: r.GetSubject()})
		}
	}
	return ki
}

// tokenInfo describes token t with its keys.
func (inv *inventory) tokenInfo(t *signerv1.Token) *xroadpb.TokenInfoProto {
	ti := &xroadpb.TokenInfoProto{Type: "hardware", Id: t.GetName(), ReadOnly: false, Available: t.GetAvailable(), Active: t.GetLoggedIn(),
		Status: tokenStatusOf(t), TokenInfo: map[string]string{"Manufacturer": t.GetManufacturer(), "Model": t.GetModel(), "Module": t.GetModule()}}
	name, serial, label := t.GetName(), t.GetSerial(), t.GetLabel()
	ti.FriendlyName, ti.SerialNumber, ti.Label = &name, &serial, &label
	for _, k := range inv.keys {
		if k.GetToken() != t.GetName() || k.GetId() == signer.NoIDKeyRef {
			// Objects without CKA_ID (damaged) have no id X-Road could
			// name them by, and are never keys: signerctl lists them.
			continue
		}
		// A key that may not sign (damaged, or its attributes no longer
		// hold) is not available, as a key of a token logged out.
		ti.KeyInfo = append(ti.KeyInfo, inv.keyInfo(k, t.GetLoggedIn() && k.GetAttributeProblem() == ""))
	}
	return ti
}

// tokenStatusOf is X-Road's status of a token's user PIN.
func tokenStatusOf(t *signerv1.Token) xroadpb.TokenStatusInfo {
	switch p := t.GetPin(); {
	case p.GetLocked():
		return xroadpb.TokenStatusInfo_USER_PIN_LOCKED
	case p.GetFinalTry():
		return xroadpb.TokenStatusInfo_USER_PIN_FINAL_TRY
	case p.GetCountLow():
		return xroadpb.TokenStatusInfo_USER_PIN_COUNT_LOW
	case p.GetToBeChanged():
		return xroadpb.TokenStatusInfo_USER_PIN_EXPIRED
	}
	return xroadpb.TokenStatusInfo_OK
}

// token finds the token named id, or says it is unknown.
func (inv *inventory) token(id string) (*signerv1.Token, error) {
	for _, t := range inv.tokens {
		if t.GetName() == id {
			return t, nil
		}
	}
	return nil, codedError("TokenNotFound", "token_not_found", fmt.Sprintf("Token '%s' not found", id))
}

// tokenOfKey finds the token holding key id.
func (inv *inventory) tokenOfKey(id string) (*signerv1.Token, error) {
	id = strings.ToLower(id)
	for _, k := range inv.keys {
		if k.GetId() == id && id != signer.NoIDKeyRef {
			return inv.token(k.GetToken())
		}
	}
	return nil, codedError(faultKeyNotFound, "key_not_found", fmt.Sprintf("Key '%s' not found", id))
}

// withInventory runs fn on the inventory for a caller admitted as admin
// under the signer.v1 method fullMethod.
func withInventory[T any](ctx context.Context, s *Server, fullMethod, xroadMethod string, fn func(inv *inventory) (T, error)) (T, error) {
	return call(ctx, s, fullMethod, xroadMethod, nil, func(ctx context.Context) (T, error) {
		inv, err := s.readInventory(ctx)
		if err != nil {
			var zero T
			return zero, err
		}
		return fn(inv)
	})
}

// ListTokens describes every configured token with its keys, their
// certificates and requests.
func (t *tokenService) ListTokens(ctx context.Context, _ *xroadpb.Empty) (*xroadpb.ListTokensResp, error) {
	out, err := withInventory(ctx, t.s, signerv1.Signer_ListTokens_FullMethodName, xroadpb.TokenService_ListTokens_FullMethodName, func(inv *inventory) (*xroadpb.ListTokensResp, error) {
		r := &xroadpb.ListTokensResp{}
		for _, tok := range inv.tokens {
			r.Tokens = append(r.Tokens, inv.tokenInfo(tok))
		}
		return r, nil
	})
	return out, xroadErr(err, faultInternal)
}

// GetTokenById describes one token by its configured name.
func (t *tokenService) GetTokenById(ctx context.Context, req *xroadpb.GetTokenByIdReq) (*xroadpb.TokenInfoProto, error) {
	out, err := withInventory(ctx, t.s, signerv1.Signer_GetToken_FullMethodName, xroadpb.TokenService_GetTokenById_FullMethodName, func(inv *inventory) (*xroadpb.TokenInfoProto, error) {
		tok, err := inv.token(req.GetTokenId())
		if err != nil {
			return nil, err
		}
		return inv.tokenInfo(tok), nil
	})
	return out, xroadErr(err, "TokenNotFound")
}

// GetTokenByKey describes the token holding a key.
func (t *tokenService) GetTokenByKey(ctx context.Context, req *xroadpb.GetTokenByKeyIdReq) (*xroadpb.TokenInfoProto, error) {
	out, err := withInventory(ctx, t.s, signerv1.Signer_GetToken_FullMethodName, xroadpb.TokenService_GetTokenByKey_FullMethodName, func(inv *inventory) (*xroadpb.TokenInfoProto, error) {
		tok, err := inv.tokenOfKey(req.GetKeyId())
		if err != nil {
			return nil, err
		}
		return inv.tokenInfo(tok), nil
	})
	return out, xroadErr(err, faultKeyNotFound)
}

// GetTokenAndKeyIdByCertRequestId describes the token and key of a
// certificate request.
func (t *tokenService) GetTokenAndKeyIdByCertRequestId(ctx context.Context, req *xroadpb.GetTokenByCertRequestIdReq) (*xroadpb.TokenInfoAndKeyIdProto, error) {
	out, err := withInventory(ctx, t.s, signerv1.Signer_GetCSR_FullMethodName, xroadpb.TokenService_GetTokenAndKeyIdByCertRequestId_FullMethodName, func(inv *inventory) (*xroadpb.TokenInfoAndKeyIdProto, error) {
		for _, r := range inv.csrs {
			if r.GetId() == req.GetCertRequestId() {
				tok, err := inv.tokenOfKey(r.GetKeyId())
				if err != nil {
					return nil, err
				}
				return &xroadpb.TokenInfoAndKeyIdProto{TokenInfo: inv.tokenInfo(tok), KeyId: r.GetKeyId()}, nil
			}
		}
		return nil, codedError("CsrNotFound", "csr_not_found", fmt.Sprintf("Certificate request '%s' not found", req.GetCertRequestId()))
	})
	return out, xroadErr(err, "CsrNotFound")
}

// GetTokenAndKeyIdByCertHash describes the token and key of a
// certificate by SHA-256 (or SHA-1) hex.
func (t *tokenService) GetTokenAndKeyIdByCertHash(ctx context.Context, req *xroadpb.GetTokenByCertHashReq) (*xroadpb.TokenInfoAndKeyIdProto, error) {
	out, err := withInventory(ctx, t.s, signerv1.Signer_GetCert_FullMethodName, xroadpb.TokenService_GetTokenAndKeyIdByCertHash_FullMethodName, func(inv *inventory) (*xroadpb.TokenInfoAndKeyIdProto, error) {
		h := strings.ToLower(req.GetCertHash())
		for _, c := range inv.certs {
			if c.GetSha256() == h || c.GetSha1() == h {
				tok, err := inv.tokenOfKey(c.GetKeyId())
				if err != nil {
					return nil, err
				}
				return &xroadpb.TokenInfoAndKeyIdProto{TokenInfo: inv.tokenInfo(tok), KeyId: c.GetKeyId()}, nil
			}
		}
		return nil, codedError(faultCertNotFound, "cert_with_hash_not_found", fmt.Sprintf("Certificate with hash '%s' not found", h))
	})
	return out, xroadErr(err, faultCertNotFound)
}

// ActivateToken logs a token in with the PIN given, or out.
func (t *tokenService) ActivateToken(ctx context.Context, req *xroadpb.ActivateTokenReq) (*xroadpb.Empty, error) {
	if !req.GetActivate() {
		r := &signerv1.LogoutTokenRequest{Token: req.GetTokenId()}
		_, err := call(ctx, t.s, signerv1.Signer_LogoutToken_FullMethodName, xroadpb.TokenService_ActivateToken_FullMethodName, r,
			func(ctx context.Context) (*signerv1.Token, error) { return t.s.svc.LogoutToken(ctx, r) })
		return &xroadpb.Empty{}, xroadErr(err, "TokenNotFound")
	}
	r := &signerv1.LoginTokenRequest{Token: req.GetTokenId(), Pin: []byte(req.GetPin())}
	defer clear(r.Pin)
	_, err := call(ctx, t.s, signerv1.Signer_LoginToken_FullMethodName, xroadpb.TokenService_ActivateToken_FullMethodName, r,
		func(ctx context.Context) (*signerv1.Token, error) { return t.s.svc.LoginToken(ctx, r) })
	if err != nil {
		if st := status.Convert(err); strings.Contains(st.Message(), "PIN") && st.Code() == codes.FailedPrecondition {
			return nil, codedError("PinIncorrect", "pin_incorrect", st.Message())
		}
		return nil, xroadErr(err, "TokenNotFound")
	}
	return &xroadpb.Empty{}, nil
}

// SetTokenFriendlyName is not served: a token's name is its name in
// signerd.toml.
func (t *tokenService) SetTokenFriendlyName(context.Context, *xroadpb.SetTokenFriendlyNameReq) (*xroadpb.Empty, error) {
	return nil, unimplemented("SetTokenFriendlyName", "a token's name is the one [[module.token]] gives it in signerd.toml")
}

// InitSoftwareToken is not served: signerd keeps keys in HSMs.
func (t *tokenService) InitSoftwareToken(context.Context, *xroadpb.InitSoftwareTokenReq) (*xroadpb.Empty, error) {
	return nil, unimplemented("InitSoftwareToken", "signerd keeps keys in PKCS#11 tokens, not in a software token; initialise the HSM token with its own tools")
}

// UpdateSoftwareTokenPin is not served: signerd has no software token.
func (t *tokenService) UpdateSoftwareTokenPin(context.Context, *xroadpb.UpdateSoftwareTokenPinReq) (*xroadpb.Empty, error) {
	return nil, unimplemented("UpdateSoftwareTokenPin", "signerd has no software token; change an HSM token's PIN with signerctl token change-pin")
}

// GenerateKey is not served: signerd records a key's usage when it
// makes the key, and X-Road names the usage only later, in its request.
func (k *keyService) GenerateKey(context.Context, *xroadpb.GenerateKeyReq) (*xroadpb.KeyInfoProto, error) {
	return nil, unimplemented("GenerateKey", "signerd records a key's usage (sign or auth) when it generates the key, which X-Road gives only with the certificate request; generate it with signerctl key generate --usage sign")
}

// SetKeyFriendlyName sets a key's friendly name.
func (k *keyService) SetKeyFriendlyName(ctx context.Context, req *xroadpb.SetKeyFriendlyNameReq) (*xroadpb.Empty, error) {
	r := &signerv1.RenameKeyRequest{KeyId: req.GetKeyId(), Name: req.GetFriendlyName()}
	_, err := call(ctx, k.s, signerv1.Signer_RenameKey_FullMethodName, xroadpb.KeyService_SetKeyFriendlyName_FullMethodName, r,
		func(ctx context.Context) (*signerv1.Key, error) { return k.s.svc.RenameKey(ctx, r) })
	return &xroadpb.Empty{}, xroadErr(err, faultKeyNotFound)
}

// GetSignMechanism names a key's sign mechanism.
func (k *keyService) GetSignMechanism(ctx context.Context, req *xroadpb.GetSignMechanismReq) (*xroadpb.GetSignMechanismResp, error) {
	r := &signerv1.GetKeyRequest{KeyId: req.GetKeyId()}
	key, err := call(ctx, k.s, signerv1.Signer_GetKey_FullMethodName, xroadpb.KeyService_GetSignMechanism_FullMethodName, r,
		func(ctx context.Context) (*signerv1.Key, error) { return k.s.svc.GetKey(ctx, r) })
	if err != nil {
		return nil, xroadErr(err, faultKeyNotFound)
	}
	return &xroadpb.GetSignMechanismResp{SignMechanismName: keyMechanism(key)}, nil
}

// SignCertificate is not served.
func (k *keyService) SignCertificate(context.Context, *xroadpb.SignCertificateReq) (*xroadpb.SignCertificateResp, error) {
	return nil, unimplemented("SignCertificate", "signerd signs digests with member keys; it issues no certificates (X-Road uses this for its own internal TLS certificates)")
}

// DeleteKey destroys a key on its token, with its certificates and
// requests. Deleting only X-Road's record of it, keeping the key on the
// device, is refused: signerd's record and the key go together.
func (k *keyService) DeleteKey(ctx context.Context, req *xroadpb.DeleteKeyReq) (*xroadpb.Empty, error) {
	if !req.GetDeleteFromDevice() {
		return nil, unimplemented("DeleteKey without delete_from_device", "signerd keeps no record of a key apart from the key itself; delete it from the device, or leave it")
	}
	r := &signerv1.DeleteKeyRequest{KeyId: req.GetKeyId(), Force: true}
	_, err := call(ctx, k.s, signerv1.Signer_DeleteKey_FullMethodName, xroadpb.KeyService_DeleteKey_FullMethodName, r,
		func(ctx context.Context) (*signerv1.DeleteKeyResponse, error) { return k.s.svc.DeleteKey(ctx, r) })
	return &xroadpb.Empty{}, xroadErr(err, faultKeyNotFound)
}

// ActivateCert activates or deactivates a certificate by id (SHA-1 hex)
// or hash.
func (c *certificateService) ActivateCert(ctx context.Context, req *xroadpb.ActivateCertReq) (*xroadpb.Empty, error) {
	r := &signerv1.CertRef{Hash: strings.ToLower(req.GetCertIdOrHash())}
	fm, fn := signerv1.Signer_ActivateCert_FullMethodName, c.s.svc.ActivateCert
	if !req.GetActive() {
		fm, fn = signerv1.Signer_DeactivateCert_FullMethodName, c.s.svc.DeactivateCert
	}
	_, err := call(ctx, c.s, fm, xroadpb.CertificateService_ActivateCert_FullMethodName, r,
		func(ctx context.Context) (*signerv1.Certificate, error) { return fn(ctx, r) })
	return &xroadpb.Empty{}, xroadErr(err, faultCertNotFound)
}

// GetCertificateInfoForHash describes a certificate by SHA-256 (or
// SHA-1) hex.
func (c *certificateService) GetCertificateInfoForHash(ctx context.Context, req *xroadpb.GetCertificateInfoForHashReq) (*xroadpb.GetCertificateInfoResp, error) {
	r := &signerv1.CertRef{Hash: strings.ToLower(req.GetCertHash())}
	cert, err := call(ctx, c.s, signerv1.Signer_GetCert_FullMethodName, xroadpb.CertificateService_GetCertificateInfoForHash_FullMethodName, r,
		func(ctx context.Context) (*signerv1.Certificate, error) { return c.s.svc.GetCert(ctx, r) })
	if err != nil {
		return nil, xroadErr(err, faultCertNotFound)
	}
	return &xroadpb.GetCertificateInfoResp{CertificateInfo: certInfo(cert)}, nil
}

// GetMemberCerts lists a member's certificates.
func (c *certificateService) GetMemberCerts(ctx context.Context, req *xroadpb.GetMemberCertsReq) (*xroadpb.GetMemberCertsResp, error) {
	member, err := memberOf(req.GetMemberId())
	if err != nil {
		return nil, err
	}
	r := &signerv1.ListCertsRequest{Member: member}
	l, err := call(ctx, c.s, signerv1.Signer_ListCerts_FullMethodName, xroadpb.CertificateService_GetMemberCerts_FullMethodName, r,
		func(ctx context.Context) (*signerv1.ListCertsResponse, error) { return c.s.svc.ListCerts(ctx, r) })
	if err != nil {
		return nil, xroadErr(err, faultCertNotFound)
	}
	out := &xroadpb.GetMemberCertsResp{}
	for _, cert := range l.GetCertificates() {
		out.Certs = append(out.Certs, certInfo(cert))
	}
	return out, nil
}

// SetCertStatus records a certificate's registration status, in X-Road's
// words ("registration in progress", "registered", …).
func (c *certificateService) SetCertStatus(ctx context.Context, req *xroadpb.SetCertStatusReq) (*xroadpb.Empty, error) {
	st, ok := certStatusOf(req.GetStatus())
	if !ok {
		return nil, codedError(faultInvalid, "invalid_cert_status", fmt.Sprintf("certificate status %q is none of X-Road's (saved, registration in progress, registered, deletion in progress, global error)", req.GetStatus()))
	}
	r := &signerv1.SetCertStatusRequest{Hash: strings.ToLower(req.GetCertId()), Status: st}
	_, err := call(ctx, c.s, signerv1.Signer_SetCertStatus_FullMethodName, xroadpb.CertificateService_SetCertStatus_FullMethodName, r,
		func(ctx context.Context) (*signerv1.Certificate, error) { return c.s.svc.SetCertStatus(ctx, r) })
	return &xroadpb.Empty{}, xroadErr(err, faultCertNotFound)
}

// SetRenewedCertHash is not served: signerd does not renew certificates
// by ACME.
func (c *certificateService) SetRenewedCertHash(context.Context, *xroadpb.SetRenewedCertHashReq) (*xroadpb.Empty, error) {
	return nil, unimplemented("SetRenewedCertHash", "automatic certificate renewal (ACME) is not served; renew through a certificate request")
}

// SetRenewalError is not served, as SetRenewedCertHash.
func (c *certificateService) SetRenewalError(context.Context, *xroadpb.SetRenewalErrorReq) (*xroadpb.Empty, error) {
	return nil, unimplemented("SetRenewalError", "automatic certificate renewal (ACME) is not served")
}

// SetNextPlannedRenewal is not served, as SetRenewedCertHash.
func (c *certificateService) SetNextPlannedRenewal(context.Context, *xroadpb.SetNextPlannedRenewalReq) (*xroadpb.Empty, error) {
	return nil, unimplemented("SetNextPlannedRenewal", "automatic certificate renewal (ACME) is not served")
}

// csrFormat is the signer.v1 format of X-Road's.
func csrFormat(f xroadpb.CertificateRequestFormat) signerv1.CsrFormat {
	if f == xroadpb.CertificateRequestFormat_DER {
		return signerv1.CsrFormat_CSR_FORMAT_DER
	}
	return signerv1.CsrFormat_CSR_FORMAT_PEM
}

// GenerateCertRequest makes a certificate request for a key, signed in
// the HSM. The key's usage must be the one asked: signerd records it when
// it makes the key.
func (c *certificateService) GenerateCertRequest(ctx context.Context, req *xroadpb.GenerateCertRequestReq) (*xroadpb.GenerateCertRequestResp, error) {
	r := &signerv1.GenerateCSRRequest{KeyId: req.GetKeyId(), Subject: req.GetSubjectName(), Format: csrFormat(req.GetFormat())}
	if req.MemberId != nil {
		m, err := memberOf(req.GetMemberId())
		if err != nil {
			return nil, err
		}
		r.Member = m
	}
	for _, san := range strings.Split(req.GetSubjectAltName(), ",") {
		if san = strings.TrimSpace(san); san != "" {
			r.DnsNames = append(r.DnsNames, strings.TrimPrefix(san, "DNS:"))
		}
	}
	csr, err := call(ctx, c.s, signerv1.Signer_GenerateCSR_FullMethodName, xroadpb.CertificateService_GenerateCertRequest_FullMethodName, r,
		func(ctx context.Context) (*signerv1.CSR, error) {
			if want := req.GetKeyUsage(); want != xroadpb.KeyUsageInfo_KEY_USAGE_UNSPECIFIED {
				key, err := c.s.svc.GetKey(ctx, &signerv1.GetKeyRequest{KeyId: r.GetKeyId()})
				if err != nil {
					return nil, err
				}
				if keyUsageOf(key.GetUsage()) != want {
					return nil, status.Errorf(codes.FailedPrecondition, "key %s has usage %s, not %s: signerd records a key's usage when it generates it", key.GetId(), key.GetUsage(), want)
				}
			}
			return c.s.svc.GenerateCSR(ctx, r)
		})
	if err != nil {
		return nil, xroadErr(err, faultKeyNotFound)
	}
	return &xroadpb.GenerateCertRequestResp{CertReqId: csr.GetId(), CertRequest: csr.GetCsr(), Format: req.GetFormat()}, nil
}

// RegenerateCertRequest returns a kept request again, in the format asked.
func (c *certificateService) RegenerateCertRequest(ctx context.Context, req *xroadpb.RegenerateCertRequestReq) (*xroadpb.RegenerateCertRequestResp, error) {
	r := &signerv1.GetCSRRequest{Id: req.GetCertRequestId(), Format: csrFormat(req.GetFormat())}
	csr, err := call(ctx, c.s, signerv1.Signer_GetCSR_FullMethodName, xroadpb.CertificateService_RegenerateCertRequest_FullMethodName, r,
		func(ctx context.Context) (*signerv1.CSR, error) { return c.s.svc.GetCSR(ctx, r) })
	if err != nil {
		return nil, xroadErr(err, "CsrNotFound")
	}
	return &xroadpb.RegenerateCertRequestResp{CertReqId: csr.GetId(), CertRequest: csr.GetCsr(), Format: req.GetFormat(),
		MemberId: clientIDOf(csr.GetMember()), KeyUsage: keyUsageOf(csr.GetUsage())}, nil
}

// DeleteCert deletes a certificate by id (SHA-1 hex) or hash.
func (c *certificateService) DeleteCert(ctx context.Context, req *xroadpb.DeleteCertReq) (*xroadpb.Empty, error) {
	r := &signerv1.CertRef{Hash: strings.ToLower(req.GetCertId())}
	_, err := call(ctx, c.s, signerv1.Signer_DeleteCert_FullMethodName, xroadpb.CertificateService_DeleteCert_FullMethodName, r,
		func(ctx context.Context) (*signerv1.DeleteCertResponse, error) { return c.s.svc.DeleteCert(ctx, r) })
	return &xroadpb.Empty{}, xroadErr(err, faultCertNotFound)
}

// DeleteCertRequest deletes a kept certificate request.
func (c *certificateService) DeleteCertRequest(ctx context.Context, req *xroadpb.DeleteCertRequestReq) (*xroadpb.Empty, error) {
	r := &signerv1.DeleteCSRRequest{Id: req.GetCertRequestId()}
	_, err := call(ctx, c.s, signerv1.Signer_DeleteCSR_FullMethodName, xroadpb.CertificateService_DeleteCertRequest_FullMethodName, r,
		func(ctx context.Context) (*signerv1.DeleteCSRResponse, error) { return c.s.svc.DeleteCSR(ctx, r) })
	return &xroadpb.Empty{}, xroadErr(err, "CsrNotFound")
}

// ImportCert imports a certificate for its key, with X-Road's initial
// status, and names the key.
func (c *certificateService) ImportCert(ctx context.Context, req *xroadpb.ImportCertReq) (*xroadpb.ImportCertResp, error) {
	st := signerv1.CertStatus_CERT_STATUS_SAVED
	if req.GetInitialStatus() != "" {
		var ok bool
		if st, ok = certStatusOf(req.GetInitialStatus()); !ok {
			return nil, codedError(faultInvalid, "invalid_cert_status", fmt.Sprintf("initial status %q is none of X-Road's", req.GetInitialStatus()))
		}
	}
	r := &signerv1.ImportCertRequest{Certificate: req.GetCertData()}
	if req.MemberId != nil {
		m, err := memberOf(req.GetMemberId())
		if err != nil {
			return nil, err
		}
		r.Member = m
	}
	cert, err := call(ctx, c.s, signerv1.Signer_ImportCert_FullMethodName, xroadpb.CertificateService_ImportCert_FullMethodName, r,
		func(ctx context.Context) (*signerv1.Certificate, error) {
			cert, err := c.s.svc.ImportCert(ctx, r)
			if err != nil || st == signerv1.CertStatus_CERT_STATUS_SAVED {
				return cert, err
			}
			return c.s.svc.SetCertStatus(ctx, &signerv1.SetCertStatusRequest{Hash: cert.GetSha256(), Status: st})
		})
	if err != nil {
		return nil, xroadErr(err, faultKeyNotFound)
	}
	return &xroadpb.ImportCertResp{KeyId: cert.GetKeyId()}, nil
}

// GenerateSelfSignedCert is not served.
func (c *certificateService) GenerateSelfSignedCert(context.Context, *xroadpb.GenerateSelfSignedCertReq) (*xroadpb.GenerateSelfSignedCertResp, error) {
	return nil, unimplemented("GenerateSelfSignedCert", "signerd issues no certificates; have the CA certify the key's request")
}

// xroadErr turns a signer.v1 error, or one already in X-Road's form, into
// X-Road's form; nil stays nil.
func xroadErr(err error, notFound string) error {
	if err == nil {
		return nil
	}
	if st, ok := status.FromError(err); ok && st.Code() == codes.Internal && len(st.Details()) > 0 {
		return err // already coded
	}
	return fromSigner(err, notFound)
}
