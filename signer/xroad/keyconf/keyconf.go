// Package keyconf reads the key configuration of X-Road's signer, the file
// /etc/xroad/signer/keyconf.xml, so that what X-Road knew about its keys
// (friendly names, usages, certificates with their members, statuses and
// activation, pending certificate requests) can be recorded in signerd.
//
// The format is the one of X-Road's keyconf.xsd: root element keyConf in
// namespace http://x-road.eu/xsd/xroad.xsd, its other elements unqualified,
// member identifiers' elements and objectType attribute in
// http://x-road.eu/xsd/identifiers. It reads the files of X-Road 6.x and
// 7.x up to 7.8: the schema in src/signer (7.6 and earlier) and in
// src/service/signer/signer-core (7.7, 7.8), which adds a key's own
// signMechanismName, read here, and a certificate's ACME renewal elements
// (nextRenewalTime, renewedCertHash, renewalError), read past as they mean
// nothing to signerd, like ocspRequestKey and pinIndex. Elements are
// matched by local name; the root's namespace is checked.
//
// Parse is strict where a mistake would misplace a key or a certificate:
// a key without a keyId, a key id given twice (compared without regard to
// case, as X-Road and signerd both spell ids in hex), a certificate whose
// contents are not base64 of one DER certificate, a publicKey that is not
// base64 of a DER SubjectPublicKeyInfo, a member identifier without its
// instance, class or code, and an input larger than MaxSize are errors.
// It uses only the standard library (no cgo).
package keyconf

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"strings"
)

// MaxSize bounds the input Parse reads, in bytes. A security server's
// keyconf.xml holds a few keys and certificates: tens of kilobytes.
const MaxSize = 8 << 20

// Namespaces of the keyconf.xml format.
const (
	Namespace            = "http://x-road.eu/xsd/xroad.xsd"
	IdentifiersNamespace = "http://x-road.eu/xsd/identifiers"
)

// SoftTokenType is the deviceType of X-Road's software token, whose keys
// are PKCS#12 files under /etc/xroad/signer/softtoken, not HSM objects.
const SoftTokenType = "softToken"

// Usage is a key's usage as X-Road writes it.
type Usage string

// Key usages in keyconf.xml; a key may have none yet.
const (
	UsageNone           Usage = ""
	UsageSigning        Usage = "SIGNING"
	UsageAuthentication Usage = "AUTHENTICATION"
)

// Certificate statuses as X-Road writes them (CertificateInfo.STATUS_*).
const (
	StatusSaved                  = "saved"
	StatusRegistrationInProgress = "registration in progress"
	StatusRegistered             = "registered"
	StatusDeletionInProgress     = "deletion in progress"
	StatusGlobalError            = "global error"
)

// ErrMalformed is wrapped by every error Parse returns for input that is
// not a well-formed keyconf.xml.
var ErrMalformed = errors.New("malformed keyconf.xml")

// ErrTooLarge is returned, wrapped, for input larger than MaxSize.
var ErrTooLarge = errors.New("keyconf.xml too large")

// Conf is a parsed keyconf.xml.
type Conf struct {
	// Devices are X-Road's tokens, in file order.
	Devices []Device
}

// Device is one of X-Road's tokens.
type Device struct {
	// Type is the deviceType: SoftTokenType, or the device (PKCS#11
	// module) name from X-Road's devices.ini.
	Type         string
	ID           string
	FriendlyName string
	// TokenID is the token's serial number, SlotID its label.
	TokenID string
	SlotID  string
	// SignMechanism is signMechanismName (for example CKM_RSA_PKCS), or
	// "" when the file does not say.
	SignMechanism string
	Keys          []Key
}

// Soft reports whether d is X-Road's software token.
func (d Device) Soft() bool { return d.Type == SoftTokenType }

