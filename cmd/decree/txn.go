package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/decree-tx/decree/coordinator/client"
)

const txnUsage = `usage:
  decree txn outcome --endpoints a,b,c [--participants p1,p2] [--json] [--timeout 10s] ID
  decree txn list    --endpoints a,b,c [--state undecided|committed|aborted|unfinished] [--limit N] [--json]`

// runTxn dispatches `decree txn outcome|list`.
func runTxn(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usagef("txn needs a subcommand: outcome or list")
	}
	switch args[0] {
	case "outcome":
		return runTxnOutcome(args[1:], stdout, stderr)
	case "list":
		return runTxnList(args[1:], stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprintln(stderr, txnUsage)
		return flag.ErrHelp
	}
	return usagef("unknown txn subcommand %q (want outcome or list)", args[0])
}

// outcomeRow is `decree txn outcome --json`; the keys are a contract.
type outcomeRow struct {
	ID     string `json:"id"`
	State  string `json:"state"`
	Reason string `json:"reason"`
}

func runTxnOutcome(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("outcome", flag.ContinueOnError)
	endpoints := fs.String("endpoints", "", "comma-separated host:port of the nodes")
	participants := fs.String("participants", "", "comma-separated participants of the transaction, when known")
	asJSON := fs.Bool("json", false, "print a JSON object instead of a line")
	timeout := fs.Duration("timeout", 10*time.Second, "give up when the cluster cannot answer within this")
	id, err := parseOutcomeArgs(fs, args, stderr)
	if err != nil {
		return err
	}
	c, err := dialTxn(*endpoints, *timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	res, err := c.Outcome(ctx, id, splitList(*participants)...)
	if err != nil {
		return asUsage(err)
	}
	if err := printOutcome(stdout, res, *asJSON); err != nil {
		return err
	}
	if res.State == client.StateForgotten {
		return fmt.Errorf("transaction %s is older than the retention window: its outcome is gone", id)
	}
	return nil
}

// parseOutcomeArgs parses flags on either side of the one ID argument.
func parseOutcomeArgs(fs *flag.FlagSet, args []string, stderr io.Writer) (string, error) {
	if err := parseFlags(fs, args, stderr); err != nil {
		return "", err
	}
	if fs.NArg() == 0 {
		return "", usagef("missing transaction ID")
	}
	id := fs.Arg(0)
	if err := parseFlags(fs, fs.Args()[1:], stderr); err != nil {
		return "", err
	}
	if fs.NArg() > 0 {
		return "", usagef("unexpected argument %q", fs.Arg(0))
	}
	return id, nil
}

func printOutcome(w io.Writer, res client.Result, asJSON bool) error {
	if asJSON {
		return json.NewEncoder(w).Encode(outcomeRow{ID: res.ID, State: res.State.String(), Reason: res.Reason})
	}
	line := res.ID + " " + res.State.String()
	if res.Reason != "" {
		line += " " + res.Reason
	}
	_, err := fmt.Fprintln(w, line)
	return err
}

// txnRow is one transaction of `decree txn list --json`; the keys are a
// contract. decided_at (RFC 3339, UTC) is absent while undecided.
type txnRow struct {
	ID           string   `json:"id"`
	State        string   `json:"state"`
	Participants []string `json:"participants"`
	Acked        []string `json:"acked"`
	Finished     bool     `json:"finished"`
	DecidedAt    string   `json:"decided_at,omitempty"`
	Reason       string   `json:"reason"`
	// AgeSeconds (since the decision) and DecisionSends (the leader's
	// deliveries of it) show how long an unfinished transaction has been
	// waiting in phase 2, and how hard the leader tried.
	AgeSeconds    float64 `json:"age_seconds,omitempty"`
	DecisionSends int     `json:"decision_sends,omitempty"`
}

func runTxnList(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("list", flag.ContinueOnError)
	endpoints := fs.String("endpoints", "", "comma-separated host:port of the nodes")
	state := fs.String("state", "all", "undecided, committed, aborted, unfinished or all")
	limit := fs.Int("limit", 0, "most transactions to show (0: the server's default)")
	asJSON := fs.Bool("json", false, "print a JSON array instead of a table")
	timeout := fs.Duration("timeout", 10*time.Second, "give up when the cluster cannot answer within this")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	filter, err := client.ParseFilter(*state)
	if err != nil {
		return usagef("--state must be undecided, committed, aborted, unfinished or all, not %q", *state)
	}
	if *limit < 0 {
		return usagef("--limit must not be negative")
	}
	c, err := dialTxn(*endpoints, *timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	txns, err := c.List(ctx, filter, *limit)
	if err != nil {
		return asUsage(err)
	}
	rows := txnRows(txns, time.Now())
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rows)
	}
	if *state == "unfinished" {
		return printUnfinishedTable(stdout, rows)
	}
	return printTxnTable(stdout, rows)
}

func txnRows(txns []client.TxnInfo, now time.Time) []txnRow {
	rows := make([]txnRow, len(txns))
	for i, t := range txns {
		rows[i] = txnRow{ID: t.ID, State: t.State.String(), Participants: nonNil(t.Participants),
			Acked: nonNil(t.Acked), Finished: t.Finished, Reason: t.Reason, DecisionSends: t.DecisionSends}
		if !t.DecidedAt.IsZero() {
			rows[i].DecidedAt = t.DecidedAt.UTC().Format("2006-01-02T15:04:05.000Z07:00")
			if !t.Finished {
				rows[i].AgeSeconds = max(now.Sub(t.DecidedAt), 0).Round(time.Millisecond).Seconds()
			}
		}
	}
	return rows
}

// printUnfinishedTable lists transactions waiting in phase 2 with how
// long they have waited and how often the leader sent the decision.
func printUnfinishedTable(w io.Writer, rows []txnRow) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATE\tPARTICIPANTS\tACKED\tAGE\tSENDS\tREASON")
	for _, r := range rows {
		age := time.Duration(r.AgeSeconds * float64(time.Second)).Round(time.Second)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\t%d\t%s\n", r.ID, r.State, orDash(strings.Join(r.Participants, ",")),
			orDash(strings.Join(r.Acked, ",")), age, r.DecisionSends, orDash(r.Reason))
	}
	return tw.Flush()
}

func printTxnTable(w io.Writer, rows []txnRow) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATE\tPARTICIPANTS\tACKED\tFINISHED\tDECIDED_AT\tREASON")
	for _, r := range rows {
		finished := "no"
		if r.Finished {
			finished = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.ID, r.State, orDash(strings.Join(r.Participants, ",")),
			orDash(strings.Join(r.Acked, ",")), finished, orDash(r.DecidedAt), orDash(r.Reason))
	}
	return tw.Flush()
}

// dialTxn checks the flags every txn subcommand shares and makes a client.
func dialTxn(endpoints string, timeout time.Duration) (*client.Client, error) {
	eps, err := splitEndpoints(endpoints)
	if err != nil {
		return nil, err
	}
	if timeout <= 0 {
		return nil, usagef("--timeout must be positive")
	}
	c, err := client.Dial(eps, client.Options{})
	if err != nil {
		return nil, asUsage(err)
	}
	return c, nil
}

// asUsage turns the client's rejection of bad input into a usage error.
func asUsage(err error) error {
	if errors.Is(err, client.ErrInvalid) {
		return usageError{err}
	}
	return err
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(s string) []string {
	var out []string
	for item := range strings.SplitSeq(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
