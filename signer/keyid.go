package signer

import (
	"context"
	"encoding/hex"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/audit"
)

// canonicalKeyID returns the one spelling of a key id given in hex:
// lower case, as the API, the state, the key cache and the audit log
// hold it.
func canonicalKeyID(idHex string) (string, error) {
	id, err := parseKeyID(idHex)
	if err != nil {
		return "", err
	}
	return hex.EncodeToString(id), nil
}

// normalizeKeyID puts the key_id field of a request, if it has one and it
// is set, in its one spelling, where the request enters the daemon: every
// later step (the policy, the key cache, the audit line) sees that
// spelling and no other. NoIDKeyRef, and a token named after
// TokenRefSep, pass in a DeleteKeyRequest alone.
// An id that is not hex is refused here
// (ErrInvalid), and the id as given is returned for the refusal's audit
// line.
func normalizeKeyID(req any) (given string, err error) {
	m, ok := req.(proto.Message)
	if !ok {
		return "", nil
	}
	r := m.ProtoReflect()
	if !r.IsValid() {
		return "", nil
	}
	fd := r.Descriptor().Fields().ByName("key_id")
	if fd == nil || fd.Kind() != protoreflect.StringKind || fd.IsList() || !r.Has(fd) {
		return "", nil
	}
	raw := r.Get(fd).String()
	if raw == "" {
		return "", nil // the handler says what is missing
	}
	ref, suffix := raw, ""
	if _, del := req.(*signerv1.DeleteKeyRequest); del {
		// A deletion may name the token after the id (see TokenRefSep),
		// and the damaged objects without an id (see NoIDKeyRef).
		if i := strings.Index(raw, TokenRefSep); i >= 0 {
			ref, suffix = raw[:i], raw[i:]
		}
		if ref == NoIDKeyRef {
			return raw, nil
		}
	}
	id, err := canonicalKeyID(ref)
	if err != nil {
		return raw, err
	}
	if id+suffix != raw {
		r.Set(fd, protoreflect.ValueOfString(id+suffix))
	}
	return id + suffix, nil
}

// refuseKeyID audits the refusal of a request whose key id is not one
// (op "invalid", the id as given, bounded by the audit log), unless the
// uid is beyond its refusals per second, and returns the refusal.
func (s *Service) refuseKeyID(ctx context.Context, c caller, method, given string, err error) error {
	if !s.limits.refusalLine(c.peer, "invalid") {
		return err
	}
	return s.audited(ctx, c, audit.Record{Op: "invalid", Key: given, Detail: method}, err)
}
