package chaos

import (
	"fmt"
	"maps"
	"math"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/decree-tx/decree/examples/bank"
	"github.com/decree-tx/decree/txlog"
)

// checkInput is everything the checker reads.
type checkInput struct {
	Ops       []op
	Transfers map[string]transfer
	Banks     map[string]*bankFinal // by address
	Nodes     []*nodeFinal
	Accounts  int
	Initial   int64
	Quiet     quietResult
	Crashes   []string
}

// verdict counts the violations of each kind. Every field but LinTimeouts,
// Total and Expected is a violation count; Examples names a few.
type verdict struct {
	Atomicity          int `json:"atomicity"`
	MoneyNotConserved  int `json:"money_not_conserved"`
	NegativeBalances   int `json:"negative_balances"`
	AppliedTwiceOrLost int `json:"applied_twice_or_lost"`
	AckedCommitMissing int `json:"acked_commits_missing"`
	AckedAbortApplied  int `json:"acked_aborts_applied"`
	Stuck              int `json:"undecided_or_reserved_30s_after_heal"`
	ReplicaDivergence  int `json:"replica_divergence"`
	NonLinearizable    int `json:"non_linearizable"`
	ProcessCrashes     int `json:"process_crashes"`

	perKind map[string]int

	LinChecked  int      `json:"lin_checked_ids"`
	LinTimeouts int      `json:"lin_timeouts"`
	Total       int64    `json:"total"`
	Expected    int64    `json:"expected"`
	Examples    []string `json:"examples,omitempty"`
}

func (v *verdict) violations() int {
	return v.Atomicity + v.MoneyNotConserved + v.NegativeBalances + v.AppliedTwiceOrLost + v.AckedCommitMissing +
		v.AckedAbortApplied + v.Stuck + v.ReplicaDivergence + v.NonLinearizable + v.ProcessCrashes
}

// maxExamples bounds the examples kept of each kind (the text before the
// first colon).
const maxExamples = 5

func (v *verdict) example(format string, args ...any) {
	kind, _, _ := strings.Cut(format, ":")
	if v.perKind == nil {
		v.perKind = map[string]int{}
	}
	v.perKind[kind]++
	if v.perKind[kind] <= maxExamples {
		v.Examples = append(v.Examples, fmt.Sprintf(format, args...))
	}
}

// check runs every check.
func check(in checkInput) verdict {
	var v verdict
	decisions := referenceDecisions(in.Nodes)
	acked := ackedResults(in.Ops)
	stuck := map[string]bool{}
	for _, id := range slices.Sorted(maps.Keys(in.Transfers)) {
		checkTxn(&v, in, in.Transfers[id], decisions[id], acked[id], stuck)
	}
	for _, id := range slices.Concat(in.Quiet.Undecided, in.Quiet.Unfinished, in.Quiet.ReservedBy) {
		if !stuck[id] {
			stuck[id] = true
			v.example("stuck: %s undecided, unfinished or holding a reservation %v after the last heal", id, in.Quiet.After.Round(time.Millisecond))
		}
	}
	if !in.Quiet.Quiet && len(stuck) == 0 {
		stuck["?"] = true // not quiet, for a reason not tied to an id (in doubt, unreachable)
		v.example("not quiet: %d in doubt, last error %q", in.Quiet.InDoubt, in.Quiet.LastErr)
	}
	v.Stuck = len(stuck)
	checkBalances(&v, in)
	checkReplicas(&v, in.Nodes)
	checkLinearizable(&v, in.Ops)
	v.ProcessCrashes = len(in.Crashes)
	for _, c := range in.Crashes {
		v.example("crash: %s", c)
	}
	return v
}

// referenceDecisions is the record table of the coordinator that applied
// the most (replicas are compared separately).
func referenceDecisions(nodes []*nodeFinal) map[string]*txlog.Record {
	var ref *nodeFinal
	for _, n := range nodes {
		if ref == nil || n.Applied > ref.Applied {
			ref = n
		}
	}
	if ref == nil {
		return nil
	}
	return ref.Records
}

// ackedResults is, per id, the definitive results clients were given.
func ackedResults(ops []op) map[string]map[string]bool {
	out := map[string]map[string]bool{}
	for _, o := range ops {
		if o.Result == resCommitted || o.Result == resAborted {
			if out[o.ID] == nil {
				out[o.ID] = map[string]bool{}
			}
			out[o.ID][o.Result] = true
		}
	}
	return out
}

