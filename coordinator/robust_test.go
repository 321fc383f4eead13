package coordinator_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/decree-tx/decree/coordinator"
	"github.com/decree-tx/decree/coordinator/client"
	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
)

// waitFinished waits until the cluster records phase 2 of id as finished:
// nothing is left retrying for it.
func waitFinished(t *testing.T, cc decreev1.CoordinatorClient, id string) {
	t.Helper()
	waitFor(t, 10*time.Second, "transaction "+id+" finished", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		r, err := cc.Outcome(ctx, &decreev1.OutcomeRequest{TxnId: id})
		return err == nil && r.GetFinished()
	})
}

// A branch naming something that is not a participant (here a coordinator,
// which answers Unimplemented) aborts at once with the reason, in one and
// in two phases, and nothing keeps calling it afterwards.
func TestE2ENonParticipantBranchAborts(t *testing.T) {
	for _, parallel := range []bool{false, true} {
		e := newE2EWith(t, 1, parallel)
		cc := coordClient(t, e.peers[e.leader()])
		notParticipant := e.peers[1]
		for i, txn := range []client.Txn{
			{ID: newTxnID(1), Branches: []client.Branch{{Participant: notParticipant, Payload: []byte("set x=1")}}},
			{ID: newTxnID(2), Branches: []client.Branch{
				{Participant: e.parts[0].addr, Payload: []byte("set y=1")},
				{Participant: notParticipant, Payload: []byte("set x=1")}}},
		} {
			res := e.commit(txn)
			if res.State != client.StateAborted || !strings.Contains(res.Reason, notParticipant+" is not a participant") {
				t.Fatalf("parallel=%v txn %d: got %+v, want aborted because %s is not a participant", parallel, i, res, notParticipant)
			}
			waitFinished(t, cc, txn.ID)
		}
		if v := e.parts[0].value("y"); v != "" {
			t.Fatalf("the real participant applied y=%q of an aborted transaction", v)
		}
		e.parts[0].waitSettled()
	}
}

// An outcome query that names a non-participant as a one-phase
// transaction's only participant is refused as such, not blamed on raft.
func TestOutcomeNamingANonParticipantIsFailedPrecondition(t *testing.T) {
	c := newTestClusterWith(t, 3, nil, nil)
	cc := coordClient(t, c.peers[c.leader()])
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := cc.Outcome(ctx, &decreev1.OutcomeRequest{TxnId: newTxnID(1), Participants: []string{c.peers[2]}})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "not a participant") {
		t.Fatalf("got %v, want FailedPrecondition: not a participant", err)
	}
}

func TestListTransactionsRefusesAnUnknownFilter(t *testing.T) {
	c := newTestClusterWith(t, 3, nil, nil)
	cc := coordClient(t, c.peers[c.leader()])
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := cc.ListTransactions(ctx, &decreev1.ListTransactionsRequest{Filter: decreev1.TxnFilter(99)})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("got %v, want InvalidArgument", err)
	}
}

// Past its limit of transactions in flight the leader refuses new ones
// with ResourceExhausted, runs the ones it holds, and takes new ones again
// once they reach phase 2.
func TestLeaderRefusesTransactionsPastItsLimit(t *testing.T) {
	c := newTestClusterWith(t, 3, nil, func(d *coordinator.DriverConfig) { d.Core.MaxInFlight = 1 })
	var eps []string
	for id := uint64(1); id <= 3; id++ {
		eps = append(eps, c.peers[id])
	}
	p := startParticipant(t, eps)
	cc := coordClient(t, c.peers[c.leader()])
	commit := func(n int) (*decreev1.CommitResponse, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return cc.Commit(ctx, &decreev1.CommitRequest{TxnId: newTxnID(n),
			Branches: []*decreev1.Branch{{Participant: p.addr, Payload: []byte("set x=1")}}})
	}
	release := p.gate.holdCalls("Prepare")
	defer release()
	first := make(chan error, 1)
	go func() {
		r, err := commit(1)
		if err == nil && r.GetState() != decreev1.TxnState_TXN_STATE_COMMITTED {
			err = fmt.Errorf("got %v", r)
		}
		first <- err
	}()
	<-p.gate.held
	_, err := commit(2)
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "1 transactions in flight") {
		t.Fatalf("second transaction: got %v, want ResourceExhausted", err)
	}
	release()
	if err := <-first; err != nil {
		t.Fatalf("the transaction in flight failed: %v", err)
	}
	// Once the first reaches phase 2 (its decision applied, a moment after
	// its client heard COMMITTED), the slot is free again.
	var r *decreev1.CommitResponse
	waitFor(t, 10*time.Second, "a new transaction taken", func() bool {
		r, err = commit(3)
		return status.Code(err) != codes.ResourceExhausted
	})
	if err != nil || r.GetState() != decreev1.TxnState_TXN_STATE_COMMITTED {
		t.Fatalf("after the first finished: %v %v", r, err)
	}
}
