package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/hsmsigner/hsmsigner/signer/audit"
)

func (a *app) auditCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "audit", Short: "Work with signerd's audit log"}
	verify := &cobra.Command{
		Use:   "verify FILE",
		Short: "Check the audit log's hash chain; names the first edited, removed, reordered or cut line",
		Args:  cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			sum, err := audit.VerifyFile(args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "%s: %d lines, chain intact (last seq %d, head %s)\n", args[0], sum.Lines, sum.LastSeq, sum.LastHash)
			if sum.Head == nil {
				fmt.Fprintf(a.stderr, "warning: no head file %s.head beside the log: lines cut from its end cannot be detected\n", args[0])
			}
			return nil
		},
	}
	cmd.AddCommand(verify)
	return cmd
}
