package xroad

import (
	"context"
	"crypto/sha1"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"software.sslmate.com/src/go-pkcs12"

	"github.com/hsmsigner/hsmsigner/signer"
	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/config"
	"github.com/hsmsigner/hsmsigner/signer/peercred"
	"github.com/hsmsigner/hsmsigner/signer/xroad/xroadpb"
)

// Sign mechanisms as X-Road names them (PKCS#11 mechanism names).
const (
	mechRSAPKCS = "CKM_RSA_PKCS"
	mechRSAPSS  = "CKM_RSA_PKCS_PSS"
	mechECDSA   = "CKM_ECDSA"
)

// Server serves X-Road's signer protocol for a signer.Service.
type Server struct {
	svc *signer.Service
	cfg config.XRoad
	log *slog.Logger
	gs  *grpc.Server
}

// Options are what New needs besides the configuration.
type Options struct {
	// Logger receives the listener's logs; nil discards them.
	Logger *slog.Logger
	// MaxMessageBytes bounds a request; 0 leaves the Service's bound,
	// [server] max_message_bytes.
	MaxMessageBytes int
}

// New makes the X-Road listener of cfg for svc: it reads the keystore
// (unless cfg.InsecureLoopback) and registers X-Road's four services.
//
// The listener is bounded as the gRPC socket is, with the same counts
// (signer.Service.ListenerOptions and OpenConnection): each connection is
// counted under its caller's uid as soon as the kernel names it, before
// TLS, at most [limits] connections_per_uid over this listener and
// signerd's sockets together (a caller from another machine, which the
// kernel names no uid for, only once its TLS handshake has shown a
// keystore certificate: until then it counts among its address's
// handshakes in progress, at most connections_per_uid); each call among its uid's calls in
// progress from its headers ([limits] calls_per_uid, shared with the
// gRPC socket); at most [server] max_concurrent_streams calls on one
// connection; fixed 1 MiB flow-control windows; and [limits]
// handshake_timeout, idle_timeout, min_ping_interval and
// max_header_list_bytes.
func New(ctx context.Context, svc *signer.Service, cfg config.XRoad, opts Options) (*Server, error) {
	if cfg.Listen == "" {
		return nil, errors.New("xroad: no listen address")
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	tr := transport{identify: identifyCaller(peercred.FromTCPConn, cfg)}
	// Without a Service (a test of the listener's set-up) only the
	// handshake is bounded.
	gopts := []grpc.ServerOption{grpc.ConnectionTimeout(handshakeTimeout)}
	if svc != nil {
		tr.admit = func(ctx context.Context, p peercred.Peer) error {
			return svc.AdmitConnection(ctx, p, "X-Road connection")
		}
		tr.count = svc.OpenConnection
		tr.remote = &handshakes{max: svc.ConnectionsPerUID()}
		gopts = svc.ListenerOptions()
	}
	if !cfg.InsecureLoopback {
		cert, trusted, err := loadKeystore(ctx, cfg)
		if err != nil {
			return nil, err
		}
		tr.tls = credentials.NewTLS(serverTLS(cert, trusted))
	}
	s := &Server{svc: svc, cfg: cfg, log: log}
	gopts = append(gopts, grpc.Creds(tr))
	if opts.MaxMessageBytes > 0 {
		gopts = append(gopts, grpc.MaxRecvMsgSize(opts.MaxMessageBytes))
	}
	s.gs = grpc.NewServer(gopts...)
	xroadpb.RegisterTokenServiceServer(s.gs, &tokenService{s: s})
	xroadpb.RegisterKeyServiceServer(s.gs, &keyService{s: s})
	xroadpb.RegisterCertificateServiceServer(s.gs, &certificateService{s: s})
	xroadpb.RegisterOcspServiceServer(s.gs, &ocspService{s: s})
	return s, nil
}

// handshakeTimeout bounds the reading of a connection's uid from the
// kernel; with a Service, [limits] handshake_timeout bounds the whole
// set-up (the uid, the TLS handshake and HTTP/2's preface), else this
// does: a caller that connects and says nothing is let go after it, not
// after gRPC's two minutes. X-Road's proxy, on the same machine, needs
// milliseconds.
const handshakeTimeout = 10 * time.Second

// identifyCaller names the caller of a connection: the process the kernel
// names for a loopback connection, the configured remote_uid for another
// (only with allow_non_loopback), else a refusal.
func identifyCaller(id func(context.Context, net.Conn) (peercred.Peer, error), cfg config.XRoad) func(context.Context, net.Conn) (peercred.Peer, error) {
	return func(ctx context.Context, conn net.Conn) (peercred.Peer, error) {
		ap, err := netip.ParseAddrPort(conn.RemoteAddr().String())
		if err != nil {
			return peercred.Peer{}, fmt.Errorf("remote address %q: %w", conn.RemoteAddr(), err)
		}
		if !ap.Addr().Unmap().IsLoopback() {
			if !cfg.AllowNonLoopback {
				return peercred.Peer{}, fmt.Errorf("%s is not a loopback address", ap.Addr())
			}
			return peercred.Peer{UID: cfg.RemoteUID, GID: ^uint32(0), PID: -1}, nil
		}
		return id(ctx, conn)
	}
}

// Serve serves l until Stop or GracefulStop.
func (s *Server) Serve(l net.Listener) error {
	if err := s.gs.Serve(l); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("X-Road listener: %w", err)
	}
	return nil
}

