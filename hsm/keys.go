package hsm

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"math/big"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/miekg/pkcs11"
)

// KeyType is the type of a key pair.
type KeyType int

// Key types.
const (
	KeyUnknown KeyType = iota
	KeyRSA
	KeyEC
)

// String names the key type.
func (k KeyType) String() string {
	switch k {
	case KeyRSA:
		return "RSA"
	case KeyEC:
		return "EC"
	}
	return "unknown"
}

// KeySpec is a key type and size that GenerateKey can make.
type KeySpec string

// The key specs the appliance generates.
const (
	RSA2048 KeySpec = "RSA2048"
	RSA3072 KeySpec = "RSA3072"
	RSA4096 KeySpec = "RSA4096"
	ECP256  KeySpec = "EC-P256"
	ECP384  KeySpec = "EC-P384"
)

// ParseKeySpec accepts RSA2048, RSA3072, RSA4096, EC-P256 and EC-P384
// (case-insensitive; "RSA-2048", "P256", "EC_P256", "ECP256" too).
func ParseKeySpec(s string) (KeySpec, error) {
	n := strings.NewReplacer("-", "", "_", "", " ", "").Replace(strings.ToUpper(s))
	switch n {
	case "RSA2048":
		return RSA2048, nil
	case "RSA3072":
		return RSA3072, nil
	case "RSA4096":
		return RSA4096, nil
	case "ECP256", "P256":
		return ECP256, nil
	case "ECP384", "P384":
		return ECP384, nil
	}
	return "", fmt.Errorf("%w: unknown key type %q (use RSA2048, RSA3072, RSA4096, EC-P256 or EC-P384)", ErrInvalidArgument, s)
}

// curveOIDs maps the curves the package knows to their named-curve OIDs.
func curveOID(c elliptic.Curve) asn1.ObjectIdentifier {
	switch c {
	case elliptic.P256():
		return asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7}
	case elliptic.P384():
		return asn1.ObjectIdentifier{1, 3, 132, 0, 34}
	case elliptic.P521():
		return asn1.ObjectIdentifier{1, 3, 132, 0, 35}
	}
	return nil
}

func curveFromParams(der []byte) (elliptic.Curve, error) {
	var oid asn1.ObjectIdentifier
	if rest, err := asn1.Unmarshal(der, &oid); err != nil || len(rest) != 0 {
		return nil, fmt.Errorf("CKA_EC_PARAMS is not a named curve OID")
	}
	for _, c := range []elliptic.Curve{elliptic.P256(), elliptic.P384(), elliptic.P521()} {
		if curveOID(c).Equal(oid) {
			return c, nil
		}
	}
	return nil, fmt.Errorf("unsupported curve %s", oid)
}

// Key describes a key pair on a token. Public is an *rsa.PublicKey or an
// *ecdsa.PublicKey. The private key never leaves the token.
type Key struct {
	ID     []byte
	Label  string
	Type   KeyType
	Bits   int    // RSA modulus size or curve size
	Curve  string // "P-256", "P-384" for EC keys
	Public crypto.PublicKey
	// Attrs are the private key's protection attributes as the token
	// reports them (filled by ListKeys and the Key lookups).
	Attrs KeyAttributes
	// Damage is empty for a whole key pair. ListKeys sets it, and leaves
	// Public nil, for a private key object that is not one: it has no
	// CKA_ID (what a key generation cut short by a crash leaves on
	// SoftHSM: the object is made before its attributes are written), or
	// its public key object is missing or unreadable (a generation or a
	// deletion cut short). Such a key never signs (AttributeProblem
	// reports the damage); the officer deletes it: by its id
	// (Token.DeleteKey), or, without one, with Token.DeleteKeysWithoutID.
	//
	// ListKeys also lists, damaged, what has no private key object: a
	// public key or certificate object without CKA_ID (one entry each),
	// and the public key and certificate objects of an id no private key
	// object has (one entry for the id). Object says which.
	Damage string
	// Object is ObjectPrivateKey for a key listed from its private key
	// object, else ObjectPublicKey or ObjectCertificate (a damaged entry
	// without a private key). Empty means ObjectPrivateKey.
	Object string
}

// Damage texts of Key.Damage.
const (
	damageNoID     = "no CKA_ID and no usable public key: what a key generation cut short leaves; signerd cannot name or use it"
	damageNoPublic = "no public key object: what a key generation or deletion cut short leaves; it cannot be used"
	// The objects listed without a private key object (Key.Object).
	damagePublicNoID = "a public key object without CKA_ID and without a private key: what a key generation cut short leaves; signerd cannot name or use it"
	damageCertNoID   = "a certificate object without CKA_ID: what a certificate import cut short leaves; it belongs to no key signerd can name"
	damageSharedID   = "two or more private key objects share this CKA_ID: signerd cannot tell which is the key; none of them is used"
)

// damageOrphan is Key.Damage of the objects left with an id whose private
// key object is gone.
func damageOrphan(publics, certs int) string {
	return fmt.Sprintf("no private key object: %d public key and %d certificate object(s) with this id are left by a key generation or deletion cut short (or a key deleted outside signerd); they cannot be used", publics, certs)
}

// Object kinds of Key.Object.
const (
	// ObjectPrivateKey: a private key object, with its public key when
	// whole.
	ObjectPrivateKey = "private key"
	// ObjectPublicKey: public key objects without a private key.
	ObjectPublicKey = "public key"
	// ObjectCertificate: certificate objects without a private key or
	// public key.
	ObjectCertificate = "certificate"
)

// Object is a token object a deletion of damaged objects destroyed.
type Object struct {
	// Kind is ObjectPrivateKey, ObjectPublicKey or ObjectCertificate.
	Kind  string
	ID    []byte
	Label string
}

// String names the object for an officer and the audit log.
func (o Object) String() string {
	if len(o.ID) == 0 {
		return fmt.Sprintf("%s %q without CKA_ID", o.Kind, o.Label)
	}
	return fmt.Sprintf("%s %q id %x", o.Kind, o.Label, o.ID)
}

// keyTypeOf is the KeyType of a CKA_KEY_TYPE: KeyUnknown for a type the
// appliance does not use.
func keyTypeOf(ckk uint) KeyType {
	switch ckk {
	case pkcs11.CKK_RSA:
		return KeyRSA
	case pkcs11.CKK_EC:
		return KeyEC
	}
	return KeyUnknown
}

// kindOf names a CKA_CLASS as Object.Kind.
func kindOf(class uint) string {
	switch class {
	case pkcs11.CKO_PRIVATE_KEY:
		return ObjectPrivateKey
	case pkcs11.CKO_PUBLIC_KEY:
		return ObjectPublicKey
	case pkcs11.CKO_CERTIFICATE:
		return ObjectCertificate
	}
	return fmt.Sprintf("object of class 0x%x", class)
}

// IDHex returns the CKA_ID in lower-case hex.
func (k Key) IDHex() string { return hex.EncodeToString(k.ID) }

// KeyAttributes are the private key attributes an officer checks, as the
// token reports them.
type KeyAttributes struct {
	// Private is CKA_PRIVATE: the key is visible only to a logged-in
	// user.
	Private          bool
	Sensitive        bool
	Extractable      bool
	AlwaysSensitive  bool
	NeverExtractable bool
	Sign             bool
	Decrypt          bool
	Unwrap           bool
	Derive           bool
	SignRecover      bool
	// Modifiable is CKA_MODIFIABLE: the key's attributes can be changed
	// with C_SetAttributeValue by whoever holds the user PIN.
	Modifiable bool
	// Copyable is CKA_COPYABLE: C_CopyObject may copy the key, with
	// changed attributes. A module that does not know the attribute
	// (before PKCS#11 v2.40) copies any object, and Copyable is true.
	Copyable bool
	// CopyableUnknown is true when the module does not know
	// CKA_COPYABLE (it answered ATTRIBUTE_TYPE_INVALID): a module before
	// PKCS#11 v2.40, which the appliance does not support.
	CopyableUnknown bool
	// AllowedMechanisms is CKA_ALLOWED_MECHANISMS: the only mechanisms the
	// key may be used with. Empty when the key has none, or the module
	// does not know the attribute: the key is then not restricted to its
	// mechanisms (an RSA key could then do raw RSA, CKM_RSA_X_509).
	AllowedMechanisms []uint
	// MechanismsUnreadable is true when the module holds a
	// CKA_ALLOWED_MECHANISMS for the key but cannot hand it over (p11-kit's
	// RPC 0.24 (Debian 12) answers DEVICE_ERROR for a non-empty list while the
	// session stays sound): the key's restriction is unknown, and the key
	// is refused (Key.AttributeProblem).
	MechanismsUnreadable bool
}

