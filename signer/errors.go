package signer

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hsmsigner/hsmsigner/hsm"
	"github.com/hsmsigner/hsmsigner/signer/state"
)

// Errors of the service itself; HSM and state errors are passed through
// wrapped.
var (
	// ErrPermission means the access policy refuses the caller.
	ErrPermission = errors.New("permission denied")
	// ErrUnknownToken means no configured token has that name.
	ErrUnknownToken = errors.New("unknown token")
	// ErrInvalid means a request field is malformed.
	ErrInvalid = errors.New("invalid request")
	// ErrTooLarge means a request exceeds a configured limit.
	ErrTooLarge = errors.New("request too large")
	// ErrAudit means the audit line could not be written; the operation's
	// result is withheld.
	ErrAudit = errors.New("audit log unavailable")
	// ErrPrecondition means the request is well-formed but the state of
	// the key, token or certificate does not allow it.
	ErrPrecondition = errors.New("failed precondition")
	// ErrUpstream means no external TSA gave a token that verifies.
	ErrUpstream = errors.New("the external TSAs gave no token")
)

// codeOf maps an error to the gRPC code that says what it means.
func codeOf(err error) codes.Code {
	switch {
	case err == nil:
		return codes.OK
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		return codes.Canceled
	case errors.Is(err, ErrPermission):
		return codes.PermissionDenied
	case errors.Is(err, ErrTooLarge), errors.Is(err, ErrLimit):
		return codes.ResourceExhausted
	case errors.Is(err, hsm.ErrUnavailable):
		// Before NOT_FOUND: an HSM that vanished is down with "token not
		// found" as its reason, which is no answer about the key.
		return codes.Unavailable
	case errors.Is(err, hsm.ErrKeyNotFound), errors.Is(err, hsm.ErrTokenNotFound), errors.Is(err, hsm.ErrCertNotFound),
		errors.Is(err, ErrUnknownToken), errors.Is(err, state.ErrNotFound):
		return codes.NotFound
	case errors.Is(err, hsm.ErrKeyExists), errors.Is(err, state.ErrExists):
		return codes.AlreadyExists
	case errors.Is(err, hsm.ErrDigestLength), errors.Is(err, hsm.ErrAlgorithm), errors.Is(err, hsm.ErrInvalidArgument),
		errors.Is(err, hsm.ErrInvalidURI), errors.Is(err, ErrInvalid), errors.Is(err, state.ErrInvalid):
		return codes.InvalidArgument
	case errors.Is(err, hsm.ErrNotLoggedIn), errors.Is(err, hsm.ErrPINIncorrect), errors.Is(err, hsm.ErrPINLocked),
		errors.Is(err, hsm.ErrPINInvalid), errors.Is(err, hsm.ErrPINExpired), errors.Is(err, hsm.ErrAlreadyLoggedIn),
		errors.Is(err, ErrPrecondition), errors.Is(err, state.ErrAmbiguous), errors.Is(err, hsm.ErrKeyAttributes):
		return codes.FailedPrecondition
	case errors.Is(err, hsm.ErrSessionWait):
		return codes.ResourceExhausted
	case errors.Is(err, hsm.ErrUnavailable), errors.Is(err, hsm.ErrClosed), errors.Is(err, ErrAudit), errors.Is(err, state.ErrWrite), errors.Is(err, hsm.ErrBadSignature),
		errors.Is(err, ErrUpstream):
		return codes.Unavailable
	}
	return codes.Internal
}

// toStatus turns err into a gRPC status error with a human message.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Error(codeOf(err), err.Error())
}