// GracefulStop stops accepting calls and waits for those in flight.
func (s *Server) GracefulStop() { s.gs.GracefulStop() }

// Stop ends every call at once.
func (s *Server) Stop() { s.gs.Stop() }

// call runs fn as the signer.v1 method fullMethod for the caller of ctx,
// counted under the X-Road method xroadMethod; see signer.Call.
func call[T any](ctx context.Context, s *Server, fullMethod, xroadMethod string, req any, fn func(ctx context.Context) (T, error)) (T, error) {
	p, err := peercred.FromContext(ctx)
	if err != nil {
		var zero T
		return zero, codedError(faultAccessDenied, "access_denied", "no caller identity on this connection")
	}
	return signer.Call(ctx, s.svc, p, fullMethod, xroadMethod, req, fn)
}

// memberOf spells an X-Road client id as signerd's member identifiers:
// INSTANCE/CLASS/CODE. A subsystem signs with its member's certificate,
// as in X-Road, so its code is left out. Each part is refused as signerd's
// policy refuses a member: empty, longer than 255 bytes, with '/', a space
// or a control character (which would also reach X-Road's logs through
// the error's message), or not UTF-8.
func memberOf(id *xroadpb.ClientIdProto) (string, error) {
	parts := []string{id.GetXroadInstance(), id.GetMemberClass(), id.GetMemberCode()}
	for _, p := range parts {
		if p == "" || len(p) > 255 || !utf8.ValidString(p) || strings.ContainsFunc(p, func(r rune) bool { return r <= ' ' || r == 0x7f || r == '/' }) {
			return "", codedError(faultInvalid, "invalid_member_id", fmt.Sprintf("member id %q/%q/%q: each part must be present, at most 255 bytes, without '/', spaces or control characters", parts[0], parts[1], parts[2]))
		}
	}
	return strings.Join(parts, "/"), nil
}

// mechanismOf is the X-Road sign mechanism of a signer.v1 algorithm.
func mechanismOf(alg string) string {
	switch {
	case strings.Contains(alg, "ECDSA") || strings.HasPrefix(alg, "ES"):
		return mechECDSA
	case strings.Contains(alg, "MGF1") || strings.HasPrefix(alg, "PS"):
		return mechRSAPSS
	}
	return mechRSAPKCS
}

// certHashSHA1 is X-Road's hash of a certificate: SHA-1, lower-case hex.
func certHashSHA1(der []byte) string {
	h := sha1.Sum(der)
	return hex.EncodeToString(h[:])
}

// tokenService is X-Road's TokenService.
type tokenService struct {
	xroadpb.UnimplementedTokenServiceServer
	s *Server
}