// KeyRecheckInterval bounds how long a key's protection attributes, as
// last read from the token, are trusted for signing. They are read (one
// C_GetAttributeValue) when a key's handle is looked up, which is after
// each login and each re-initialisation of the module, and again at a
// sign that comes this long or longer after the last read, for a single
// signature as within a batch (SignMany reads them again before the next
// digest once this long has passed since the last read); Token.KeyByID,
// ListKeys and KeyByLabel read them every time. A key whose attributes stop
// holding (a key destroyed and made again under its id, or one whose HSM
// changed its attributes outside PKCS#11) is refused for signing from the
// next read on. A modifiable key is refused at once (Key.AttributeProblem).
const KeyRecheckInterval = 5 * time.Second

// signMechanisms returns the mechanisms the appliance signs with for a key
// of type kt (see mechanism in sign.go): what GenerateKey puts in
// CKA_ALLOWED_MECHANISMS, and all a key's CKA_ALLOWED_MECHANISMS may name.
func signMechanisms(kt KeyType) []uint {
	switch kt {
	case KeyRSA:
		return []uint{pkcs11.CKM_RSA_PKCS, pkcs11.CKM_RSA_PKCS_PSS}
	case KeyEC:
		return []uint{pkcs11.CKM_ECDSA}
	}
	return nil
}

// MechanismName returns the PKCS#11 name of a mechanism the appliance
// meets in CKA_ALLOWED_MECHANISMS, or its number in hex.
func MechanismName(m uint) string {
	switch m {
	case pkcs11.CKM_RSA_PKCS:
		return "CKM_RSA_PKCS"
	case pkcs11.CKM_RSA_PKCS_PSS:
		return "CKM_RSA_PKCS_PSS"
	case pkcs11.CKM_RSA_X_509:
		return "CKM_RSA_X_509"
	case pkcs11.CKM_RSA_PKCS_OAEP:
		return "CKM_RSA_PKCS_OAEP"
	case pkcs11.CKM_RSA_9796:
		return "CKM_RSA_9796"
	case pkcs11.CKM_SHA256_RSA_PKCS:
		return "CKM_SHA256_RSA_PKCS"
	case pkcs11.CKM_SHA384_RSA_PKCS:
		return "CKM_SHA384_RSA_PKCS"
	case pkcs11.CKM_SHA512_RSA_PKCS:
		return "CKM_SHA512_RSA_PKCS"
	case pkcs11.CKM_SHA256_RSA_PKCS_PSS:
		return "CKM_SHA256_RSA_PKCS_PSS"
	case pkcs11.CKM_SHA384_RSA_PKCS_PSS:
		return "CKM_SHA384_RSA_PKCS_PSS"
	case pkcs11.CKM_SHA512_RSA_PKCS_PSS:
		return "CKM_SHA512_RSA_PKCS_PSS"
	case pkcs11.CKM_ECDSA:
		return "CKM_ECDSA"
	case pkcs11.CKM_ECDSA_SHA256:
		return "CKM_ECDSA_SHA256"
	case pkcs11.CKM_ECDSA_SHA384:
		return "CKM_ECDSA_SHA384"
	case pkcs11.CKM_ECDSA_SHA512:
		return "CKM_ECDSA_SHA512"
	case pkcs11.CKM_ECDH1_DERIVE:
		return "CKM_ECDH1_DERIVE"
	}
	return fmt.Sprintf("0x%08x", m)
}

// MinRSABits is the smallest RSA modulus the appliance signs with.
const MinRSABits = 2048

// AttributeProblem returns nil when the private key's attributes, as last
// read from the token, make it a key that signs and does nothing else, and
// that nobody can have changed, copied or read out, or an error wrapping
// ErrKeyAttributes that names each one that does not hold. The appliance
// registers and signs with a key only when it returns nil.
//
// Required: CKA_SIGN true; CKA_PRIVATE, CKA_SENSITIVE,
// CKA_ALWAYS_SENSITIVE and CKA_NEVER_EXTRACTABLE true (a key that was
// ever readable or extractable may have copies outside the HSM);
// CKA_EXTRACTABLE, CKA_DECRYPT, CKA_UNWRAP, CKA_SIGN_RECOVER, CKA_DERIVE,
// CKA_MODIFIABLE and CKA_COPYABLE false; a module that knows CKA_COPYABLE
// (PKCS#11 v2.40 or later); an RSA modulus of at least MinRSABits; and a
// CKA_ALLOWED_MECHANISMS, when the key has one, that names only mechanisms
// the appliance signs with for the key's type (RSA: CKM_RSA_PKCS,
// CKM_RSA_PKCS_PSS; EC: CKM_ECDSA).
//
// An empty CKA_ALLOWED_MECHANISMS (the module does not support it, or the
// key was made without it) is reported in the attributes but not refused.
// A damaged key (Key.Damage) is refused for its damage alone.
func (k Key) AttributeProblem() error {
	a := k.Attrs
	var why []string
	flag := func(bad bool, text string) {
		if bad {
			why = append(why, text)
		}
	}
	if k.Damage != "" {
		// The rest of its attributes may be defaults never overwritten.
		return fmt.Errorf("%w: damaged object: %s", ErrKeyAttributes, k.Damage)
	}
	flag(!a.Sign, "CKA_SIGN is false (the key cannot sign)")
	flag(!a.Private, "CKA_PRIVATE is false (it can be seen without logging in)")
	flag(!a.Sensitive, "CKA_SENSITIVE is false (its private value can be read)")
	flag(a.Sensitive && !a.AlwaysSensitive, "CKA_ALWAYS_SENSITIVE is false (its value was once readable; copies may exist)")
	flag(a.Extractable, "CKA_EXTRACTABLE is true (it can be wrapped out of the HSM)")
	flag(!a.Extractable && !a.NeverExtractable, "CKA_NEVER_EXTRACTABLE is false (it was once extractable; copies may exist)")
	flag(a.Decrypt, "CKA_DECRYPT is true (it can decrypt)")
	flag(a.Unwrap, "CKA_UNWRAP is true (it can unwrap keys)")
	flag(a.SignRecover, "CKA_SIGN_RECOVER is true (it can sign with recovery, a raw private-key operation)")
	flag(a.Derive, "CKA_DERIVE is true (it can derive keys)")
	flag(a.Modifiable, "CKA_MODIFIABLE is true (its attributes can be changed with the user PIN)")
	switch {
	case a.CopyableUnknown:
		why = append(why, "the module does not know CKA_COPYABLE (PKCS#11 before v2.40, not supported: the key can be copied with other attributes)")
	case a.Copyable:
		why = append(why, "CKA_COPYABLE is true (it can be copied with other attributes)")
	}
	if k.Type == KeyRSA && k.Bits < MinRSABits {
		why = append(why, fmt.Sprintf("the RSA modulus has %d bits (at least %d are required)", k.Bits, MinRSABits))
	}
	allowed := signMechanisms(k.Type)
	var foreign []string
	for _, m := range a.AllowedMechanisms {
		if !slices.Contains(allowed, m) {
			foreign = append(foreign, MechanismName(m))
		}
	}
	if len(foreign) > 0 {
		why = append(why, fmt.Sprintf("CKA_ALLOWED_MECHANISMS allows %s, which the appliance does not sign with", strings.Join(foreign, ", ")))
	}
	flag(a.MechanismsUnreadable, "CKA_ALLOWED_MECHANISMS cannot be read through this module (the mechanisms it allows are unknown)")
	if len(why) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s", ErrKeyAttributes, strings.Join(why, "; "))
}

// keyEntry is a cached private key handle with its key, as read from the
// token at checked. It is never changed once cached: a new read makes a
// new entry.
type keyEntry struct {
	key     Key
	handle  pkcs11.ObjectHandle
	gen     uint64
	checked time.Time
	problem error // key.AttributeProblem() at checked
}

func (t *Token) forgetKeys() {
	t.keysMu.Lock()
	clear(t.keys)
	t.keysMu.Unlock()
}

// forgetKey drops the cached entry of the key whose CKA_ID is id.
func (t *Token) forgetKey(id []byte) {
	t.keysMu.Lock()
	delete(t.keys, string(id))
	t.keysMu.Unlock()
}

// remember caches key, read from the token through s at now, and returns
// its entry.
func (t *Token) remember(s *session, h pkcs11.ObjectHandle, key Key, now time.Time) *keyEntry {
	e := &keyEntry{key: key, handle: h, gen: s.gen, checked: now, problem: key.AttributeProblem()}
	t.keysMu.Lock()
	t.keys[string(key.ID)] = e
	t.keysMu.Unlock()
	return e
}

// keyByID returns the entry for id: the cached one when it is of s's
// generation and its attributes were read less than KeyRecheckInterval
// ago; else the cached handle with its attributes read again; else the
// private key found on s. The caller holds the module read lock, and
// checks entry.problem before it signs.
func (t *Token) keyByID(s *session, id []byte) (*keyEntry, error) {
	return t.lookupKey(s, id, false)
}

