package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"

	"github.com/coreos/go-systemd/v22/activation"

	"github.com/hsmsigner/hsmsigner/signer"
	"github.com/hsmsigner/hsmsigner/signer/config"
)

// Names of the sockets systemd passes under socket activation
// (FileDescriptorName= in systemd/signerd-grpc.socket and
// signerd-http.socket).
const (
	grpcSocketName = "grpc"
	httpSocketName = "http"
)

// listen returns the gRPC and HTTP listeners: the Unix sockets systemd
// passed (socket activation), or new ones made as the configuration says.
func listen(ctx context.Context, cfg *config.Config, log *slog.Logger) (grpcL, httpL net.Listener, err error) {
	named, err := activation.ListenersWithNames()
	if err != nil {
		return nil, nil, fmt.Errorf("socket activation: %w", err)
	}
	if len(named) > 0 {
		g, h := named[grpcSocketName], named[httpSocketName]
		closeAll := func() {
			for _, ls := range named {
				for _, l := range ls {
					if l != nil {
						l.Close()
					}
				}
			}
		}
		if len(g) != 1 || len(h) != 1 || len(named) != 2 {
			closeAll()
			return nil, nil, fmt.Errorf("socket activation: want one socket named %q and one named %q (FileDescriptorName=), got %d names", grpcSocketName, httpSocketName, len(named))
		}
		for _, l := range []net.Listener{g[0], h[0]} {
			if _, ok := l.(*net.UnixListener); !ok {
				closeAll()
				return nil, nil, fmt.Errorf("socket activation: %v is not a Unix socket; signerd identifies callers by SO_PEERCRED and serves Unix sockets only", l.Addr())
			}
		}
		log.Info("using sockets passed by systemd", "grpc_socket", g[0].Addr().String(), "http_socket", h[0].Addr().String())
		return g[0], h[0], nil
	}
	if grpcL, err = signer.ListenUnix(ctx, cfg.Server.GRPCSocket, cfg.Server.SocketGroup); err != nil {
		return nil, nil, err
	}
	if httpL, err = signer.ListenUnix(ctx, cfg.Server.HTTPSocket, cfg.Server.SocketGroup); err != nil {
		grpcL.Close()
		return nil, nil, err
	}
	return grpcL, httpL, nil
}
