package main

import (
	"context"
	"encoding/pem"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/client"
)

func (a *app) csrCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "csr", Short: "Certificate requests for HSM keys (admin)"}
	var keyID, subject, member, out string
	var dns, emails, uris []string
	var der bool
	generate := &cobra.Command{
		Use:   "generate --key KEY-ID --subject DN",
		Short: "Make a certificate request for a key, signed inside the HSM",
		Long: `generate makes a PKCS#10 request for the key, signed inside the HSM, with the
extensions its usage calls for (sign: nonRepudiation + digitalSignature; auth:
digitalSignature, plus keyEncipherment for RSA; tsa: digitalSignature and the
critical timeStamping EKU). The subject is an RFC 4514 string such as
'CN=Agency,O=Agency,C=EE,serialNumber=70000310'. The request is printed as PEM
(or written to --out; --der for DER) and kept until a certificate answers it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			format := signerv1.CsrFormat_CSR_FORMAT_PEM
			if der {
				format = signerv1.CsrFormat_CSR_FORMAT_DER
			}
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				r, err := c.GenerateCSR(ctx, &signerv1.GenerateCSRRequest{KeyId: keyID, Subject: subject, DnsNames: dns, Emails: emails, Uris: uris, Member: member, Format: format})
				if err != nil {
					return err
				}
				return a.writeCSR(r, out)
			})
		},
	}
	f := generate.Flags()
	f.StringVar(&keyID, "key", "", "key id (hex)")
	f.StringVar(&subject, "subject", "", "subject DN, e.g. 'CN=Agency,O=Agency,C=EE,serialNumber=70000310'")
	f.StringVar(&member, "member", "", "member identifier, e.g. EE/GOV/70000310 (sign keys)")
	f.StringSliceVar(&dns, "dns", nil, "DNS name SAN (repeatable)")
	f.StringSliceVar(&emails, "email", nil, "e-mail SAN (repeatable)")
	f.StringSliceVar(&uris, "uri", nil, "URI SAN (repeatable)")
	f.StringVar(&out, "out", "", "write the request to this file")
	f.BoolVar(&der, "der", false, "DER instead of PEM")
	_ = generate.MarkFlagRequired("key")
	_ = generate.MarkFlagRequired("subject")

	list := &cobra.Command{
		Use: "list", Short: "List the requests no certificate has answered yet", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.ListCSRs(ctx, &signerv1.ListCSRsRequest{})
				if err != nil {
					return err
				}
				if a.output == "json" {
					return a.printJSON(resp)
				}
				var rows [][]string
				for _, r := range resp.GetCsrs() {
					rows = append(rows, []string{r.GetId(), r.GetKeyId(), r.GetToken(), r.GetMember(), r.GetSubject(), r.GetCreated().AsTime().Format("2006-01-02 15:04")})
				}
				return a.table([]string{"ID", "KEY", "TOKEN", "MEMBER", "SUBJECT", "CREATED"}, rows)
			})
		},
	}
	var showOut string
	var showDER bool
	show := &cobra.Command{
		Use: "show CSR-ID", Short: "Print a request again", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			format := signerv1.CsrFormat_CSR_FORMAT_PEM
			if showDER {
				format = signerv1.CsrFormat_CSR_FORMAT_DER
			}
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				r, err := c.GetCSR(ctx, &signerv1.GetCSRRequest{Id: args[0], Format: format})
				if err != nil {
					return err
				}
				return a.writeCSR(r, showOut)
			})
		},
	}
	show.Flags().StringVar(&showOut, "out", "", "write the request to this file")
	show.Flags().BoolVar(&showDER, "der", false, "DER instead of PEM")
	del := &cobra.Command{
		Use: "delete CSR-ID", Short: "Forget a request", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				if _, err := c.DeleteCSR(ctx, &signerv1.DeleteCSRRequest{Id: args[0]}); err != nil {
					return err
				}
				fmt.Fprintf(a.stdout, "deleted request %s\n", args[0])
				return nil
			})
		},
	}
	cmd.AddCommand(generate, list, show, del)
	return cmd
}

func (a *app) writeCSR(r *signerv1.CSR, out string) error {
	if out != "" {
		if err := os.WriteFile(out, r.GetCsr(), 0o644); err != nil {
			return err
		}
		fmt.Fprintf(a.stderr, "request %s for key %s written to %s\n", r.GetId(), r.GetKeyId(), out)
		return nil
	}
	if a.output == "json" {
		return a.printJSON(r)
	}
	_, err := a.stdout.Write(r.GetCsr())
	return err
}

func parseStatus(s string) (signerv1.CertStatus, error) {
	switch strings.ToLower(strings.ReplaceAll(s, "-", "_")) {
	case "":
		return signerv1.CertStatus_CERT_STATUS_UNSPECIFIED, nil
	case "saved":
		return signerv1.CertStatus_CERT_STATUS_SAVED, nil
	case "registration_in_progress":
		return signerv1.CertStatus_CERT_STATUS_REGISTRATION_IN_PROGRESS, nil
	case "registered":
		return signerv1.CertStatus_CERT_STATUS_REGISTERED, nil
	case "deletion_in_progress":
		return signerv1.CertStatus_CERT_STATUS_DELETION_IN_PROGRESS, nil
	case "global_error":
		return signerv1.CertStatus_CERT_STATUS_GLOBAL_ERROR, nil
	}
	return 0, fmt.Errorf("status %q: use saved, registration-in-progress, registered, deletion-in-progress or global-error", s)
}

func statusString(s signerv1.CertStatus) string {
	return strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(s.String(), "CERT_STATUS_")), "_", "-")
}

func (a *app) certCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "cert", Short: "Import certificates and drive their life cycle (admin)"}
	var member string
	var chainFiles []string
	var force, quiet bool
	imp := &cobra.Command{
		Use:   "import FILE",
		Short: "Import a certificate (PEM or DER, PEM may carry its chain) for a key on a token",
		Long: `import matches the certificate to its key by public key, checks that it fits
the key's usage and is valid now (--force accepts an expired or not yet valid
one), stores it on the token beside its key and in signerd's state with status
saved, and closes the request it answers. Importing it again changes nothing.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			data, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			var chain [][]byte
			for _, f := range chainFiles {
				b, err := os.ReadFile(f)
				if err != nil {
					return err
				}
				chain = append(chain, b)
			}
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				crt, err := c.ImportCert(ctx, &signerv1.ImportCertRequest{Certificate: data, Chain: chain, Member: member, Force: force})
				if err != nil {
					return err
				}
				if quiet {
					_, err := fmt.Fprintln(a.stdout, crt.GetSha256())
					return err
				}
				return a.printCerts([]*signerv1.Certificate{crt})
			})
		},
	}
	imp.Flags().StringVar(&member, "member", "", "member identifier (default: the member of the request it answers)")
	imp.Flags().StringSliceVar(&chainFiles, "chain", nil, "issuing certificate file, nearest issuer first (repeatable)")
	imp.Flags().BoolVar(&force, "force", false, "accept a certificate that is expired or not yet valid")
	imp.Flags().BoolVarP(&quiet, "quiet", "q", false, "print only the certificate's SHA-256")

	var fMember, fKey, fStatus string
	list := &cobra.Command{
		Use: "list", Short: "List certificates", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := parseStatus(fStatus)
			if err != nil {
				return err
			}
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.ListCerts(ctx, &signerv1.ListCertsRequest{Member: fMember, KeyId: fKey, Status: st})
				if err != nil {
					return err
				}
				if a.output == "json" {
					return a.printJSON(resp)
				}
				return a.printCerts(resp.GetCertificates())
			})
		},
	}
	list.Flags().StringVar(&fMember, "member", "", "only this member's")
	list.Flags().StringVar(&fKey, "key", "", "only this key's")
	list.Flags().StringVar(&fStatus, "status", "", "only this status")

	var pemOut bool
	show := &cobra.Command{
		Use: "show HASH", Short: "Show a certificate by SHA-256 or SHA-1 hex (a unique prefix will do); --pem prints it", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				crt, err := c.GetCert(ctx, &signerv1.CertRef{Hash: args[0]})
				if err != nil {
					return err
				}
				if pemOut {
					if err := pem.Encode(a.stdout, &pem.Block{Type: "CERTIFICATE", Bytes: crt.GetDer()}); err != nil {
						return err
					}
					for _, ch := range crt.GetChain() {
						if err := pem.Encode(a.stdout, &pem.Block{Type: "CERTIFICATE", Bytes: ch}); err != nil {
							return err
						}
					}
					return nil
				}
				if a.output == "json" {
					return a.printJSON(crt)
				}
				fmt.Fprintf(a.stdout, "sha256:     %s\nsha1:       %s\nsubject:    %s\nissuer:     %s\nserial:     %s\nvalid:      %s to %s\nkey:        %s (token %s, usage %s)\nmember:     %s\nstatus:     %s\nactive:     %s\nchain:      %d certificate(s)\n",
					crt.GetSha256(), crt.GetSha1(), crt.GetSubject(), crt.GetIssuer(), crt.GetSerial(),
					crt.GetNotBefore().AsTime().Format("2006-01-02 15:04:05Z"), crt.GetNotAfter().AsTime().Format("2006-01-02 15:04:05Z"),
					crt.GetKeyId(), crt.GetToken(), usageString(crt.GetUsage()), crt.GetMember(), statusString(crt.GetStatus()), yesNo(crt.GetActive()), len(crt.GetChain()))
				return nil
			})
		},
	}
	show.Flags().BoolVar(&pemOut, "pem", false, "print the certificate and its chain as PEM")

	simple := func(use, short string, fn func(context.Context, *client.Client, string) (*signerv1.Certificate, error)) *cobra.Command {
		return &cobra.Command{
			Use: use + " HASH", Short: short, Args: cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				return a.call(cmd, func(ctx context.Context, c *client.Client) error {
					crt, err := fn(ctx, c, args[0])
					if err != nil {
						return err
					}
					return a.printCerts([]*signerv1.Certificate{crt})
				})
			},
		}
	}
	activate := simple("activate", "Let a certificate be used for signing", func(ctx context.Context, c *client.Client, h string) (*signerv1.Certificate, error) {
		return c.ActivateCert(ctx, &signerv1.CertRef{Hash: h})
	})
	deactivate := simple("deactivate", "Stop a certificate's use for signing", func(ctx context.Context, c *client.Client, h string) (*signerv1.Certificate, error) {
		return c.DeactivateCert(ctx, &signerv1.CertRef{Hash: h})
	})
	status := &cobra.Command{
		Use: "status HASH STATUS", Short: "Record a certificate's registration status: saved, registration-in-progress, registered, deletion-in-progress, global-error", Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := parseStatus(args[1])
			if err != nil {
				return err
			}
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				crt, err := c.SetCertStatus(ctx, &signerv1.SetCertStatusRequest{Hash: args[0], Status: st})
				if err != nil {
					return err
				}
				return a.printCerts([]*signerv1.Certificate{crt})
			})
		},
	}
	del := &cobra.Command{
		Use: "delete HASH", Short: "Remove a certificate from the token and from signerd", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				if _, err := c.DeleteCert(ctx, &signerv1.CertRef{Hash: args[0]}); err != nil {
					return err
				}
				fmt.Fprintf(a.stdout, "deleted certificate %s\n", args[0])
				return nil
			})
		},
	}
	cmd.AddCommand(imp, list, show, activate, deactivate, status, del)
	return cmd
}

