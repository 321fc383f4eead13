package chaos

import (
	"testing"
	"time"

	"github.com/decree-tx/decree/examples/bank"
	"github.com/decree-tx/decree/txlog"
)

// These tests run in `make test`: they feed the checker small made-up
// outcomes and make sure each kind of violation is counted, and that a
// clean run counts none.

const (
	bankA = "127.0.0.21:1"
	bankB = "127.0.0.22:1"
)

// fixture is two banks with two accounts of 100 each, one transfer of 10
// from A/acct-0000 to B/acct-0000, committed everywhere and acknowledged.
func fixture() checkInput {
	t := transfer{ID: "t1", From: bank.AccountRef{Bank: bankA, Account: bank.AccountName(0)},
		To: bank.AccountRef{Bank: bankB, Account: bank.AccountName(0)}, Amount: 10}
	rec := &txlog.Record{ID: "t1", Outcome: txlog.OutcomeCommitted, Participants: []string{bankA, bankB}, Finished: true}
	node := func(id uint64) *nodeFinal {
		r := *rec
		return &nodeFinal{ID: id, Applied: 7, Records: map[string]*txlog.Record{"t1": &r}}
	}
	return checkInput{
		Ops: []op{{ID: "t1", Kind: opCommit, Call: 1, Return: 5, Result: resCommitted},
			{ID: "t1", Kind: opOutcome, Call: 6, Return: 8, Result: resCommitted}},
		Transfers: map[string]transfer{"t1": t},
		Banks: map[string]*bankFinal{
			bankA: {Addr: bankA, Balances: map[string]int64{bank.AccountName(0): 90, bank.AccountName(1): 100},
				Txns: map[string]txlog.PState{"t1": txlog.PStateCommitted}},
			bankB: {Addr: bankB, Balances: map[string]int64{bank.AccountName(0): 110, bank.AccountName(1): 100},
				Txns: map[string]txlog.PState{"t1": txlog.PStateCommitted}},
		},
		Nodes:    []*nodeFinal{node(1), node(2), node(3)},
		Accounts: 2, Initial: 100, Quiet: quietResult{Quiet: true},
	}
}

func TestCheckerCleanRun(t *testing.T) {
	v := check(fixture())
	if n := v.violations(); n != 0 {
		t.Fatalf("clean run: %d violations: %v", n, v.Examples)
	}
	if v.LinChecked != 1 {
		t.Errorf("checked %d ids for linearizability, want 1", v.LinChecked)
	}
}

func TestCheckerFindsViolations(t *testing.T) {
	cases := []struct {
		name  string
		plant func(*checkInput)
		field func(verdict) int
	}{
		{"aborted at one bank", func(in *checkInput) {
			in.Banks[bankB].Txns["t1"] = txlog.PStateAborted
			in.Banks[bankB].Balances[bank.AccountName(0)] = 100
		}, func(v verdict) int { return v.Atomicity }},
		{"acknowledged commit lost", func(in *checkInput) {
			for _, b := range in.Banks {
				b.Txns["t1"] = txlog.PStateAborted
			}
			in.Banks[bankA].Balances[bank.AccountName(0)] = 100
			in.Banks[bankB].Balances[bank.AccountName(0)] = 100
			for _, n := range in.Nodes {
				n.Records["t1"].Outcome = txlog.OutcomeAborted
			}
		}, func(v verdict) int { return v.AckedCommitMissing }},
		{"applied twice", func(in *checkInput) {
			in.Banks[bankB].Balances[bank.AccountName(0)] = 120
		}, func(v verdict) int { return v.AppliedTwiceOrLost }},
		{"money created", func(in *checkInput) {
			in.Banks[bankB].Balances[bank.AccountName(1)] = 101
		}, func(v verdict) int { return v.MoneyNotConserved }},
		{"negative balance", func(in *checkInput) {
			in.Banks[bankA].Balances[bank.AccountName(1)] = -1
		}, func(v verdict) int { return v.NegativeBalances }},
		{"still prepared", func(in *checkInput) {
			in.Banks[bankB].Txns["t1"] = txlog.PStatePrepared
			in.Banks[bankB].Balances[bank.AccountName(0)] = 100
		}, func(v verdict) int { return v.Stuck }},
		{"not quiet", func(in *checkInput) {
			in.Quiet = quietResult{Quiet: false, Unfinished: []string{"t1"}, After: 30 * time.Second}
		}, func(v verdict) int { return v.Stuck }},
		{"replicas disagree", func(in *checkInput) {
			in.Nodes[2].Records["t1"].Outcome = txlog.OutcomeAborted
		}, func(v verdict) int { return v.ReplicaDivergence }},
		{"replica missing a record", func(in *checkInput) {
			delete(in.Nodes[1].Records, "t1")
		}, func(v verdict) int { return v.ReplicaDivergence }},
		{"stale read after the commit answer", func(in *checkInput) {
			in.Ops = append(in.Ops, op{ID: "t1", Kind: opOutcome, Call: 9, Return: 10, Result: resAborted})
		}, func(v verdict) int { return v.NonLinearizable }},
		{"acknowledged abort applied", func(in *checkInput) {
			in.Ops = []op{{ID: "t1", Kind: opCommit, Call: 1, Return: 5, Result: resAborted}}
		}, func(v verdict) int { return v.AckedAbortApplied }},
		{"crash", func(in *checkInput) {
			in.Crashes = []string{"decree-1 exited on its own"}
		}, func(v verdict) int { return v.ProcessCrashes }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			in := fixture()
			tc.plant(&in)
			v := check(in)
			if tc.field(v) == 0 {
				t.Fatalf("violation not counted; verdict %+v", v)
			}
		})
	}
}

// An unknown result may have decided either way, or not at all.
func TestOutcomeModelUnknown(t *testing.T) {
	in := fixture()
	in.Ops = []op{
		{ID: "t1", Kind: opCommit, Call: 1, Return: 5, Result: resUnknown},
		{ID: "t1", Kind: opOutcome, Call: 6, Return: 8, Result: resCommitted},
		{ID: "t1", Kind: opCommit, Call: 9, Return: 12, Result: resCommitted},
	}
	if v := check(in); v.NonLinearizable != 0 {
		t.Fatalf("unknown then committed judged non-linearizable: %v", v.Examples)
	}
	in.Ops = append(in.Ops, op{ID: "t1", Kind: opOutcome, Call: 2, Return: 3, Result: resAborted})
	if v := check(in); v.NonLinearizable != 1 {
		t.Fatalf("aborted then committed not caught: %+v", v)
	}
}

func TestPlanCoversEveryKind(t *testing.T) {
	kinds, err := parseNemeses("all")
	if err != nil {
		t.Fatal(err)
	}
	plan := planSchedule(42, kinds, 5*time.Minute)
	seen := map[string]bool{}
	for _, f := range plan {
		seen[f.Kind] = true
	}
	for _, k := range kinds {
		if !seen[k] {
			t.Errorf("plan never runs %s", k)
		}
	}
	again := planSchedule(42, kinds, 5*time.Minute)
	if len(again) != len(plan) || again[0] != plan[0] || again[len(again)-1] != plan[len(plan)-1] {
		t.Error("the same seed planned a different schedule")
	}
}
