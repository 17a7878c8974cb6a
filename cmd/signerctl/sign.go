package main

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/hsmsigner/hsmsigner/hsm/sigalg"
	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/client"
)

func (a *app) signCommand() *cobra.Command {
	var keyID, certHash, alg, in, out string
	cmd := &cobra.Command{
		Use:   "sign (--key KEY-ID | --cert HASH) --alg ALGORITHM (HEX-DIGEST | --in FILE)",
		Short: "Sign a digest given in hex, or a file hashed here; prints the signature in base64",
		Long: `sign signs a digest inside the HSM. Give the digest as hex, or --in FILE to hash
the file on this side with the algorithm's hash (only the digest is sent).
The signature is printed in base64, or written raw to --out FILE.
Algorithms: SHA256withRSA, SHA256withRSAandMGF1, SHA256withECDSA (384, 512
likewise), or RS256, PS256, ES256, ...`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			algorithm, err := sigalg.Parse(alg)
			if err != nil {
				return err
			}
			var digest []byte
			switch {
			case in != "" && len(args) == 1:
				return errors.New("give a hex digest or --in FILE, not both")
			case in != "":
				digest, err = hashFile(in, algorithm)
			case len(args) == 1:
				digest, err = hex.DecodeString(args[0])
				if err != nil {
					err = fmt.Errorf("digest %q is not hex", args[0])
				}
			default:
				err = errors.New("give a hex digest or --in FILE")
			}
			if err != nil {
				return err
			}
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				req := &signerv1.SignRequest{Key: &signerv1.SignRequest_KeyId{KeyId: keyID}, Algorithm: algorithm.Name, Digest: digest}
				if certHash != "" {
					req.Key = &signerv1.SignRequest_CertHash{CertHash: certHash}
				}
				resp, err := c.Sign(ctx, req)
				if err != nil {
					return err
				}
				if out != "" {
					return os.WriteFile(out, resp.GetSignature(), 0o644)
				}
				if a.output == "json" {
					return a.printJSON(resp)
				}
				_, err = fmt.Fprintln(a.stdout, base64.StdEncoding.EncodeToString(resp.GetSignature()))
				return err
			})
		},
	}
	cmd.Flags().StringVar(&keyID, "key", "", "key id (hex)")
	cmd.Flags().StringVar(&certHash, "cert", "", "sign with the key of this active certificate (SHA-256 or SHA-1 hex) instead of --key")
	cmd.Flags().StringVar(&alg, "alg", "SHA256withECDSA", "signature algorithm")
	cmd.Flags().StringVar(&in, "in", "", "file to hash and sign")
	cmd.Flags().StringVar(&out, "out", "", "write the raw signature to this file instead of printing base64")
	cmd.MarkFlagsOneRequired("key", "cert")
	cmd.MarkFlagsMutuallyExclusive("key", "cert")
	return cmd
}

func hashFile(path string, alg sigalg.Algorithm) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := alg.Hash.New()
	if _, err := io.Copy(h, f); err != nil {
		return nil, fmt.Errorf("hashing %s: %w", path, err)
	}
	return h.Sum(nil), nil
}