// Key is a key X-Road knew about.
type Key struct {
	// ID is the keyId as written (hex of CKA_ID for HSM keys).
	ID           string
	FriendlyName string
	Label        string
	Usage        Usage
	// SignMechanism is the key's own signMechanismName (X-Road 7.7 and
	// later), or "".
	SignMechanism string
	// PublicKey is the DER SubjectPublicKeyInfo, when the file has one.
	PublicKey []byte
	Certs     []Cert
	Requests  []CertRequest
}

// MemberID is an X-Road client identifier: a member, or a subsystem of one.
type MemberID struct {
	ObjectType string // MEMBER or SUBSYSTEM
	Instance   string
	Class      string
	Code       string
	Subsystem  string
}

// String returns INSTANCE/CLASS/CODE[/SUBSYSTEM].
func (m MemberID) String() string {
	s := m.Member()
	if m.Subsystem != "" {
		s += "/" + m.Subsystem
	}
	return s
}

// Member returns the member's identifier INSTANCE/CLASS/CODE, without a
// subsystem: subsystems sign with their member's certificate.
func (m MemberID) Member() string { return m.Instance + "/" + m.Class + "/" + m.Code }

// Cert is a certificate X-Road had for a key.
type Cert struct {
	// ID is the cert element's id attribute (X-Road's hash), or "".
	ID string
	// Member is the member the certificate signs for; nil for an
	// authentication certificate.
	Member *MemberID
	// DER is the certificate, Certificate the same parsed.
	DER         []byte
	Certificate *x509.Certificate
	// Status is one of the Status constants, or whatever else the file
	// says; "" when it says nothing.
	Status string
	// Active is X-Road's active attribute (true when absent).
	Active bool
}

// CertRequest is a certificate request X-Road had made and no certificate
// had answered yet.
type CertRequest struct {
	ID             string
	Member         *MemberID
	Subject        string
	SubjectAltName string
	Profile        string
}

// The XML shapes, as in keyconf.xsd.
type xmlConf struct {
	XMLName xml.Name    `xml:"keyConf"`
	Devices []xmlDevice `xml:"device"`
}

type xmlDevice struct {
	Type          string   `xml:"deviceType"`
	FriendlyName  string   `xml:"friendlyName"`
	ID            string   `xml:"id"`
	TokenID       string   `xml:"tokenId"`
	SlotID        string   `xml:"slotId"`
	Keys          []xmlKey `xml:"key"`
	SignMechanism string   `xml:"signMechanismName"`
}

type xmlKey struct {
	Usage        string           `xml:"usage,attr"`
	FriendlyName string           `xml:"friendlyName"`
	Label        string           `xml:"label"`
	KeyID        *string          `xml:"keyId"`
	PublicKey    string           `xml:"publicKey"`
	Requests     []xmlCertRequest `xml:"certRequest"`
	Certs        []xmlCert        `xml:"cert"`
	SignMech     string           `xml:"signMechanismName"`
}

type xmlCert struct {
	Active   *string    `xml:"active,attr"`
	ID       string     `xml:"id,attr"`
	Member   *xmlMember `xml:"memberId"`
	Contents *string    `xml:"contents"`
	Status   string     `xml:"status"`
}

type xmlCertRequest struct {
	ID             string     `xml:"id,attr"`
	Member         *xmlMember `xml:"memberId"`
	Subject        *string    `xml:"subjectName"`
	SubjectAltName string     `xml:"subjectAlternativeName"`
	Profile        string     `xml:"certificateProfile"`
}

type xmlMember struct {
	ObjectType string `xml:"objectType,attr"`
	Instance   string `xml:"xRoadInstance"`
	Class      string `xml:"memberClass"`
	Code       string `xml:"memberCode"`
	Subsystem  string `xml:"subsystemCode"`
}

