package chaos

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	bankworkload "github.com/decree-tx/decree/examples/bank/workload"
)

// transferStats counts what the workload did.
type transferStats struct {
	Attempted int `json:"attempted"`
	TwoPhase  int `json:"two_phase"`
	OnePhase  int `json:"one_phase"`
	Committed int `json:"committed"`
	Aborted   int `json:"aborted"`
	// Unknown transfers: the call died without an outcome. They were
	// resolved later by a duplicate call or an Outcome query.
	Unknown           int            `json:"unknown"`
	ResolvedCommitted int            `json:"unknown_then_committed"`
	ResolvedAborted   int            `json:"unknown_then_aborted"`
	Unresolved        int            `json:"unresolved"`
	Duplicates        int            `json:"duplicate_commits"`
	Reads             int            `json:"outcome_reads"`
	AbortReasons      map[string]int `json:"abort_reasons"`
	HarnessErrors     int64          `json:"harness_errors"`
}

func countTransfers(ops []op, ts map[string]transfer) transferStats {
	s := transferStats{Attempted: len(ts), AbortReasons: map[string]int{}}
	for _, t := range ts {
		if len(t.banks()) > 1 {
			s.TwoPhase++
		} else {
			s.OnePhase++
		}
	}
	final := map[string]string{} // id -> first definitive result from any call
	for _, o := range slices.SortedFunc(slices.Values(ops), func(a, b op) int { return cmpInt64(a.Return, b.Return) }) {
		if o.Result != resUnknown && final[o.ID] == "" {
			final[o.ID] = o.Result
		}
	}
	for _, o := range ops {
		switch {
		case o.Kind == opOutcome && o.Tag == "read":
			s.Reads++
		case o.Kind == opCommit && o.Tag != "":
			s.Duplicates++
		case o.Kind == opCommit:
			switch o.Result {
			case resCommitted:
				s.Committed++
			case resAborted:
				s.Aborted++
				s.AbortReasons[bankworkload.ReasonClass(o.Reason)]++
			default:
				s.Unknown++
				switch final[o.ID] {
				case resCommitted:
					s.ResolvedCommitted++
				case resAborted:
					s.ResolvedAborted++
				default:
					s.Unresolved++
				}
			}
		}
	}
	return s
}