func checkTxn(v *verdict, in checkInput, t transfer, dec *txlog.Record, acked map[string]bool, stuck map[string]bool) {
	banks := t.banks()
	states := make([]txlog.PState, len(banks))
	committed, abortedOrAbsent, prepared := false, false, false
	for i, b := range banks {
		if f := in.Banks[b]; f != nil {
			states[i] = f.Txns[t.ID] // 0: no record
		}
		switch states[i] {
		case txlog.PStateCommitted:
			committed = true
		case txlog.PStatePrepared:
			prepared = true
		default:
			abortedOrAbsent = true
		}
	}
	decision := txlog.OutcomeUnknown
	if dec != nil {
		decision = dec.Outcome
	}
	describe := func() string {
		return fmt.Sprintf("banks %v states %v, coordinator decision %v, clients told %v", banks, states, decision, slices.Sorted(maps.Keys(acked)))
	}
	if (committed || decision == txlog.OutcomeCommitted) && (abortedOrAbsent || decision == txlog.OutcomeAborted) {
		v.Atomicity++
		v.example("atomicity: %s: %s", t.ID, describe())
	}
	if prepared {
		stuck[t.ID] = true
		v.example("stuck: %s still prepared: %s", t.ID, describe())
	}
	if acked[resCommitted] {
		missing := abortedOrAbsent || decision == txlog.OutcomeAborted || (len(banks) > 1 && decision != txlog.OutcomeCommitted)
		if missing {
			v.AckedCommitMissing++
			v.example("acked commit missing: %s: %s", t.ID, describe())
		}
	}
	if acked[resAborted] && (committed || decision == txlog.OutcomeCommitted) {
		v.AckedAbortApplied++
		v.example("acked abort applied: %s: %s", t.ID, describe())
	}
}

// checkBalances replays every committed leg onto the opening balances and
// compares with what each bank holds: a transfer applied twice, or a leg
// applied without its record (or the reverse), shows as a difference. It
// also checks the total and the signs.
func checkBalances(v *verdict, in checkInput) {
	want := map[string]map[string]int64{}
	for addr := range in.Banks {
		want[addr] = map[string]int64{}
		for i := range in.Accounts {
			want[addr][bank.AccountName(i)] = in.Initial
		}
	}
	for _, t := range in.Transfers {
		if f := in.Banks[t.From.Bank]; f != nil && f.Txns[t.ID] == txlog.PStateCommitted {
			want[t.From.Bank][t.From.Account] -= t.Amount
		}
		if f := in.Banks[t.To.Bank]; f != nil && f.Txns[t.ID] == txlog.PStateCommitted {
			want[t.To.Bank][t.To.Account] += t.Amount
		}
	}
	v.Expected = int64(len(in.Banks)) * int64(in.Accounts) * in.Initial
	for _, addr := range slices.Sorted(maps.Keys(in.Banks)) {
		f := in.Banks[addr]
		for _, acct := range slices.Sorted(maps.Keys(f.Balances)) {
			got := f.Balances[acct]
			v.Total += got
			if got < 0 {
				v.NegativeBalances++
				v.example("negative balance: %s/%s = %d", addr, acct, got)
			}
			if w, ok := want[addr][acct]; !ok || w != got {
				v.AppliedTwiceOrLost++
				v.example("balance drift: %s/%s = %d, replaying the committed transfers gives %d", addr, acct, got, w)
			}
		}
		for acct := range want[addr] {
			if _, ok := f.Balances[acct]; !ok {
				v.AppliedTwiceOrLost++
				v.example("account missing: %s/%s", addr, acct)
			}
		}
	}
	if v.Total != v.Expected {
		v.MoneyNotConserved = 1
		v.example("money not conserved: total %d, expected %d (off by %+d)", v.Total, v.Expected, v.Total-v.Expected)
	}
}

