package twopc

import (
	"testing"
	"time"

	"fmt"

	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
)

// BenchmarkCoreStep measures the leader's 2PC core over one whole classic
// transaction with two participants: the client's commit, two YES votes,
// the applied decision, two acknowledgements, and the ticks that batch
// Finished. One op is one transaction.
func BenchmarkCoreStep(b *testing.B) {
	c := New(Config{})
	now := time.Unix(1_700_000_000, 0)
	c.Step(now, LeadershipChanged{Leader: true, Term: 2})
	c.Step(now, Recovered{Term: 2})
	parts := []string{"p1:7000", "p2:7000"}
	branches := []BranchSpec{{Participant: parts[0], Payload: make([]byte, 128)}, {Participant: parts[1], Payload: make([]byte, 128)}}
	ids := benchIDs(1 << 12)
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

// BenchmarkCoreTickIdle measures one tick of a leader whose 10,000
// decided transactions all wait on a participant that never acknowledges
// phase 2, between their retries: a tick should cost nothing then.
func BenchmarkCoreTickIdle(b *testing.B) {
	c := New(Config{RetryMin: time.Hour, RetryMax: time.Hour})
	now := time.Unix(1_700_000_000, 0)
	c.Step(now, LeadershipChanged{Leader: true, Term: 2})
	c.Step(now, Recovered{Term: 2})
	parts := []string{"slow:7000"}
	for _, id := range benchIDs(10_000) {
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

// benchIDs names n distinct transactions: the core never parses an id.
func benchIDs(n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("t%07d", i)
	}
	return ids
}