// lookupKey is keyByID; fresh reads the attributes from the token even
// when the cached ones are recent.
func (t *Token) lookupKey(s *session, id []byte, fresh bool) (*keyEntry, error) {
	t.keysMu.RLock()
	e := t.keys[string(id)]
	t.keysMu.RUnlock()
	now := t.m.opts.now()
	if e != nil && e.gen == s.gen {
		if !fresh && !stale(e, now) {
			return e, nil
		}
		return t.recheck(s, e, now)
	}
	seq := t.loginSeq.Load()
	handles, err := t.find(s, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
	}, 2)
	if err != nil {
		return nil, err
	}
	if len(handles) == 0 {
		return nil, t.notFound(s, seq, fmt.Errorf("%w: id %x on token %q", ErrKeyNotFound, id, t.label))
	}
	if len(handles) > 1 {
		return nil, fmt.Errorf("%w: two private keys share id %x on token %q", ErrInvalidArgument, id, t.label)
	}
	key, err := t.readKey(s, handles[0])
	if err != nil {
		return nil, err
	}
	return t.remember(s, handles[0], key, now), nil
}

// stale reports whether e's attributes, read at e.checked, must be read
// again before a signature at now: KeyRecheckInterval or more has passed,
// or the clock went back.
func stale(e *keyEntry, now time.Time) bool {
	age := now.Sub(e.checked)
	return age < 0 || age >= KeyRecheckInterval
}

// recheck reads the private key attributes of a cached entry again. When
// the handle no longer names the key, it returns OBJECT_HANDLE_INVALID, so
// that withSession forgets the cached handles and looks the key up again.
func (t *Token) recheck(s *session, e *keyEntry, now time.Time) (*keyEntry, error) {
	k, err := t.readPrivate(s, e.handle)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(k.ID, e.key.ID) || k.Type != e.key.Type {
		return nil, p11err("key check", pkcs11.Error(pkcs11.CKR_OBJECT_HANDLE_INVALID))
	}
	key := e.key
	key.Label, key.Attrs = k.Label, k.Attrs
	return t.remember(s, e.handle, key, now), nil
}

// signRefused returns err, the error of C_SignInit or C_Sign with the key
// of entry e, unless the token answered KEY_FUNCTION_NOT_PERMITTED, which
// SoftHSM answers while another session destroys the key (and a token
// whose key's attributes were changed would too). The key is then looked
// up again by CKA_ID, past the cache: a key gone answers ErrKeyNotFound; a
// key that is another object now (destroyed and made again under its id)
// answers OBJECT_HANDLE_INVALID, so that withSession looks it up again and
// signs once more; a key still there has its attributes read again, and
// the answer wraps ErrKeyAttributes with the reason. The refusal is never
// returned bare. The caller holds the module read lock.
func (t *Token) signRefused(s *session, e *keyEntry, err error) error {
	if !isRV(err, pkcs11.CKR_KEY_FUNCTION_NOT_PERMITTED) {
		return err
	}
	id := e.key.ID
	seq := t.loginSeq.Load()
	hs, ferr := t.find(s, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
	}, 2)
	switch {
	case ferr != nil:
		return ferr
	case len(hs) == 0:
		t.forgetKey(id)
		return t.notFound(s, seq, fmt.Errorf("%w: id %x on token %q (destroyed while it was used: %w)", ErrKeyNotFound, id, t.label, err))
	case len(hs) > 1:
		return fmt.Errorf("%w: two private keys share id %x on token %q", ErrInvalidArgument, id, t.label)
	case hs[0] != e.handle:
		t.forgetKey(id)
		return p11err(fmt.Sprintf("key %x is another object than the one refused (%v)", id, err), pkcs11.Error(pkcs11.CKR_OBJECT_HANDLE_INVALID))
	}
	ne, rerr := t.recheck(s, e, t.m.opts.now())
	if rerr != nil {
		return rerr
	}
	if ne.problem != nil {
		return fmt.Errorf("key %x on token %q: the token refused to sign with it (%w); its attributes, read again: %w", id, t.label, err, ne.problem)
	}
	return fmt.Errorf("%w: key %x on token %q: the token refused to sign with it (%w) though its attributes, read again, allow signing", ErrKeyAttributes, id, t.label, err)
}

// notFound is called when no private key matched a search begun when
// loginSeq was seq. The answer is err only when the session shows a
// logged-in user and no login or logout by this package began or ended
// since seq: a search that may have run while the token was logged out
// proves nothing. Otherwise it returns USER_NOT_LOGGED_IN when a PIN is
// kept, so that withSession logs in again if needed and searches again,
// or ErrNotLoggedIn when none is kept.
func (t *Token) notFound(s *session, seq uint64, err error) error {
	si, serr := t.m.api.GetSessionInfo(s.h)
	if serr != nil {
		return p11err("C_GetSessionInfo", serr)
	}
	loggedIn := si.State == pkcs11.CKS_RO_USER_FUNCTIONS || si.State == pkcs11.CKS_RW_USER_FUNCTIONS
	if loggedIn && seq%2 == 0 && t.loginSeq.Load() == seq {
		return err
	}
	t.loginMu.Lock()
	defer t.loginMu.Unlock()
	if t.pin != nil {
		return p11err("key lookup", pkcs11.Error(pkcs11.CKR_USER_NOT_LOGGED_IN))
	}
	return t.notLoggedInLocked()
}

// find returns up to max handles of objects matching tmpl.
func (t *Token) find(s *session, tmpl []*pkcs11.Attribute, max int) ([]pkcs11.ObjectHandle, error) {
	if err := t.m.api.FindObjectsInit(s.h, tmpl); err != nil {
		return nil, p11err("C_FindObjectsInit", err)
	}
	var out []pkcs11.ObjectHandle
	for len(out) < max {
		hs, _, err := t.m.api.FindObjects(s.h, min(max-len(out), 64))
		if err != nil {
			_ = t.m.api.FindObjectsFinal(s.h)
			return nil, p11err("C_FindObjects", err)
		}
		if len(hs) == 0 {
			break
		}
		out = append(out, hs...)
	}
	if err := t.m.api.FindObjectsFinal(s.h); err != nil {
		return nil, p11err("C_FindObjectsFinal", err)
	}
	return out, nil
}

// attrQuery returns a C_GetAttributeValue template asking for types.
func attrQuery(types ...uint) []*pkcs11.Attribute {
	q := make([]*pkcs11.Attribute, len(types))
	for i, typ := range types {
		q[i] = pkcs11.NewAttribute(typ, nil)
	}
	return q
}

