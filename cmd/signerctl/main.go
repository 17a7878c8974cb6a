// Command signerctl is the PKI officer's and operator's CLI for signerd:
// tokens, keys, signing, a load generator and the audit log. It is thin
// over package signer/client.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hsmsigner/hsmsigner/cmd/internal/buildversion"
	"github.com/hsmsigner/hsmsigner/cmd/internal/gendoc"
	"github.com/hsmsigner/hsmsigner/signer/client"
)

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// run executes signerctl with args and returns the exit code. An error is
// one line on stderr.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	app := &app{stdin: stdin, stdout: stdout, stderr: stderr}
	root := app.rootCommand()
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(stderr, "signerctl:", oneLine(err))
		return 1
	}
	return 0
}

// oneLine renders an error as one line; gRPC errors as "CODE: message".
func oneLine(err error) string {
	if st, ok := status.FromError(err); ok {
		return fmt.Sprintf("%s: %s", st.Code(), strings.ReplaceAll(st.Message(), "\n", " "))
	}
	return strings.ReplaceAll(err.Error(), "\n", " ")
}

// app holds the global flags and the streams.
type app struct {
	socket  string
	output  string
	timeout time.Duration
	stdin   io.Reader
	stdout  io.Writer
	stderr  io.Writer
}

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "signerctl",
		Short:         "Manage and use signerd: tokens, keys, signing, audit",
		Version:       buildversion.String(),
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(*cobra.Command, []string) error {
			if a.output != "table" && a.output != "json" {
				return fmt.Errorf("-o %q: use table or json", a.output)
			}
			return nil
		},
	}
	root.PersistentFlags().StringVar(&a.socket, "socket", client.SocketPath(), "signerd's gRPC socket; $"+client.SocketEnv+" sets it when the flag is not given")
	root.PersistentFlags().StringVarP(&a.output, "output", "o", "table", "output format: table or json")
	root.PersistentFlags().DurationVar(&a.timeout, "timeout", 2*time.Minute, "deadline of each call")
	root.AddCommand(a.statusCommand(), a.tokenCommand(), a.keyCommand(), a.csrCommand(), a.certCommand(), a.signingInfoCommand(), a.ocspCommand(), a.stateCommand(),
		a.tsaCommand(), a.signCommand(), a.benchCommand(), a.auditCommand(), a.xroadCommand())
	refuseUnknownSubcommands(root)
	root.AddCommand(gendoc.Command(root, "1"))
	return root
}

// refuseUnknownSubcommands makes every command group (a command with
// subcommands and nothing to run itself) fail on a word that names no
// subcommand, where cobra would print the group's help and exit 0.
func refuseUnknownSubcommands(c *cobra.Command) {
	for _, sub := range c.Commands() {
		refuseUnknownSubcommands(sub)
	}
	if !c.HasSubCommands() || c.Run != nil || c.RunE != nil {
		return
	}
	c.Args = cobra.ArbitraryArgs
	c.RunE = func(cmd *cobra.Command, args []string) error {
		if len(args) > 0 {
			return fmt.Errorf("unknown command %q for %q (see %s --help)", args[0], cmd.CommandPath(), cmd.CommandPath())
		}
		return cmd.Help()
	}
}

// dial connects to the daemon.
func (a *app) dial() (*client.Client, error) {
	if a.socket == "" {
		return nil, errors.New("no socket: give --socket or set " + client.SocketEnv)
	}
	if _, err := os.Stat(a.socket); err != nil {
		return nil, fmt.Errorf("signerd socket %s: %w (is signerd running? set --socket or %s)", a.socket, err, client.SocketEnv)
	}
	return client.Dial(a.socket)
}

// call runs fn with a connected client and a deadline.
func (a *app) call(cmd *cobra.Command, fn func(ctx context.Context, c *client.Client) error) error {
	c, err := a.dial()
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(cmd.Context(), a.timeout)
	defer cancel()
	err = fn(ctx, c)
	if st, ok := status.FromError(err); ok && st.Code() == codes.Unavailable && strings.Contains(st.Message(), "connection refused") {
		// The socket is there but nobody listens: a daemon that stopped
		// or crashed (it removes a stale socket when it starts again).
		return fmt.Errorf("signerd socket %s: nobody answers (is signerd running? set --socket or %s)", a.socket, client.SocketEnv)
	}
	return err
}
