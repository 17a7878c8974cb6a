package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/hsmsigner/hsmsigner/signer/audit"
)

func (a *app) auditCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "audit", Short: "Work with signerd's audit log"}
	var pubFiles []string
	var anchorsFile string
	verify := &cobra.Command{
		Use:   "verify FILE",
		Short: "Check the audit log's hash chain and, with --pub, its signed checkpoints; names the first edited, removed, reordered or cut line",
		Long: `Check the audit log's hash chain; names the first edited, removed,
reordered or cut line.

With --pub (the audit key's public key, from ` + "`signerctl key show ID --public-pem`" + `,
or a certificate of it) every checkpoint line's signature is checked too: a
history rewritten by someone who can write the log but has no audit key
fails. Lines after the last checkpoint are reported as unanchored. With
--checkpoints, checkpoints shipped off the machine (audit lines, or
signerd's "audit checkpoint" log lines, one JSON object a line) must match
the log as well; they also catch checkpoint lines removed with the lines
they covered, and lines cut from the end. With --pub, a log of which no
line is anchored (no checkpoint, or every checkpoint line dropped along
with a rewrite) fails. No HSM is needed.`,
		Args: cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			opts, err := verifyOptions(pubFiles, anchorsFile)
			if err != nil {
				return err
			}
			sum, err := audit.VerifyFileWith(args[0], opts)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "%s: %d lines, chain intact (last seq %d, head %s)\n", args[0], sum.Lines, sum.LastSeq, sum.LastHash)
			if sum.Head == nil {
				fmt.Fprintf(a.stderr, "warning: no head file %s.head beside the log: lines cut from its end cannot be detected\n", args[0])
			}
			return a.reportCheckpoints(sum, len(opts.Anchors))
		},
	}
	verify.Flags().StringArrayVar(&pubFiles, "pub", nil, "PEM file with the audit key's public key or certificate; checks every checkpoint's signature (repeat for a replaced key)")
	verify.Flags().StringVar(&anchorsFile, "checkpoints", "", "file of checkpoints shipped off the machine (JSON lines with a \"checkpoint\" object); needs --pub")
	cmd.AddCommand(verify)
	return cmd
}

// verifyOptions reads the keys and shipped checkpoints audit verify was
// given.
func verifyOptions(pubFiles []string, anchorsFile string) (audit.VerifyOptions, error) {
	var opts audit.VerifyOptions
	for _, p := range pubFiles {
		data, err := os.ReadFile(p)
		if err != nil {
			return opts, fmt.Errorf("--pub: %w", err)
		}
		keys, err := audit.ParsePublicKeys(data)
		if err != nil {
			return opts, fmt.Errorf("--pub %s: %w", p, err)
		}
		opts.Keys = append(opts.Keys, keys...)
	}
	if anchorsFile == "" {
		return opts, nil
	}
	if len(opts.Keys) == 0 {
		return opts, errors.New("--checkpoints needs --pub: a shipped checkpoint counts only once its signature is checked")
	}
	f, err := os.Open(anchorsFile)
	if err != nil {
		return opts, fmt.Errorf("--checkpoints: %w", err)
	}
	defer f.Close()
	if opts.Anchors, err = audit.ReadAnchors(f); err != nil {
		return opts, fmt.Errorf("--checkpoints %s: %w", anchorsFile, err)
	}
	return opts, nil
}

// errNothingAnchored fails audit verify --pub on a log no signed
// checkpoint vouches for: whoever can write the log makes one by
// rewriting it without its checkpoint lines, or by emptying it.
var errNothingAnchored = errors.New("no line is anchored by a signed checkpoint")

// reportCheckpoints says what the checkpoints of a verified log vouch for.
// With signatures checked, a log with no anchored line is an error.
func (a *app) reportCheckpoints(sum audit.Summary, anchors int) error {
	if !sum.SignaturesChecked {
		fmt.Fprintf(a.stdout, "checkpoints: %d found, signatures not checked (give --pub with the audit key's public key); a rewrite of the whole chain cannot be detected\n", sum.Checkpoints)
		return nil
	}
	if sum.Checkpoints == 0 {
		fmt.Fprint(a.stdout, "checkpoints: none in the log")
	} else {
		fmt.Fprintf(a.stdout, "checkpoints: %d, every signature verified", sum.Checkpoints)
	}
	if anchors > 0 {
		fmt.Fprintf(a.stdout, "; %d shipped checkpoint(s) given, %d matched lines of the log", anchors, sum.Anchors)
	}
	fmt.Fprintln(a.stdout)
	switch {
	case sum.AnchoredSeq == 0 && sum.LastSeq == 0:
		return fmt.Errorf("%w: the log is empty, and a log emptied by whoever can write it looks just like this", errNothingAnchored)
	case sum.AnchoredSeq == 0:
		return fmt.Errorf("%w: all %d lines (seq 1 to %d) are unanchored, and a log rewritten without its checkpoint lines looks just like this", errNothingAnchored, sum.LastSeq, sum.LastSeq)
	case sum.AnchoredSeq < sum.LastSeq:
		fmt.Fprintf(a.stdout, "anchored: seq 1 to %d\n", sum.AnchoredSeq)
		fmt.Fprintf(a.stderr, "warning: %d line(s) after the last checkpoint are unanchored (seq %d to %d)\n",
			sum.LastSeq-sum.AnchoredSeq, sum.AnchoredSeq+1, sum.LastSeq)
	default:
		fmt.Fprintf(a.stdout, "anchored: seq 1 to %d (every line)\n", sum.AnchoredSeq)
	}
	return nil
}
