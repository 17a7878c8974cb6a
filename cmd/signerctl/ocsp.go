package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/timestamppb"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/client"
)

func (a *app) ocspCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ocsp",
		Short: "OCSP responses of the active certificates: status, refresh, fetch (admin; fetch: client)",
	}
	cmd.AddCommand(a.ocspStatusCommand(), a.ocspRefreshCommand(), a.ocspGetCommand())
	return cmd
}

func (a *app) ocspStatusCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "status [CERT]",
		Short: "Per watched certificate: status, thisUpdate, nextUpdate, age, responder, last fetch, next refresh, last error",
		Long: `Per watched certificate (the active sign and auth certificates and the
intermediate CAs of their chains): the OCSP status, the current response's
thisUpdate and nextUpdate, its age, the responder that gave it, when it was
last fetched, when it will be refreshed and the last error. A certificate
whose response goes stale before its next refresh is marked STALE-SOON; one
without a fresh good response, NOT-USABLE, with the reason.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				req := &signerv1.GetOCSPStatusRequest{}
				if len(args) == 1 {
					req.CertHash = args[0]
				}
				st, err := c.GetOCSPStatus(ctx, req)
				if err != nil {
					return err
				}
				return a.printOCSPStatus(st)
			})
		},
	}
}

func (a *app) ocspRefreshCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "refresh [CERT]",
		Short: "Fetch new OCSP responses now, for one certificate or all, and show their status",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				req := &signerv1.RefreshOCSPRequest{}
				if len(args) == 1 {
					req.CertHash = args[0]
				}
				st, err := c.RefreshOCSP(ctx, req)
				if err != nil {
					return err
				}
				return a.printOCSPStatus(st)
			})
		},
	}
}

func (a *app) ocspGetCommand() *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "get CERT",
		Short: "Write the certificate's freshest good OCSP response (DER) to --out (client)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if out == "" {
				return fmt.Errorf("give --out FILE for the response")
			}
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				r, err := c.GetOCSPResponses(ctx, &signerv1.GetOCSPResponsesRequest{CertHashes: args})
				if err != nil {
					return err
				}
				if len(r.GetResponses()) != 1 {
					return fmt.Errorf("signerd answered %d responses for one certificate", len(r.GetResponses()))
				}
				item := r.GetResponses()[0]
				if item.GetError() != "" {
					return fmt.Errorf("%s", item.GetError())
				}
				return os.WriteFile(out, item.GetResponse(), 0o644)
			})
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "file to write the DER response to")
	return cmd
}

func (a *app) printOCSPStatus(st *signerv1.GetOCSPStatusResponse) error {
	if a.output == "json" {
		return a.printJSON(st)
	}
	if !st.GetEnabled() {
		fmt.Fprintln(a.stdout, "OCSP is turned off ([ocsp] enabled = false): certificates are offered without revocation status")
		return nil
	}
	now := time.Now()
	when := func(ts *timestamppb.Timestamp) string {
		if ts == nil {
			return "-"
		}
		return ts.AsTime().UTC().Format("2006-01-02T15:04:05Z")
	}
	var rows [][]string
	var notes []string
	for _, c := range st.GetCertificates() {
		age := "-"
		if c.GetThisUpdate() != nil {
			age = now.Sub(c.GetThisUpdate().AsTime()).Round(time.Second).String()
		}
		flag := "ok"
		switch {
		case !c.GetUsable():
			flag = "NOT-USABLE"
		case c.GetStaleBeforeRefresh():
			flag = "STALE-SOON"
		}
		responder := c.GetResponder()
		if responder == "" {
			responder = "-"
		}
		rows = append(rows, []string{c.GetCertSha256()[:16], c.GetRole(), c.GetStatus(), flag, when(c.GetThisUpdate()), when(c.GetNextUpdate()), age,
			when(c.GetLastFetch()), when(c.GetNextRefresh()), responder, c.GetSubject()})
		if c.GetReason() != "" && c.GetRole() != "intermediate" || c.GetStatus() == "revoked" {
			notes = append(notes, c.GetCertSha256()[:16]+": "+c.GetReason())
		} else if c.GetLastError() != "" {
			notes = append(notes, c.GetCertSha256()[:16]+": last error "+when(c.GetLastErrorAt())+": "+c.GetLastError())
		}
	}
	if err := a.table([]string{"SHA256", "ROLE", "STATUS", "USABLE", "THIS-UPDATE", "NEXT-UPDATE", "AGE", "LAST-FETCH", "NEXT-REFRESH", "RESPONDER", "SUBJECT"}, rows); err != nil {
		return err
	}
	for _, n := range notes {
		fmt.Fprintln(a.stdout, n)
	}
	return nil
}