// readPrivate reads a private key's id, label, type and protection
// attributes with one C_GetAttributeValue. A module that does not know
// CKA_COPYABLE or CKA_ALLOWED_MECHANISMS (before PKCS#11 v2.40) refuses
// the whole call with ATTRIBUTE_TYPE_INVALID; the attributes are then read
// without them, and each of them alone.
func (t *Token) readPrivate(s *session, priv pkcs11.ObjectHandle) (Key, error) {
	base := []uint{
		pkcs11.CKA_ID, pkcs11.CKA_LABEL, pkcs11.CKA_KEY_TYPE, pkcs11.CKA_PRIVATE,
		pkcs11.CKA_SENSITIVE, pkcs11.CKA_EXTRACTABLE, pkcs11.CKA_ALWAYS_SENSITIVE, pkcs11.CKA_NEVER_EXTRACTABLE,
		pkcs11.CKA_SIGN, pkcs11.CKA_DECRYPT, pkcs11.CKA_UNWRAP, pkcs11.CKA_DERIVE, pkcs11.CKA_SIGN_RECOVER,
		pkcs11.CKA_MODIFIABLE,
	}
	newer := []uint{pkcs11.CKA_COPYABLE, pkcs11.CKA_ALLOWED_MECHANISMS}
	copyableUnknown := false
	attrs, err := t.m.api.GetAttributeValue(s.h, priv, attrQuery(append(base, newer...)...))
	if isRV(err, pkcs11.CKR_ATTRIBUTE_TYPE_INVALID) {
		attrs, err = t.m.api.GetAttributeValue(s.h, priv, attrQuery(base...))
		if err != nil {
			return Key{}, p11err("C_GetAttributeValue", err)
		}
		for _, typ := range newer {
			a, err := t.m.api.GetAttributeValue(s.h, priv, attrQuery(typ))
			switch {
			case err == nil:
				attrs = append(attrs, a...)
			case isRV(err, pkcs11.CKR_ATTRIBUTE_TYPE_INVALID):
				if typ == pkcs11.CKA_COPYABLE {
					// Before v2.40 every object may be copied.
					attrs = append(attrs, pkcs11.NewAttribute(typ, true))
					copyableUnknown = true
				}
			default:
				return Key{}, p11err("C_GetAttributeValue", err)
			}
		}
	}
	mechsUnreadable := false
	if err != nil && !isRV(err, pkcs11.CKR_ATTRIBUTE_TYPE_INVALID) && classify(err) != classNone {
		// Some modules cannot carry a non-empty CKA_ALLOWED_MECHANISMS and
		// fail the whole call as if the device had failed. Tell that from
		// a device gone: read the rest without it, and take the answer as
		// the list's alone only when the rest and the session are sound.
		if rest, rerr := t.readWithoutMechanisms(s, priv, slices.Concat(base, []uint{pkcs11.CKA_COPYABLE})); rerr == nil {
			t.m.log.Warn("the module cannot hand over a key's CKA_ALLOWED_MECHANISMS; the key is refused",
				"token", t.label, "error", p11err("C_GetAttributeValue", err).Error())
			attrs, err, mechsUnreadable = rest, nil, true
		}
	}
	if err != nil {
		return Key{}, p11err("C_GetAttributeValue", readGone(err))
	}
	var k Key
	k.Attrs.CopyableUnknown = copyableUnknown
	k.Attrs.MechanismsUnreadable = mechsUnreadable
	for _, a := range attrs {
		b := len(a.Value) == 1 && a.Value[0] != 0
		switch a.Type {
		case pkcs11.CKA_PRIVATE:
			k.Attrs.Private = b
		case pkcs11.CKA_ID:
			k.ID = a.Value
		case pkcs11.CKA_LABEL:
			k.Label = string(a.Value)
		case pkcs11.CKA_KEY_TYPE:
			k.Type = keyTypeOf(ulong(a.Value))
		case pkcs11.CKA_SENSITIVE:
			k.Attrs.Sensitive = b
		case pkcs11.CKA_EXTRACTABLE:
			k.Attrs.Extractable = b
		case pkcs11.CKA_ALWAYS_SENSITIVE:
			k.Attrs.AlwaysSensitive = b
		case pkcs11.CKA_NEVER_EXTRACTABLE:
			k.Attrs.NeverExtractable = b
		case pkcs11.CKA_SIGN:
			k.Attrs.Sign = b
		case pkcs11.CKA_DECRYPT:
			k.Attrs.Decrypt = b
		case pkcs11.CKA_UNWRAP:
			k.Attrs.Unwrap = b
		case pkcs11.CKA_DERIVE:
			k.Attrs.Derive = b
		case pkcs11.CKA_SIGN_RECOVER:
			k.Attrs.SignRecover = b
		case pkcs11.CKA_MODIFIABLE:
			k.Attrs.Modifiable = b
		case pkcs11.CKA_COPYABLE:
			k.Attrs.Copyable = b
		case pkcs11.CKA_ALLOWED_MECHANISMS:
			k.Attrs.AllowedMechanisms = ulongs(a.Value)
		}
	}
	return k, nil
}

// readWithoutMechanisms reads the attributes of priv named in types, which leave
// out CKA_ALLOWED_MECHANISMS, and succeeds only when that read, a read of
// CKA_ALLOWED_MECHANISMS alone failing, and C_GetSessionInfo afterwards
// show that the module fails on that one attribute while the session is
// sound.
func (t *Token) readWithoutMechanisms(s *session, priv pkcs11.ObjectHandle, types []uint) ([]*pkcs11.Attribute, error) {
	attrs, err := t.m.api.GetAttributeValue(s.h, priv, attrQuery(types...))
	if err != nil {
		return nil, err
	}
	if _, err := t.m.api.GetAttributeValue(s.h, priv, attrQuery(pkcs11.CKA_ALLOWED_MECHANISMS)); err == nil {
		return nil, errors.New("CKA_ALLOWED_MECHANISMS reads alone")
	}
	if _, err := t.m.api.GetSessionInfo(s.h); err != nil {
		return nil, err
	}
	return attrs, nil
}

// readKey reads a private key's id, label, type and protection attributes,
// and its public key from the public key object with the same id (or, for
// RSA, from the private key's public components).
func (t *Token) readKey(s *session, priv pkcs11.ObjectHandle) (Key, error) {
	k, err := t.readPrivate(s, priv)
	if err != nil {
		return Key{}, err
	}
	if len(k.ID) == 0 {
		// Its public key cannot be found by an id it does not have.
		return Key{}, fmt.Errorf("%w: the private key object labelled %q has no CKA_ID (%s)", ErrKeyNotFound, k.Label, damageNoID)
	}
	if k.Type == KeyUnknown {
		return Key{}, fmt.Errorf("%w: key %x has a type this appliance does not use", ErrAlgorithm, k.ID)
	}
	whole, err := t.readKeyPublic(s, k, priv)
	if d := publicDamage(err); d != "" && !errors.Is(err, ErrKeyNotFound) {
		// Listed as damaged: no usable key has the id, and the officer
		// deletes it by its id.
		return Key{}, damaged(k.ID, d)
	}
	return whole, err
}

// withPublic completes k, read from the private key object priv, with its
// public key, read from the public key object pub when found, else (RSA
// only) from the private key's public components.
func (t *Token) withPublic(s *session, k Key, priv, pub pkcs11.ObjectHandle, found bool) (Key, error) {
	src := priv
	if found {
		src = pub
	} else if k.Type == KeyEC {
		return Key{}, fmt.Errorf("%w: EC key %x has no public key object", ErrKeyNotFound, k.ID)
	}
	p, err := t.readPublic(s, src, k.Type)
	if found && isRV(err, pkcs11.CKR_ATTRIBUTE_TYPE_INVALID) {
		// The object may be a public key of another type, which lacks
		// the attributes of this one.
		attrs, terr := t.m.api.GetAttributeValue(s.h, pub, attrQuery(pkcs11.CKA_KEY_TYPE))
		if terr == nil && keyTypeOf(ulong(attrs[0].Value)) != k.Type {
			return Key{}, damaged(k.ID, fmt.Sprintf("its public key object is not an %s key (CKA_KEY_TYPE 0x%x): not its own public key; it cannot be used", k.Type, ulong(attrs[0].Value)))
		}
	}
	if err != nil {
		return Key{}, fmt.Errorf("key %x: %w", k.ID, err)
	}
	if found {
		if err := t.samePair(s, k, priv, p); err != nil {
			return Key{}, err
		}
	}
	return withPublicKey(k, p), nil
}

// samePair checks that pub, read from a public key object with the CKA_ID
// of the private key object priv, is of the private key's curve (EC) or
// has its modulus and exponent (RSA), as the private key object holds
// them: a public key object of another key under the id (a generation
// cut short, or an object made outside signerd) would otherwise be taken
// for the key's own, and take certificates that are not the key's. An EC
// point cannot be checked without the private value; a signature made
// with it is verified against it (Token.Sign).
func (t *Token) samePair(s *session, k Key, priv pkcs11.ObjectHandle, pub crypto.PublicKey) error {
	switch p := pub.(type) {
	case *rsa.PublicKey:
		own, err := t.readPublic(s, priv, KeyRSA)
		if err != nil {
			return fmt.Errorf("key %x: the private key's modulus: %w", k.ID, err)
		}
		if !p.Equal(own) {
			return damaged(k.ID, "its public key object holds another RSA modulus or exponent than its private key object: not its own public key; it cannot be used")
		}
	case *ecdsa.PublicKey:
		attrs, err := t.m.api.GetAttributeValue(s.h, priv, attrQuery(pkcs11.CKA_EC_PARAMS))
		if err != nil {
			return fmt.Errorf("key %x: %w", k.ID, p11err("C_GetAttributeValue", readGone(err)))
		}
		c, err := curveFromParams(attrs[0].Value)
		if err != nil || c != p.Curve {
			return damaged(k.ID, fmt.Sprintf("its public key object is of curve %s, its private key object of another curve: not its own public key; it cannot be used", p.Curve.Params().Name))
		}
	}
	return nil
}

// damageError is a key's damage found while reading it: no usable key
// has the id (it wraps ErrKeyNotFound), and damage is its Key.Damage.
type damageError struct {
	id     []byte
	damage string
}

func damaged(id []byte, damage string) error { return &damageError{id: id, damage: damage} }

func (e *damageError) Error() string {
	return fmt.Sprintf("%v: key %x is damaged: %s", ErrKeyNotFound, e.id, e.damage)
}

func (e *damageError) Unwrap() error { return ErrKeyNotFound }

// withPublicKey returns k with its public key, and the size and curve it
// implies.
func withPublicKey(k Key, pub crypto.PublicKey) Key {
	k.Public = pub
	switch p := pub.(type) {
	case *rsa.PublicKey:
		k.Bits = p.N.BitLen()
	case *ecdsa.PublicKey:
		k.Bits = p.Curve.Params().BitSize
		k.Curve = p.Curve.Params().Name
	}
	return k
}

