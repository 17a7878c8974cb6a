package signer

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"testing"
	"time"

	xocsp "golang.org/x/crypto/ocsp"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/softhsm-test/devca"
)

// TestTLSStapleFromTheDaemon runs a real TLS handshake with a server
// whose certificate's key is in SoftHSM behind the daemon and whose OCSP
// staple is the daemon's response: `openssl s_client -status` reads a
// successful response with "Cert Status: good", and a Go client's
// VerifyConnection verifies the staple against the issuer.
func TestTLSStapleFromTheDaemon(t *testing.T) {
	d := newDaemon(t, func(p *daemonParams) {
		p.OCSP = ocspOn
		p.ClientUsages = `"sign", "auth"`
	})
	ca := devca.New(t)
	ca.StartOCSPResponder(t, 60)
	k := d.genKey(t, "ss1-auth", "EC-P256", signerv1.KeyUsage_KEY_USAGE_AUTH)
	leaf := d.issue(t, ca, d.csrFor(t, k, "CN=ss1,O=Agency,C=EE", ""), "auth", devca.Current)
	imp, err := d.client.ImportCert(testCtx(t), &signerv1.ImportCertRequest{Certificate: pemOf(leaf, ca.Intermediate, ca.Root)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.client.ActivateCert(testCtx(t), &signerv1.CertRef{Hash: imp.GetSha256()}); err != nil {
		t.Fatal(err)
	}
	if st := d.refreshOCSP(t, imp.GetSha256()); !st.GetUsable() || st.GetRole() != "auth" {
		t.Fatalf("auth certificate's OCSP status: %+v", st)
	}

	sc, err := d.client.StapledCertificate(testCtx(t), k.GetId(), []*x509.Certificate{leaf, ca.Intermediate}, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{GetCertificate: sc.GetCertificate, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(30 * time.Second))
				if err := c.(*tls.Conn).Handshake(); err == nil {
					_, _ = io.WriteString(c, "hello\n")
				}
			}()
		}
	}()

	// A Go client checks the staple in VerifyConnection.
	var stapled *xocsp.Response
	conn, err := tls.Dial("tcp", l.Addr().String(), &tls.Config{RootCAs: ca.Pool(), ServerName: "ss1.example.test",
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.OCSPResponse) == 0 {
				return errors.New("no OCSP staple")
			}
			r, err := xocsp.ParseResponseForCert(cs.OCSPResponse, cs.PeerCertificates[0], ca.Intermediate)
			if err != nil {
				return fmt.Errorf("staple: %w", err)
			}
			stapled = r
			return nil
		}})
	if err != nil {
		t.Fatalf("Go client handshake: %v", err)
	}
	line, _ := io.ReadAll(io.LimitReader(conn, 6))
	conn.Close()
	if stapled == nil || stapled.Status != xocsp.Good || string(line) != "hello\n" {
		t.Fatalf("Go client: staple %+v, read %q", stapled, line)
	}

	// openssl s_client reads the staple as well.
	ctx, cancel := context.WithTimeout(testCtx(t), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "openssl", "s_client", "-connect", l.Addr().String(), "-servername", "ss1.example.test",
		"-status", "-CAfile", ca.RootPEM, "-verify_return_error")
	cmd.Stdin = strings.NewReader("")
	out, err := cmd.CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("OCSP Response Status: successful")) || !bytes.Contains(out, []byte("Cert Status: good")) {
		t.Fatalf("openssl s_client -status: %v\n%s", err, out)
	}
	// The staple is renewed in the background: after a revocation and a
	// refresh, the next staple says "revoked" (and the key signs no more,
	// so the handshake itself fails).
	if err := ca.Revoke(testCtx(t), leaf, "keyCompromise"); err != nil {
		t.Fatal(err)
	}
	if st := d.refreshOCSP(t, imp.GetSha256()); st.GetStatus() != "revoked" {
		t.Fatalf("after revocation: %+v", st)
	}
	deadline := time.Now().Add(10 * time.Second)
	for sc.Err() == nil {
		if time.Now().After(deadline) {
			t.Fatal("the stapled certificate did not notice the revocation within 10 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(sc.Err().Error(), "revoked") {
		t.Fatalf("renewal error: %v", sc.Err())
	}
	if _, err := tls.Dial("tcp", l.Addr().String(), &tls.Config{RootCAs: ca.Pool(), ServerName: "ss1.example.test"}); err == nil {
		t.Fatal("a handshake with a revoked certificate's key succeeded")
	}
}
