package xroad

import (
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"

	"github.com/hsmsigner/hsmsigner/signer/xroad/xroadpb"
)

// X-Road's error codes (ErrorCodes in X-Road's common module), prefixed
// with "Signer." as X-Road's signer translates them.
const (
	faultPrefix        = "Signer."
	faultInternal      = "InternalError"
	faultUnknownMember = "UnknownMember"
	faultKeyNotFound   = "KeyNotFound"
	faultCertNotFound  = "CertNotFound"
	faultTokenInactive = "TokenNotActive"
	faultAccessDenied  = "AccessDenied"
	faultInvalid       = "InvalidRequest"
	faultUnimplemented = "NotImplemented"
)

// codedError is an error as X-Road's signer returns it: gRPC INTERNAL
// whose status details hold a CodedExceptionProto with the fault code,
// the message and the code X-Road's UI translates.
func codedError(fault, translation, msg string) error {
	st := status.New(codes.Internal, msg)
	withDetails, err := st.WithDetails(protoadapt.MessageV1Of(&xroadpb.CodedExceptionProto{
		FaultCode: faultPrefix + fault, FaultString: msg, FaultDetail: "signerd", TranslationCode: translation,
	}))
	if err != nil {
		return st.Err()
	}
	return withDetails.Err()
}

// fromSigner turns an error of a signer.v1 method into X-Road's form:
// the signer.v1 code picks the fault code (notFound for NOT_FOUND, which
// depends on what was looked up), the message is kept.
func fromSigner(err error, notFound string) error {
	st := status.Convert(err)
	msg := st.Message()
	switch st.Code() {
	case codes.PermissionDenied, codes.Unauthenticated:
		return codedError(faultAccessDenied, "access_denied", msg)
	case codes.NotFound:
		return codedError(notFound, strings.ToLower(notFound), msg)
	case codes.InvalidArgument:
		return codedError(faultInvalid, "invalid_request", msg)
	case codes.FailedPrecondition:
		if strings.Contains(msg, "not logged in") {
			return codedError(faultTokenInactive, "token_not_active", msg)
		}
	case codes.Unimplemented:
		return codedError(faultUnimplemented, "not_implemented", msg)
	case codes.ResourceExhausted:
		// A request beyond a configured bound (ErrTooLarge) is the
		// caller's; a limit of calls or PINs is not.
		if strings.HasPrefix(msg, "request too large") {
			return codedError(faultInvalid, "invalid_request", msg)
		}
	}
	return codedError(faultInternal, "internal_error", msg)
}
