// Package devca drives dev-ca.sh, a development certificate authority with
// openssl as the CA, from Go: tests make a root and an intermediate CA in a
// temporary directory and have the intermediate issue X-Road-like member
// "sign", "auth" and "tsa" certificates from certificate requests.
//
// The CA's private keys are unencrypted files in its directory: this CA is
// for development and tests only. The certificates are made by the script,
// never by Go, so that Go code under test meets certificates that another
// implementation made.
package devca

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// Certificate usages: the profiles dev-ca.sh issues certificates with.
const (
	// UsageSign is a member signing certificate: keyUsage critical
	// nonRepudiation, digitalSignature; no extendedKeyUsage.
	UsageSign = "sign"
	// UsageAuth is a security server authentication (TLS) certificate:
	// keyUsage critical digitalSignature (and keyEncipherment for RSA keys),
	// extendedKeyUsage clientAuth, serverAuth.
	UsageAuth = "auth"
	// UsageTSA is a time-stamping authority certificate: keyUsage critical
	// digitalSignature, extendedKeyUsage critical timeStamping.
	UsageTSA = "tsa"
)

// File names inside a CA directory.
const (
	RootFile         = "root.pem"         // root CA certificate, the trust anchor
	IntermediateFile = "intermediate.pem" // intermediate CA certificate, the issuer
	ChainFile        = "chain.pem"        // intermediate then root
)

// ExitRefused is the exit status with which dev-ca.sh refuses a certificate
// request (not a request, bad self-signature, malformed subjectAltName).
const ExitRefused = 3

// InstallHint tells how to install what this package needs on Debian.
const InstallHint = "install it with: apt-get install -y openssl"

// Validity chooses the validity period of an issued certificate.
type Validity int

const (
	// Current is valid from a few minutes ago for 365 days.
	Current Validity = iota
	// Expired was valid from 10 days ago until 1 day ago.
	Expired
	// NotYetValid becomes valid 1 day from now, for 365 days.
	NotYetValid
)

// String returns the name of v.
func (v Validity) String() string {
	switch v {
	case Current:
		return "current"
	case Expired:
		return "expired"
	case NotYetValid:
		return "not-yet-valid"
	}
	return fmt.Sprintf("Validity(%d)", int(v))
}

// subcommand is the dev-ca.sh subcommand that issues certificates with
// validity v.
func (v Validity) subcommand() (string, bool) {
	switch v {
	case Current:
		return "sign", true
	case Expired:
		return "sign-expired", true
	case NotYetValid:
		return "sign-future", true
	}
	return "", false
}

var (
	// ErrOpenSSLMissing is returned (wrapped) when openssl is not on PATH.
	ErrOpenSSLMissing = errors.New("openssl not found in PATH")
	// ErrScriptNotFound is returned (wrapped) by ScriptPath when dev-ca.sh
	// cannot be found beside this package's source.
	ErrScriptNotFound = errors.New("dev-ca.sh not found")
	// ErrInvalidArgument is returned (wrapped) for an unknown usage or
	// validity, or an empty request, before anything is run.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrCSRRefused matches (with errors.Is) a *ScriptError whose script run
	// refused the certificate request.
	ErrCSRRefused = errors.New("certificate request refused")
	// ErrBadOutput is returned (wrapped) when the script's output is not
	// what it should be.
	ErrBadOutput = errors.New("unexpected dev-ca.sh output")
)

// ScriptError is returned when dev-ca.sh exits unsuccessfully.
type ScriptError struct {
	Command  string // the subcommand: init, sign, sign-expired, sign-future
	ExitCode int    // -1 if the script did not exit normally
	Message  string // the script's last line on stderr
	Err      error  // from os/exec
}

// Error returns the subcommand, the script's message and its exit status.
func (e *ScriptError) Error() string {
	msg := e.Message
	if msg == "" {
		msg = e.Err.Error()
	}
	return fmt.Sprintf("devca: dev-ca.sh %s: %s (exit %d)", e.Command, msg, e.ExitCode)
}

// Unwrap returns the error from os/exec.
func (e *ScriptError) Unwrap() error { return e.Err }

// Is reports whether target is ErrCSRRefused and the script refused the
// request.
func (e *ScriptError) Is(target error) bool {
	return target == ErrCSRRefused && e.ExitCode == ExitRefused
}

// CA is a development CA made by dev-ca.sh. Its fields are not changed
// after Init, so a CA may be used by several goroutines at once.
type CA struct {
	Dir             string // the CA's directory, absolute
	RootPEM         string // path of the root CA certificate
	IntermediatePEM string // path of the intermediate CA certificate
	ChainPEM        string // path of intermediate then root, PEM

	Root         *x509.Certificate // self-signed trust anchor
	Intermediate *x509.Certificate // issuer of every certificate Sign makes

	script string
}

// ScriptPath returns the path of dev-ca.sh, found relative to this package's
// source file, so that tests of any package can run it.
func ScriptPath() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok || !filepath.IsAbs(file) {
		return "", fmt.Errorf("devca: cannot locate the source of package devca (built with -trimpath?): %w", ErrScriptNotFound)
	}
	p := filepath.Join(filepath.Dir(file), "..", "dev-ca.sh")
	fi, err := os.Stat(p)
	if err != nil {
		return "", fmt.Errorf("devca: %w: %w", ErrScriptNotFound, err)
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o100 == 0 {
		return "", fmt.Errorf("devca: %s is not an executable file: %w", p, ErrScriptNotFound)
	}
	return p, nil
}

