package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/client"
	"github.com/hsmsigner/hsmsigner/signer/dn"
	softhsmtest "github.com/hsmsigner/hsmsigner/softhsm-test"
	"github.com/hsmsigner/hsmsigner/softhsm-test/devca"
)

// xroadFixture is a running `signerd dev` with keys and certificates as an
// X-Road security server would have had them, and the keyconf.xml that
// describes them.
type xroadFixture struct {
	dir, keyconf     string
	c                *client.Client
	sign, auth, made string // signerd key ids
	certs            map[string]*x509.Certificate
}

func xroadCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// newXRoadFixture starts signerd dev, makes on its SoftHSM token two keys
// through signerd (a sign key under another name, an auth key) and one
// outside it (through PKCS#11, unknown to signerd), has the dev CA issue
// certificates for real requests of the first two, forgets those requests
// (signerd did not make them in a real migration), and writes a keyconf.xml
// with an X-Road software token and a hardware token.
func newXRoadFixture(t *testing.T) *xroadFixture {
	t.Helper()
	dir, _ := devDaemon(t)
	c, err := client.Dial(filepath.Join(dir, "run/signer.sock"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx := xroadCtx(t)
	f := &xroadFixture{dir: dir, c: c, certs: map[string]*x509.Certificate{}}
	gen := func(label string, usage signerv1.KeyUsage, name string) string {
		k, err := c.GenerateKey(ctx, &signerv1.GenerateKeyRequest{Token: "dev", Label: label, Algorithm: "EC-P256", Usage: usage, Name: name})
		if err != nil {
			t.Fatalf("GenerateKey %s: %v", label, err)
		}
		return k.GetId()
	}
	f.sign = gen("xroad-sign", signerv1.KeyUsage_KEY_USAGE_SIGN, "")
	f.auth = gen("xroad-auth", signerv1.KeyUsage_KEY_USAGE_AUTH, "old name")

	// A key made outside signerd, sign-only and locked, as X-Road's
	// signer would have made it in the HSM.
	f.made = "a1b2c3d4e5"
	tool := softhsmtest.BuildCommand(t, "github.com/hsmsigner/hsmsigner/softhsm-test/cmd/p11-keyattr")
	module, err := softhsmtest.ModulePath()
	if err != nil {
		t.Fatal(err)
	}
	pin, err := os.ReadFile(filepath.Join(dir, "user.pin"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, tool, "--module", module, "--token-label", "signer-dev", "gen", "--id", f.made, "--label", "xroad-made", "modifiable=false", "copyable=false")
	cmd.Env = append(os.Environ(), softhsmtest.ConfEnv+"="+filepath.Join(dir, "softhsm/softhsm2.conf"))
	cmd.Stdin = bytes.NewReader(append(bytes.TrimSpace(pin), '\n'))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("p11-keyattr gen: %v\n%s", err, out)
	}
	if k, err := c.GetKey(ctx, &signerv1.GetKeyRequest{KeyId: f.made}); err != nil || k.GetKnown() {
		t.Fatalf("the key made outside signerd: %v, %v; want it on the token and unknown", k, err)
	}

	ca := devca.New(t)
	issue := func(name, keyID, subject, member, usage string, v devca.Validity) {
		var dns []string
		if usage == devca.UsageAuth {
			dns = []string{"ss1.example.test"}
		}
		r, err := c.GenerateCSR(ctx, &signerv1.GenerateCSRRequest{KeyId: keyID, Subject: subject, Member: member, DnsNames: dns, Format: signerv1.CsrFormat_CSR_FORMAT_DER})
		if err != nil {
			t.Fatalf("GenerateCSR %s: %v", name, err)
		}
		cert, err := ca.Sign(ctx, r.GetCsr(), usage, v)
		if err != nil {
			t.Fatalf("dev CA: %v", err)
		}
		f.certs[name] = cert
		if _, err := c.DeleteCSR(ctx, &signerv1.DeleteCSRRequest{Id: r.GetId()}); err != nil {
			t.Fatal(err)
		}
	}
	issue("registered", f.sign, "CN=Agency,O=Agency,C=EE,serialNumber=70000310", xroadMember, devca.UsageSign, devca.Current)
	issue("inprogress", f.sign, "CN=Agency 2,O=Agency,C=EE,serialNumber=70000310", xroadMember, devca.UsageSign, devca.Current)
	issue("globalerror", f.auth, "CN=ss1,O=Agency,C=EE", "", devca.UsageAuth, devca.Current)
	issue("deleting", f.auth, "CN=ss1 old,O=Agency,C=EE", "", devca.UsageAuth, devca.Current)
	// X-Road kept this one for another member: signerd refuses it, as
	// the key serves one member.
	issue("othermember", f.sign, "CN=Agency 3,O=Agency,C=EE,serialNumber=70000310", xroadMember, devca.UsageSign, devca.Current)
	issue("expired", f.auth, "CN=ss1 older,O=Agency,C=EE", "", devca.UsageAuth, devca.Expired)

	b64 := func(name string) string { return base64.StdEncoding.EncodeToString(f.certs[name].Raw) }
	member := func(typ, sub string) string {
		s := `<memberId id:objectType="` + typ + `"><id:xRoadInstance>EE</id:xRoadInstance><id:memberClass>GOV</id:memberClass><id:memberCode>70000310</id:memberCode>`
		if sub != "" {
			s += `<id:subsystemCode>` + sub + `</id:subsystemCode>`
		}
		return s + `</memberId>`
	}
	doc := `<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<tns:keyConf xmlns:tns="http://x-road.eu/xsd/xroad.xsd" xmlns:id="http://x-road.eu/xsd/identifiers">
    <device>
        <deviceType>softToken</deviceType>
        <id>0</id>
        <pinIndex>0</pinIndex>
        <key usage="AUTHENTICATION">
            <friendlyName>Soft auth key</friendlyName>
            <keyId>0123ABCD</keyId>
            <cert active="true"><contents>` + b64("globalerror") + `</contents><status>registered</status></cert>
        </key>
    </device>
    <device>
        <deviceType>softhsm</deviceType>
        <friendlyName>HSM</friendlyName>
        <id>softhsm-0</id>
        <tokenId>0</tokenId>
        <slotId>signer-dev</slotId>
        <key usage="SIGNING">
            <friendlyName>Signing key of Agency</friendlyName>
            <keyId>` + strings.ToUpper(f.sign) + `</keyId>
            <cert active="true">` + member("SUBSYSTEM", "SUB") + `<contents>` + b64("registered") + `</contents><status>registered</status></cert>
            <cert active="false">` + member("MEMBER", "") + `<contents>` + b64("inprogress") + `</contents><status>registration in progress</status></cert>
            <cert active="false">` + strings.ReplaceAll(member("MEMBER", ""), "70000310", "70000999") + `<contents>` + b64("othermember") + `</contents><status>saved</status></cert>
        </key>
        <key usage="AUTHENTICATION">
            <friendlyName>Auth key</friendlyName>
            <keyId>` + f.auth + `</keyId>
            <cert active="false"><contents>` + b64("globalerror") + `</contents><status>global error</status></cert>
            <cert active="false"><contents>` + b64("deleting") + `</contents><status>deletion in progress</status></cert>
            <cert active="false"><contents>` + b64("expired") + `</contents><status>registered</status></cert>
        </key>
        <key usage="SIGNING">
            <friendlyName>New signing key</friendlyName>
            <keyId>` + strings.ToUpper(f.made) + `</keyId>
            <certRequest id="96084D373519EA9044D6E60ABE776C0074D0C35C">` + member("SUBSYSTEM", "SUB") + `
                <subjectName>CN=Agency new,O=Agency,C=EE,serialNumber=70000310</subjectName>
            </certRequest>
        </key>
        <key usage="SIGNING">
            <friendlyName>Gone key</friendlyName>
            <keyId>deadbeef00</keyId>
        </key>
        <signMechanismName>CKM_ECDSA</signMechanismName>
    </device>
</tns:keyConf>
`
	f.keyconf = filepath.Join(t.TempDir(), "keyconf.xml")
	if err := os.WriteFile(f.keyconf, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

const xroadMember = "EE/GOV/70000310"

// snapshot is what signerd records, in a form to compare.
func (f *xroadFixture) snapshot(t *testing.T) string {
	t.Helper()
	ctx := xroadCtx(t)
	var lines []string
	keys, err := f.c.ListKeys(ctx, &signerv1.ListKeysRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys.GetKeys() {
		lines = append(lines, fmt.Sprintf("key %s known=%v usage=%s name=%q", k.GetId(), k.GetKnown(), k.GetUsage(), k.GetName()))
	}
	certs, err := f.c.ListCerts(ctx, &signerv1.ListCertsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range certs.GetCertificates() {
		lines = append(lines, fmt.Sprintf("cert %s key=%s member=%q status=%s active=%v", c.GetSha256(), c.GetKeyId(), c.GetMember(), c.GetStatus(), c.GetActive()))
	}
	csrs, err := f.c.ListCSRs(ctx, &signerv1.ListCSRsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range csrs.GetCsrs() {
		lines = append(lines, fmt.Sprintf("csr %s key=%s member=%q subject=%q", r.GetId(), r.GetKeyId(), r.GetMember(), r.GetSubject()))
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// changeLines counts the audit log's lines of operations that changed
// keys, certificates or requests (result ok; a refusal changes nothing).
func (f *xroadFixture) changeLines(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(f.dir, "audit.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	changes := map[string]bool{"key.rename": true, "cert.import": true, "cert.status": true, "cert.activate": true, "cert.deactivate": true, "csr.generate": true, "csr.delete": true}
	n := 0
	for _, line := range bytes.Split(b, []byte("\n")) {
		var rec struct{ Op, Result string }
		if json.Unmarshal(line, &rec) == nil && changes[rec.Op] && rec.Result == "ok" {
			n++
		}
	}
	if n == 0 {
		t.Fatal("no changes in the audit log: the fixture's are missing")
	}
	return n
}

type xroadReport struct {
	DryRun bool       `json:"dry_run"`
	Items  []xroadRow `json:"items"`
}

// importJSON runs the real signerctl xroad import with -o json.
func importJSON(t *testing.T, args ...string) (xroadReport, string, int) {
	t.Helper()
	out, errs, code := ctl(t, append([]string{"xroad", "import", "-o", "json"}, args...)...)
	var rep xroadReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("xroad import output is not the JSON report: %v\n%s\n%s", err, out, errs)
	}
	return rep, errs, code
}

// find returns the report's row for key (compared without case) and the
// item starting with item.
func (r xroadReport) find(t *testing.T, key, item string) xroadRow {
	t.Helper()
	for _, row := range r.Items {
		if strings.EqualFold(row.Key, key) && strings.HasPrefix(row.Item, item) {
			return row
		}
	}
	t.Fatalf("no row for key %s, item %s in %+v", key, item, r.Items)
	return xroadRow{}
}

func certHash(c *x509.Certificate) string {
	return fmt.Sprintf("%x", sha256.Sum256(c.Raw))
}

// TestXRoadImport imports a keyconf.xml with the real signerctl into a real
// signerd dev: a dry run that changes nothing, an import that records the
// keys' usages and names (registering a key signerd did not know), the
// certificates with their members, statuses and activation, and a new
// request for the pending one, while reporting the software token's key
// and a key on no token; then a second import that changes nothing.
func TestXRoadImport(t *testing.T) {
	f := newXRoadFixture(t)
	ctx := xroadCtx(t)
	before, changes := f.snapshot(t), f.changeLines(t)
	had, err := f.c.ListCerts(ctx, &signerv1.ListCertsRequest{})
	if err != nil {
		t.Fatal(err)
	}

	// The dry run: the plan, nothing changed, non-zero for the skips it
	// foresees (not signerd's refusal of the other member's certificate).
	dry, errs, code := importJSON(t, "--keyconf", f.keyconf, "--dry-run")
	if code == 0 || !strings.Contains(errs, "3 of 12 item(s) skipped") || !dry.DryRun {
		t.Fatalf("dry run: exit %d, %s, %+v", code, errs, dry)
	}
	if row := dry.find(t, f.made, "request"); !strings.Contains(row.Done, "new request for the same key and subject") || row.Skipped != "" {
		t.Fatalf("dry run's plan for the request: %+v", row)
	}
	if row := dry.find(t, f.made, "key"); !strings.Contains(row.Done, `usage sign, name "New signing key"`) {
		t.Fatalf("dry run's plan for the unknown key: %+v", row)
	}
	if after := f.snapshot(t); after != before || f.changeLines(t) != changes {
		t.Fatalf("the dry run changed signerd:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	table, _, _ := ctl(t, "xroad", "import", "--keyconf", f.keyconf, "--dry-run")
	t.Logf("dry run:\n%s", table)
	if !strings.Contains(table, "WOULD DO (dry run)") || !strings.Contains(table, "new request for the same key and subject") {
		t.Fatalf("dry run table:\n%s", table)
	}
	if after := f.snapshot(t); after != before {
		t.Fatal("the dry run's table changed signerd")
	}

	// The import.
	rep, errs, code := importJSON(t, "--keyconf", f.keyconf)
	if code == 0 || !strings.Contains(errs, "4 of 12 item(s) skipped") || rep.DryRun {
		t.Fatalf("import: exit %d, %s", code, errs)
	}
	if len(rep.Items) != len(dry.Items) {
		t.Fatalf("the import did %d items, the dry run planned %d", len(rep.Items), len(dry.Items))
	}
	// As planned, except what signerd refused, which a dry run cannot
	// know.
	for i := range rep.Items {
		refused := strings.HasPrefix(rep.Items[i].Skipped, "signerd refused")
		if rep.Items[i].Key != dry.Items[i].Key || rep.Items[i].Item != dry.Items[i].Item || (rep.Items[i].Skipped == "") != (dry.Items[i].Skipped == "") != refused {
			t.Fatalf("item %d: done %+v, planned %+v", i, rep.Items[i], dry.Items[i])
		}
	}
	// Reported, not fatal.
	skips := []struct{ key, item, why string }{
		{"0123abcd", "key", "on X-Road's software token (softToken)"},
		{"deadbeef00", "key", "on no signerd token"},
		{f.auth, "certificate " + certHash(f.certs["expired"])[:16], "expired on"},
		{f.sign, "certificate " + certHash(f.certs["othermember"])[:16], `signerd refused (imported for member EE/GOV/70000999): FailedPrecondition: failed precondition: key ` + f.sign + ` is bound to member "EE/GOV/70000310"`},
	}
	for _, s := range skips {
		if row := rep.find(t, s.key, s.item); !strings.Contains(row.Skipped, s.why) || row.Done != "" {
			t.Fatalf("row for %s %s: %+v; want skipped saying %q", s.key, s.item, row, s.why)
		}
	}
	for _, row := range rep.Items {
		if row.Skipped != "" && !strings.EqualFold(row.Key, "0123abcd") && row.Key != "deadbeef00" && !strings.Contains(row.Skipped, "expired on") && !strings.Contains(row.Skipped, "bound to member") {
			t.Fatalf("skipped: %+v", row)
		}
	}
	if row := rep.find(t, f.made, "request"); !strings.Contains(row.Done, "new request for the same key and subject") || !strings.Contains(row.Done, "signerctl csr show") {
		t.Fatalf("request row: %+v", row)
	}

	// Keys: usage and names recorded, the outside key registered.
	for _, want := range []struct {
		id, name string
		usage    signerv1.KeyUsage
	}{
		{f.sign, "Signing key of Agency", signerv1.KeyUsage_KEY_USAGE_SIGN},
		{f.auth, "Auth key", signerv1.KeyUsage_KEY_USAGE_AUTH},
		{f.made, "New signing key", signerv1.KeyUsage_KEY_USAGE_SIGN},
	} {
		k, err := f.c.GetKey(ctx, &signerv1.GetKeyRequest{KeyId: want.id})
		if err != nil || !k.GetKnown() || k.GetName() != want.name || k.GetUsage() != want.usage {
			t.Fatalf("key %s: %v, %v; want known, %q, %s", want.id, k, err, want.name, want.usage)
		}
	}
	// Certificates: members, statuses, activation.
	for _, want := range []struct {
		name, key, member string
		status            signerv1.CertStatus
		active            bool
	}{
		{"registered", f.sign, xroadMember, signerv1.CertStatus_CERT_STATUS_REGISTERED, true},
		{"inprogress", f.sign, xroadMember, signerv1.CertStatus_CERT_STATUS_REGISTRATION_IN_PROGRESS, false},
		{"globalerror", f.auth, "", signerv1.CertStatus_CERT_STATUS_GLOBAL_ERROR, false},
		{"deleting", f.auth, "", signerv1.CertStatus_CERT_STATUS_DELETION_IN_PROGRESS, false},
	} {
		c, err := f.c.GetCert(ctx, &signerv1.CertRef{Hash: certHash(f.certs[want.name])})
		if err != nil || c.GetKeyId() != want.key || c.GetMember() != want.member || c.GetStatus() != want.status || c.GetActive() != want.active {
			t.Fatalf("certificate %s: %v, %v; want key %s, member %q, %s, active %v", want.name, c, err, want.key, want.member, want.status, want.active)
		}
	}
	if certs, _ := f.c.ListCerts(ctx, &signerv1.ListCertsRequest{}); len(certs.GetCertificates()) != len(had.GetCertificates())+4 {
		t.Fatalf("%d certificates in signerd, had %d; want the 4 of the HSM keys more (not the software token's)", len(certs.GetCertificates()), len(had.GetCertificates()))
	}
	// The request: new, made in the HSM for the same key, subject, member.
	csrs, err := f.c.ListCSRs(ctx, &signerv1.ListCSRsRequest{})
	if err != nil || len(csrs.GetCsrs()) != 1 {
		t.Fatalf("requests: %v, %v; want the one new request", csrs, err)
	}
	r := csrs.GetCsrs()[0]
	b, _ := pem.Decode(r.GetCsr())
	if b == nil {
		t.Fatalf("request %s is not PEM", r.GetId())
	}
	req, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil || req.CheckSignature() != nil {
		t.Fatalf("request: %v", err)
	}
	k, _ := f.c.GetKey(ctx, &signerv1.GetKeyRequest{KeyId: f.made})
	pub, _ := x509.MarshalPKIXPublicKey(req.PublicKey)
	name, err := dn.Parse("CN=Agency new,O=Agency,C=EE,serialNumber=70000310")
	if err != nil {
		t.Fatal(err)
	}
	subject, _ := name.Marshal()
	if r.GetKeyId() != f.made || r.GetMember() != xroadMember || !bytes.Equal(req.RawSubject, subject) || !bytes.Equal(pub, k.GetPublicKey()) {
		t.Fatalf("request %+v, subject %q; want key %s, member %s, the key's public key", r, req.Subject, f.made, xroadMember)
	}

	// Again: nothing changes, everything is reported as already there.
	done, imported := f.snapshot(t), f.changeLines(t)
	if imported <= changes {
		t.Fatalf("the import wrote no change to the audit log (%d, before %d)", imported, changes)
	}
	changes = imported
	again, errs, code := importJSON(t, "--keyconf", f.keyconf)
	if code == 0 || !strings.Contains(errs, "4 of 12 item(s) skipped") {
		t.Fatalf("second import: exit %d, %s", code, errs)
	}
	for _, row := range again.Items {
		if row.Skipped == "" && !strings.HasPrefix(row.Done, "nothing: ") {
			t.Fatalf("the second import did something: %+v", row)
		}
	}
	if after := f.snapshot(t); after != done || f.changeLines(t) != changes {
		t.Fatalf("the second import changed signerd:\nbefore:\n%s\nafter:\n%s", done, after)
	}
}

// TestXRoadImportRefuses: a file that is not a keyconf.xml, or a token
// signerd does not have, stops the import before anything is done.
func TestXRoadImportRefuses(t *testing.T) {
	f := newXRoadFixture(t)
	bad := filepath.Join(t.TempDir(), "bad.xml")
	if err := os.WriteFile(bad, []byte(`<keyConf xmlns="http://x-road.eu/xsd/xroad.xsd"><device><deviceType>x</deviceType><key><keyId>01</keyId></key><key><keyId>01</keyId></key></device></keyConf>`), 0o600); err != nil {
		t.Fatal(err)
	}
	before := f.snapshot(t)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"duplicate key id", []string{"--keyconf", bad}, "key id 01 is given twice"},
		{"no such file", []string{"--keyconf", bad + ".missing"}, "no such file"},
		{"unknown token", []string{"--keyconf", f.keyconf, "--token", "nope"}, "NotFound"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errs, code := ctl(t, append([]string{"xroad", "import"}, tt.args...)...)
			if code == 0 || !strings.Contains(errs, tt.want) || out != "" {
				t.Fatalf("exit %d, stdout %q, stderr %q; want a refusal saying %q", code, out, errs, tt.want)
			}
		})
	}
	if after := f.snapshot(t); after != before {
		t.Fatal("a refused import changed signerd")
	}
}