// readGone turns ATTRIBUTE_VALUE_INVALID from reading an object that a
// search has just found into OBJECT_HANDLE_INVALID: SoftHSM answers so
// when another session destroys the object during the read. withSession
// then forgets the cached handles and searches again, which finds the key
// or says it is not found, instead of failing the call as INTERNAL.
// BUFFER_TOO_SMALL is taken the same way: the attribute grew between the
// read of its size and the read of its value (SoftHSM writes a new
// object's attributes after making it, as a key generation or a
// certificate import in another session does while a listing reads it).
func readGone(err error) error {
	if isRV(err, pkcs11.CKR_ATTRIBUTE_VALUE_INVALID, pkcs11.CKR_BUFFER_TOO_SMALL) {
		return fmt.Errorf("%w (the object changed or was destroyed while it was read: %w)", pkcs11.Error(pkcs11.CKR_OBJECT_HANDLE_INVALID), err)
	}
	return err
}

// readPublic reads the public key from an object holding its components.
func (t *Token) readPublic(s *session, h pkcs11.ObjectHandle, kt KeyType) (crypto.PublicKey, error) {
	switch kt {
	case KeyRSA:
		attrs, err := t.m.api.GetAttributeValue(s.h, h, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_MODULUS, nil),
			pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, nil),
		})
		if err != nil {
			return nil, p11err("C_GetAttributeValue", readGone(err))
		}
		n := new(big.Int).SetBytes(attrs[0].Value)
		e := new(big.Int).SetBytes(attrs[1].Value)
		if n.Sign() == 0 || !e.IsInt64() || e.Int64() < 3 || e.Int64() > 1<<31-1 {
			return nil, errors.New("RSA public key components are malformed")
		}
		return &rsa.PublicKey{N: n, E: int(e.Int64())}, nil
	case KeyEC:
		attrs, err := t.m.api.GetAttributeValue(s.h, h, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, nil),
			pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil),
		})
		if err != nil {
			return nil, p11err("C_GetAttributeValue", readGone(err))
		}
		curve, err := curveFromParams(attrs[0].Value)
		if err != nil {
			return nil, err
		}
		return parseECPoint(curve, attrs[1].Value)
	}
	return nil, fmt.Errorf("%w: key type %v", ErrAlgorithm, kt)
}

// parseECPoint decodes CKA_EC_POINT: a DER OCTET STRING around the
// uncompressed point, as PKCS#11 v2.20+ says, or the bare point, as some
// modules return it.
func parseECPoint(curve elliptic.Curve, v []byte) (*ecdsa.PublicKey, error) {
	size := (curve.Params().BitSize + 7) / 8
	point := v
	if len(v) != 1+2*size || v[0] != 4 {
		var inner []byte
		rest, err := asn1.Unmarshal(v, &inner)
		if err != nil || len(rest) != 0 {
			return nil, errors.New("CKA_EC_POINT is neither a DER octet string nor an uncompressed point")
		}
		point = inner
	}
	pub, err := ecdsa.ParseUncompressedPublicKey(curve, point)
	if err != nil {
		return nil, fmt.Errorf("CKA_EC_POINT: %w", err)
	}
	return pub, nil
}

// ulong decodes a CK_ULONG attribute value in host byte order.
func ulong(b []byte) uint {
	var v uint
	for i := len(b) - 1; i >= 0; i-- {
		v = v<<8 | uint(b[i])
	}
	return v
}

// ulongSize returns the size of a CK_ULONG as the module sees it.
func ulongSize() int { return len(pkcs11.NewAttribute(0, uint(0)).Value) }

// ulongs decodes an array of CK_ULONG (CKA_ALLOWED_MECHANISMS); a trailing
// part shorter than a CK_ULONG is ignored.
func ulongs(b []byte) []uint {
	n := ulongSize()
	var out []uint
	for ; len(b) >= n; b = b[n:] {
		out = append(out, ulong(b[:n]))
	}
	return out
}

// ulongArray encodes vs as an array of CK_ULONG in host byte order.
func ulongArray(vs []uint) []byte {
	var out []byte
	for _, v := range vs {
		out = append(out, pkcs11.NewAttribute(0, v).Value...)
	}
	return out
}

// checkLabel refuses labels an officer could not tell apart or type.
func checkLabel(label string) error {
	if label == "" {
		return fmt.Errorf("%w: a key needs a label", ErrInvalidArgument)
	}
	if len(label) > 128 || !utf8.ValidString(label) {
		return fmt.Errorf("%w: a key label is valid UTF-8 of at most 128 bytes", ErrInvalidArgument)
	}
	for _, r := range label {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("%w: a key label has no control characters", ErrInvalidArgument)
		}
	}
	return nil
}

// GenerateKey generates a key pair of spec on the token with a random
// 16-byte CKA_ID and the label. The private key is a token object, private,
// sensitive, never extractable, not modifiable and not copyable, and may
// sign but not sign with recovery, decrypt, unwrap or derive; its
// CKA_ALLOWED_MECHANISMS names the mechanisms the appliance signs with for
// its type (RSA: CKM_RSA_PKCS, CKM_RSA_PKCS_PSS; EC: CKM_ECDSA). A module
// that refuses the template with ATTRIBUTE_TYPE_INVALID,
// ATTRIBUTE_VALUE_INVALID or TEMPLATE_INCONSISTENT is asked once more
// without that one optional attribute, and nothing else changed (the key's
// Attrs.AllowedMechanisms is then empty, and a warning is logged). The
// public key is not modifiable either. The pair is read back from the
// token, and both halves are destroyed again and an error wrapping
// ErrKeyAttributes returned when the key is not what was asked for: its
// attributes (see Key.AttributeProblem), its size or curve, or its
// CKA_ALLOWED_MECHANISMS when the module took it. A label already used by a key on the
// token is refused with ErrKeyExists.
func (t *Token) GenerateKey(ctx context.Context, spec KeySpec, label string) (Key, error) {
	if err := checkLabel(label); err != nil {
		return Key{}, err
	}
	mech, pubT, kt, err := keyTemplate(spec)
	if err != nil {
		return Key{}, err
	}
	id := make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		return Key{}, fmt.Errorf("making a key id: %w", err)
	}
	common := func(class uint) []*pkcs11.Attribute {
		return []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, class),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_ID, id),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		}
	}
	pub := append(common(pkcs11.CKO_PUBLIC_KEY), append(pubT,
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_MODIFIABLE, false),
	)...)
	priv := append(common(pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN_RECOVER, false),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
		pkcs11.NewAttribute(pkcs11.CKA_MODIFIABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_COPYABLE, false),
	)
	// Last, so that the template without it is a prefix.
	privAllowed := append(slices.Clip(priv), pkcs11.NewAttribute(pkcs11.CKA_ALLOWED_MECHANISMS, ulongArray(signMechanisms(kt))))
	t.adminMu.Lock()
	defer t.adminMu.Unlock()
	var key Key
	attempt := 0
	err = t.withSession(ctx, func(s *session) error {
		// A first attempt that failed after the pair was made leaves
		// objects with this id; remove them so nothing is orphaned. The
		// id is fresh and random: before the first attempt nothing has
		// it, and searching for it would cost a search of the token.
		if attempt++; attempt > 1 {
			if err := t.destroyByID(s, id); err != nil {
				return err
			}
		}
		if err := t.checkLabelFree(s, label); err != nil {
			return err
		}
		pubH, privH, err := t.m.api.GenerateKeyPair(s.h, []*pkcs11.Mechanism{mech}, pub, privAllowed)
		restricted := true
		if isRV(err, pkcs11.CKR_ATTRIBUTE_TYPE_INVALID, pkcs11.CKR_ATTRIBUTE_VALUE_INVALID, pkcs11.CKR_TEMPLATE_INCONSISTENT) {
			// A module before PKCS#11 v2.40, or one that does not take
			// this list, refuses CKA_ALLOWED_MECHANISMS: make the key
			// without it, once. Every other attribute stays required.
			t.m.log.Warn("the module refused the key template with CKA_ALLOWED_MECHANISMS; the key is made without it and is not restricted to its signing mechanisms",
				"token", t.label, "label", label, "error", err.Error())
			restricted = false
			pubH, privH, err = t.m.api.GenerateKeyPair(s.h, []*pkcs11.Mechanism{mech}, pub, priv)
		}
		if err != nil {
			return p11err("C_GenerateKeyPair", err)
		}
		// read reads the new pair by the handles generation returned (no
		// search of the token) and checks it is the key asked for.
		read := func() (Key, error) {
			k, err := t.readPrivate(s, privH)
			if err == nil && k.Type == KeyUnknown {
				err = fmt.Errorf("%w: the new key has a type this appliance does not use", ErrAlgorithm)
			}
			if err == nil {
				k, err = t.withPublic(s, k, privH, pubH, true)
			}
			if err == nil && !bytes.Equal(k.ID, id) {
				err = fmt.Errorf("%w: the new key has id %x, not the %x asked for", ErrKeyAttributes, k.ID, id)
			}
			return k, err
		}
		key, err = read()
		if err == nil && restricted && key.Attrs.MechanismsUnreadable {
			// The module took the list but cannot read it back (p11-kit's
			// RPC 0.24 (Debian 12)): make the key without it, once, as for a
			// module that refuses it.
			t.m.log.Warn("the module cannot read back CKA_ALLOWED_MECHANISMS; the key is made again without it and is not restricted to its signing mechanisms",
				"token", t.label, "label", label)
			for _, h := range []pkcs11.ObjectHandle{privH, pubH} {
				if derr := t.m.api.DestroyObject(s.h, h); derr != nil {
					return fmt.Errorf("removing the key made with an unreadable CKA_ALLOWED_MECHANISMS (objects with id %x may be left on the token): %w", id, p11err("C_DestroyObject", derr))
				}
			}
			restricted = false
			pubH, privH, err = t.m.api.GenerateKeyPair(s.h, []*pkcs11.Mechanism{mech}, pub, priv)
			if err != nil {
				return p11err("C_GenerateKeyPair", err)
			}
			key, err = read()
		}
		if err == nil {
			err = key.AttributeProblem()
		}
		if err == nil {
			err = madeAsAsked(key, spec, kt, restricted)
		}
		if err != nil {
			var derrs []error
			for _, h := range []pkcs11.ObjectHandle{privH, pubH} {
				if derr := t.m.api.DestroyObject(s.h, h); derr != nil {
					derrs = append(derrs, p11err("C_DestroyObject", derr))
				}
			}
			if len(derrs) > 0 {
				return fmt.Errorf("the new key is not as asked (%w), and removing it failed, so objects with id %x may be left on the token: %w", err, id, errors.Join(derrs...))
			}
			return fmt.Errorf("the new key is not as asked (the pair was removed): %w", err)
		}
		t.remember(s, privH, key, t.m.opts.now())
		return nil
	})
	if err != nil {
		return Key{}, fmt.Errorf("generating %s key %q on token %q: %w", spec, label, t.label, err)
	}
	return key, nil
}

