package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"

	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
)

const txnID = "01890a5d-ac96-774b-bcce-b302099a8057"

// TestTxnBadArgs: each bad txn invocation exits 2 with a one-line reason.
func TestTxnBadArgs(t *testing.T) {
	ep := "127.0.0.1:1"
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no subcommand", []string{"txn"}, "subcommand"},
		{"unknown subcommand", []string{"txn", "frobnicate"}, "unknown txn subcommand"},
		{"outcome missing id", []string{"txn", "outcome", "--endpoints", ep}, "missing transaction ID"},
		{"outcome no endpoints", []string{"txn", "outcome", txnID}, "--endpoints is required"},
		{"outcome two ids", []string{"txn", "outcome", "--endpoints", ep, txnID, txnID}, "unexpected argument"},
		{"outcome bad id", []string{"txn", "outcome", "--endpoints", ep, "tx-1"}, "not a canonical UUID"},
		{"outcome bad endpoint", []string{"txn", "outcome", "--endpoints", "localhost", txnID}, "missing port"},
		{"outcome bad participant", []string{"txn", "outcome", "--endpoints", ep, "--participants", "bank-a", txnID}, "bank-a"},
		{"outcome bad timeout", []string{"txn", "outcome", "--endpoints", ep, "--timeout", "0s", txnID}, "--timeout"},
		{"list bad state", []string{"txn", "list", "--endpoints", ep, "--state", "done"}, "--state must be"},
		{"list negative limit", []string{"txn", "list", "--endpoints", ep, "--limit", "-1"}, "--limit"},
		{"list no endpoints", []string{"txn", "list"}, "--endpoints is required"},
		{"list stray argument", []string{"txn", "list", "--endpoints", ep, "extra"}, "unexpected argument"},
		{"list unknown flag", []string{"txn", "list", "--bogus"}, "flag provided but not defined"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := run(tc.args, &stdout, &stderr); code != 2 {
				t.Fatalf("exit %d, want 2 (stderr %q)", code, stderr.String())
			}
			msg := stderr.String()
			if !strings.Contains(msg, tc.want) {
				t.Fatalf("stderr %q does not mention %q", msg, tc.want)
			}
			if strings.Count(strings.TrimSpace(msg), "\n") != 0 {
				t.Fatalf("want a one-line reason, got %q", msg)
			}
		})
	}
}

// fakeCoordinator answers Outcome and ListTransactions from fixed data.
type fakeCoordinator struct {
	decreev1.UnimplementedCoordinatorServer
	state decreev1.TxnState

	mu       sync.Mutex
	outcomes []*decreev1.OutcomeRequest
}

func (f *fakeCoordinator) Outcome(_ context.Context, req *decreev1.OutcomeRequest) (*decreev1.OutcomeResponse, error) {
	f.mu.Lock()
	f.outcomes = append(f.outcomes, req)
	f.mu.Unlock()
	return &decreev1.OutcomeResponse{TxnId: req.GetTxnId(), State: f.state, Reason: "b:2 voted no"}, nil
}

func (f *fakeCoordinator) ListTransactions(context.Context, *decreev1.ListTransactionsRequest) (*decreev1.ListTransactionsResponse, error) {
	return &decreev1.ListTransactionsResponse{Txns: []*decreev1.TxnInfo{
		{TxnId: txnID, State: decreev1.TxnState_TXN_STATE_ABORTED, Participants: []string{"a:1", "b:2"},
			Acked: []string{"a:1"}, DecidedAt: 1_700_000_000_123_000_000, Reason: "b:2 voted no"},
		{TxnId: "01890a5d-ac96-774b-bcce-b302099a8058", State: decreev1.TxnState_TXN_STATE_UNDECIDED, Participants: []string{"a:1"}},
	}}, nil
}

func startFakeCoordinator(t *testing.T, state decreev1.TxnState) (*fakeCoordinator, string) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeCoordinator{state: state}
	srv := grpc.NewServer()
	decreev1.RegisterCoordinatorServer(srv, f)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return f, lis.Addr().String()
}

func runOK(t *testing.T, args ...string) string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	if code := run(args, &stdout, &stderr); code != 0 {
		t.Fatalf("decree %v: exit %d, stderr %q", args, code, stderr.String())
	}
	return stdout.String()
}

func TestTxnOutcome(t *testing.T) {
	f, addr := startFakeCoordinator(t, decreev1.TxnState_TXN_STATE_ABORTED)
	got := runOK(t, "txn", "outcome", "--endpoints", addr, txnID, "--participants", "a:1,b:2")
	if want := txnID + " aborted b:2 voted no\n"; got != want {
		t.Errorf("stdout %q, want %q", got, want)
	}
	f.mu.Lock()
	parts := f.outcomes[0].GetParticipants()
	f.mu.Unlock()
	if !slices.Equal(parts, []string{"a:1", "b:2"}) {
		t.Errorf("participants sent %v", parts)
	}
	var row map[string]string
	if err := json.Unmarshal([]byte(runOK(t, "txn", "outcome", "--json", "--endpoints", addr, txnID)), &row); err != nil {
		t.Fatal(err)
	}
	if row["id"] != txnID || row["state"] != "aborted" || row["reason"] != "b:2 voted no" {
		t.Errorf("JSON %v", row)
	}
}

func TestTxnOutcomeForgottenIsNotDefinitive(t *testing.T) {
	_, addr := startFakeCoordinator(t, decreev1.TxnState_TXN_STATE_FORGOTTEN)
	var stdout, stderr bytes.Buffer
	if code := run([]string{"txn", "outcome", "--endpoints", addr, txnID}, &stdout, &stderr); code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	if !strings.HasPrefix(stdout.String(), txnID+" forgotten") || !strings.Contains(stderr.String(), "retention") {
		t.Errorf("stdout %q, stderr %q", stdout.String(), stderr.String())
	}
}

func TestTxnList(t *testing.T) {
	_, addr := startFakeCoordinator(t, decreev1.TxnState_TXN_STATE_COMMITTED)
	table := runOK(t, "txn", "list", "--endpoints", addr, "--state", "aborted", "--limit", "5")
	lines := strings.Split(strings.TrimSpace(table), "\n")
	if len(lines) != 3 || strings.Join(strings.Fields(lines[0]), " ") != "ID STATE PARTICIPANTS ACKED FINISHED DECIDED_AT REASON" {
		t.Fatalf("table:\n%s", table)
	}
	want := txnID + " aborted a:1,b:2 a:1 no 2023-11-14T22:13:20.123Z b:2 voted no"
	if got := strings.Join(strings.Fields(lines[1]), " "); got != want {
		t.Errorf("row %q, want %q", got, want)
	}
	if got := strings.Fields(lines[2]); len(got) != 7 || got[1] != "undecided" || got[5] != "-" {
		t.Errorf("undecided row %q", lines[2])
	}
	var rows []txnRow
	if err := json.Unmarshal([]byte(runOK(t, "txn", "list", "--json", "--endpoints", addr)), &rows); err != nil {
		t.Fatal(err)
	}
	if len(rows) != 2 || rows[0].DecidedAt != "2023-11-14T22:13:20.123Z" || rows[1].Acked == nil || rows[1].DecidedAt != "" {
		t.Errorf("JSON rows %+v", rows)
	}
}