// GetMemberSigningInfo answers with the member's signing key and its
// newest usable certificate, with its OCSP response (signer.v1
// GetSigningInfo).
func (t *tokenService) GetMemberSigningInfo(ctx context.Context, req *xroadpb.GetMemberSigningInfoReq) (*xroadpb.GetMemberSigningInfoResp, error) {
	member, err := memberOf(req.GetMemberId())
	if err != nil {
		return nil, err
	}
	r := &signerv1.GetSigningInfoRequest{Member: member}
	si, err := call(ctx, t.s, signerv1.Signer_GetSigningInfo_FullMethodName, xroadpb.TokenService_GetMemberSigningInfo_FullMethodName, r,
		func(ctx context.Context) (*signerv1.SigningInfo, error) { return t.s.svc.GetSigningInfo(ctx, r) })
	if err != nil {
		st := status.Convert(err)
		switch {
		case st.Code() != codes.FailedPrecondition:
			return nil, fromSigner(err, faultUnknownMember)
		case strings.Contains(st.Message(), "has no sign certificate"):
			return nil, codedError(faultUnknownMember, "member_certs_not_found", fmt.Sprintf("Could not find any certificates for member '%s': %s", member, st.Message()))
		}
		return nil, codedError(faultInternal, "member_has_no_suitable_certs", fmt.Sprintf("Member '%s' has no suitable certificates: %s", member, st.Message()))
	}
	return &xroadpb.GetMemberSigningInfoResp{
		KeyId: si.GetKeyId(),
		Cert: &xroadpb.CertificateInfoProto{MemberId: req.GetMemberId(), Active: true, SavedToConfiguration: true, Status: "registered",
			Id: certHashSHA1(si.GetCertificate()), CertificateBytes: si.GetCertificate(), OcspBytes: si.GetOcspResponse()},
		SignMechanismName: mechanismOf(si.GetAlgorithm()),
	}, nil
}

// GetTokenBatchSigningEnabled answers true for a key the caller may use:
// every token signerd serves signs batches.
func (t *tokenService) GetTokenBatchSigningEnabled(ctx context.Context, req *xroadpb.GetTokenBatchSigningEnabledReq) (*xroadpb.GetTokenBatchSigningEnabledResp, error) {
	r := &signerv1.GetKeyRequest{KeyId: req.GetKeyId()}
	if _, err := call(ctx, t.s, signerv1.Signer_GetKey_FullMethodName, xroadpb.TokenService_GetTokenBatchSigningEnabled_FullMethodName, r,
		func(ctx context.Context) (*signerv1.Key, error) { return t.s.svc.GetKey(ctx, r) }); err != nil {
		return nil, fromSigner(err, faultKeyNotFound)
	}
	return &xroadpb.GetTokenBatchSigningEnabledResp{BatchingSigningEnabled: true}, nil
}

// GetHSMOperationalInfo answers true only while every module is ready and
// every configured token is available and logged in.
func (t *tokenService) GetHSMOperationalInfo(ctx context.Context, _ *xroadpb.Empty) (*xroadpb.GetHSMOperationalInfoResp, error) {
	r := &signerv1.GetStatusRequest{}
	st, err := call(ctx, t.s, signerv1.Signer_GetStatus_FullMethodName, xroadpb.TokenService_GetHSMOperationalInfo_FullMethodName, r,
		func(ctx context.Context) (*signerv1.Status, error) { return t.s.svc.GetStatus(ctx, r) })
	if err != nil {
		return nil, fromSigner(err, faultInternal)
	}
	ok := len(st.GetTokens()) > 0
	for _, m := range st.GetModules() {
		ok = ok && m.GetReady()
	}
	for _, tok := range st.GetTokens() {
		ok = ok && tok.GetAvailable() && tok.GetLoggedIn()
	}
	return &xroadpb.GetHSMOperationalInfoResp{Operational: ok}, nil
}

// keyService is X-Road's KeyService.
type keyService struct {
	xroadpb.UnimplementedKeyServiceServer
	s *Server
}

// Sign signs a digest with a key (signer.v1 Sign): X-Road's algorithm
// names are signer.v1's; RSA gets its DigestInfo added by signerd, ECDSA
// signatures are DER.
func (k *keyService) Sign(ctx context.Context, req *xroadpb.SignReq) (*xroadpb.SignResp, error) {
	r := &signerv1.SignRequest{Key: &signerv1.SignRequest_KeyId{KeyId: req.GetKeyId()}, Algorithm: req.GetSignatureAlgorithmId(), Digest: req.GetDigest()}
	resp, err := call(ctx, k.s, signerv1.Signer_Sign_FullMethodName, xroadpb.KeyService_Sign_FullMethodName, r,
		func(ctx context.Context) (*signerv1.SignResponse, error) { return k.s.svc.Sign(ctx, r) })
	if err != nil {
		return nil, fromSigner(err, faultKeyNotFound)
	}
	return &xroadpb.SignResp{Signature: resp.GetSignature()}, nil
}