// checkReplicas compares the coordinators' record tables: no id may have
// two different outcomes, and replicas that applied the same log must hold
// identical records.
func checkReplicas(v *verdict, nodes []*nodeFinal) {
	ids := map[string]bool{}
	for _, n := range nodes {
		for id := range n.Records {
			ids[id] = true
		}
	}
	for _, id := range slices.Sorted(maps.Keys(ids)) {
		for i := 1; i < len(nodes); i++ {
			a, b := nodes[0], nodes[i]
			ra, rb := a.Records[id], b.Records[id]
			conflict := ra != nil && rb != nil && ra.Outcome != OutcomeNone && rb.Outcome != OutcomeNone && ra.Outcome != rb.Outcome
			differ := a.Applied == b.Applied && !sameRecord(ra, rb)
			if conflict || differ {
				v.ReplicaDivergence++
				v.example("replicas differ on %s: node %d (applied %d) has %s, node %d (applied %d) has %s",
					id, a.ID, a.Applied, recordString(ra), b.ID, b.Applied, recordString(rb))
				break
			}
		}
	}
}

// OutcomeNone is the outcome of a record without a decision.
const OutcomeNone = txlog.OutcomeUnknown

func sameRecord(a, b *txlog.Record) bool {
	if a == nil || b == nil {
		return a == b
	}
	norm := func(r *txlog.Record) txlog.Record {
		c := *r
		if len(c.Participants) == 0 {
			c.Participants = nil
		}
		if len(c.Acked) == 0 {
			c.Acked = nil
		}
		return c
	}
	return reflect.DeepEqual(norm(a), norm(b))
}

func recordString(r *txlog.Record) string {
	if r == nil {
		return "no record"
	}
	return fmt.Sprintf("{%v parts %v acked %v finished %v decided_at %d}", r.Outcome, r.Participants, r.Acked, r.Finished, r.DecidedAt)
}

// Register states of the linearizability model.
const (
	regUndecided = iota
	regCommitted
	regAborted
)

// outcomeModel is the model porcupine checks each transaction's calls
// against: a register that starts undecided and moves once to committed or
// aborted. A Commit or Outcome call that returned an outcome reads (and, if
// undecided, decides) it; a call that died unknown may have decided either
// way or done nothing.
var outcomeModel = (&porcupine.NondeterministicModel{
	Init: func() []any { return []any{regUndecided} },
	Step: func(state, _, output any) []any {
		s := state.(int)
		switch output.(string) {
		case resCommitted:
			if s == regUndecided || s == regCommitted {
				return []any{regCommitted}
			}
		case resAborted:
			if s == regUndecided || s == regAborted {
				return []any{regAborted}
			}
		default: // unknown
			if s == regUndecided {
				return []any{regUndecided, regCommitted, regAborted}
			}
			return []any{s}
		}
		return nil
	},
	Equal: func(a, b any) bool { return a.(int) == b.(int) },
	DescribeOperation: func(input, output any) string {
		return fmt.Sprintf("%s -> %s", input, output)
	},
	DescribeState: func(s any) string {
		return [...]string{"undecided", "committed", "aborted"}[s.(int)]
	},
}).ToModel()

// checkLinearizable checks, per transaction, that its Commit results and
// Outcome reads are linearizable against outcomeModel. A transaction with
// a single call is trivially so and is skipped.
func checkLinearizable(v *verdict, ops []op) {
	byID := map[string][]porcupine.Operation{}
	for _, o := range ops {
		ret := o.Return
		if o.Result == resUnknown {
			ret = math.MaxInt64 // it may take effect any time after it started
		}
		byID[o.ID] = append(byID[o.ID], porcupine.Operation{ClientId: o.Proc, Input: o.Kind, Call: o.Call, Output: o.Result, Return: ret})
	}
	for _, id := range slices.Sorted(maps.Keys(byID)) {
		hist := byID[id]
		if len(hist) < 2 {
			continue
		}
		v.LinChecked++
		switch porcupine.CheckOperationsTimeout(outcomeModel, hist, 10*time.Second) {
		case porcupine.Illegal:
			v.NonLinearizable++
			v.example("not linearizable: %s: %s", id, describeOps(hist))
		case porcupine.Unknown:
			v.LinTimeouts++
		}
	}
}

func describeOps(hist []porcupine.Operation) string {
	s := ""
	for _, o := range slices.SortedFunc(slices.Values(hist), func(a, b porcupine.Operation) int {
		switch {
		case a.Call < b.Call:
			return -1
		case a.Call > b.Call:
			return 1
		}
		return 0
	}) {
		ret := "∞"
		if o.Return != math.MaxInt64 {
			ret = fmt.Sprintf("%.3fs", float64(o.Return)/1e9)
		}
		s += fmt.Sprintf("[%v %.3fs..%s -> %v] ", o.Input, float64(o.Call)/1e9, ret, o.Output)
	}
	return s
}
