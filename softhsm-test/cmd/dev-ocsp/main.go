// Command dev-ocsp serves the OCSP responder of a development CA (made by
// softhsm-test/dev-ca.sh) on a loopback address, for trying signerd's OCSP
// stapling by hand. Each request is answered by `openssl ocsp` from the
// CA's index as it is at that moment, so `dev-ca.sh revoke` shows at once.
//
//	dev-ocsp --ca DIR [--listen 127.0.0.1:8888] [--minutes 60]
//
// It makes the CA's responder certificate if need be and points the
// certificates the CA signs from then on at the address it listens on.
// For development only, like the CA itself. It stops on SIGINT or SIGTERM.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/hsmsigner/hsmsigner/softhsm-test/devca"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "dev-ocsp:", err)
		os.Exit(1)
	}
}

func run() error {
	dir := flag.String("ca", "", "the dev CA's directory (made by dev-ca.sh init)")
	listen := flag.String("listen", "127.0.0.1:8888", "loopback address to serve on")
	minutes := flag.Int("minutes", 60, "validity of each response (thisUpdate to nextUpdate), in minutes")
	flag.Parse()
	if *dir == "" || flag.NArg() != 0 {
		flag.Usage()
		return errors.New("--ca DIR is required")
	}
	host, _, err := net.SplitHostPort(*listen)
	if err != nil {
		return fmt.Errorf("--listen %q: %w", *listen, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("--listen %q: a development responder listens on a loopback address only", *listen)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ca, err := devca.Init(ctx, *dir)
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	url := "http://" + l.Addr().String()
	cert, err := ca.SetupOCSP(ctx, url)
	if err != nil {
		l.Close()
		return err
	}
	fmt.Fprintf(os.Stderr, "dev-ocsp: serving the OCSP responder of %s at %s (responder certificate %q, responses valid %d min)\n",
		ca.Dir, url, cert.Subject.CommonName, *minutes)
	srv := &http.Server{Handler: devca.OCSPHandler{CA: ca, Minutes: *minutes}, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return srv.Shutdown(sctx)
}