// GetKeyIdForCertHash names the key of a certificate given by SHA-256 (or
// SHA-1) hex, and its sign mechanism (signer.v1 GetCert; admin).
func (k *keyService) GetKeyIdForCertHash(ctx context.Context, req *xroadpb.GetKeyIdForCertHashReq) (*xroadpb.GetKeyIdForCertHashResp, error) {
	r := &signerv1.CertRef{Hash: strings.ToLower(req.GetCertHash())}
	c, err := call(ctx, k.s, signerv1.Signer_GetCert_FullMethodName, xroadpb.KeyService_GetKeyIdForCertHash_FullMethodName, r,
		func(ctx context.Context) (*signerv1.Certificate, error) { return k.s.svc.GetCert(ctx, r) })
	if err != nil {
		return nil, fromSigner(err, faultCertNotFound)
	}
	mech := mechRSAPKCS
	if cert, err := x509.ParseCertificate(c.GetDer()); err == nil && cert.PublicKeyAlgorithm == x509.ECDSA {
		mech = mechECDSA
	}
	return &xroadpb.GetKeyIdForCertHashResp{KeyId: c.GetKeyId(), SignMechanismName: mech}, nil
}

// ocspService is X-Road's OcspService.
type ocspService struct {
	xroadpb.UnimplementedOcspServiceServer
	s *Server
}

// GetOcspResponses answers, for certificates by SHA-1 (or SHA-256) hex,
// their freshest good OCSP responses in base64; a certificate without one
// is left out of the map, as X-Road's signer does (signer.v1
// GetOCSPResponses).
func (o *ocspService) GetOcspResponses(ctx context.Context, req *xroadpb.GetOcspResponsesReq) (*xroadpb.GetOcspResponsesResp, error) {
	r := &signerv1.GetOCSPResponsesRequest{CertHashes: req.GetCertHash()}
	resp, err := call(ctx, o.s, signerv1.Signer_GetOCSPResponses_FullMethodName, xroadpb.OcspService_GetOcspResponses_FullMethodName, r,
		func(ctx context.Context) (*signerv1.GetOCSPResponsesResponse, error) {
			return o.s.svc.GetOCSPResponses(ctx, r)
		})
	if err != nil {
		return nil, fromSigner(err, faultCertNotFound)
	}
	out := &xroadpb.GetOcspResponsesResp{Base64EncodedResponses: map[string]string{}}
	for _, item := range resp.GetResponses() {
		if len(item.GetResponse()) > 0 {
			out.Base64EncodedResponses[item.GetCertHash()] = base64.StdEncoding.EncodeToString(item.GetResponse())
		}
	}
	return out, nil
}

// SetOcspResponses hands over responses a security server got from its
// peers (signer.v1 SetOCSPResponses): each is verified and kept only when
// newer than the one held; one that is refused is audited and left out,
// as a stale or foreign response should not fail the message exchange.
func (o *ocspService) SetOcspResponses(ctx context.Context, req *xroadpb.SetOcspResponsesReq) (*xroadpb.Empty, error) {
	if len(req.GetCertHashes()) != len(req.GetBase64EncodedResponses()) {
		return nil, codedError(faultInvalid, "invalid_request", fmt.Sprintf("%d certificate hashes and %d responses: the lists are parallel", len(req.GetCertHashes()), len(req.GetBase64EncodedResponses())))
	}
	r := &signerv1.SetOCSPResponsesRequest{}
	for i, h := range req.GetCertHashes() {
		der, err := base64.StdEncoding.DecodeString(req.GetBase64EncodedResponses()[i])
		if err != nil {
			return nil, codedError(faultInvalid, "invalid_request", fmt.Sprintf("response %d for %s is not base64: %v", i, h, err))
		}
		r.Responses = append(r.Responses, &signerv1.SetOCSPResponsesRequest_Item{CertHash: h, Response: der})
	}
	resp, err := call(ctx, o.s, signerv1.Signer_SetOCSPResponses_FullMethodName, xroadpb.OcspService_SetOcspResponses_FullMethodName, r,
		func(ctx context.Context) (*signerv1.SetOCSPResponsesResponse, error) {
			return o.s.svc.SetOCSPResponses(ctx, r)
		})
	if err != nil {
		return nil, fromSigner(err, faultCertNotFound)
	}
	for _, res := range resp.GetResults() {
		if res.GetError() != "" {
			o.s.log.Info("X-Road SetOcspResponses: a response was not kept", "cert", res.GetCertHash(), "reason", res.GetError())
		}
	}
	return &xroadpb.Empty{}, nil
}

