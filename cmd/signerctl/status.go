package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/client"
)

func (a *app) statusCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show the daemon's version, modules, tokens and your role",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				st, err := c.GetStatus(ctx, &signerv1.GetStatusRequest{})
				if err != nil {
					return err
				}
				if a.output == "json" {
					return a.printJSON(st)
				}
				fmt.Fprintf(a.stdout, "signerd %s, up %s\nyou: uid %d gid %d, role %s\n\n", st.GetVersion(),
					(time.Duration(st.GetUptimeSeconds()) * time.Second).String(), st.GetCaller().GetUid(), st.GetCaller().GetGid(), st.GetCaller().GetRole())
				var rows [][]string
				for _, m := range st.GetModules() {
					rows = append(rows, []string{m.GetName(), m.GetPath(), m.GetManufacturer(), yesNo(m.GetReady()), m.GetDownReason()})
				}
				if err := a.table([]string{"MODULE", "PATH", "MANUFACTURER", "READY", "DOWN"}, rows); err != nil {
					return err
				}
				fmt.Fprintln(a.stdout)
				if err := a.tokenTable(st.GetTokens()); err != nil {
					return err
				}
				if ts, err := c.GetTSAStatus(ctx, &signerv1.GetTSAStatusRequest{}); err == nil {
					fmt.Fprintf(a.stdout, "\ntime-stamping: %s\n", tsaSummary(ts))
				}
				return nil
			})
		},
	}
}

// tsaSummary is the time-stamping service in one line: whether the
// built-in TSA serves (and why not), the clock guard, the upstream mode.
func tsaSummary(ts *signerv1.TSAStatus) string {
	var s string
	switch {
	case ts.GetBuiltinEnabled() && ts.GetServing():
		s = "built-in TSA serving"
	case ts.GetBuiltinEnabled():
		s = "built-in TSA NOT SERVING: " + ts.GetReason()
	default:
		s = "built-in TSA off"
	}
	if ts.GetClockGuardOff() {
		s += "; CLOCK GUARD OFF (development only)"
	}
	if u := ts.GetUpstream(); u != nil {
		if u.GetHealthy() {
			s += "; upstream TSAs healthy"
		} else {
			s += "; upstream TSAs UNHEALTHY: " + u.GetLastError()
		}
	}
	return s + " (signerctl tsa status)"
}
