package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/client"
	"github.com/hsmsigner/hsmsigner/signer/dn"
	"github.com/hsmsigner/hsmsigner/signer/xroad/keyconf"
)

// errImportSkipped is returned by xroad import when it skipped something;
// the table says what and why.
var errImportSkipped = errors.New("skipped")

func (a *app) xroadCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "xroad", Short: "Move an X-Road security server's signer to signerd (admin)"}
	var path, token string
	var dryRun bool
	imp := &cobra.Command{
		Use:   "import --keyconf /etc/xroad/signer/keyconf.xml [--token NAME] [--dry-run]",
		Short: "Record what X-Road's signer knew about keys already on signerd's HSM tokens",
		Long: `import reads X-Road's signer configuration (keyconf.xml, X-Road 7.x) and
records in signerd, for each key found by id on a signerd token (on --token
only, when given): its usage (SIGNING: sign, AUTHENTICATION: auth) and
friendly name; each certificate, imported for its member (a subsystem's
certificate for the subsystem's member), with X-Road's status, and activated
when X-Road had it active; and each pending certificate request, made again
in the HSM as a new request for the same key, subject and member.

Keys on X-Road's software token, keys on no signerd token, and whatever
signerd refuses are skipped and reported; the import goes on. A table says
for each key what was done and what was skipped and why; the exit status is
non-zero when something was skipped. --dry-run prints the same table of what
would be done and changes nothing. Importing again changes nothing more.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f, err := os.Open(path)
			if err != nil {
				return err
			}
			conf, err := keyconf.Parse(f)
			f.Close()
			if err != nil {
				return fmt.Errorf("%s: %w", path, err)
			}
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				steps, err := planXRoadImport(ctx, c, conf, token)
				if err != nil {
					return err
				}
				rows := runXRoadImport(ctx, c, steps, dryRun)
				if err := a.printXRoadImport(rows, dryRun); err != nil {
					return err
				}
				skipped := 0
				for _, r := range rows {
					if r.Skipped != "" {
						skipped++
					}
				}
				if skipped > 0 {
					return fmt.Errorf("%d of %d item(s) %w (see SKIPPED)", skipped, len(rows), errImportSkipped)
				}
				return nil
			})
		},
	}
	imp.Flags().StringVar(&path, "keyconf", "/etc/xroad/signer/keyconf.xml", "X-Road signer's key configuration")
	imp.Flags().StringVar(&token, "token", "", "look for the keys on this signerd token only")
	imp.Flags().BoolVar(&dryRun, "dry-run", false, "print what would be done; change nothing")
	cmd.AddCommand(imp)
	return cmd
}

// xroadRow is one line of the import's report.
type xroadRow struct {
	Key     string `json:"key"`
	Item    string `json:"item"`
	Done    string `json:"done,omitempty"`
	Skipped string `json:"skipped,omitempty"`
}

// xroadStep is one item of the plan: what it does (todo) through apply,
// or why it is skipped. A step with neither apply nor skip has nothing to
// do.
type xroadStep struct {
	key, item string
	todo      string
	skip      string
	apply     func(ctx context.Context, c *client.Client) (string, error)
}

// xroadState is what signerd holds, read once before the plan.
type xroadState struct {
	keys    map[string]*signerv1.Key // by lower-case id
	skipped map[string]string        // tokens ListKeys could not read
	certs   map[string]*signerv1.Certificate
	csrs    []*signerv1.CSR
}

func readXRoadState(ctx context.Context, c *client.Client, token string) (*xroadState, error) {
	st := &xroadState{keys: map[string]*signerv1.Key{}, certs: map[string]*signerv1.Certificate{}}
	keys, err := c.ListKeys(ctx, &signerv1.ListKeysRequest{Token: token})
	if err != nil {
		return nil, fmt.Errorf("listing signerd's keys: %w", err)
	}
	for _, k := range keys.GetKeys() {
		st.keys[strings.ToLower(k.GetId())] = k
	}
	st.skipped = keys.GetSkippedTokens()
	certs, err := c.ListCerts(ctx, &signerv1.ListCertsRequest{})
	if err != nil {
		return nil, fmt.Errorf("listing signerd's certificates: %w", err)
	}
	for _, cr := range certs.GetCertificates() {
		st.certs[cr.GetSha256()] = cr
	}
	csrs, err := c.ListCSRs(ctx, &signerv1.ListCSRsRequest{})
	if err != nil {
		return nil, fmt.Errorf("listing signerd's requests: %w", err)
	}
	st.csrs = csrs.GetCsrs()
	return st, nil
}

// planXRoadImport compares conf with what signerd holds and returns the
// steps that would make signerd know what X-Road knew.
func planXRoadImport(ctx context.Context, c *client.Client, conf *keyconf.Conf, token string) ([]xroadStep, error) {
	st, err := readXRoadState(ctx, c, token)
	if err != nil {
		return nil, err
	}
	var steps []xroadStep
	for _, d := range conf.Devices {
		for _, k := range d.Keys {
			steps = append(steps, planXRoadKey(st, d, k, token)...)
		}
	}
	return steps, nil
}

func xroadUsage(u keyconf.Usage) signerv1.KeyUsage {
	switch u {
	case keyconf.UsageSigning:
		return signerv1.KeyUsage_KEY_USAGE_SIGN
	case keyconf.UsageAuthentication:
		return signerv1.KeyUsage_KEY_USAGE_AUTH
	}
	return signerv1.KeyUsage_KEY_USAGE_UNSPECIFIED
}

func xroadStatus(s string) (signerv1.CertStatus, bool) {
	switch s {
	case keyconf.StatusSaved, "":
		return signerv1.CertStatus_CERT_STATUS_SAVED, true
	case keyconf.StatusRegistrationInProgress:
		return signerv1.CertStatus_CERT_STATUS_REGISTRATION_IN_PROGRESS, true
	case keyconf.StatusRegistered:
		return signerv1.CertStatus_CERT_STATUS_REGISTERED, true
	case keyconf.StatusDeletionInProgress:
		return signerv1.CertStatus_CERT_STATUS_DELETION_IN_PROGRESS, true
	case keyconf.StatusGlobalError:
		return signerv1.CertStatus_CERT_STATUS_GLOBAL_ERROR, true
	}
	return 0, false
}

func planXRoadKey(st *xroadState, d keyconf.Device, k keyconf.Key, token string) []xroadStep {
	what := fmt.Sprintf("%d certificate(s) and %d request(s) not moved", len(k.Certs), len(k.Requests))
	if d.Soft() {
		return []xroadStep{{key: k.ID, item: "key", skip: "on X-Road's software token (softToken): its private key is a PKCS#12 file, not on an HSM; " + what}}
	}
	if _, err := hex.DecodeString(k.ID); err != nil {
		return []xroadStep{{key: k.ID, item: "key", skip: "the id is not hex, so no PKCS#11 CKA_ID; " + what}}
	}
	sk := st.keys[strings.ToLower(k.ID)]
	if sk == nil {
		where := "on no signerd token"
		if token != "" {
			where = "not on signerd token " + token
		}
		if len(st.skipped) > 0 {
			var names []string
			for n := range st.skipped {
				names = append(names, n)
			}
			sort.Strings(names)
			where += fmt.Sprintf(" (tokens not searched, not logged in or unavailable: %s)", strings.Join(names, ", "))
		}
		return []xroadStep{{key: k.ID, item: "key", skip: where + "; " + what}}
	}
	id := sk.GetId()
	steps := []xroadStep{planXRoadKeyRecord(sk, k)}
	for _, crt := range k.Certs {
		steps = append(steps, planXRoadCert(st, sk, k, crt))
	}
	for _, r := range k.Requests {
		steps = append(steps, planXRoadRequest(st, id, k, r))
	}
	return steps
}

func planXRoadKeyRecord(sk *signerv1.Key, k keyconf.Key) xroadStep {
	s := xroadStep{key: k.ID, item: "key"}
	id, usage := sk.GetId(), xroadUsage(k.Usage)
	switch {
	case !sk.GetKnown() && usage == signerv1.KeyUsage_KEY_USAGE_UNSPECIFIED:
		s.skip = fmt.Sprintf("on token %s, but X-Road recorded no usage for it, and signerd records a key only with one (signerctl key rename --usage)", sk.GetToken())
	case !sk.GetKnown():
		s.todo = fmt.Sprintf("recorded on token %s: usage %s, name %q", sk.GetToken(), usageString(usage), k.FriendlyName)
		s.apply = func(ctx context.Context, c *client.Client) (string, error) {
			_, err := c.RenameKey(ctx, &signerv1.RenameKeyRequest{KeyId: id, Name: k.FriendlyName, Usage: usage})
			return "", err
		}
	case usage != signerv1.KeyUsage_KEY_USAGE_UNSPECIFIED && sk.GetUsage() != usage:
		s.skip = fmt.Sprintf("signerd records usage %s, X-Road %s; a key's usage does not change", usageString(sk.GetUsage()), usageString(usage))
	case sk.GetName() == k.FriendlyName:
		s.todo = fmt.Sprintf("nothing: already recorded on token %s (usage %s, name %q)", sk.GetToken(), usageString(sk.GetUsage()), sk.GetName())
	default:
		s.todo = fmt.Sprintf("named %q on token %s (was %q)", k.FriendlyName, sk.GetToken(), sk.GetName())
		s.apply = func(ctx context.Context, c *client.Client) (string, error) {
			_, err := c.RenameKey(ctx, &signerv1.RenameKeyRequest{KeyId: id, Name: k.FriendlyName})
			return "", err
		}
	}
	return s
}

func planXRoadCert(st *xroadState, sk *signerv1.Key, k keyconf.Key, crt keyconf.Cert) xroadStep {
	sum := sha256.Sum256(crt.DER)
	hash := hex.EncodeToString(sum[:])
	s := xroadStep{key: k.ID, item: "certificate " + hash[:16]}
	status, ok := xroadStatus(crt.Status)
	if !ok {
		s.skip = fmt.Sprintf("X-Road status %q is not one signerd knows", crt.Status)
		return s
	}
	member := ""
	if crt.Member != nil {
		member = crt.Member.Member()
	}
	existing := st.certs[hash]
	if existing == nil {
		now := time.Now()
		switch {
		case now.After(crt.Certificate.NotAfter):
			s.skip = fmt.Sprintf("expired on %s; signerd imports only a currently valid certificate", crt.Certificate.NotAfter.UTC().Format(time.RFC3339))
			return s
		case now.Before(crt.Certificate.NotBefore):
			s.skip = fmt.Sprintf("not valid before %s; signerd imports only a currently valid certificate", crt.Certificate.NotBefore.UTC().Format(time.RFC3339))
			return s
		}
		parts := []string{"imported"}
		if member != "" {
			parts[0] += " for member " + member
			if crt.Member.Subsystem != "" {
				parts[0] += fmt.Sprintf(" (X-Road's %s; a subsystem signs with its member's certificate)", crt.Member)
			}
		}
		if status != signerv1.CertStatus_CERT_STATUS_SAVED {
			parts = append(parts, "status "+statusString(status))
		}
		if crt.Active {
			parts = append(parts, "activated")
		}
		s.todo = strings.Join(parts, ", ")
		s.apply = func(ctx context.Context, c *client.Client) (string, error) {
			if _, err := c.ImportCert(ctx, &signerv1.ImportCertRequest{Certificate: crt.DER, Member: member}); err != nil {
				return "", err
			}
			if _, err := applyXRoadCert(ctx, c, hash, status, crt.Active, signerv1.CertStatus_CERT_STATUS_SAVED, false); err != nil {
				return "", fmt.Errorf("imported, but %w", err)
			}
			return "", nil
		}
		return s
	}
	if existing.GetKeyId() != sk.GetId() {
		s.skip = fmt.Sprintf("signerd holds it for key %s", existing.GetKeyId())
		return s
	}
	if member != "" && existing.GetMember() != member {
		s.skip = fmt.Sprintf("signerd holds it for member %q, X-Road for %q", existing.GetMember(), member)
		return s
	}
	var parts []string
	if existing.GetStatus() != status {
		parts = append(parts, fmt.Sprintf("status %s (was %s)", statusString(status), statusString(existing.GetStatus())))
	}
	if crt.Active && !existing.GetActive() {
		parts = append(parts, "activated")
	}
	if !crt.Active && existing.GetActive() {
		s.skip = "active in signerd, inactive in X-Road: left active (signerctl cert deactivate to change that)"
	}
	if len(parts) == 0 {
		if s.skip == "" {
			s.todo = "nothing: already imported with status " + statusString(existing.GetStatus())
		}
		return s
	}
	s.todo = strings.Join(parts, ", ")
	s.apply = func(ctx context.Context, c *client.Client) (string, error) {
		return applyXRoadCert(ctx, c, hash, status, crt.Active, existing.GetStatus(), existing.GetActive())
	}
	return s
}

// applyXRoadCert sets an imported certificate's status and activation to
// X-Road's.
func applyXRoadCert(ctx context.Context, c *client.Client, hash string, status signerv1.CertStatus, active bool, had signerv1.CertStatus, wasActive bool) (string, error) {
	if status != had {
		if _, err := c.SetCertStatus(ctx, &signerv1.SetCertStatusRequest{Hash: hash, Status: status}); err != nil {
			return "", fmt.Errorf("setting status %s: %w", statusString(status), err)
		}
	}
	if active && !wasActive {
		if _, err := c.ActivateCert(ctx, &signerv1.CertRef{Hash: hash}); err != nil {
			return "", fmt.Errorf("activating: %w", err)
		}
	}
	return "", nil
}

func planXRoadRequest(st *xroadState, id string, k keyconf.Key, r keyconf.CertRequest) xroadStep {
	s := xroadStep{key: k.ID, item: fmt.Sprintf("request %q", r.Subject)}
	member := ""
	if r.Member != nil {
		member = r.Member.Member()
	}
	for _, csr := range st.csrs {
		if strings.EqualFold(csr.GetKeyId(), id) && csr.GetMember() == member && sameSubject(csr, r.Subject) {
			s.todo = fmt.Sprintf("nothing: signerd holds request %s for the same key and subject", csr.GetId())
			return s
		}
	}
	s.todo = "new request for the same key and subject, made in the HSM"
	if member != "" {
		s.todo += ", member " + member
	}
	if r.SubjectAltName != "" {
		s.todo += fmt.Sprintf(" (X-Road's subjectAlternativeName %q is not repeated)", r.SubjectAltName)
	}
	s.apply = func(ctx context.Context, c *client.Client) (string, error) {
		got, err := c.GenerateCSR(ctx, &signerv1.GenerateCSRRequest{KeyId: id, Subject: r.Subject, Member: member, Format: signerv1.CsrFormat_CSR_FORMAT_PEM})
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("; it is request %s (signerctl csr show %s), to be sent to the CA again", got.GetId(), got.GetId()), nil
	}
	return s
}

// sameSubject reports whether the request csr has the subject X-Road
// wrote as subject: the same encoded name, or, where X-Road's string is
// not one signerd parses, the same string.
func sameSubject(csr *signerv1.CSR, subject string) bool {
	want, err := dn.Parse(subject)
	if err != nil {
		return csr.GetSubject() == subject
	}
	wantDER, err := want.Marshal()
	if err != nil {
		return false
	}
	der := csr.GetCsr()
	if b, _ := pem.Decode(der); b != nil {
		der = b.Bytes
	}
	req, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return false
	}
	return bytes.Equal(req.RawSubject, wantDER)
}

// runXRoadImport applies the steps in order (none when dryRun) and
// returns the report.
func runXRoadImport(ctx context.Context, c *client.Client, steps []xroadStep, dryRun bool) []xroadRow {
	rows := make([]xroadRow, 0, len(steps))
	for _, s := range steps {
		row := xroadRow{Key: s.key, Item: s.item, Done: s.todo, Skipped: s.skip}
		if s.apply != nil && !dryRun {
			more, err := s.apply(ctx, c)
			if err != nil {
				row.Done, row.Skipped = "", "signerd refused ("+s.todo+"): "+oneLine(err)
			} else {
				row.Done += more
			}
		}
		rows = append(rows, row)
	}
	return rows
}

func (a *app) printXRoadImport(rows []xroadRow, dryRun bool) error {
	if a.output == "json" {
		b, err := json.MarshalIndent(struct {
			DryRun bool       `json:"dry_run"`
			Items  []xroadRow `json:"items"`
		}{dryRun, rows}, "", "  ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintln(a.stdout, string(b))
		return err
	}
	header := []string{"KEY", "ITEM", "DONE", "SKIPPED"}
	if dryRun {
		header = []string{"KEY", "ITEM", "WOULD DO (dry run)", "WOULD SKIP"}
	}
	var table [][]string
	for _, r := range rows {
		table = append(table, []string{r.Key, r.Item, dash(r.Done), dash(r.Skipped)})
	}
	return a.table(header, table)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
