package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os/signal"
	"syscall"
	"time"

	"google.golang.org/grpc"

	"github.com/decree-tx/decree/examples/bank"
)

func runServer(args []string, _, stderr io.Writer) error {
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	name := fs.String("name", "", "bank name")
	listen := fs.String("listen", "", "host:port to serve the participant and audit services on")
	dir := fs.String("data-dir", "", "the bank's Pebble directory")
	coords := fs.String("coordinators", "", "coordinator endpoints, comma-separated")
	accounts := fs.Int("accounts", 100, "accounts to create on first start")
	initial := fs.Int64("initial-balance", 1000, "each new account's balance")
	level := fs.String("log-level", "info", "log level")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	if *name == "" || *listen == "" || *dir == "" {
		return usagef("--name, --listen and --data-dir are required")
	}
	eps, err := splitList("coordinators", *coords)
	if err != nil {
		return err
	}
	log, err := newLogger(stderr, *level)
	if err != nil {
		return err
	}
	srv, err := bank.NewServer(bank.ServerOptions{Name: *name, Dir: *dir, Coordinators: eps,
		Accounts: *accounts, InitialBalance: *initial, Logger: log})
	if err != nil {
		return err
	}
	defer srv.Close()
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", *listen, err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	g := serveBank(ctx, srv, lis)
	log.Info().Str("bank", *name).Str("listen", lis.Addr().String()).Msg("bank serving")
	<-ctx.Done()
	stopGRPC(g, 5*time.Second)
	return nil
}

// serveBank serves a bank's services on lis until stopped.
func serveBank(ctx context.Context, srv *bank.Server, lis net.Listener) *grpc.Server {
	g := grpc.NewServer()
	srv.Register(g)
	srv.Start(ctx)
	go g.Serve(lis)
	return g
}

func stopGRPC(g *grpc.Server, d time.Duration) {
	done := make(chan struct{})
	go func() { g.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
		g.Stop()
	}
}