func (a *app) printCerts(cs []*signerv1.Certificate) error {
	if a.output == "json" {
		if len(cs) == 1 {
			return a.printJSON(cs[0])
		}
		return a.printJSON(&signerv1.ListCertsResponse{Certificates: cs})
	}
	var rows [][]string
	for _, c := range cs {
		rows = append(rows, []string{c.GetSha256()[:16], c.GetKeyId(), c.GetMember(), usageString(c.GetUsage()), statusString(c.GetStatus()), yesNo(c.GetActive()),
			c.GetNotAfter().AsTime().Format("2006-01-02"), c.GetSubject()})
	}
	return a.table([]string{"SHA256", "KEY", "MEMBER", "USAGE", "STATUS", "ACTIVE", "EXPIRES", "SUBJECT"}, rows)
}

func (a *app) signingInfoCommand() *cobra.Command {
	var certOut string
	cmd := &cobra.Command{
		Use:   "signing-info MEMBER",
		Short: "What a security server signs with for a member: key, certificate, algorithm (client)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				si, err := c.GetSigningInfo(ctx, &signerv1.GetSigningInfoRequest{Member: args[0]})
				if err != nil {
					return err
				}
				if certOut != "" {
					if err := os.WriteFile(certOut, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: si.GetCertificate()}), 0o644); err != nil {
						return err
					}
				}
				if a.output == "json" {
					return a.printJSON(si)
				}
				fmt.Fprintf(a.stdout, "member:      %s\nkey:         %s (token %s)\nalgorithm:   %s\ncertificate: %s\nchain:       %d certificate(s)\nocsp:        %d bytes\n",
					si.GetMember(), si.GetKeyId(), si.GetToken(), si.GetAlgorithm(), si.GetCertSha256(), len(si.GetChain()), len(si.GetOcspResponse()))
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&certOut, "cert-out", "", "also write the certificate as PEM to this file")
	return cmd
}
