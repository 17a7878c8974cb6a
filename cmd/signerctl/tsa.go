package main

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/timestamppb"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/client"
	"github.com/hsmsigner/hsmsigner/tsa"
)

func (a *app) tsaCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "tsa",
		Short: "RFC 3161 time-stamps: the service's status, stamp a file, verify a token",
	}
	cmd.AddCommand(a.tsaStatusCommand(), a.tsaStampCommand(), a.tsaVerifyCommand())
	return cmd
}

func (a *app) tsaStatusCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Whether the built-in TSA serves and why not, its key and certificate, the clock guard, the external TSAs' health",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				st, err := c.GetTSAStatus(ctx, &signerv1.GetTSAStatusRequest{})
				if err != nil {
					return err
				}
				if a.output == "json" {
					return a.printJSON(st)
				}
				a.printTSAStatus(st)
				return nil
			})
		},
	}
}

// printTSAStatus writes st as lines of "name: value".
func (a *app) printTSAStatus(st *signerv1.TSAStatus) {
	w := a.stdout
	when := func(ts *timestamppb.Timestamp) string {
		if ts == nil {
			return "-"
		}
		return ts.AsTime().UTC().Format(time.RFC3339)
	}
	switch {
	case st.GetBuiltinEnabled() && st.GetServing():
		fmt.Fprintln(w, "built-in TSA:  serving")
	case st.GetBuiltinEnabled():
		fmt.Fprintf(w, "built-in TSA:  NOT SERVING: %s\n", st.GetReason())
	default:
		fmt.Fprintf(w, "built-in TSA:  off (%s)\n", st.GetReason())
	}
	if st.GetBuiltinEnabled() {
		if st.GetKeyId() != "" {
			fmt.Fprintf(w, "key:           %s\n", st.GetKeyId())
		}
		if st.GetCertSha256() != "" {
			fmt.Fprintf(w, "certificate:   %s (%s, valid until %s)\n", st.GetCertSha256(), st.GetCertSubject(), when(st.GetCertNotAfter()))
		}
		clock := fmt.Sprintf("synced=%s max_error=%s stepped=%s", yesNo(st.GetClockSynced()),
			time.Duration(st.GetClockMaxErrorMicros())*time.Microsecond, time.Duration(st.GetClockSteppedMicros())*time.Microsecond)
		switch {
		case st.GetClockGuardOff():
			fmt.Fprintf(w, "clock guard:   OFF: tokens are issued whatever the clock says (development only; %s)\n", clock)
		case st.GetClockProblem() != "":
			fmt.Fprintf(w, "clock guard:   REFUSING (timeNotAvailable): %s (%s)\n", st.GetClockProblem(), clock)
		default:
			fmt.Fprintf(w, "clock guard:   on, time trusted (%s)\n", clock)
		}
		if st.GetListen() != "" {
			fmt.Fprintf(w, "TCP listener:  http://%s/tsa\n", st.GetListen())
		}
		fmt.Fprintf(w, "tokens:        %d issued, %d refused since start\n", st.GetIssued(), st.GetRefused())
	}
	u := st.GetUpstream()
	if u == nil {
		fmt.Fprintln(w, "upstream TSAs: none configured")
		return
	}
	health := "healthy"
	if !u.GetHealthy() {
		health = "UNHEALTHY (every TSA has failed for longer than unhealthy_after)"
	}
	fmt.Fprintf(w, "upstream TSAs: %s: %s\n", health, strings.Join(u.GetUrls(), ", "))
	fmt.Fprintf(w, "  last success: %s\n", when(u.GetLastSuccess()))
	if u.GetLastError() != "" {
		fmt.Fprintf(w, "  last error:   %s (%s)\n", u.GetLastError(), when(u.GetLastErrorAt()))
	}
	fmt.Fprintf(w, "  calls:        %d upstream, %d stamps handed out\n", u.GetCalls(), u.GetStamps())
	fmt.Fprintf(w, "  batching:     window %s, last batch sizes %v\n", time.Duration(u.GetBatchWindowMicros())*time.Microsecond, u.GetBatchSizes())
}

// tsaHash names the hash of --hash, as a Timestamp call names it.
func tsaHash(name string) (crypto.Hash, string, error) {
	switch strings.ToLower(name) {
	case "sha256":
		return crypto.SHA256, "SHA256", nil
	case "sha384":
		return crypto.SHA384, "SHA384", nil
	case "sha512":
		return crypto.SHA512, "SHA512", nil
	}
	return 0, "", fmt.Errorf("--hash %q: use sha256, sha384 or sha512", name)
}

// digestFile hashes the file at path (standard input for "-").
func (a *app) digestFile(path string, h crypto.Hash) ([]byte, error) {
	r := a.stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	hw := h.New()
	if _, err := io.Copy(hw, r); err != nil {
		return nil, err
	}
	return hw.Sum(nil), nil
}

