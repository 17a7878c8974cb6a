package main

import (
	"context"
	"encoding/pem"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/client"
)

func parseUsage(s string) (signerv1.KeyUsage, error) {
	switch strings.ToLower(s) {
	case "":
		return signerv1.KeyUsage_KEY_USAGE_UNSPECIFIED, nil
	case "sign":
		return signerv1.KeyUsage_KEY_USAGE_SIGN, nil
	case "auth":
		return signerv1.KeyUsage_KEY_USAGE_AUTH, nil
	case "tsa":
		return signerv1.KeyUsage_KEY_USAGE_TSA, nil
	case "audit":
		return signerv1.KeyUsage_KEY_USAGE_AUDIT, nil
	}
	return 0, fmt.Errorf("--usage %q: use sign, auth, tsa or audit", s)
}

func usageString(u signerv1.KeyUsage) string {
	return strings.ToLower(strings.TrimPrefix(u.String(), "KEY_USAGE_"))
}

func (a *app) keyCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "key", Short: "Generate, list, show, delete and rename keys (admin)"}

	var token, label, algorithm, usage, name string
	var quiet bool
	generate := &cobra.Command{
		Use: "generate", Short: "Generate a key pair inside the HSM", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			u, err := parseUsage(usage)
			if err != nil {
				return err
			}
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				k, err := c.GenerateKey(ctx, &signerv1.GenerateKeyRequest{Token: token, Label: label, Algorithm: algorithm, Usage: u, Name: name})
				if err != nil {
					return err
				}
				if quiet {
					_, err := fmt.Fprintln(a.stdout, k.GetId())
					return err
				}
				return a.printKeys([]*signerv1.Key{k})
			})
		},
	}
	generate.Flags().StringVar(&token, "token", "", "token name (may be left out when only one is configured)")
	generate.Flags().StringVar(&label, "label", "", "key label (CKA_LABEL), unique on the token")
	generate.Flags().StringVar(&algorithm, "algorithm", "EC-P256", "RSA2048, RSA3072, RSA4096, EC-P256 or EC-P384")
	generate.Flags().StringVar(&usage, "usage", "sign", "sign, auth, tsa or audit (the key that signs the audit log's checkpoints)")
	generate.Flags().StringVar(&name, "name", "", "friendly name")
	generate.Flags().BoolVarP(&quiet, "quiet", "q", false, "print only the new key's id")
	_ = generate.MarkFlagRequired("label")

	var listToken string
	list := &cobra.Command{
		Use: "list", Short: "List keys; keys found on a token but unknown to signerd show KNOWN no", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.ListKeys(ctx, &signerv1.ListKeysRequest{Token: listToken})
				if err != nil {
					return err
				}
				if a.output == "json" {
					return a.printJSON(resp)
				}
				if err := a.printKeys(resp.GetKeys()); err != nil {
					return err
				}
				for _, k := range resp.GetKeys() {
					// What a crash left of a key generation or deletion:
					// the officer deletes it (key delete ID).
					if p := k.GetAttributeProblem(); strings.Contains(p, "damaged object") {
						fmt.Fprintf(a.stderr, "key %s on token %s (label %q): %s; remove it with: signerctl key delete %s@%s\n", k.GetId(), k.GetToken(), k.GetLabel(), p, k.GetId(), k.GetToken())
					}
				}
				for t, why := range resp.GetSkippedTokens() {
					fmt.Fprintf(a.stderr, "token %s skipped: %s\n", t, why)
				}
				return nil
			})
		},
	}
	list.Flags().StringVar(&listToken, "token", "", "only this token's keys")

	var publicPEM bool
	show := &cobra.Command{
		Use: "show KEY-ID", Short: "Show a key; --public-pem prints its public key as PEM", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				k, err := c.GetKey(ctx, &signerv1.GetKeyRequest{KeyId: args[0]})
				if err != nil {
					return err
				}
				if publicPEM {
					return pem.Encode(a.stdout, &pem.Block{Type: "PUBLIC KEY", Bytes: k.GetPublicKey()})
				}
				if a.output == "json" {
					return a.printJSON(k)
				}
				fmt.Fprintf(a.stdout, "id:          %s\ntoken:       %s\nlabel:       %s\nname:        %s\nusage:       %s\ntype:        %s %d %s\nknown:       %s\nsensitive:   %s\nextractable: %s\ndecrypt:     %s\nalgorithms:  %s\n",
					k.GetId(), k.GetToken(), k.GetLabel(), k.GetName(), usageString(k.GetUsage()), k.GetType(), k.GetBits(), k.GetCurve(),
					yesNo(k.GetKnown()), yesNo(k.GetSensitive()), yesNo(k.GetExtractable()), yesNo(k.GetCanDecrypt()), strings.Join(k.GetAlgorithms(), ", "))
				a.printKeyProtection(k)
				return nil
			})
		},
	}
	show.Flags().BoolVar(&publicPEM, "public-pem", false, "print the public key as PEM")

	var force bool
	del := &cobra.Command{
		Use: "delete KEY-ID", Short: "Destroy a key pair in the HSM", Args: cobra.ExactArgs(1),
		Long: `Destroy a key pair in the HSM, and its records.

KEY-ID is the key's id as key list shows it. ID@TOKEN deletes on that
token only (needed when an id names objects on two tokens). For damaged
objects (see key list): no-id removes every object without a CKA_ID on
the logged-in tokens, no-id@TOKEN those of one token; a whole key pair is
never deleted as damage.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				if _, err := c.DeleteKey(ctx, &signerv1.DeleteKeyRequest{KeyId: args[0], Force: force}); err != nil {
					return err
				}
				fmt.Fprintf(a.stdout, "deleted key %s\n", args[0])
				return nil
			})
		},
	}
	del.Flags().BoolVar(&force, "force", false, "also delete what depends on the key (its certificates)")

	var renameUsage string
	rename := &cobra.Command{
		Use: "rename KEY-ID NAME", Short: "Set a key's friendly name (and, for a key signerd does not know yet, its --usage)", Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			u, err := parseUsage(renameUsage)
			if err != nil {
				return err
			}
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				k, err := c.RenameKey(ctx, &signerv1.RenameKeyRequest{KeyId: args[0], Name: args[1], Usage: u})
				if err != nil {
					return err
				}
				return a.printKeys([]*signerv1.Key{k})
			})
		},
	}
	rename.Flags().StringVar(&renameUsage, "usage", "", "usage to record for a key signerd does not know: sign, auth, tsa or audit")

	cmd.AddCommand(generate, list, show, del, rename)
	return cmd
}

func (a *app) printKeys(keys []*signerv1.Key) error {
	if a.output == "json" {
		if len(keys) == 1 {
			return a.printJSON(keys[0])
		}
		return a.printJSON(&signerv1.ListKeysResponse{Keys: keys})
	}
	var rows [][]string
	for _, k := range keys {
		size := fmt.Sprint(k.GetBits())
		if k.GetCurve() != "" {
			size = k.GetCurve()
		}
		rows = append(rows, []string{k.GetId(), k.GetToken(), k.GetLabel(), k.GetName(), usageString(k.GetUsage()), k.GetType() + " " + size, yesNo(k.GetKnown())})
	}
	return a.table([]string{"ID", "TOKEN", "LABEL", "NAME", "USAGE", "TYPE", "KNOWN"}, rows)
}
