package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	sddaemon "github.com/coreos/go-systemd/v22/daemon"
	"google.golang.org/grpc"

	"github.com/hsmsigner/hsmsigner/cmd/internal/buildversion"
	"github.com/hsmsigner/hsmsigner/signer"
	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/config"
	"github.com/hsmsigner/hsmsigner/signer/xroad"
)

// afterReady runs once the daemon listens and is ready; dev mode uses it
// to make its demo and audit keys, sign a first checkpoint and print what
// to try.
type afterReady func(ctx context.Context, cfg *config.Config, svc *signer.Service) error

// runDaemon runs signerd with the configuration at configPath until
// SIGTERM or SIGINT: open state, load every module, find every token and
// read every PIN source, listen, and only then log in where a PIN source
// is given, so that a start that fails (and a service manager's restarts
// after it) costs no PIN try; then report ready. SIGHUP reloads the access
// policy.
func runDaemon(ctx context.Context, configPath string, flags daemonFlags, ready afterReady) error {
	cfg, err := config.Load(configPath)
	if err != nil {
		return err
	}
	if err := checkEdited(configPath, cfg); err != nil {
		return err
	}
	if err := checkPrivate(cfg.Server.StateDir, "state folder"); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	log := newLogger(cfg.Server.LogLevel)
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	svc, err := signer.New(ctx, cfg, signer.Options{Logger: log, Version: buildversion.String(), AcceptAuditCut: flags.acceptAuditCut, DeferLogin: true})
	if err != nil {
		return err
	}
	closed := false
	defer func() {
		if !closed {
			_ = svc.Close()
		}
	}()

	grpcL, httpL, err := listen(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer grpcL.Close()
	defer httpL.Close()
	// The built-in TSA's loopback TCP listener, when [tsa] listen is set.
	var tsaL net.Listener
	if cfg.TSA.Listen != "" {
		if tsaL, err = (&net.ListenConfig{}).Listen(ctx, "tcp", cfg.TSA.Listen); err != nil {
			return fmt.Errorf("[tsa] listen: %w", err)
		}
		defer tsaL.Close()
	}

	// X-Road's signer protocol on loopback TCP, when [xroad] listen is
	// set: its keystore is read and its address bound before any PIN is
	// presented.
	var xr *xroad.Server
	var xrL net.Listener
	if cfg.XRoad.Listen != "" {
		if xr, err = xroad.New(ctx, svc, cfg.XRoad, xroad.Options{Logger: log, MaxMessageBytes: cfg.Server.MaxMessageBytes}); err != nil {
			return fmt.Errorf("[xroad]: %w", err)
		}
		if xrL, err = (&net.ListenConfig{}).Listen(ctx, "tcp", cfg.XRoad.Listen); err != nil {
			return fmt.Errorf("[xroad] listen: %w", err)
		}
		defer xrL.Close()
	}

	// The last start-up step: nothing that can fail the start comes after
	// a PIN is presented.
	if err := svc.LoginAtStart(ctx); err != nil {
		return err
	}

	gs := grpc.NewServer(svc.ServerOptions()...)
	signerv1.RegisterSignerServer(gs, svc)
	hs := []*http.Server{svc.HTTPServer()}

	serveErr := make(chan error, 4)
	go func() { serveErr <- serveGRPC(gs, grpcL) }()
	go func() { serveErr <- serveHTTP(hs[0], httpL) }()
	if tsaL != nil {
		hs = append(hs, svc.TSAServer())
		go func() { serveErr <- serveHTTP(hs[1], tsaL) }()
		log.Info("the built-in TSA serves POST /tsa on loopback TCP; whoever reaches it gets tokens (each audited with its address)", "listen", tsaL.Addr().String())
	}
	if xr != nil {
		go func() { serveErr <- xr.Serve(xrL) }()
		log.Info("serving X-Road's signer protocol", "listen", xrL.Addr().String(), "tls", !cfg.XRoad.InsecureLoopback)
	}
	// Checkpoints of the audit log, on their own goroutine; the last one
	// once every call has been served.
	ckCtx, stopCheckpoints := context.WithCancel(context.WithoutCancel(ctx))
	checkpointsDone := make(chan struct{})
	go func() {
		defer close(checkpointsDone)
		svc.RunCheckpoints(ckCtx)
	}()
	defer func() { // before svc.Close
		stopCheckpoints()
		<-checkpointsDone
	}()
	// OCSP responses of the active certificates, kept fresh until the
	// daemon stops (before svc.Close, which closes the state it stores in).
	ocspCtx, stopOCSP := context.WithCancel(context.WithoutCancel(ctx))
	ocspDone := make(chan struct{})
	go func() {
		defer close(ocspDone)
		svc.RunOCSP(ocspCtx)
	}()
	defer func() {
		stopOCSP()
		<-ocspDone
	}()

	// systemd's watchdog (WatchdogSec=): pinged only while the health
	// check reaches every logged-in token, so a hung HSM gets the daemon
	// restarted.
	if interval, err := sddaemon.SdWatchdogEnabled(false); err == nil && interval > 0 {
		wdCtx, stopWatchdog := context.WithCancel(ctx)
		defer stopWatchdog()
		go runWatchdog(wdCtx, svc, interval, log)
	}
	if _, err := sddaemon.SdNotify(false, sddaemon.SdNotifyReady); err != nil {
		log.Warn("could not notify systemd", "error", err.Error())
	}
	log.Info("signerd ready", "version", buildversion.String(), "grpc_socket", grpcL.Addr().String(), "http_socket", httpL.Addr().String())
	if ready != nil {
		if err := ready(ctx, cfg, svc); err != nil {
			log.Error("start-up hook failed", "error", err.Error())
		}
	}

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	var runErr error
loop:
	for {
		select {
		case <-ctx.Done():
			log.Info("stopping")
			break loop
		case <-hup:
			reloadPolicy(configPath, svc, log)
		case err := <-serveErr:
			runErr = err
			log.Error("server failed", "error", err.Error())
			break loop
		}
	}
	_, _ = sddaemon.SdNotify(false, sddaemon.SdNotifyStopping)
	svc.Drain()
	if xr != nil {
		stopped := make(chan struct{})
		go func() { xr.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(cfg.Server.ShutdownTimeout):
			xr.Stop()
			<-stopped
		}
	}
	shutdown(gs, hs, cfg.Server.ShutdownTimeout, log)
	stopCheckpoints()
	<-checkpointsDone
	closed = true
	if err := svc.Close(); err != nil {
		log.Error("closing", "error", err.Error())
		if runErr == nil {
			runErr = err
		}
	}
	log.Info("stopped")
	return runErr
}

// runWatchdog checks the daemon's health three times per watchdog
// interval and pings systemd after each check that passes.
func runWatchdog(ctx context.Context, svc *signer.Service, interval time.Duration, log *slog.Logger) {
	tick := time.NewTicker(interval / 3)
	defer tick.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		checkCtx, cancel := context.WithTimeout(ctx, interval/3)
		err := svc.CheckHealth(checkCtx)
		cancel()
		switch {
		case err == nil:
			if failing {
				log.Info("health check passes again; pinging the watchdog")
				failing = false
			}
			_, _ = sddaemon.SdNotify(false, sddaemon.SdNotifyWatchdog)
		case !failing:
			log.Error("health check failed; not pinging the watchdog (systemd restarts signerd if this lasts)", "error", err.Error())
			failing = true
		}
	}
}

