package coordinator

import (
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/rs/zerolog"

	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
	"github.com/decree-tx/decree/txlog"
)

// BenchmarkCoreStep measures the leader's 2PC core over one whole classic
// transaction with two participants: the client's commit, two YES votes,
// the applied decision, two acknowledgements, and the ticks that batch
// Finished. One op is one transaction.
func BenchmarkCoreStep(b *testing.B) {
	c := NewCore(CoreConfig{})
	now := time.Unix(1_700_000_000, 0)
	c.Step(now, LeadershipChanged{Leader: true, Term: 2})
	c.Step(now, Recovered{Term: 2})
	parts := []string{"p1:7000", "p2:7000"}
	branches := []BranchSpec{{Participant: parts[0], Payload: make([]byte, 128)}, {Participant: parts[1], Payload: make([]byte, 128)}}
	ids := benchIDs(b, 1<<12)
	var n int
	for b.Loop() {
		id := ids[n%len(ids)]
		n++
		c.Step(now, ClientCommit{Req: uint64(n), ID: id, Branches: branches})
		for _, p := range parts {
			c.Step(now, VoteReceived{ID: id, Participant: p, Term: 2, Vote: decreev1.Vote_VOTE_YES})
		}
		c.Step(now, DecisionApplied{ID: id, Term: 2, Outcome: decreev1.Outcome_OUTCOME_COMMITTED, Participants: parts})
		for _, p := range parts {
			c.Step(now, Acked{ID: id, Participant: p, Term: 2})
		}
		if n%64 == 0 {
			now = now.Add(25 * time.Millisecond)
			c.Step(now, Tick{})
		}
	}
}

// BenchmarkApply measures the state machine applying a transaction's
// commands on every replica: its Decide and its Finished, 64 transactions
// to a state batch (a busy raft Ready), on a real store. One op is one
// transaction.
func BenchmarkApply(b *testing.B) {
	store, err := txlog.Open(b.TempDir(), txlog.Identity{ClusterID: 1, NodeID: 1}, txlog.Options{Logger: zerolog.Nop()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { store.Close() })
	parts := []string{"p1:7000", "p2:7000"}
	ids := benchIDs(b, b.N) // every transaction new, as in production
	const perBatch = 64
	var index uint64
	var n int
	b.ResetTimer()
	for n < b.N {
		batch := store.NewStateBatch()
		ap := newApplier(store, batch, 0)
		start := n
		for ; n < b.N && n-start < perBatch; n++ {
			index++
			decide := decideCommand(ids[n], decreev1.Outcome_OUTCOME_COMMITTED, parts, "", 1)
			if res, err := ap.apply(decide, index); err != nil || res.Err != nil {
				b.Fatalf("decide: %v %v", err, res.Err)
			}
		}
		index++
		fin := &decreev1.Command{Kind: &decreev1.Command_Finished{Finished: &decreev1.Finished{TxnIds: ids[start:n], FinishedAt: 2}}}
		if res, err := ap.apply(fin, index); err != nil || res.Err != nil {
			b.Fatalf("finished: %v %v", err, res.Err)
		}
		if err := store.CommitState(batch, index); err != nil {
			b.Fatal(err)
		}
	}
}

// benchIDs mints n distinct UUIDv7 transaction ids.
func benchIDs(b *testing.B, n int) []string {
	ids := make([]string, n)
	for i := range ids {
		u, err := uuid.NewV7()
		if err != nil {
			b.Fatal(err)
		}
		ids[i] = u.String()
	}
	return ids
}

// BenchmarkCoreTickIdle measures one tick of a leader whose 10,000
// decided transactions all wait on a participant that never acknowledges
// phase 2, between their retries: a tick should cost nothing then.
func BenchmarkCoreTickIdle(b *testing.B) {
	c := NewCore(CoreConfig{RetryMin: time.Hour, RetryMax: time.Hour})
	now := time.Unix(1_700_000_000, 0)
	c.Step(now, LeadershipChanged{Leader: true, Term: 2})
	c.Step(now, Recovered{Term: 2})
	parts := []string{"slow:7000"}
	for _, id := range benchIDs(b, 10_000) {
		c.Step(now, DecisionApplied{ID: id, Term: 2, Outcome: decreev1.Outcome_OUTCOME_COMMITTED, Participants: parts})
		c.Step(now, DeliveryFailed{ID: id, Participant: parts[0], Term: 2, Err: "unavailable"})
	}
	for b.Loop() {
		now = now.Add(10 * time.Millisecond)
		if out := c.Step(now, Tick{}); len(out) > 0 {
			b.Fatalf("an idle tick acted: %v", out)
		}
	}
}
