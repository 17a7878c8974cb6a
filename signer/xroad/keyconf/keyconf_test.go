package keyconf

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"
)

// testCert makes a self-signed certificate and returns its DER and its
// public key's DER.
func testCert(t testing.TB) (certDER, pubDER []byte) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "producer"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	certDER, err = x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	pubDER, err = x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return certDER, pubDER
}

// wrapped writes b as base64 in 64-character lines, indented, as X-Road's
// pretty-printed files do.
func wrapped(b []byte) string {
	s := base64.StdEncoding.EncodeToString(b)
	var out strings.Builder
	for len(s) > 64 {
		out.WriteString("\n                    " + s[:64])
		s = s[64:]
	}
	out.WriteString("\n                    " + s + "\n                ")
	return out.String()
}

// sample is a keyconf.xml as X-Road 7.x writes it (ns2/ns3 prefixes as
// JAXB makes them; a key's signMechanismName and a certificate's renewal
// elements as 7.7 and later add them), with the parts given.
func sample(certB64, pubB64 string) string {
	return `<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<ns3:keyConf xmlns:ns2="http://x-road.eu/xsd/identifiers" xmlns:ns3="http://x-road.eu/xsd/xroad.xsd">
    <device>
        <deviceType>softToken</deviceType>
        <id>0</id>
        <pinIndex>0</pinIndex>
        <key usage="AUTHENTICATION">
            <friendlyName>Auth key</friendlyName>
            <keyId>7C9D4E1A2B3C4D5E6F7081920A1B2C3D4E5F6071</keyId>
        </key>
    </device>
    <device>
        <deviceType>softhsm</deviceType>
        <friendlyName>HSM</friendlyName>
        <id>softhsm-1234</id>
        <tokenId>1234</tokenId>
        <slotId>xroad</slotId>
        <key usage="SIGNING">
            <friendlyName>Signing key of producer</friendlyName>
            <label>sign-1</label>
            <keyId>02D66D5589F5B8626875EF99A11A84F7</keyId>
            <publicKey>` + pubB64 + `</publicKey>
            <certRequest id="96084D37">
                <memberId ns2:objectType="SUBSYSTEM">
                    <ns2:xRoadInstance>EE</ns2:xRoadInstance>
                    <ns2:memberClass>GOV</ns2:memberClass>
                    <ns2:memberCode>70000310</ns2:memberCode>
                    <ns2:subsystemCode>SUB</ns2:subsystemCode>
                </memberId>
                <subjectName>CN=producer,O=Producer,C=EE</subjectName>
            </certRequest>
            <cert active="false" id="abc">
                <memberId ns2:objectType="MEMBER">
                    <ns2:xRoadInstance>EE</ns2:xRoadInstance>
                    <ns2:memberClass>GOV</ns2:memberClass>
                    <ns2:memberCode>70000310</ns2:memberCode>
                </memberId>
                <contents>` + certB64 + `</contents>
                <status>registration in progress</status>
                <nextRenewalTime>2026-12-01T00:00:00Z</nextRenewalTime>
                <renewalError>ACME server unreachable</renewalError>
            </cert>
            <signMechanismName>CKM_ECDSA</signMechanismName>
        </key>
        <key>
            <friendlyName>No usage yet</friendlyName>
            <keyId>0a0b</keyId>
        </key>
        <signMechanismName>CKM_ECDSA</signMechanismName>
    </device>
</ns3:keyConf>
`
}

func TestParseSample(t *testing.T) {
	certDER, pubDER := testCert(t)
	conf, err := Parse(strings.NewReader(sample(wrapped(certDER), wrapped(pubDER))))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if len(conf.Devices) != 2 {
		t.Fatalf("%d devices, want 2", len(conf.Devices))
	}
	soft, hsm := conf.Devices[0], conf.Devices[1]
	if !soft.Soft() || hsm.Soft() || hsm.Type != "softhsm" || hsm.TokenID != "1234" || hsm.SlotID != "xroad" || hsm.SignMechanism != "CKM_ECDSA" {
		t.Fatalf("devices %+v / %+v", soft, hsm)
	}
	if len(soft.Keys) != 1 || soft.Keys[0].Usage != UsageAuthentication || soft.Keys[0].FriendlyName != "Auth key" {
		t.Fatalf("soft token keys %+v", soft.Keys)
	}
	if len(hsm.Keys) != 2 {
		t.Fatalf("%d HSM keys, want 2", len(hsm.Keys))
	}
	k := hsm.Keys[0]
	if k.ID != "02D66D5589F5B8626875EF99A11A84F7" || k.Usage != UsageSigning || k.SignMechanism != "CKM_ECDSA" || k.FriendlyName != "Signing key of producer" || k.Label != "sign-1" ||
		!bytes.Equal(k.PublicKey, pubDER) {
		t.Fatalf("key %+v", k)
	}
	if len(k.Certs) != 1 || len(k.Requests) != 1 {
		t.Fatalf("key has %d certs and %d requests, want 1 and 1", len(k.Certs), len(k.Requests))
	}
	c := k.Certs[0]
	if !bytes.Equal(c.DER, certDER) || c.Certificate.Subject.CommonName != "producer" || c.Active || c.Status != StatusRegistrationInProgress ||
		c.Member == nil || c.Member.String() != "EE/GOV/70000310" || c.ID != "abc" {
		t.Fatalf("cert %+v", c)
	}
	r := k.Requests[0]
	if r.Subject != "CN=producer,O=Producer,C=EE" || r.Member == nil || r.Member.String() != "EE/GOV/70000310/SUB" || r.Member.Member() != "EE/GOV/70000310" || r.ID != "96084D37" {
		t.Fatalf("request %+v (member %v)", r, r.Member)
	}
	if none := hsm.Keys[1]; none.Usage != UsageNone || none.ID != "0a0b" {
		t.Fatalf("key without usage %+v", none)
	}
}