func serveGRPC(gs *grpc.Server, l net.Listener) error {
	if err := gs.Serve(l); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("gRPC server: %w", err)
	}
	return nil
}

func serveHTTP(hs *http.Server, l net.Listener) error {
	if err := hs.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("HTTP server: %w", err)
	}
	return nil
}

// shutdown stops accepting calls and lets in-flight ones finish within
// timeout, then cuts the rest.
func shutdown(gs *grpc.Server, hs []*http.Server, timeout time.Duration, log *slog.Logger) {
	done := make(chan struct{})
	go func() {
		gs.GracefulStop()
		close(done)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for _, h := range hs {
		_ = h.Shutdown(ctx)
	}
	select {
	case <-done:
	case <-ctx.Done():
		log.Warn("in-flight calls did not finish in time; stopping them", "timeout", timeout.String())
		gs.Stop()
		<-done
	}
}

// reloadPolicy re-reads the access policy; an invalid file keeps the old
// policy in force.
func reloadPolicy(path string, svc *signer.Service, log *slog.Logger) {
	p, err := config.ReloadPolicy(path)
	if err != nil {
		log.Error("SIGHUP: policy not reloaded; the old one stays in force", "error", err.Error())
		return
	}
	svc.SetPolicy(p)
	log.Info("SIGHUP: access policy reloaded")
}