// madeAsAsked checks what Key.AttributeProblem does not: that the new
// key has the size or curve of spec and, when the module took
// CKA_ALLOWED_MECHANISMS in the template (restricted), exactly the
// mechanisms asked for.
func madeAsAsked(key Key, spec KeySpec, kt KeyType, restricted bool) error {
	want := map[KeySpec]int{RSA2048: 2048, RSA3072: 3072, RSA4096: 4096, ECP256: 256, ECP384: 384}[spec]
	if key.Type != kt || key.Bits != want {
		return fmt.Errorf("%w: asked for %s, the module made a %d-bit %s key", ErrKeyAttributes, spec, key.Bits, key.Type)
	}
	if got := key.Attrs.AllowedMechanisms; restricted && !slices.Equal(got, signMechanisms(kt)) {
		names := make([]string, len(got))
		for i, m := range got {
			names[i] = MechanismName(m)
		}
		return fmt.Errorf("%w: CKA_ALLOWED_MECHANISMS was given but the key has [%s]", ErrKeyAttributes, strings.Join(names, ", "))
	}
	return nil
}

// keyTemplate returns the mechanism, the public key template and the key
// type of spec.
func keyTemplate(spec KeySpec) (*pkcs11.Mechanism, []*pkcs11.Attribute, KeyType, error) {
	rsaT := func(bits int) []*pkcs11.Attribute {
		return []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA),
			pkcs11.NewAttribute(pkcs11.CKA_MODULUS_BITS, bits),
			pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, []byte{1, 0, 1}),
		}
	}
	ecT := func(c elliptic.Curve) []*pkcs11.Attribute {
		params, _ := asn1.Marshal(curveOID(c))
		return []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
			pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, params),
		}
	}
	rsaM := pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, nil)
	ecM := pkcs11.NewMechanism(pkcs11.CKM_EC_KEY_PAIR_GEN, nil)
	switch spec {
	case RSA2048:
		return rsaM, rsaT(2048), KeyRSA, nil
	case RSA3072:
		return rsaM, rsaT(3072), KeyRSA, nil
	case RSA4096:
		return rsaM, rsaT(4096), KeyRSA, nil
	case ECP256:
		return ecM, ecT(elliptic.P256()), KeyEC, nil
	case ECP384:
		return ecM, ecT(elliptic.P384()), KeyEC, nil
	}
	return nil, nil, KeyUnknown, fmt.Errorf("%w: unknown key type %q", ErrInvalidArgument, spec)
}

// checkLabelFree refuses a label that a key object on the token has. It
// searches once, for objects of any class with the label (a search costs
// a pass over the token's objects on a module such as SoftHSM), and reads
// the class of the few it finds.
func (t *Token) checkLabelFree(s *session, label string) error {
	hs, err := t.find(s, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, label)}, 64)
	if err != nil {
		return err
	}
	for _, h := range hs {
		attrs, err := t.m.api.GetAttributeValue(s.h, h, attrQuery(pkcs11.CKA_CLASS))
		if isRV(err, pkcs11.CKR_OBJECT_HANDLE_INVALID) {
			continue // destroyed since the search
		}
		if err != nil {
			return p11err("C_GetAttributeValue", err)
		}
		if c := ulong(attrs[0].Value); c == pkcs11.CKO_PRIVATE_KEY || c == pkcs11.CKO_PUBLIC_KEY {
			return fmt.Errorf("%w: %q", ErrKeyExists, label)
		}
	}
	return nil
}

// destroyByID destroys every object with CKA_ID id: certificates first,
// then the public key, the private key last.
func (t *Token) destroyByID(s *session, id []byte) error {
	for _, class := range []uint{pkcs11.CKO_CERTIFICATE, pkcs11.CKO_PUBLIC_KEY, pkcs11.CKO_PRIVATE_KEY} {
		hs, err := t.find(s, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, class),
			pkcs11.NewAttribute(pkcs11.CKA_ID, id),
		}, 64)
		if err != nil {
			return err
		}
		for _, h := range hs {
			if err := t.m.api.DestroyObject(s.h, h); err != nil && !isRV(err, pkcs11.CKR_OBJECT_HANDLE_INVALID) {
				return p11err("C_DestroyObject", err)
			}
		}
	}
	return nil
}

// ListKeys lists the token's private keys with their public keys and
// attributes, and, as damaged entries (Key.Damage, Key.Object), the
// public key and certificate objects that belong to no private key
// object: those without CKA_ID, and those whose id no private key object
// has. It searches the token once for each class (private keys, public
// keys, certificates) and reads each object's attributes once (one
// C_GetAttributeValue per object); the public key of a key already cached
// under the same handle is taken from the cache (a key pair's public half
// follows from its private half), and the others' are paired by CKA_ID
// with the public key objects the search found, not found with a search
// per key: a search costs a pass over every object on a module such as
// SoftHSM. The listed whole keys are cached for signing.
//
// Damage seen while a key generation or deletion of this process was
// under way may be that operation's objects half made or half gone: when
// a listing shows damage, the token is listed again with none under way
// (holding the token's admin lock), and that listing is returned. No
// object is taken for orphaned unless the session shows a logged-in user
// (the private key objects of a token not logged in are hidden).
func (t *Token) ListKeys(ctx context.Context) ([]Key, error) {
	keys, err := t.listKeys(ctx)
	if err != nil || !slices.ContainsFunc(keys, func(k Key) bool { return k.Damage != "" }) {
		return keys, err
	}
	t.adminMu.Lock()
	defer t.adminMu.Unlock()
	return t.listKeys(ctx)
}