// Parse reads a keyconf.xml of at most MaxSize bytes from r.
func Parse(r io.Reader) (*Conf, error) {
	b, err := io.ReadAll(io.LimitReader(r, MaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading keyconf.xml: %w", err)
	}
	if len(b) > MaxSize {
		return nil, fmt.Errorf("%w: more than %d bytes", ErrTooLarge, MaxSize)
	}
	return ParseBytes(b)
}

// ParseBytes parses a keyconf.xml held in b, at most MaxSize bytes.
func ParseBytes(b []byte) (*Conf, error) {
	if len(b) > MaxSize {
		return nil, fmt.Errorf("%w: more than %d bytes", ErrTooLarge, MaxSize)
	}
	var x xmlConf
	d := xml.NewDecoder(bytes.NewReader(b))
	if err := d.Decode(&x); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if x.XMLName.Space != Namespace {
		return nil, fmt.Errorf("%w: root element keyConf is in namespace %q, want %q", ErrMalformed, x.XMLName.Space, Namespace)
	}
	// Anything but white space, comments and processing instructions
	// after the root element is not part of the file.
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%w: after the root element: %w", ErrMalformed, err)
		}
		switch t := tok.(type) {
		case xml.Comment, xml.ProcInst:
		case xml.CharData:
			if len(bytes.TrimSpace(t)) != 0 {
				return nil, fmt.Errorf("%w: text after the root element", ErrMalformed)
			}
		default:
			return nil, fmt.Errorf("%w: content after the root element", ErrMalformed)
		}
	}
	conf := &Conf{}
	seen := map[string]string{} // lower-case key id -> where
	for i, xd := range x.Devices {
		dev := Device{Type: strings.TrimSpace(xd.Type), ID: strings.TrimSpace(xd.ID), FriendlyName: xd.FriendlyName,
			TokenID: strings.TrimSpace(xd.TokenID), SlotID: xd.SlotID, SignMechanism: strings.TrimSpace(xd.SignMechanism)}
		where := fmt.Sprintf("device %d (id %q)", i+1, dev.ID)
		if dev.Type == "" {
			return nil, fmt.Errorf("%w: %s has no deviceType", ErrMalformed, where)
		}
		for j, xk := range xd.Keys {
			k, err := parseKey(xk)
			if err != nil {
				return nil, fmt.Errorf("%w: %s, key %d: %w", ErrMalformed, where, j+1, err)
			}
			id := strings.ToLower(k.ID)
			if prev, ok := seen[id]; ok {
				return nil, fmt.Errorf("%w: key id %s is given twice: in %s and in %s, key %d", ErrMalformed, k.ID, prev, where, j+1)
			}
			seen[id] = fmt.Sprintf("%s, key %d", where, j+1)
			dev.Keys = append(dev.Keys, k)
		}
		conf.Devices = append(conf.Devices, dev)
	}
	return conf, nil
}

func parseKey(xk xmlKey) (Key, error) {
	if xk.KeyID == nil || strings.TrimSpace(*xk.KeyID) == "" {
		return Key{}, errors.New("no keyId")
	}
	k := Key{ID: strings.TrimSpace(*xk.KeyID), FriendlyName: xk.FriendlyName, Label: xk.Label, Usage: Usage(strings.TrimSpace(xk.Usage)),
		SignMechanism: strings.TrimSpace(xk.SignMech)}
	switch k.Usage {
	case UsageNone, UsageSigning, UsageAuthentication:
	default:
		return Key{}, fmt.Errorf("key %s: usage %q is neither SIGNING nor AUTHENTICATION", k.ID, xk.Usage)
	}
	if strings.TrimSpace(xk.PublicKey) != "" {
		der, err := decodeBase64(xk.PublicKey)
		if err != nil {
			return Key{}, fmt.Errorf("key %s: publicKey: %w", k.ID, err)
		}
		if _, err := x509.ParsePKIXPublicKey(der); err != nil {
			return Key{}, fmt.Errorf("key %s: publicKey is not a DER SubjectPublicKeyInfo: %w", k.ID, err)
		}
		k.PublicKey = der
	}
	for i, xc := range xk.Certs {
		c, err := parseCert(xc)
		if err != nil {
			return Key{}, fmt.Errorf("key %s, cert %d: %w", k.ID, i+1, err)
		}
		k.Certs = append(k.Certs, c)
	}
	for i, xr := range xk.Requests {
		r, err := parseRequest(xr)
		if err != nil {
			return Key{}, fmt.Errorf("key %s, certRequest %d: %w", k.ID, i+1, err)
		}
		k.Requests = append(k.Requests, r)
	}
	return k, nil
}

