package workload

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/decree-tx/decree/coordinator/client"
	"github.com/decree-tx/decree/examples/bank"
)

func TestReasonClass(t *testing.T) {
	for reason, want := range map[string]string{
		"127.0.0.1:1 voted no: " + bank.ReasonInsufficientFunds: bank.ReasonInsufficientFunds,
		"127.0.0.1:1 voted no: " + bank.ReasonAccountBusy:       bank.ReasonAccountBusy,
		"127.0.0.1:1 voted no: " + bank.ReasonUnknownAccount:    bank.ReasonUnknownAccount,
		"prepare timed out after 5s waiting for [x]":            "prepare timeout",
		"presumed abort: no decision was recorded":              "presumed abort",
		"127.0.0.1:2 failed to prepare: connection refused":     "participant unreachable",
		"something else": "other",
	} {
		if got := ReasonClass(reason); got != want {
			t.Errorf("ReasonClass(%q) = %q, want %q", reason, got, want)
		}
	}
}

func TestStatsCountsAndPercentiles(t *testing.T) {
	start := time.Unix(100, 0)
	s := newStats(start)
	for i := 1; i <= 100; i++ {
		s.record("committed", "", time.Duration(i)*time.Millisecond, nil)
	}
	s.record("aborted", "b voted no: "+bank.ReasonAccountBusy, time.Millisecond, nil)
	s.record("aborted", "b voted no: "+bank.ReasonAccountBusy, time.Millisecond, nil)
	s.record("aborted", "b voted no: "+bank.ReasonInsufficientFunds, time.Millisecond, nil)
	s.record("", "", time.Second, errors.New("outcome unknown"))
	snap := s.Snapshot(start.Add(10 * time.Second))
	if snap.Committed != 100 || snap.AbortedTotal() != 3 || snap.Errors != 1 || snap.LastError != "outcome unknown" {
		t.Fatalf("counts: %+v", snap)
	}
	if snap.Throughput() != 10.3 {
		t.Fatalf("throughput %v, want 10.3", snap.Throughput())
	}
	if snap.P50 < 45*time.Millisecond || snap.P50 > 55*time.Millisecond || snap.Max < 99*time.Millisecond {
		t.Fatalf("percentiles: p50 %v max %v", snap.P50, snap.Max)
	}
	if got := snap.AbortSummary(); got != "account busy 2, insufficient funds 1" {
		t.Fatalf("abort summary %q", got)
	}
}

func TestConfigIsChecked(t *testing.T) {
	cl, err := client.Dial([]string{"127.0.0.1:1"}, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for name, cfg := range map[string]Config{
		"no client":   {Banks: []string{"b:1"}, Accounts: 2, Workers: 1, Count: 1},
		"no banks":    {Client: cl, Accounts: 2, Workers: 1, Count: 1},
		"one account": {Client: cl, Banks: []string{"b:1"}, Accounts: 1, Workers: 1, Count: 1},
		"no workers":  {Client: cl, Banks: []string{"b:1"}, Accounts: 2, Count: 1},
		"unbounded":   {Client: cl, Banks: []string{"b:1"}, Accounts: 2, Workers: 1},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestRandomTransfersAreValid(t *testing.T) {
	cl, err := client.Dial([]string{"127.0.0.1:1"}, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	w, err := New(Config{Client: cl, Banks: []string{"b:1", "b:2"}, Accounts: 2, Workers: 1, Count: 1, MaxAmount: 5})
	if err != nil {
		t.Fatal(err)
	}
	rng := newRand(7, 0)
	for range 1000 {
		tr := w.randomTransfer(rng)
		if err := tr.Validate(); err != nil || tr.Amount > 5 || !strings.HasPrefix(tr.From.Bank, "b:") {
			t.Fatalf("bad transfer %+v: %v", tr, err)
		}
	}
}
