package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os/signal"
	"syscall"
	"time"

	"github.com/decree-tx/decree/coordinator/client"
	"github.com/decree-tx/decree/examples/bank/workload"
)

func runWorkload(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("workload", flag.ContinueOnError)
	coords := fs.String("coordinators", "", "coordinator endpoints, comma-separated")
	banks := fs.String("banks", "", "bank addresses, comma-separated")
	accounts := fs.Int("accounts", 100, "accounts per bank")
	workers := fs.Int("workers", 16, "concurrent transfers")
	duration := fs.Duration("duration", 30*time.Second, "how long to run (0: until --count)")
	count := fs.Int("count", 0, "how many transfers (0: until --duration)")
	seed := fs.Uint64("seed", 1, "random seed")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	eps, err := splitList("coordinators", *coords)
	if err != nil {
		return err
	}
	bs, err := splitList("banks", *banks)
	if err != nil {
		return err
	}
	cl, err := client.Dial(eps, client.Options{})
	if err != nil {
		return usagef("%v", err)
	}
	defer cl.Close()
	w, err := workload.New(workload.Config{Client: cl, Banks: bs, Accounts: *accounts, Workers: *workers,
		Duration: *duration, Count: *count, Seed: *seed})
	if err != nil {
		return usagef("%v", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	p := newProgress(stdout, w.Stats(), func(context.Context) string { return "" })
	go p.run(ctx)
	final := w.Run(ctx)
	p.stop()
	fmt.Fprintln(stdout, formatSummary(final))
	return nil
}
