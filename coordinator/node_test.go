package coordinator_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/decree-tx/decree/coordinator"
	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
	"github.com/decree-tx/decree/txlog"
)

const (
	committed = decreev1.Outcome_OUTCOME_COMMITTED
	aborted   = decreev1.Outcome_OUTCOME_ABORTED
)

func TestClusterElectsOneLeader(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	lead := c.leader()
	if lead < 1 || lead > 3 {
		t.Fatalf("leader %d is not a member", lead)
	}
}

func TestProposalAppliesOnAllNodes(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	lead := c.leader()
	follower := lead%3 + 1
	// Through the leader, and through a follower (raft forwards it).
	for i, via := range []uint64{lead, follower} {
		id := fmt.Sprintf("txn-%d", i)
		res, err := c.propose(via, decide(id, committed, "a:1", "b:1"))
		if err != nil {
			t.Fatalf("propose via %d: %v", via, err)
		}
		if res.Outcome != committed || res.Err != nil {
			t.Fatalf("result %+v, want committed", res)
		}
		c.waitApplied(res.Index)
		for nid, m := range c.members {
			r, ok, err := m.node.Record(id)
			if err != nil || !ok {
				t.Fatalf("node %d: record %s missing (%v)", nid, id, err)
			}
			if r.Outcome != txlog.OutcomeCommitted || len(r.Participants) != 2 {
				t.Fatalf("node %d: record %+v", nid, r)
			}
		}
	}
}

func TestFinishedMarksDecidedRecords(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	lead := c.leader()
	if _, err := c.propose(lead, decide("t1", aborted, "p:1")); err != nil {
		t.Fatal(err)
	}
	res, err := c.propose(lead, finished("t1", "never-decided"))
	if err != nil {
		t.Fatal(err)
	}
	c.waitApplied(res.Index)
	for nid, m := range c.members {
		r, _, _ := m.node.Record("t1")
		if !r.Finished || r.Outcome != txlog.OutcomeAborted {
			t.Fatalf("node %d: %+v, want finished and aborted", nid, r)
		}
		if _, ok, _ := m.node.Record("never-decided"); ok {
			t.Fatalf("node %d: Finished created a record for an undecided id", nid)
		}
	}
}

func TestFirstDecisionWins(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.leader()
	const txns, racers = 20, 6
	type answer struct {
		txn string
		out decreev1.Outcome
	}
	answers := make(chan answer, txns*racers)
	var wg sync.WaitGroup
	for i := range txns {
		for r := range racers {
			wg.Go(func() {
				want := committed
				if r%2 == 1 {
					want = aborted
				}
				txn := fmt.Sprintf("race-%d", i)
				res, err := c.propose(uint64(r%3+1), decide(txn, want))
				if err != nil {
					t.Errorf("propose: %v", err)
					return
				}
				answers <- answer{txn, res.Outcome}
			})
		}
	}
	wg.Wait()
	close(answers)
	seen := map[string]decreev1.Outcome{}
	n := 0
	for a := range answers {
		n++
		if prev, ok := seen[a.txn]; ok && prev != a.out {
			t.Fatalf("%s: proposers were told %v and %v", a.txn, prev, a.out)
		}
		seen[a.txn] = a.out
	}
	if n != txns*racers {
		t.Fatalf("%d answers, want %d", n, txns*racers)
	}
	waitReplicasAgree(t, c)
	for txn, out := range seen {
		for nid, m := range c.members {
			r, ok, _ := m.node.Record(txn)
			if !ok || outcomeOf(r) != out {
				t.Fatalf("node %d holds %+v for %s; proposers were told %v", nid, r, txn, out)
			}
		}
	}
}

func TestLeaderLossElectsNewLeader(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	old := c.leader()
	oldTerm := c.members[old].node.Status().Term
	c.stop(old)
	lead := c.leader()
	if lead == old {
		t.Fatalf("stopped node %d still leader", old)
	}
	if term := c.members[lead].node.Status().Term; term <= oldTerm {
		t.Fatalf("new leader's term %d not above old %d", term, oldTerm)
	}
	res, err := c.propose(lead, decide("after-failover", committed))
	if err != nil || res.Outcome != committed {
		t.Fatalf("propose after failover: %+v %v", res, err)
	}
	c.restart(old)
	c.waitApplied(res.Index)
}