func (a *app) tsaStampCommand() *cobra.Command {
	var in, out, hashName, policy string
	var upstream, noCerts bool
	cmd := &cobra.Command{
		Use:   "stamp --in FILE --out FILE.tsr",
		Short: "Time-stamp a file (client): the built-in TSA, or the external TSAs with --upstream",
		Long: `stamp hashes FILE, has signerd time-stamp the digest, and writes the answer
as a DER TimeStampResp to --out, which openssl reads:
  openssl ts -verify -in FILE.tsr -data FILE -CAfile root.pem
With --upstream the external TSAs of [tsa.upstream] stamp it; when they
stamped a batch, the digest's inclusion proof is written to FILE.tsr.proof
(JSON) and the token verifies only with it (signerctl tsa verify --proof).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if in == "" || out == "" {
				return errors.New("give --in FILE and --out FILE.tsr")
			}
			h, name, err := tsaHash(hashName)
			if err != nil {
				return err
			}
			digest, err := a.digestFile(in, h)
			if err != nil {
				return err
			}
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				r, err := c.Timestamp(ctx, &signerv1.TimestampRequest{Digest: digest, Hash: name, CertReq: !noCerts, Policy: policy, Upstream: upstream})
				if err != nil {
					return err
				}
				resp, err := client.ResponseOf(r.GetToken())
				if err != nil {
					return err
				}
				if err := os.WriteFile(out, resp, 0o644); err != nil {
					return err
				}
				if p := client.ProofOf(r); p != nil {
					b, err := json.MarshalIndent(p, "", "  ")
					if err != nil {
						return err
					}
					if err := os.WriteFile(out+".proof", b, 0o644); err != nil {
						return err
					}
					fmt.Fprintf(a.stderr, "batched stamp: leaf %d of %d; its inclusion proof is in %s.proof\n", p.Index, p.Size, out)
				}
				fmt.Fprintf(a.stdout, "serial %s, time %s\n", r.GetSerial(), r.GetGenTime().AsTime().UTC().Format(time.RFC3339Nano))
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&in, "in", "", "file to time-stamp (- for standard input)")
	cmd.Flags().StringVar(&out, "out", "", "file to write the DER TimeStampResp to")
	cmd.Flags().StringVar(&hashName, "hash", "sha256", "digest of the file: sha256, sha384 or sha512")
	cmd.Flags().StringVar(&policy, "policy", "", "TSA policy OID to ask for (built-in TSA; its default when empty)")
	cmd.Flags().BoolVar(&upstream, "upstream", false, "ask the external TSAs of [tsa.upstream] instead of the built-in TSA")
	cmd.Flags().BoolVar(&noCerts, "no-certs", false, "do not ask for the TSA's certificates in the token (built-in TSA)")
	return cmd
}

func (a *app) tsaVerifyCommand() *cobra.Command {
	var in, token, caFile, certsFile, proofFile, hashName string
	cmd := &cobra.Command{
		Use:   "verify --in FILE --token FILE.tsr --ca root.pem",
		Short: "Verify a time-stamp token (and inclusion proof) against a file and a CA bundle, without signerd",
		Long: `verify checks, without asking signerd, that the token in --token (a DER
TimeStampResp or TimeStampToken) time-stamps --in: the CMS signature, the ESS
signing-certificate binding, the TSA certificate's chain to a CA of --ca at the
token's time with extendedKeyUsage timeStamping, and the imprint. A batched
upstream stamp needs its inclusion proof (--proof, FILE.tsr.proof when that
file exists). --certs gives TSA and intermediate certificates for tokens that
do not carry them.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if in == "" || token == "" || caFile == "" {
				return errors.New("give --in FILE, --token FILE.tsr and --ca FILE")
			}
			h, _, err := tsaHash(hashName)
			if err != nil {
				return err
			}
			digest, err := a.digestFile(in, h)
			if err != nil {
				return err
			}
			der, err := os.ReadFile(token)
			if err != nil {
				return err
			}
			tok, err := client.TokenOf(der)
			if err != nil {
				return err
			}
			roots, err := readPEMCertificates(caFile)
			if err != nil {
				return fmt.Errorf("--ca: %w", err)
			}
			trust := tsa.Trust{Roots: x509.NewCertPool()}
			for _, c := range roots {
				trust.Roots.AddCert(c)
			}
			if certsFile != "" {
				if trust.Certificates, err = readPEMCertificates(certsFile); err != nil {
					return fmt.Errorf("--certs: %w", err)
				}
			}
			var proof *client.BatchProof
			if proofFile == "" {
				if _, err := os.Stat(token + ".proof"); err == nil {
					proofFile = token + ".proof"
				}
			}
			if proofFile != "" {
				b, err := os.ReadFile(proofFile)
				if err != nil {
					return err
				}
				proof = &client.BatchProof{}
				if err := json.Unmarshal(b, proof); err != nil {
					return fmt.Errorf("--proof %s: %w", proofFile, err)
				}
			}
			ts, err := client.VerifyTimestamp(tok, h, digest, proof, trust)
			if err != nil {
				return err
			}
			signer := "-"
			if len(ts.Certificates) > 0 {
				signer = ts.Certificates[0].Subject.String()
			}
			fmt.Fprintf(a.stdout, "Verification: OK\ntime:   %s\nserial: %s\npolicy: %s\nTSA:    %s\n", ts.Time.UTC().Format(time.RFC3339Nano), ts.SerialNumber.Text(16), ts.Policy, signer)
			if proof != nil {
				fmt.Fprintf(a.stdout, "batch:  leaf %d of %d, inclusion proof verified\n", proof.Index, proof.Size)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&in, "in", "", "the file the token is for (- for standard input)")
	cmd.Flags().StringVar(&token, "token", "", "the DER TimeStampResp or TimeStampToken")
	cmd.Flags().StringVar(&caFile, "ca", "", "PEM file of the trusted root CA certificates")
	cmd.Flags().StringVar(&certsFile, "certs", "", "PEM file of TSA and intermediate certificates, for tokens without them")
	cmd.Flags().StringVar(&proofFile, "proof", "", "inclusion proof of a batched stamp (default FILE.tsr.proof when it exists)")
	cmd.Flags().StringVar(&hashName, "hash", "sha256", "digest the token holds: sha256, sha384 or sha512")
	return cmd
}

// readPEMCertificates reads every certificate in a PEM file.
func readPEMCertificates(path string) ([]*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return out, nil
}