// listKeys is ListKeys without the second look at damage.
func (t *Token) listKeys(ctx context.Context) ([]Key, error) {
	var keys []Key
	err := t.withSession(ctx, func(s *session) error {
		keys = keys[:0]
		seq := t.loginSeq.Load()
		hs, err := t.find(s, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY)}, 1<<16)
		if err != nil {
			return err
		}
		if len(hs) == 0 {
			if err := t.loggedIn(s, seq); err != nil {
				return err
			}
		}
		type pending struct {
			at int // the key's place in the search's order
			k  Key
			h  pkcs11.ObjectHandle
		}
		listed := make([]*Key, len(hs))
		privIDs := make(map[string]int, len(hs)) // private key objects by CKA_ID
		var need []pending                       // keys whose public key is to be read
		t.keysMu.RLock()
		cached := maps.Clone(t.keys)
		t.keysMu.RUnlock()
		now := t.m.opts.now()
		for i, h := range hs {
			k, err := t.readPrivate(s, h)
			if (errors.Is(err, ErrKeyNotFound) || isRV(err, pkcs11.CKR_OBJECT_HANDLE_INVALID)) && t.objectGone(s, h) {
				continue // deleted while it was being listed
			}
			if err != nil {
				return err
			}
			if len(k.ID) == 0 {
				// No public key can be found by an id it does not have
				// (pairing it with an id-less public key object, another
				// damaged one, would give it a public key not its own).
				k.Damage = damageNoID
				listed[i] = &k
				continue
			}
			privIDs[string(k.ID)]++
			if k.Type == KeyUnknown {
				continue // a key of a type the appliance does not use
			}
			if e := cached[string(k.ID)]; e != nil && e.gen == s.gen && e.handle == h && e.key.Type == k.Type && e.key.Public != nil {
				k = withPublicKey(k, e.key.Public)
				t.remember(s, h, k, now)
				listed[i] = &k
				continue
			}
			need = append(need, pending{i, k, h})
		}
		pubs, strays, err := t.strayObjects(s, privIDs)
		if err != nil {
			return err
		}
		if len(hs) > 0 && slices.ContainsFunc(strays, func(k Key) bool { return len(k.ID) > 0 }) {
			// An object is orphaned only as a logged-in session sees
			// the token: without one the private key objects are
			// hidden, and every public key object looks orphaned.
			if err := t.loggedIn(s, seq); err != nil {
				return err
			}
		}
		for _, p := range need {
			ph, found := pubs[string(p.k.ID)]
			k, err := t.withPublic(s, p.k, p.h, ph, found)
			if errors.Is(err, ErrAlgorithm) {
				continue // a key of a type the appliance does not use
			}
			if (errors.Is(err, ErrKeyNotFound) || isRV(err, pkcs11.CKR_OBJECT_HANDLE_INVALID)) && t.objectGone(s, p.h) {
				continue // deleted while it was being listed
			}
			if isRV(err, pkcs11.CKR_OBJECT_HANDLE_INVALID) {
				// Its public key object went while it was read: a
				// deletion under way. Listed as damaged, which makes
				// ListKeys list again with no deletion under way.
				err = fmt.Errorf("%w: key %x: its public key object was destroyed while it was read", ErrKeyNotFound, p.k.ID)
			}
			if damage := publicDamage(err); damage != "" {
				// Listed, not failing the listing: the officer sees
				// it and deletes it.
				k = p.k
				k.Damage = damage
				listed[p.at] = &k
				continue
			}
			if err != nil {
				return err
			}
			t.remember(s, p.h, k, now)
			listed[p.at] = &k
		}
		for _, k := range listed {
			if k == nil {
				continue
			}
			if len(k.ID) > 0 && privIDs[string(k.ID)] > 1 {
				// Neither is the key: a lookup by the id refuses them,
				// and no handle cached before may sign for it.
				t.forgetKey(k.ID)
				k.Damage, k.Public, k.Bits, k.Curve = damageSharedID, nil, 0, ""
			}
			keys = append(keys, *k)
		}
		keys = append(keys, strays...)
		return nil
	})
	return keys, err
}

// errLoggedIn is loggedIn's probe: notFound answers it when the session
// shows a logged-in user.
var errLoggedIn = errors.New("logged in")

// loggedIn returns nil when the session shows a logged-in user and no
// login or logout began or ended since seq (see notFound), else what
// notFound answers: USER_NOT_LOGGED_IN when a PIN is kept (withSession
// logs in and calls again), or ErrNotLoggedIn.
func (t *Token) loggedIn(s *session, seq uint64) error {
	if err := t.notFound(s, seq, errLoggedIn); !errors.Is(err, errLoggedIn) {
		return err
	}
	return nil
}

// strayObjects searches the token's public key and certificate objects
// and reads each one's CKA_ID and label. It returns a public key object
// handle by CKA_ID (the first found) for pairing with the private keys,
// and, as damaged entries, the objects no private key object owns: a
// public key or certificate object without CKA_ID (one entry each), and
// the objects of an id not in privIDs (one entry for the id).
func (t *Token) strayObjects(s *session, privIDs map[string]int) (map[string]pkcs11.ObjectHandle, []Key, error) {
	pubs := map[string]pkcs11.ObjectHandle{}
	var strays []Key
	orphans := map[string]*Key{}
	var order []string
	counts := map[string][2]int{} // public key, certificate objects by orphaned id
	for _, class := range []uint{pkcs11.CKO_PUBLIC_KEY, pkcs11.CKO_CERTIFICATE} {
		hs, err := t.find(s, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, class)}, 1<<16)
		if err != nil {
			return nil, nil, err
		}
		q := []uint{pkcs11.CKA_ID, pkcs11.CKA_LABEL}
		if class == pkcs11.CKO_PUBLIC_KEY {
			q = append(q, pkcs11.CKA_KEY_TYPE)
		}
		for _, h := range hs {
			attrs, err := t.m.api.GetAttributeValue(s.h, h, attrQuery(q...))
			if isRV(err, pkcs11.CKR_OBJECT_HANDLE_INVALID) {
				continue // destroyed since the search
			}
			if err != nil {
				return nil, nil, p11err("C_GetAttributeValue", readGone(err))
			}
			id, label := attrs[0].Value, string(attrs[1].Value)
			k := Key{ID: id, Label: label, Object: kindOf(class)}
			if class == pkcs11.CKO_PUBLIC_KEY {
				k.Type = keyTypeOf(ulong(attrs[2].Value))
			}
			switch {
			case len(id) == 0:
				k.ID = nil
				k.Damage = map[uint]string{pkcs11.CKO_PUBLIC_KEY: damagePublicNoID, pkcs11.CKO_CERTIFICATE: damageCertNoID}[class]
				strays = append(strays, k)
				continue
			case privIDs[string(id)] > 0:
				if _, dup := pubs[string(id)]; !dup && class == pkcs11.CKO_PUBLIC_KEY {
					pubs[string(id)] = h
				}
				continue
			}
			c := counts[string(id)]
			if class == pkcs11.CKO_PUBLIC_KEY {
				c[0]++
			} else {
				c[1]++
			}
			counts[string(id)] = c
			if orphans[string(id)] == nil {
				orphans[string(id)] = &k
				order = append(order, string(id))
			}
		}
	}
	for _, id := range order {
		k := orphans[id]
		c := counts[id]
		k.Damage = damageOrphan(c[0], c[1])
		strays = append(strays, *k)
	}
	return pubs, strays, nil
}

// publicDamage returns Key.Damage for err, the error of reading a private
// key's public key, when err says the key pair is damaged: its public key
// object is missing (ErrKeyNotFound) or holds no public key that parses.
// A PKCS#11 error (a session, login or device fault) is no damage.
func publicDamage(err error) string {
	var pe pkcs11.Error
	var de *damageError
	switch {
	case err == nil:
		return ""
	case errors.As(err, &de):
		return de.damage
	case errors.Is(err, ErrKeyNotFound):
		return damageNoPublic
	case errors.As(err, &pe), errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return ""
	}
	return fmt.Sprintf("its public key object holds no public key the appliance reads (%v): a key generation cut short, or a key made outside signerd; it cannot be used", err)
}

// readKeyPublic completes k, read from the private key object priv, with
// its public key, found by its own search.
func (t *Token) readKeyPublic(s *session, k Key, priv pkcs11.ObjectHandle) (Key, error) {
	pubs, err := t.find(s, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_ID, k.ID),
	}, 1)
	if err != nil {
		return Key{}, err
	}
	pubH, found := pkcs11.ObjectHandle(0), len(pubs) == 1
	if found {
		pubH = pubs[0]
	}
	return t.withPublic(s, k, priv, pubH, found)
}

// objectGone reports whether the object h no longer exists: the token
// answers OBJECT_HANDLE_INVALID for it.
func (t *Token) objectGone(s *session, h pkcs11.ObjectHandle) bool {
	_, err := t.m.api.GetAttributeValue(s.h, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, nil)})
	return isRV(err, pkcs11.CKR_OBJECT_HANDLE_INVALID)
}

// refreshCached replaces the cached entry of key, when it holds the same
// handle, with key as just read from the token, so that signing follows
// what the officer was shown.
func (t *Token) refreshCached(s *session, h pkcs11.ObjectHandle, key Key) {
	t.keysMu.RLock()
	e := t.keys[string(key.ID)]
	t.keysMu.RUnlock()
	if e != nil && e.gen == s.gen && e.handle == h {
		t.remember(s, h, key, t.m.opts.now())
	}
}

// KeyByID returns the key with CKA_ID id, its attributes read from the
// token.
func (t *Token) KeyByID(ctx context.Context, id []byte) (Key, error) {
	var k Key
	err := t.withSession(ctx, func(s *session) error {
		e, err := t.lookupKey(s, id, true)
		if err != nil {
			return err
		}
		k = e.key
		return nil
	})
	return k, err
}