func TestRestartKeepsStateWithoutReapplying(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	lead := c.leader()
	var last uint64
	for i := range 10 {
		res, err := c.propose(lead, decide(fmt.Sprintf("t%d", i), committed))
		if err != nil {
			t.Fatal(err)
		}
		last = res.Index
	}
	c.waitApplied(last)
	for id := uint64(1); id <= 3; id++ {
		c.stop(id)
	}
	for id := uint64(1); id <= 3; id++ {
		c.restart(id)
	}
	lead = c.leader()
	// A conflicting decision after restart must still lose: the state survived.
	res, err := c.propose(lead, decide("t3", aborted))
	if err != nil || res.Outcome != committed {
		t.Fatalf("after restart, t3 = %+v %v; want committed kept", res, err)
	}
	waitReplicasAgree(t, c)
}

func TestLaggingNodeCatchesUpThroughSnapshot(t *testing.T) {
	c := newTestCluster(t, 3, func(cfg *coordinator.Config) {
		cfg.SnapshotEvery = 20
		cfg.CatchUpEntries = 5
		cfg.SnapshotChunkBytes = 64 // many chunks even for this small state
	})
	lead := c.leader()
	lagger := lead%3 + 1
	c.stop(lagger)
	var last uint64
	for i := range 120 {
		res, err := c.propose(lead, decide(fmt.Sprintf("lag-%d", i), committed))
		if err != nil {
			t.Fatal(err)
		}
		last = res.Index
	}
	c.waitApplied(last)
	first, err := c.members[lead].store.FirstIndex()
	if err != nil {
		t.Fatal(err)
	}
	if first < 50 {
		t.Fatalf("leader's log starts at %d: it was not compacted, so no snapshot is needed", first)
	}
	c.restart(lagger)
	c.waitApplied(last)
	snap, err := c.members[lagger].store.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if snap.GetMetadata().GetIndex() < first-1 {
		t.Fatalf("lagger's snapshot at %d: it did not catch up through a snapshot (leader log starts at %d)", snap.GetMetadata().GetIndex(), first)
	}
	// The sender counts a transfer when the receiver's answer is back.
	coordinator.WaitFor(t, 5*time.Second, "the leader to count the snapshot it sent", func() bool {
		return c.members[lead].node.Stats().SnapshotsSent > 0
	})
	if got := c.members[lagger].node.Stats(); got.SnapshotsReceived == 0 || got.SnapshotBytesReceived < 120*20 {
		t.Fatalf("lagger received %d snapshots (%d bytes): the state was not streamed", got.SnapshotsReceived, got.SnapshotBytesReceived)
	}
	if now := c.leader(); now != lead {
		t.Fatalf("leadership moved from %d to %d while the lagger caught up", lead, now)
	}
	waitReplicasAgree(t, c)
}

func TestReadIndexOnFollowerSeesCommittedWrite(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	lead := c.leader()
	follower := lead%3 + 1
	for i := range 20 {
		id := fmt.Sprintf("r%d", i)
		if _, err := c.propose(lead, decide(id, aborted)); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := c.members[follower].node.ReadIndex(ctx)
		cancel()
		if err != nil {
			t.Fatalf("read index on follower: %v", err)
		}
		if _, ok, _ := c.members[follower].node.Record(id); !ok {
			t.Fatalf("follower misses %s after ReadIndex", id)
		}
	}
}

func TestProposeWithoutQuorumFailsOrTimesOut(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	lead := c.leader()
	for id := uint64(1); id <= 3; id++ {
		if id != lead {
			c.stop(id)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	_, err := c.members[lead].node.Propose(ctx, decide("lonely", committed))
	if err == nil {
		t.Fatal("a proposal without a quorum was reported applied")
	}
}

// waitReplicasAgree waits until every running member holds the same records.
func waitReplicasAgree(t *testing.T, c *testCluster) {
	t.Helper()
	waitFor(t, 10*time.Second, "identical decision tables", func() bool {
		var want string
		first := true
		for _, m := range c.members {
			got := dumpRecords(t, m.node)
			if first {
				want, first = got, false
			} else if got != want {
				return false
			}
		}
		return true
	})
}

func dumpRecords(t *testing.T, n *coordinator.Node) string {
	var s string
	if err := n.ScanRecords(func(r *txlog.Record) bool {
		s += fmt.Sprintf("%s=%v/%v/%v;", r.ID, r.Outcome, r.Participants, r.Finished)
		return true
	}); err != nil {
		t.Fatal(err)
	}
	return s
}

func outcomeOf(r *txlog.Record) decreev1.Outcome {
	switch r.Outcome {
	case txlog.OutcomeCommitted:
		return committed
	case txlog.OutcomeAborted:
		return aborted
	}
	return decreev1.Outcome_OUTCOME_UNSPECIFIED
}
