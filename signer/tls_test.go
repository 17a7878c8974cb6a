package signer

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"testing"
	"time"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
)

// TestTLSHandshakeWithDaemonKey runs a real TLS 1.3 handshake: a crypto/tls
// server whose private key stays in SoftHSM, reached through the daemon by
// client.Signer, and a Go client that checks the server's certificate.
func TestTLSHandshakeWithDaemonKey(t *testing.T) {
	d := newDaemon(t, func(p *daemonParams) { p.ClientUsages = `"sign", "auth"` })
	for _, tc := range []struct {
		keyAlg string
		scheme tls.SignatureScheme
	}{
		{"EC-P256", tls.ECDSAWithP256AndSHA256},
		{"RSA2048", tls.PSSWithSHA256},
	} {
		t.Run(tc.keyAlg, func(t *testing.T) {
			k := d.genKey(t, "tls-"+tc.keyAlg, tc.keyAlg, signerv1.KeyUsage_KEY_USAGE_AUTH)
			signer, err := d.client.Signer(testCtx(t), k.GetId())
			if err != nil {
				t.Fatal(err)
			}
			tmpl := &x509.Certificate{
				SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "security-server.test"},
				DNSNames: []string{"security-server.test"}, NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
				KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			}
			der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, signer.Public(), signer)
			if err != nil {
				t.Fatalf("self-signing through the daemon: %v", err)
			}
			cert, _ := x509.ParseCertificate(der)
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			srvCfg := &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: signer, Leaf: cert}}}
			serverErr := make(chan error, 1)
			go func() {
				c, err := l.Accept()
				if err != nil {
					serverErr <- err
					return
				}
				defer c.Close()
				tc := tls.Server(c, srvCfg)
				if err := tc.Handshake(); err != nil {
					serverErr <- err
					return
				}
				_, err = io.Copy(tc, io.LimitReader(tc, 5))
				serverErr <- err
			}()
			pool := x509.NewCertPool()
			pool.AddCert(cert)
			cc, err := tls.Dial("tcp", l.Addr().String(), &tls.Config{RootCAs: pool, ServerName: "security-server.test", MinVersion: tls.VersionTLS13})
			if err != nil {
				t.Fatalf("TLS handshake: %v (server: %v)", err, <-serverErr)
			}
			defer cc.Close()
			st := cc.ConnectionState()
			if st.Version != tls.VersionTLS13 || !st.HandshakeComplete || !bytes.Equal(st.PeerCertificates[0].Raw, der) {
				t.Fatalf("connection state: version %x, complete %v", st.Version, st.HandshakeComplete)
			}
			if _, err := cc.Write([]byte("hello")); err != nil {
				t.Fatal(err)
			}
			echo := make([]byte, 5)
			if _, err := io.ReadFull(cc, echo); err != nil || string(echo) != "hello" {
				t.Fatalf("echo %q, %v", echo, err)
			}
			if err := <-serverErr; err != nil {
				t.Fatalf("server: %v", err)
			}
			// The handshake signature went through the daemon: its audit
			// shows a sign line with the algorithm TLS 1.3 requires.
			want := map[tls.SignatureScheme]string{tls.ECDSAWithP256AndSHA256: "SHA256withECDSA", tls.PSSWithSHA256: "SHA256withRSAandMGF1"}[tc.scheme]
			found := false
			for _, r := range readAudit(t, d.cfg.Server.AuditFile) {
				found = found || (r.Op == "sign" && r.Key == k.GetId() && r.Detail == want && r.Result == "ok")
			}
			if !found {
				t.Fatalf("no audited %s signature by key %s", want, k.GetId())
			}
		})
	}
}