// New makes a CA in a temporary directory of t, or fails t with a clear
// message (for example when openssl is not installed).
func New(t testing.TB) *CA {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Fatalf("devca: openssl not found in PATH; %s", InstallHint)
	}
	ca, err := Init(t.Context(), t.TempDir())
	if err != nil {
		t.Fatalf("devca: making a dev CA: %v", err)
	}
	return ca
}

// Init makes a CA in dir (created with mode 0700 if need be), or loads the
// one dir already holds; it refuses a dir holding part of one.
func Init(ctx context.Context, dir string) (*CA, error) {
	if dir == "" {
		return nil, fmt.Errorf("devca: empty directory name: %w", ErrInvalidArgument)
	}
	if _, err := exec.LookPath("openssl"); err != nil {
		return nil, fmt.Errorf("devca: %w; %s", ErrOpenSSLMissing, InstallHint)
	}
	script, err := ScriptPath()
	if err != nil {
		return nil, err
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("devca: %w", err)
	}
	if _, err := run(ctx, script, "init", abs); err != nil {
		return nil, err
	}
	// The script resolves symbolic links; so must we, to match its paths.
	if resolved, err := filepath.EvalSymlinks(abs); err == nil {
		abs = resolved
	}
	return load(abs, script)
}

// load reads the certificates of the CA in dir.
func load(dir, script string) (*CA, error) {
	ca := &CA{
		Dir:             dir,
		RootPEM:         filepath.Join(dir, RootFile),
		IntermediatePEM: filepath.Join(dir, IntermediateFile),
		ChainPEM:        filepath.Join(dir, ChainFile),
		script:          script,
	}
	var err error
	if ca.Root, err = readCert(ca.RootPEM); err != nil {
		return nil, err
	}
	if ca.Intermediate, err = readCert(ca.IntermediatePEM); err != nil {
		return nil, err
	}
	if err := ca.Intermediate.CheckSignatureFrom(ca.Root); err != nil {
		return nil, fmt.Errorf("devca: %s is not signed by %s: %w", ca.IntermediatePEM, ca.RootPEM, err)
	}
	return ca, nil
}

func readCert(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("devca: %w", err)
	}
	c, err := parseCertPEM(b)
	if err != nil {
		return nil, fmt.Errorf("devca: %s: %w", path, err)
	}
	return c, nil
}

// parseCertPEM parses b, which must hold exactly one PEM certificate.
func parseCertPEM(b []byte) (*x509.Certificate, error) {
	block, rest := pem.Decode(b)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("no PEM certificate: %w", ErrBadOutput)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, fmt.Errorf("more than one PEM block: %w", ErrBadOutput)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadOutput, err)
	}
	return c, nil
}

// Sign has the intermediate CA issue a certificate for the DER certificate
// request csrDER, with the profile for usage (UsageSign, UsageAuth or
// UsageTSA) and the given validity. A request whose self-signature does not
// verify is refused with an error matching ErrCSRRefused.
func (ca *CA) Sign(ctx context.Context, csrDER []byte, usage string, validity Validity) (*x509.Certificate, error) {
	switch usage {
	case UsageSign, UsageAuth, UsageTSA:
	default:
		return nil, fmt.Errorf("devca: unknown usage %q (want %s, %s or %s): %w",
			usage, UsageSign, UsageAuth, UsageTSA, ErrInvalidArgument)
	}
	sub, ok := validity.subcommand()
	if !ok {
		return nil, fmt.Errorf("devca: unknown validity %v: %w", validity, ErrInvalidArgument)
	}
	if len(csrDER) == 0 {
		return nil, fmt.Errorf("devca: empty certificate request: %w", ErrInvalidArgument)
	}

	tmp, err := os.MkdirTemp("", "devca-csr-")
	if err != nil {
		return nil, fmt.Errorf("devca: %w", err)
	}
	defer os.RemoveAll(tmp)
	csrPath := filepath.Join(tmp, "request.der")
	if err := os.WriteFile(csrPath, csrDER, 0o600); err != nil {
		return nil, fmt.Errorf("devca: %w", err)
	}

	out, err := run(ctx, ca.script, sub, ca.Dir, csrPath, usage)
	if err != nil {
		return nil, err
	}
	cert, err := parseCertPEM(out)
	if err != nil {
		return nil, fmt.Errorf("devca: dev-ca.sh %s: %w", sub, err)
	}
	if err := cert.CheckSignatureFrom(ca.Intermediate); err != nil {
		return nil, fmt.Errorf("devca: issued certificate is not signed by the intermediate CA: %w: %w", ErrBadOutput, err)
	}
	return cert, nil
}

// Pool returns a pool holding the root CA certificate, the trust anchor.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Root)
	return p
}

// Chain returns the issuing chain of the certificates Sign makes: the
// intermediate, then the root.
func (ca *CA) Chain() []*x509.Certificate {
	return []*x509.Certificate{ca.Intermediate, ca.Root}
}

// run runs the script with args and returns its stdout; a failure is a
// *ScriptError carrying the script's last line on stderr.
func run(ctx context.Context, script string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, script, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		se := &ScriptError{Command: args[0], ExitCode: -1, Message: lastLine(stderr.String()), Err: err}
		if ee, ok := errors.AsType[*exec.ExitError](err); ok {
			se.ExitCode = ee.ExitCode()
		}
		if ctxErr := ctx.Err(); ctxErr != nil {
			se.Err = errors.Join(ctxErr, err)
		}
		return nil, se
	}
	return stdout.Bytes(), nil
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return strings.TrimSpace(s)
}
