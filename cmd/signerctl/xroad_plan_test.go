package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"math/big"
	"strings"
	"testing"
	"time"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/xroad/keyconf"
)

func planCert(t *testing.T, notBefore, notAfter time.Time) keyconf.Cert {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "x"}, NotBefore: notBefore, NotAfter: notAfter}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return keyconf.Cert{DER: der, Certificate: c, Active: true, Status: keyconf.StatusRegistered,
		Member: &keyconf.MemberID{ObjectType: "MEMBER", Instance: "EE", Class: "GOV", Code: "1"}}
}

// TestPlanXRoadCert: what the import plans for a certificate, by what
// signerd already holds.
func TestPlanXRoadCert(t *testing.T) {
	now := time.Now()
	valid := planCert(t, now.Add(-time.Hour), now.Add(time.Hour))
	sum := sha256.Sum256(valid.DER)
	hash := hex.EncodeToString(sum[:])
	sk := &signerv1.Key{Id: "0a0b", Known: true, Usage: signerv1.KeyUsage_KEY_USAGE_SIGN}
	held := func(status signerv1.CertStatus, active bool, key, member string) map[string]*signerv1.Certificate {
		return map[string]*signerv1.Certificate{hash: {Sha256: hash, KeyId: key, Member: member, Status: status, Active: active}}
	}
	with := func(c keyconf.Cert, f func(*keyconf.Cert)) keyconf.Cert { f(&c); return c }
	reg := signerv1.CertStatus_CERT_STATUS_REGISTERED
	tests := []struct {
		name       string
		crt        keyconf.Cert
		certs      map[string]*signerv1.Certificate
		todo, skip string
		apply      bool
	}{
		{"new", valid, nil, "imported for member EE/GOV/1, status registered, activated", "", true},
		{"new, saved and inactive", with(valid, func(c *keyconf.Cert) { c.Status, c.Active = "", false }), nil, "imported for member EE/GOV/1", "", true},
		{"expired", planCert(t, now.Add(-2*time.Hour), now.Add(-time.Hour)), nil, "", "expired on", false},
		{"not yet valid", planCert(t, now.Add(time.Hour), now.Add(2*time.Hour)), nil, "", "not valid before", false},
		{"unknown status", with(valid, func(c *keyconf.Cert) { c.Status = "revoked" }), nil, "", `X-Road status "revoked"`, false},
		{"held the same", valid, held(reg, true, "0a0b", "EE/GOV/1"), "nothing: already imported with status registered", "", false},
		{"held, saved and inactive", valid, held(signerv1.CertStatus_CERT_STATUS_SAVED, false, "0a0b", "EE/GOV/1"), "status registered (was saved), activated", "", true},
		{"held active, inactive in X-Road", with(valid, func(c *keyconf.Cert) { c.Active = false }), held(reg, true, "0a0b", "EE/GOV/1"), "", "left active", false},
		{"held for another key", valid, held(reg, true, "0c0d", "EE/GOV/1"), "", "for key 0c0d", false},
		{"held for another member", valid, held(reg, true, "0a0b", "EE/GOV/2"), "", `member "EE/GOV/2"`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := &xroadState{certs: tt.certs}
			if st.certs == nil {
				st.certs = map[string]*signerv1.Certificate{}
			}
			s := planXRoadCert(st, sk, keyconf.Key{ID: "0A0B"}, tt.crt)
			if (tt.todo == "") != (s.todo == "") || !strings.HasPrefix(s.todo, tt.todo) || (tt.skip == "") != (s.skip == "") || !strings.Contains(s.skip, tt.skip) || (s.apply != nil) != tt.apply {
				t.Fatalf("plan: todo %q, skip %q, apply %v; want todo %q, skip %q, apply %v", s.todo, s.skip, s.apply != nil, tt.todo, tt.skip, tt.apply)
			}
		})
	}
}

// TestPlanXRoadKeyRecord: what the import plans for a key's usage and name.
func TestPlanXRoadKeyRecord(t *testing.T) {
	sign, auth := signerv1.KeyUsage_KEY_USAGE_SIGN, signerv1.KeyUsage_KEY_USAGE_AUTH
	tests := []struct {
		name       string
		sk         *signerv1.Key
		k          keyconf.Key
		todo, skip string
		apply      bool
	}{
		{"unknown, with usage", &signerv1.Key{Id: "01", Token: "hsm"}, keyconf.Key{ID: "01", FriendlyName: "n", Usage: keyconf.UsageAuthentication}, `recorded on token hsm: usage auth, name "n"`, "", true},
		{"unknown, no usage", &signerv1.Key{Id: "01", Token: "hsm"}, keyconf.Key{ID: "01", FriendlyName: "n"}, "", "X-Road recorded no usage", false},
		{"known, other usage", &signerv1.Key{Id: "01", Known: true, Usage: sign}, keyconf.Key{ID: "01", FriendlyName: "n", Usage: keyconf.UsageAuthentication}, "", "a key's usage does not change", false},
		{"known, same name", &signerv1.Key{Id: "01", Token: "hsm", Known: true, Usage: auth, Name: "n"}, keyconf.Key{ID: "01", FriendlyName: "n", Usage: keyconf.UsageAuthentication}, "nothing: already recorded", "", false},
		{"known, no usage in X-Road, other name", &signerv1.Key{Id: "01", Token: "hsm", Known: true, Usage: auth, Name: "old"}, keyconf.Key{ID: "01", FriendlyName: "n"}, `named "n" on token hsm (was "old")`, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := planXRoadKeyRecord(tt.sk, tt.k)
			if (tt.todo == "") != (s.todo == "") || !strings.HasPrefix(s.todo, tt.todo) || (tt.skip == "") != (s.skip == "") || !strings.Contains(s.skip, tt.skip) || (s.apply != nil) != tt.apply {
				t.Fatalf("plan: todo %q, skip %q, apply %v; want todo %q, skip %q, apply %v", s.todo, s.skip, s.apply != nil, tt.todo, tt.skip, tt.apply)
			}
		})
	}
}