func cmpInt64(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// recoveryTimes fills each fault's Recovery: the longest anyone waited,
// after the heal, for the outcome of a transaction in flight across it. A
// client waited from the heal until its call returned an outcome; a bank
// that had prepared the transaction waited (in doubt, holding its
// reservations) until it applied the outcome. Calls that died unknown are
// not counted here: they are the "unknown, then resolved". It returns the
// longest overall. Bank times are wall clock; t0 maps them to run time.
func recoveryTimes(faults []faultRecord, ops []op, banks map[string]*bankFinal, t0 int64) time.Duration {
	type span struct{ from, to int64 }
	var spans []span
	for _, o := range ops {
		if o.Result != resUnknown {
			spans = append(spans, span{o.Call, o.Return})
		}
	}
	for _, b := range banks {
		for _, tm := range b.Times {
			if tm[1] != 0 {
				spans = append(spans, span{tm[0] - t0, tm[1] - t0})
			}
		}
	}
	var longest int64
	for i := range faults {
		f := &faults[i]
		if f.Skipped != "" {
			continue
		}
		for _, s := range spans {
			if s.from < f.Heal && s.to > f.Heal {
				f.Recovery = max(f.Recovery, s.to-f.Heal)
			}
		}
		longest = max(longest, f.Recovery)
	}
	return time.Duration(longest)
}

// caughtOutcomes says, for each fault, what became of the transfers in
// flight when it was injected.
func caughtOutcomes(faults []faultRecord, ops []op) {
	final := map[string]string{}
	for _, o := range slices.SortedFunc(slices.Values(ops), func(a, b op) int { return cmpInt64(a.Return, b.Return) }) {
		if o.Result != resUnknown && final[o.ID] == "" {
			final[o.ID] = o.Result
		}
	}
	unknownCall := map[string]bool{}
	for _, o := range ops {
		if o.Kind == opCommit && o.Tag == "" && o.Result == resUnknown {
			unknownCall[o.ID] = true
		}
	}
	for i := range faults {
		f := &faults[i]
		for _, id := range f.caught {
			switch {
			case unknownCall[id]:
				f.CaughtUnknown++
			case final[id] == resCommitted:
				f.CaughtCommitted++
			default:
				f.CaughtAborted++
			}
		}
	}
}

// report is the run's JSON report.
type report struct {
	Seed       uint64            `json:"seed"`
	Replay     string            `json:"replay"`
	Duration   string            `json:"duration"`
	Nemeses    []string          `json:"nemeses"`
	Skipped    map[string]string `json:"skipped_nemeses,omitempty"`
	Workers    int               `json:"workers"`
	Banks      int               `json:"banks"`
	Accounts   int               `json:"accounts_per_bank"`
	Initial    int64             `json:"initial_balance"`
	Schedule   []plannedFault    `json:"schedule"`
	Faults     []faultRecord     `json:"faults"`
	FaultCount map[string]int    `json:"faults_by_kind"`
	Transfers  transferStats     `json:"transfers"`
	Quiet      quietResult       `json:"quiet"`
	// LongestUndecided is the longest a transfer in flight at a heal
	// stayed undecided after it.
	LongestUndecided time.Duration `json:"longest_undecided_after_heal_ns"`
	Converged        string        `json:"replicas_at_stop"`
	Verdict          verdict       `json:"verdict"`
	Violations       int           `json:"violations"`
	Problems         []string      `json:"problems,omitempty"` // harness-level failures
	Dir              string        `json:"dir"`
}

// summary writes the human table.
func (r *report) summary(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	p := func(format string, args ...any) { fmt.Fprintf(tw, format+"\n", args...) }
	p("== chaos run: seed %d, %s, nemeses %s", r.Seed, r.Duration, strings.Join(r.Nemeses, ","))
	for k, why := range r.Skipped {
		p("   skipped %s: %s", k, why)
	}
	p("faults injected\tcount\ttransfers in flight at each (then committed/aborted/unknown)\tlongest wait after its heal")
	for _, k := range slices.Sorted(maps.Keys(r.FaultCount)) {
		var inflight []string
		var rec time.Duration
		for _, f := range r.Faults {
			if f.Kind == k && f.Skipped == "" {
				inflight = append(inflight, fmt.Sprintf("%d(c%d/a%d/u%d)", f.InFlight, f.CaughtCommitted, f.CaughtAborted, f.CaughtUnknown))
				rec = max(rec, time.Duration(f.Recovery))
			}
		}
		p("  %s\t%d\t%s\t%v", k, r.FaultCount[k], strings.Join(inflight, ","), rec.Round(time.Millisecond))
	}
	t := r.Transfers
	p("transfers\t")
	p("  attempted\t%d\t(%d two-phase, %d one-phase)", t.Attempted, t.TwoPhase, t.OnePhase)
	p("  committed\t%d", t.Committed)
	p("  aborted\t%d\t%s", t.Aborted, abortLine(t.AbortReasons))
	p("  unknown, then resolved\t%d\t(committed %d, aborted %d, unresolved %d)", t.Unknown, t.ResolvedCommitted, t.ResolvedAborted, t.Unresolved)
	p("  duplicate commits, outcome reads\t%d, %d", t.Duplicates, t.Reads)
	v := r.Verdict
	p("violations\t")
	p("  atomicity (committed at one bank, aborted at another)\t%d", v.Atomicity)
	p("  money not conserved\t%d\t(total %d, expected %d)", v.MoneyNotConserved, v.Total, v.Expected)
	p("  negative balances\t%d", v.NegativeBalances)
	p("  transfers applied twice or lost (balance != replay)\t%d", v.AppliedTwiceOrLost)
	p("  acknowledged commits missing\t%d", v.AckedCommitMissing)
	p("  acknowledged aborts applied\t%d", v.AckedAbortApplied)
	p("  undecided or reserved 30s after the last heal\t%d", v.Stuck)
	p("  coordinator replicas that differ\t%d", v.ReplicaDivergence)
	p("  not linearizable (porcupine)\t%d\t(%d ids with 2+ calls checked, %d timeouts)", v.NonLinearizable, v.LinChecked, v.LinTimeouts)
	p("  process crashes\t%d", v.ProcessCrashes)
	p("longest undecided after a heal\t%v", r.LongestUndecided.Round(time.Millisecond))
	p("quiet after the last heal\t%v\t(quiet: %v)", r.Quiet.After.Round(time.Millisecond), r.Quiet.Quiet)
	p("TOTAL VIOLATIONS\t%d", r.Violations)
	_ = tw.Flush()
	for _, e := range v.Examples {
		fmt.Fprintf(w, "  ! %s\n", e)
	}
	for _, e := range r.Problems {
		fmt.Fprintf(w, "  PROBLEM: %s\n", e)
	}
	fmt.Fprintf(w, "report, history and logs: %s\nreplay: %s\n", r.Dir, r.Replay)
}

func abortLine(reasons map[string]int) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(reasons)) {
		parts = append(parts, fmt.Sprintf("%s %d", k, reasons[k]))
	}
	return strings.Join(parts, ", ")
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// writeHistory writes the transfers and then every call, one JSON object
// per line, calls in the order they started.
func writeHistory(path string, ops []op, ts map[string]transfer, order []string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	bw := bufio.NewWriter(f)
	enc := json.NewEncoder(bw)
	for _, id := range order {
		if err := enc.Encode(struct {
			Type string `json:"type"`
			transfer
		}{"transfer", ts[id]}); err != nil {
			return err
		}
	}
	for _, o := range slices.SortedFunc(slices.Values(ops), func(a, b op) int { return cmpInt64(a.Call, b.Call) }) {
		if err := enc.Encode(struct {
			Type string `json:"type"`
			op
		}{"call", o}); err != nil {
			return err
		}
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	return f.Close()
}
