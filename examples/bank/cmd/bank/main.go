// Command bank runs the bank-transfer example of Decree: bank participant
// servers, a transfer workload, an auditor, and a self-contained demo.
//
//	bank demo     [--duration 30s --workers 16 --banks 3 --accounts 100]
//	bank server   --name b1 --listen 127.0.0.1:8001 --data-dir DIR --coordinators A,B,C
//	bank workload --coordinators A,B,C --banks X,Y,Z --accounts 100 --duration 30s
//	bank audit    --banks X,Y,Z --expected 300000
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/rs/zerolog"
)

type command struct {
	name, usage string
	run         func(args []string, stdout, stderr io.Writer) error
}

func commands() []command {
	return []command{
		{"demo", "run a local cluster, banks and a transfer workload, kill the leader, audit", runDemo},
		{"server", "serve one bank participant", runServer},
		{"workload", "run random transfers against running banks", runWorkload},
		{"audit", "check that running banks conserve money", runAudit},
	}
}

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		usage(stderr)
		return 2
	}
	for _, c := range commands() {
		if c.name != args[0] {
			continue
		}
		err := c.run(args[1:], stdout, stderr)
		switch {
		case err == nil, errors.Is(err, flag.ErrHelp):
			return 0
		case errors.As(err, new(usageError)):
			fmt.Fprintf(stderr, "bank %s: %v\n", c.name, err)
			return 2
		default:
			fmt.Fprintf(stderr, "bank %s: %v\n", c.name, err)
			return 1
		}
	}
	fmt.Fprintf(stderr, "bank: unknown command %q\n", args[0])
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: bank <command> [flags]\n\ncommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-9s %s\n", c.name, c.usage)
	}
}

type usageError struct{ error }

func usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

func parseFlags(fs *flag.FlagSet, args []string, stderr io.Writer) error {
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stderr)
			fs.PrintDefaults()
			return err
		}
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q", fs.Arg(0))
	}
	return nil
}

func splitList(flagName, s string) ([]string, error) {
	var out []string
	for p := range strings.SplitSeq(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	if len(out) == 0 {
		return nil, usagef("--%s is required", flagName)
	}
	return out, nil
}

func newLogger(w io.Writer, level string) (zerolog.Logger, error) {
	lvl, err := zerolog.ParseLevel(level)
	if err != nil {
		return zerolog.Nop(), usagef("--log-level: %v", err)
	}
	return zerolog.New(zerolog.ConsoleWriter{Out: w, TimeFormat: "15:04:05.000"}).Level(lvl).With().Timestamp().Logger(), nil
}
