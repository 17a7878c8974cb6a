// Command crypto11-sign signs a digest with a key on a PKCS#11 token through
// github.com/ThalesGroup/crypto11, as an interoperability check for keys made
// by hsmsigner: a signature it makes must verify like one hsmsigner makes.
//
// Usage:
//
//	crypto11-sign --module PATH --token-label L [--key-id HEX] [--key-label L] \
//		--digest HEX [--hash sha256|sha384|sha512] [--pss] < pin-file
//
// The user PIN is the first line of standard input; it is never taken from
// the command line and never printed. For SoftHSM, SOFTHSM2_CONF in the
// environment names the token directory. RSA keys sign with PKCS#1 v1.5, or
// with PSS (salt length equal to the hash length) given --pss; ECDSA keys give
// an ASN.1 DER signature. The signature is printed as hex on standard output.
// On error, one line goes to standard error and the exit status is 1.
package main

import (
	"bufio"
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/ThalesGroup/crypto11"
)

// maxPINLine bounds how much of standard input is read for the PIN.
const maxPINLine = 1024

func main() {
	if err := run(os.Args[1:], os.Stdin, os.Stdout); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stdout, usage)
			return
		}
		msg := strings.Join(strings.Fields(err.Error()), " ") // one line
		fmt.Fprintf(os.Stderr, "crypto11-sign: %s\n", msg)
		os.Exit(1)
	}
}

const usage = "usage: crypto11-sign --module PATH --token-label L [--key-id HEX] [--key-label L] " +
	"--digest HEX [--hash sha256|sha384|sha512] [--pss] (user PIN on the first line of stdin)"

// config is what the command line says.
type config struct {
	module     string
	tokenLabel string
	keyID      []byte
	keyLabel   []byte
	digest     []byte
	hash       crypto.Hash
	pss        bool
}

// parseArgs reads the command line. Its errors name no secret: the PIN is
// never on it.
func parseArgs(args []string) (config, error) {
	fs := flag.NewFlagSet("crypto11-sign", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	module := fs.String("module", "", "path of the PKCS#11 module")
	tokenLabel := fs.String("token-label", "", "label of the token")
	keyID := fs.String("key-id", "", "CKA_ID of the key pair, hex")
	keyLabel := fs.String("key-label", "", "CKA_LABEL of the key pair")
	digest := fs.String("digest", "", "digest to sign, hex")
	hashName := fs.String("hash", "sha256", "hash the digest was made with: sha256, sha384 or sha512")
	pss := fs.Bool("pss", false, "RSA: sign with PSS instead of PKCS#1 v1.5")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return config{}, err
		}
		return config{}, fmt.Errorf("%w; %s", err, usage)
	}
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("unexpected argument %q; %s", fs.Arg(0), usage)
	}
	c := config{module: *module, tokenLabel: *tokenLabel, keyLabel: []byte(*keyLabel), pss: *pss}
	if c.module == "" || c.tokenLabel == "" {
		return config{}, fmt.Errorf("--module and --token-label are required; %s", usage)
	}
	if len(c.keyLabel) == 0 {
		c.keyLabel = nil
	}
	var err error
	if c.keyID, err = hex.DecodeString(*keyID); err != nil {
		return config{}, fmt.Errorf("--key-id: %w", err)
	}
	if len(c.keyID) == 0 {
		c.keyID = nil
	}
	if c.keyID == nil && c.keyLabel == nil {
		return config{}, errors.New("give --key-id or --key-label (or both)")
	}
	switch *hashName {
	case "sha256":
		c.hash = crypto.SHA256
	case "sha384":
		c.hash = crypto.SHA384
	case "sha512":
		c.hash = crypto.SHA512
	default:
		return config{}, fmt.Errorf("--hash %q: want sha256, sha384 or sha512", *hashName)
	}
	if c.digest, err = hex.DecodeString(*digest); err != nil {
		return config{}, fmt.Errorf("--digest: %w", err)
	}
	if len(c.digest) != c.hash.Size() {
		return config{}, fmt.Errorf("--digest is %d bytes, but a %s digest is %d", len(c.digest), *hashName, c.hash.Size())
	}
	return c, nil
}

// readPIN returns the first line of r, without its line ending.
func readPIN(r io.Reader) ([]byte, error) {
	line, err := bufio.NewReaderSize(io.LimitReader(r, maxPINLine), maxPINLine).ReadBytes('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("reading PIN from stdin: %w", err)
	}
	if errors.Is(err, io.EOF) && len(line) == maxPINLine {
		return nil, fmt.Errorf("PIN line on stdin is longer than %d bytes", maxPINLine-1)
	}
	pin := bytes.TrimRight(line, "\r\n")
	if len(pin) == 0 {
		return nil, errors.New("no user PIN on the first line of stdin")
	}
	return pin, nil
}

// run signs as the command line says and writes the hex signature to out.
// Any error it returns has had the PIN removed.
func run(args []string, stdin io.Reader, out io.Writer) error {
	c, err := parseArgs(args)
	if err != nil {
		return err
	}
	pin, err := readPIN(stdin)
	if err != nil {
		return err
	}
	sig, err := sign(c, string(pin))
	if err != nil {
		// Belt and braces: no error here should hold the PIN, but never print it.
		return errors.New(strings.ReplaceAll(err.Error(), string(pin), "[redacted]"))
	}
	if _, err := fmt.Fprintln(out, hex.EncodeToString(sig)); err != nil {
		return fmt.Errorf("writing signature: %w", err)
	}
	return nil
}

// sign opens the token, signs c.digest with the key pair and closes the token.
func sign(c config, pin string) (sig []byte, err error) {
	ctx, err := crypto11.Configure(&crypto11.Config{Path: c.module, TokenLabel: c.tokenLabel, Pin: pin})
	if err != nil {
		return nil, fmt.Errorf("opening token %q with module %s: %w", c.tokenLabel, c.module, err)
	}
	defer func() {
		if cerr := ctx.Close(); cerr != nil && err == nil {
			sig, err = nil, fmt.Errorf("closing token: %w", cerr)
		}
	}()
	signer, err := ctx.FindKeyPair(c.keyID, c.keyLabel)
	if err != nil {
		return nil, fmt.Errorf("finding key pair id=%x label=%q: %w", c.keyID, c.keyLabel, err)
	}
	if signer == nil {
		return nil, fmt.Errorf("no key pair with id=%x label=%q on token %q", c.keyID, c.keyLabel, c.tokenLabel)
	}
	var opts crypto.SignerOpts = c.hash
	switch signer.Public().(type) {
	case *rsa.PublicKey:
		if c.pss {
			opts = &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: c.hash}
		}
	case *ecdsa.PublicKey:
		if c.pss {
			return nil, errors.New("--pss needs an RSA key, but the key is ECDSA")
		}
	default:
		return nil, fmt.Errorf("unsupported key type %T", signer.Public())
	}
	sig, err = signer.Sign(rand.Reader, c.digest, opts)
	if err != nil {
		return nil, fmt.Errorf("signing: %w", err)
	}
	return sig, nil
}