// TestParseActiveDefault: X-Road's active attribute defaults to true.
func TestParseActiveDefault(t *testing.T) {
	certDER, _ := testCert(t)
	doc := `<keyConf xmlns="http://x-road.eu/xsd/xroad.xsd"><device xmlns=""><deviceType>t</deviceType><id>1</id>
<key usage="AUTHENTICATION"><friendlyName/><keyId>01</keyId><cert><contents>` + base64.StdEncoding.EncodeToString(certDER) + `</contents></cert></key></device></keyConf>`
	conf, err := Parse(strings.NewReader(doc))
	if err != nil {
		t.Fatal(err)
	}
	c := conf.Devices[0].Keys[0].Certs[0]
	if !c.Active || c.Member != nil || c.Status != "" {
		t.Fatalf("cert %+v: want active, no member, no status", c)
	}
}

func TestParseRefuses(t *testing.T) {
	certDER, pubDER := testCert(t)
	good := sample(wrapped(certDER), wrapped(pubDER))
	edit := func(old, new string) string {
		if !strings.Contains(good, old) {
			t.Fatalf("sample lacks %q", old)
		}
		return strings.Replace(good, old, new, 1)
	}
	tests := []struct {
		name, doc, want string
	}{
		{"not XML", "hello", "EOF"},
		{"truncated", good[:len(good)/2], "unexpected EOF"},
		{"unclosed element", edit("</deviceType>", ""), "element <deviceType> closed by </device>"},
		{"wrong root", `<keyConfig xmlns="http://x-road.eu/xsd/xroad.xsd"/>`, "expected element type <keyConf>"},
		{"wrong namespace", `<keyConf xmlns="urn:other"/>`, `namespace "urn:other"`},
		{"content after the root", good + "<keyConf/>", "content after the root element"},
		{"text after the root", good + "junk", "text after the root element"},
		{"duplicate key id, other case, other device", edit("0a0b", "7c9d4e1a2b3c4d5e6f7081920a1b2c3d4e5f6071"), "key id 7c9d4e1a2b3c4d5e6f7081920a1b2c3d4e5f6071 is given twice"},
		{"no key id", edit("<keyId>0a0b</keyId>", ""), "no keyId"},
		{"bad base64 certificate", edit(wrapped(certDER), "MII%%%"), "contents: not base64"},
		{"certificate DER cut short", edit(wrapped(certDER), base64.StdEncoding.EncodeToString(certDER[:len(certDER)-10])), "not a DER certificate"},
		{"certificate with trailing bytes", edit(wrapped(certDER), base64.StdEncoding.EncodeToString(append(bytes.Clone(certDER), 0))), "not a DER certificate"},
		{"empty contents", edit(wrapped(certDER), ""), "no contents"},
		{"bad public key", edit(wrapped(pubDER), base64.StdEncoding.EncodeToString([]byte("not a key"))), "publicKey is not a DER SubjectPublicKeyInfo"},
		{"unknown usage", edit(`usage="SIGNING"`, `usage="ENCRYPTION"`), `usage "ENCRYPTION"`},
		{"bad active", edit(`active="false"`, `active="maybe"`), `active="maybe"`},
		{"member without code", edit("<ns2:memberCode>70000310</ns2:memberCode>\n                </memberId>\n                <contents>", "</memberId>\n                <contents>"), "memberId has no memberCode"},
		{"subsystem without code", edit(`<ns2:subsystemCode>SUB</ns2:subsystemCode>`, ""), "SUBSYSTEM has no subsystemCode"},
		{"unknown object type", edit(`ns2:objectType="MEMBER"`, `ns2:objectType="SERVER"`), `objectType "SERVER"`},
		{"slash in a member code", edit("<ns2:memberCode>70000310</ns2:memberCode>\n                </memberId>\n                <contents>", "<ns2:memberCode>a/b</ns2:memberCode></memberId><contents>"), "contains a slash"},
		{"request without subject", edit("<subjectName>CN=producer,O=Producer,C=EE</subjectName>", ""), "no subjectName"},
		{"device without type", edit("<deviceType>softhsm</deviceType>", ""), "has no deviceType"},
		{"non-UTF-8 encoding", strings.Replace(good, `encoding="UTF-8"`, `encoding="ISO-8859-1"`, 1), "ISO-8859-1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conf, err := Parse(strings.NewReader(tt.doc))
			if err == nil {
				t.Fatalf("Parse accepted it: %+v", conf)
			}
			if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Parse: %v; want ErrMalformed saying %q", err, tt.want)
			}
		})
	}
}

func TestParseTooLarge(t *testing.T) {
	doc := `<keyConf xmlns="http://x-road.eu/xsd/xroad.xsd">` + strings.Repeat(" ", MaxSize) + `</keyConf>`
	if _, err := Parse(strings.NewReader(doc)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Parse of %d bytes: %v; want ErrTooLarge", len(doc), err)
	}
	if _, err := ParseBytes([]byte(doc)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("ParseBytes of %d bytes: %v; want ErrTooLarge", len(doc), err)
	}
}
