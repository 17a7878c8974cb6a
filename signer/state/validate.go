package state

import (
	"encoding/asn1"
	"encoding/hex"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Limits on stored fields.
const (
	maxTokenLen = 64   // PKCS#11 serialNumber is 16 characters; leave room
	maxIDBytes  = 128  // CKA_ID bytes (signerd uses 16)
	maxTextLen  = 1024 // labels, names, members, subjects, specs
	maxCSRIDLen = 128
)

// validToken checks a token serial: non-empty, no "/" (it separates the
// serial from the key id in bucket keys), no control characters, and no
// surrounding blanks (PKCS#11 pads serials with spaces; trim before use).
func validToken(s string) error {
	switch {
	case s == "":
		return fmt.Errorf("%w: empty token serial", ErrInvalid)
	case len(s) > maxTokenLen:
		return fmt.Errorf("%w: token serial longer than %d bytes", ErrInvalid, maxTokenLen)
	case strings.Contains(s, "/"):
		return fmt.Errorf("%w: token serial %q contains '/'", ErrInvalid, s)
	case strings.TrimSpace(s) != s:
		return fmt.Errorf("%w: token serial %q has surrounding blanks", ErrInvalid, s)
	}
	return validText("token serial", s)
}

// normHex checks that s is non-empty, even-length hex of at most maxBytes
// bytes, and returns it in lower case.
func normHex(what, s string, maxBytes int) (string, error) {
	if s == "" {
		return "", fmt.Errorf("%w: empty %s", ErrInvalid, what)
	}
	if len(s) > 2*maxBytes {
		return "", fmt.Errorf("%w: %s longer than %d bytes", ErrInvalid, what, maxBytes)
	}
	if _, err := hex.DecodeString(s); err != nil {
		return "", fmt.Errorf("%w: %s %q is not hex: %w", ErrInvalid, what, s, err)
	}
	return strings.ToLower(s), nil
}

// normKeyID checks and lower-cases a key id (CKA_ID in hex).
func normKeyID(s string) (string, error) { return normHex("key id", s, maxIDBytes) }

// validText checks free text: valid UTF-8, no control characters, bounded.
func validText(what, s string) error {
	if len(s) > maxTextLen {
		return fmt.Errorf("%w: %s longer than %d bytes", ErrInvalid, what, maxTextLen)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("%w: %s is not valid UTF-8", ErrInvalid, what)
	}
	if strings.ContainsFunc(s, unicode.IsControl) {
		return fmt.Errorf("%w: %s contains control characters", ErrInvalid, what)
	}
	return nil
}

// validDER checks that b is exactly one DER (or BER) encoded ASN.1
// SEQUENCE, as certificates and CSRs are. Parsing X.509 is the caller's job.
func validDER(what string, b []byte) error {
	if len(b) == 0 {
		return fmt.Errorf("%w: empty %s", ErrInvalid, what)
	}
	var raw asn1.RawValue
	rest, err := asn1.Unmarshal(b, &raw)
	if err != nil {
		return fmt.Errorf("%w: %s is not DER: %w", ErrInvalid, what, err)
	}
	if len(rest) != 0 {
		return fmt.Errorf("%w: %s has %d trailing bytes", ErrInvalid, what, len(rest))
	}
	if raw.Class != asn1.ClassUniversal || raw.Tag != asn1.TagSequence || !raw.IsCompound {
		return fmt.Errorf("%w: %s is not an ASN.1 SEQUENCE", ErrInvalid, what)
	}
	return nil
}
