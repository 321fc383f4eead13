package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/decree-tx/decree/examples/bank"
)

func runAudit(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("audit", flag.ContinueOnError)
	banks := fs.String("banks", "", "bank addresses, comma-separated")
	expected := fs.Int64("expected", -1, "the total money the banks must hold")
	wait := fs.Duration("wait", 30*time.Second, "wait this long for the banks to go quiet first")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	bs, err := splitList("banks", *banks)
	if err != nil {
		return err
	}
	if *expected < 0 {
		return usagef("--expected is required")
	}
	return audit(stdout, bs, *expected, *wait)
}

// audit waits for the banks to hold no reservation, then checks the books.
func audit(stdout io.Writer, banks []string, expected int64, wait time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := bank.AwaitQuiet(ctx, banks, 50*time.Millisecond); err != nil {
		fmt.Fprintf(stdout, "banks did not go quiet within %v: %v\n", wait, err)
	}
	actx, acancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer acancel()
	rep, err := bank.Audit(actx, banks, expected)
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	fmt.Fprintln(stdout, rep.String())
	if !rep.OK {
		return errors.New("audit failed")
	}
	return nil
}