// certificateService is X-Road's CertificateService.
type certificateService struct {
	xroadpb.UnimplementedCertificateServiceServer
	s *Server
}

// GetAuthKey tells X-Road's proxy where the security server's
// authentication key is: X-Road's proxy opens that key itself from its
// software token's PKCS#12 file, so it cannot live in the HSM without
// changing X-Road. signerd answers, as X-Road's signer does, with the
// configured file, its alias and the software token's PIN, and the
// certificate in the file with the OCSP response signerd holds for it
// (none unless signerd watches that certificate). Admitted as a client
// whose rules grant the usage auth (the answer holds the software token's
// PIN, which a client that only signs has no use for); each answer is
// audited (op xroad.auth_key), each refusal too (op denied).
func (k *keyService) GetAuthKey(ctx context.Context, req *xroadpb.GetAuthKeyReq) (*xroadpb.AuthKeyInfoProto, error) {
	cfg := k.s.cfg
	if cfg.AuthKeyFile == "" {
		return nil, codedError(faultKeyNotFound, "auth_key_not_found", "signerd serves no authentication key: set [xroad] auth_key_file and auth_key_password to X-Road's software token key file and PIN")
	}
	r := &signerv1.GetOCSPResponsesRequest{}
	out, err := call(ctx, k.s, signerv1.Signer_GetOCSPResponses_FullMethodName, xroadpb.KeyService_GetAuthKey_FullMethodName, r,
		func(ctx context.Context) (*xroadpb.AuthKeyInfoProto, error) {
			p, _ := peercred.FromContext(ctx)
			if !k.s.svc.MayUseUsage(p, signer.UsageAuth) {
				err := fmt.Errorf("%w: %s may not have the authentication key: no client rule grants it usage %s", signer.ErrPermission, p, signer.UsageAuth)
				return nil, k.s.svc.Audit(ctx, p, "denied", "xroad GetAuthKey server="+serverIDString(req.GetSecurityServer()), err)
			}
			info, err := k.authKey(ctx)
			if aerr := k.s.svc.Audit(ctx, p, "xroad.auth_key", "file="+cfg.AuthKeyFile+" server="+serverIDString(req.GetSecurityServer()), err); aerr != nil {
				return nil, aerr
			}
			return info, err
		})
	if err != nil {
		return nil, fromSigner(err, faultKeyNotFound)
	}
	return out, nil
}

// authKey reads the software token's key file for its certificate and
// finds the certificate's OCSP response.
func (k *keyService) authKey(ctx context.Context) (*xroadpb.AuthKeyInfoProto, error) {
	cfg := k.s.cfg
	pin, err := cfg.AuthKeyPassword.Read(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: auth_key_password: %w", signer.ErrPrecondition, err)
	}
	defer clear(pin)
	data, err := readSecretFile(cfg.AuthKeyFile, maxKeystoreBytes)
	if err != nil {
		return nil, fmt.Errorf("%w: auth_key_file: %w", signer.ErrPrecondition, err)
	}
	_, cert, _, err := pkcs12.DecodeChain(data, string(pin))
	if err != nil {
		return nil, fmt.Errorf("%w: auth_key_file %s: %w (is auth_key_password the software token's PIN?)", signer.ErrPrecondition, cfg.AuthKeyFile, err)
	}
	info := &xroadpb.AuthKeyInfoProto{
		Alias: strings.TrimSuffix(filepath.Base(cfg.AuthKeyFile), ".p12"), KeyStoreFileName: cfg.AuthKeyFile, Password: string(pin),
		Cert: &xroadpb.CertificateInfoProto{Active: true, SavedToConfiguration: true, Status: "registered", Id: certHashSHA1(cert.Raw), CertificateBytes: cert.Raw},
	}
	if resp, err := k.s.svc.GetOCSPResponses(ctx, &signerv1.GetOCSPResponsesRequest{CertHashes: []string{info.Cert.Id}}); err == nil && len(resp.GetResponses()) == 1 {
		info.Cert.OcspBytes = resp.GetResponses()[0].GetResponse()
	}
	return info, nil
}

// serverIDString spells a security server id for the audit line.
func serverIDString(id *xroadpb.SecurityServerIdProto) string {
	return strings.Join([]string{id.GetXroadInstance(), id.GetMemberClass(), id.GetMemberCode(), id.GetServerCode()}, "/")
}