func parseCert(xc xmlCert) (Cert, error) {
	c := Cert{ID: xc.ID, Status: strings.TrimSpace(xc.Status), Active: true}
	if xc.Active != nil {
		switch strings.TrimSpace(*xc.Active) {
		case "true", "1":
		case "false", "0":
			c.Active = false
		default:
			return Cert{}, fmt.Errorf("active=%q is not an xs:boolean", *xc.Active)
		}
	}
	if xc.Contents == nil || strings.TrimSpace(*xc.Contents) == "" {
		return Cert{}, errors.New("no contents")
	}
	der, err := decodeBase64(*xc.Contents)
	if err != nil {
		return Cert{}, fmt.Errorf("contents: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return Cert{}, fmt.Errorf("contents are not a DER certificate: %w", err)
	}
	c.DER, c.Certificate = der, cert
	if xc.Member != nil {
		m, err := parseMember(*xc.Member)
		if err != nil {
			return Cert{}, err
		}
		c.Member = &m
	}
	return c, nil
}

func parseRequest(xr xmlCertRequest) (CertRequest, error) {
	if xr.Subject == nil || strings.TrimSpace(*xr.Subject) == "" {
		return CertRequest{}, errors.New("no subjectName")
	}
	r := CertRequest{ID: xr.ID, Subject: strings.TrimSpace(*xr.Subject), SubjectAltName: strings.TrimSpace(xr.SubjectAltName), Profile: strings.TrimSpace(xr.Profile)}
	if xr.Member != nil {
		m, err := parseMember(*xr.Member)
		if err != nil {
			return CertRequest{}, err
		}
		r.Member = &m
	}
	return r, nil
}

func parseMember(xm xmlMember) (MemberID, error) {
	m := MemberID{ObjectType: strings.TrimSpace(xm.ObjectType), Instance: strings.TrimSpace(xm.Instance), Class: strings.TrimSpace(xm.Class),
		Code: strings.TrimSpace(xm.Code), Subsystem: strings.TrimSpace(xm.Subsystem)}
	switch m.ObjectType {
	case "MEMBER":
		if m.Subsystem != "" {
			return MemberID{}, fmt.Errorf("memberId of objectType MEMBER has a subsystemCode %q", m.Subsystem)
		}
	case "SUBSYSTEM":
		if m.Subsystem == "" {
			return MemberID{}, errors.New("memberId of objectType SUBSYSTEM has no subsystemCode")
		}
	default:
		return MemberID{}, fmt.Errorf("memberId has objectType %q; want MEMBER or SUBSYSTEM", xm.ObjectType)
	}
	for _, p := range []struct{ name, v string }{{"xRoadInstance", m.Instance}, {"memberClass", m.Class}, {"memberCode", m.Code}} {
		if p.v == "" {
			return MemberID{}, fmt.Errorf("memberId has no %s", p.name)
		}
		if strings.Contains(p.v, "/") {
			return MemberID{}, fmt.Errorf("memberId's %s %q contains a slash", p.name, p.v)
		}
	}
	if strings.Contains(m.Subsystem, "/") {
		return MemberID{}, fmt.Errorf("memberId's subsystemCode %q contains a slash", m.Subsystem)
	}
	return m, nil
}

// decodeBase64 reads xs:base64Binary: standard base64, white space (as
// X-Road's pretty-printed files wrap it) ignored.
func decodeBase64(s string) ([]byte, error) {
	clean := strings.Map(func(r rune) rune {
		switch r {
		case ' ', '\t', '\n', '\r':
			return -1
		}
		return r
	}, s)
	b, err := base64.StdEncoding.DecodeString(clean)
	if err != nil {
		return nil, fmt.Errorf("not base64: %w", err)
	}
	return b, nil
}
