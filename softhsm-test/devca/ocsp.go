package devca

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// OCSPResponderFile is the delegated OCSP responder certificate
// ocsp-setup makes in a CA directory.
const OCSPResponderFile = "ocsp.pem"

// maxOCSPRequest bounds a request the responder reads.
const maxOCSPRequest = 64 << 10

// SetupOCSP makes the CA's delegated OCSP responder (once) and has every
// certificate Sign makes from now on name responderURL in its authorityInfoAccess.
// It returns the responder's certificate.
func (ca *CA) SetupOCSP(ctx context.Context, responderURL string) (*x509.Certificate, error) {
	if _, err := run(ctx, ca.script, "ocsp-setup", ca.Dir, responderURL); err != nil {
		return nil, err
	}
	return readCert(filepath.Join(ca.Dir, OCSPResponderFile))
}

// Revoke marks cert revoked now in the CA's index, with an openssl CRL
// reason ("keyCompromise", "superseded", ...; "" for unspecified).
func (ca *CA) Revoke(ctx context.Context, cert *x509.Certificate, reason string) error {
	tmp, err := os.MkdirTemp("", "devca-revoke-")
	if err != nil {
		return fmt.Errorf("devca: %w", err)
	}
	defer os.RemoveAll(tmp)
	p := filepath.Join(tmp, "cert.der")
	if err := os.WriteFile(p, cert.Raw, 0o600); err != nil {
		return fmt.Errorf("devca: %w", err)
	}
	args := []string{"revoke", ca.Dir, p}
	if reason != "" {
		args = append(args, reason)
	}
	_, err = run(ctx, ca.script, args...)
	return err
}

// OCSPAnswer has `openssl ocsp -index` answer one DER OCSP request from
// the CA's index, with nextUpdate minutes after thisUpdate (0: 60).
func (ca *CA) OCSPAnswer(ctx context.Context, req []byte, minutes int) ([]byte, error) {
	if minutes <= 0 {
		minutes = 60
	}
	cmd := exec.CommandContext(ctx, ca.script, "ocsp-answer", ca.Dir, strconv.Itoa(minutes))
	cmd.Stdin = bytes.NewReader(req)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, &ScriptError{Command: "ocsp-answer", ExitCode: cmd.ProcessState.ExitCode(), Message: lastLine(stderr.String()), Err: err}
	}
	return stdout.Bytes(), nil
}

// OCSPHandler serves the CA's OCSP responder over HTTP: POST with the DER
// request as the body, or GET with the base64 request in the path (RFC
// 5019). Each request is answered by `openssl ocsp` from the CA's index as
// it is at that moment. Minutes is the responses' validity (0: 60).
type OCSPHandler struct {
	CA      *CA
	Minutes int
}

// ServeHTTP answers one OCSP request.
func (h OCSPHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var req []byte
	var err error
	switch r.Method {
	case http.MethodPost:
		req, err = io.ReadAll(io.LimitReader(r.Body, maxOCSPRequest+1))
		if err == nil && len(req) > maxOCSPRequest {
			err = errors.New("request too large")
		}
	case http.MethodGet:
		req, err = decodeGETRequest(r.URL.EscapedPath())
	default:
		http.Error(w, "POST or GET", http.StatusMethodNotAllowed)
		return
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	resp, err := h.CA.OCSPAnswer(r.Context(), req, h.Minutes)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/ocsp-response")
	_, _ = w.Write(resp)
}

// Responder is a running OCSP responder of a CA on loopback.
type Responder struct {
	URL     string
	Cert    *x509.Certificate // the delegated responder certificate
	Handler OCSPHandler
	srv     *http.Server
	done    chan error
}

// StartOCSPResponder sets up the CA's OCSP responder, points the
// certificates Sign makes from now on at it, and serves it on a loopback
// port until t ends.
func (ca *CA) StartOCSPResponder(t testing.TB, minutes int) *Responder {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("devca: OCSP responder: %v", err)
	}
	addr := "http://" + l.Addr().String()
	cert, err := ca.SetupOCSP(t.Context(), addr)
	if err != nil {
		l.Close()
		t.Fatalf("devca: OCSP responder: %v", err)
	}
	h := OCSPHandler{CA: ca, Minutes: minutes}
	r := &Responder{URL: addr, Cert: cert, Handler: h, srv: &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}, done: make(chan error, 1)}
	go func() { r.done <- r.srv.Serve(l) }()
	t.Cleanup(func() {
		_ = r.srv.Close()
		if err := <-r.done; err != nil && !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("devca: OCSP responder: %v", err)
		}
	})
	return r
}

// decodeGETRequest reads an RFC 5019 GET request from the escaped URL
// path: the URL-encoded base64 of the DER request, after the last path
// segment that is not part of it (the responder is served at /).
func decodeGETRequest(escapedPath string) ([]byte, error) {
	p, err := url.PathUnescape(strings.TrimPrefix(escapedPath, "/"))
	if err != nil {
		return nil, fmt.Errorf("GET request path: %w", err)
	}
	if len(p) > 2*maxOCSPRequest {
		return nil, errors.New("request too large")
	}
	return base64.StdEncoding.DecodeString(p)
}