// KeyByLabel returns the key labelled label, its attributes read from the
// token.
func (t *Token) KeyByLabel(ctx context.Context, label string) (Key, error) {
	var k Key
	err := t.withSession(ctx, func(s *session) error {
		seq := t.loginSeq.Load()
		hs, err := t.find(s, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		}, 2)
		if err != nil {
			return err
		}
		switch len(hs) {
		case 0:
			return t.notFound(s, seq, fmt.Errorf("%w: label %q on token %q", ErrKeyNotFound, label, t.label))
		case 1:
			if k, err = t.readKey(s, hs[0]); err == nil {
				t.refreshCached(s, hs[0], k)
			}
			return err
		}
		return fmt.Errorf("%w: label %q names more than one key on token %q; use the id", ErrInvalidArgument, label, t.label)
	})
	return k, err
}

// KeyByURI returns the key a PKCS#11 URI names by id or object label. The
// URI's token attributes, if any, must match this token.
func (t *Token) KeyByURI(ctx context.Context, uri string) (Key, error) {
	u, err := ParseURI(uri)
	if err != nil {
		return Key{}, err
	}
	if (u.Token != "" && u.Token != t.label) || (u.Serial != "" && u.Serial != t.serial) {
		return Key{}, fmt.Errorf("%w: %s names another token than %q", ErrKeyNotFound, uri, t.label)
	}
	switch {
	case len(u.ID) > 0:
		k, err := t.KeyByID(ctx, u.ID)
		if err == nil && u.Object != "" && k.Label != u.Object {
			return Key{}, fmt.Errorf("%w: id %x is labelled %q, not %q", ErrKeyNotFound, u.ID, k.Label, u.Object)
		}
		return k, err
	case u.Object != "":
		return t.KeyByLabel(ctx, u.Object)
	}
	return Key{}, fmt.Errorf("%w: %s names no key (give id= or object=)", ErrInvalidURI, uri)
}

// DeleteKey destroys the key pair with CKA_ID id and the certificate
// objects that share its id. Calls that use the key afterwards fail with
// ErrKeyNotFound.
func (t *Token) DeleteKey(ctx context.Context, id []byte) error {
	t.adminMu.Lock()
	defer t.adminMu.Unlock()
	err := t.withSession(ctx, func(s *session) error {
		seq := t.loginSeq.Load()
		hs, err := t.find(s, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_ID, id),
		}, 1)
		if err != nil {
			return err
		}
		if len(hs) == 0 {
			return t.notFound(s, seq, fmt.Errorf("%w: id %x on token %q", ErrKeyNotFound, id, t.label))
		}
		return t.destroyByID(s, id)
	})
	t.forgetKey(id)
	return err
}

// DeleteKeysWithoutID destroys every private key, public key and
// certificate object on the token that has no CKA_ID (Key.Damage: what a
// key generation or a certificate import cut short leaves; no call can
// name it, and no key pair is whole without one) and returns them. It
// destroys nothing with an id: a key is deleted by it (DeleteKey,
// DeleteDamaged). It returns ErrKeyNotFound when the token holds no such
// object, and destroys nothing unless the session shows a logged-in user.
func (t *Token) DeleteKeysWithoutID(ctx context.Context) ([]Object, error) {
	t.adminMu.Lock()
	defer t.adminMu.Unlock()
	var gone []Object
	err := t.withSession(ctx, func(s *session) error {
		// What an attempt destroyed before it failed stays in gone.
		seq := t.loginSeq.Load()
		var doomed []pkcs11.ObjectHandle
		var objs []Object
		for _, class := range []uint{pkcs11.CKO_CERTIFICATE, pkcs11.CKO_PUBLIC_KEY, pkcs11.CKO_PRIVATE_KEY} {
			hs, err := t.find(s, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, class)}, 1<<16)
			if err != nil {
				return err
			}
			for _, h := range hs {
				attrs, err := t.m.api.GetAttributeValue(s.h, h, attrQuery(pkcs11.CKA_ID, pkcs11.CKA_LABEL))
				if isRV(err, pkcs11.CKR_OBJECT_HANDLE_INVALID) {
					continue // destroyed since the search
				}
				if err != nil {
					return p11err("C_GetAttributeValue", readGone(err))
				}
				if len(attrs[0].Value) != 0 {
					continue
				}
				doomed = append(doomed, h)
				objs = append(objs, Object{Kind: kindOf(class), Label: string(attrs[1].Value)})
			}
		}
		if err := t.loggedIn(s, seq); err != nil {
			return err
		}
		if len(doomed) == 0 {
			return fmt.Errorf("%w: no object without CKA_ID on token %q", ErrKeyNotFound, t.label)
		}
		for i, h := range doomed {
			if err := t.m.api.DestroyObject(s.h, h); err != nil && !isRV(err, pkcs11.CKR_OBJECT_HANDLE_INVALID) {
				return p11err("C_DestroyObject", err)
			}
			gone = append(gone, objs[i])
		}
		return nil
	})
	return gone, err
}

// DeleteDamaged destroys the objects with CKA_ID id when they are no
// whole key pair (Key.Damage: a private key object without its public key
// object, or with one not its own; two private key objects sharing the
// id; public key or certificate objects without a private key) and
// returns them, certificates first and the private key last. It refuses
// with ErrKeyExists when id names a whole key pair (DeleteKey deletes
// that), and with ErrKeyNotFound when no object has the id. It destroys
// nothing unless the session shows a logged-in user.
func (t *Token) DeleteDamaged(ctx context.Context, id []byte) ([]Object, error) {
	if len(id) == 0 {
		return nil, fmt.Errorf("%w: no key id (DeleteKeysWithoutID deletes the objects without one)", ErrInvalidArgument)
	}
	t.adminMu.Lock()
	defer t.adminMu.Unlock()
	var gone []Object
	err := t.withSession(ctx, func(s *session) error {
		// What an attempt destroyed before it failed stays in gone.
		seq := t.loginSeq.Load()
		privs, err := t.find(s, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_ID, id),
		}, 2)
		if err != nil {
			return err
		}
		if len(privs) == 1 {
			_, err := t.readKey(s, privs[0])
			switch {
			case err == nil:
				return fmt.Errorf("%w: id %x on token %q is a whole key pair, not damage; delete it as a key", ErrKeyExists, id, t.label)
			case errors.Is(err, ErrAlgorithm):
				return fmt.Errorf("%w: id %x on token %q is a key of a type signerd does not use, not damage: %w", ErrKeyExists, id, t.label, err)
			case publicDamage(err) == "":
				return err
			}
		}
		if err := t.loggedIn(s, seq); err != nil {
			return err
		}
		var objs []Object
		var doomed []pkcs11.ObjectHandle
		for _, class := range []uint{pkcs11.CKO_CERTIFICATE, pkcs11.CKO_PUBLIC_KEY, pkcs11.CKO_PRIVATE_KEY} {
			hs, err := t.find(s, []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_CLASS, class),
				pkcs11.NewAttribute(pkcs11.CKA_ID, id),
			}, 64)
			if err != nil {
				return err
			}
			for _, h := range hs {
				attrs, err := t.m.api.GetAttributeValue(s.h, h, attrQuery(pkcs11.CKA_LABEL))
				if isRV(err, pkcs11.CKR_OBJECT_HANDLE_INVALID) {
					continue // destroyed since the search
				}
				if err != nil {
					return p11err("C_GetAttributeValue", readGone(err))
				}
				doomed = append(doomed, h)
				objs = append(objs, Object{Kind: kindOf(class), ID: id, Label: string(attrs[0].Value)})
			}
		}
		if len(doomed) == 0 {
			return fmt.Errorf("%w: no object with id %x on token %q", ErrKeyNotFound, id, t.label)
		}
		for i, h := range doomed {
			if err := t.m.api.DestroyObject(s.h, h); err != nil && !isRV(err, pkcs11.CKR_OBJECT_HANDLE_INVALID) {
				return p11err("C_DestroyObject", err)
			}
			gone = append(gone, objs[i])
		}
		return nil
	})
	t.forgetKey(id)
	return gone, err
}

// HasObjectsWithID reports whether the token holds any object (private
// key, public key or certificate) with CKA_ID id, as a logged-in session
// sees it.
func (t *Token) HasObjectsWithID(ctx context.Context, id []byte) (bool, error) {
	var found bool
	err := t.withSession(ctx, func(s *session) error {
		seq := t.loginSeq.Load()
		hs, err := t.find(s, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ID, id)}, 1)
		if err != nil {
			return err
		}
		found = len(hs) > 0
		return t.loggedIn(s, seq)
	})
	return found, err
}
