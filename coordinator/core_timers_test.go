package coordinator

import (
	"testing"
	"time"
)

func failed(id, p string) DeliveryFailed {
	return DeliveryFailed{ID: id, Participant: p, Term: 2, Err: "unavailable"}
}

// Timers fire in (due, id) order, not in id or arrival order, and only
// when due; phase-2 retries back off from RetryMin doubling to RetryMax.
func TestCoreTimers(t *testing.T) {
	cfg := CoreConfig{RetryMin: 50 * time.Millisecond, RetryMax: 200 * time.Millisecond, PrepareTimeout: time.Second}
	for name, steps := range map[string][]coreStep{
		"retries fire by due time, ties by id": {
			becomeLeader,
			{ev: applied("t2", commitO, "", "a"), want: []string{"commit t2 -> a (term 2)"}},
			{ev: applied("t1", commitO, "", "a"), want: []string{"commit t1 -> a (term 2)"}},
			{ev: applied("t3", commitO, "", "a"), want: []string{"commit t3 -> a (term 2)"}},
			{ev: failed("t3", "a")},
			{at: 10 * time.Millisecond, ev: failed("t2", "a")},
			{at: 10 * time.Millisecond, ev: failed("t1", "a")},
			{at: 49 * time.Millisecond, ev: Tick{}},
			// t3 was due first; t1 and t2 are due together and go by id.
			{at: 60 * time.Millisecond, ev: Tick{}, want: []string{"commit t3 -> a (term 2)", "commit t1 -> a (term 2)", "commit t2 -> a (term 2)"}},
			{at: 70 * time.Millisecond, ev: Tick{}},
		},
		"delivery retries back off from RetryMin to RetryMax": {
			becomeLeader,
			{ev: applied("t1", commitO, "", "a"), want: []string{"commit t1 -> a (term 2)"}},
			{ev: failed("t1", "a")},
			{at: 49 * time.Millisecond, ev: Tick{}},
			{at: 50 * time.Millisecond, ev: Tick{}, want: []string{"commit t1 -> a (term 2)"}},
			{at: 50 * time.Millisecond, ev: failed("t1", "a")},
			{at: 149 * time.Millisecond, ev: Tick{}},
			{at: 150 * time.Millisecond, ev: Tick{}, want: []string{"commit t1 -> a (term 2)"}},
			{at: 150 * time.Millisecond, ev: failed("t1", "a")},
			{at: 349 * time.Millisecond, ev: Tick{}},
			{at: 350 * time.Millisecond, ev: Tick{}, want: []string{"commit t1 -> a (term 2)"}},
			{at: 350 * time.Millisecond, ev: failed("t1", "a")},
			// Capped at RetryMax.
			{at: 549 * time.Millisecond, ev: Tick{}},
			{at: 550 * time.Millisecond, ev: Tick{}, want: []string{"commit t1 -> a (term 2)"}},
			{at: 550 * time.Millisecond, ev: Acked{ID: "t1", Participant: "a", Term: 2}},
			{at: 600 * time.Millisecond, ev: Tick{}, want: []string{"propose finished t1"}},
		},
		"a voting deadline and a retry of another transaction in one tick": {
			becomeLeader,
			{ev: commitReq(1, "t9", "a", "b"), want: []string{"prepare t9 -> a (2pc, term 2)", "prepare t9 -> b (2pc, term 2)"}},
			{at: 900 * time.Millisecond, ev: applied("t1", commitO, "", "a"), want: []string{"commit t1 -> a (term 2)"}},
			{at: 960 * time.Millisecond, ev: failed("t1", "a")},
			// t9's deadline (1s) is due before t1's retry (1.01s).
			{at: 1010 * time.Millisecond, ev: Tick{}, want: []string{
				"propose decide t9 aborted [a b]: prepare timed out after 1s waiting for [a b]",
				"commit t1 -> a (term 2)"}},
		},
		"a decided transaction's old voting deadline does nothing": {
			becomeLeader,
			{ev: commitReq(1, "t1", "a", "b"), want: []string{"prepare t1 -> a (2pc, term 2)", "prepare t1 -> b (2pc, term 2)"}},
			{ev: vote("t1", "a", yes)},
			{ev: vote("t1", "b", yes), want: []string{"propose decide t1 committed [a b]"}},
			{ev: applied("t1", commitO, "", "a", "b"), want: []string{"reply 1 t1 committed", "commit t1 -> a (term 2)", "commit t1 -> b (term 2)"}},
			{at: 2 * time.Second, ev: Tick{}},
		},
	} {
		t.Run(name, func(t *testing.T) { runCore(t, cfg, steps) })
	}
}

// Phase2Backlog lists the transactions waiting in phase 2, oldest first,
// with their age and deliveries; an acknowledged one leaves it.
func TestCorePhase2Backlog(t *testing.T) {
	c := NewCore(CoreConfig{RetryMin: time.Second, RetryMax: time.Second})
	start := time.Unix(1_700_000_000, 0)
	c.Step(start, LeadershipChanged{Leader: true, Term: 2})
	c.Step(start, Recovered{Term: 2, Txns: []RecoveredTxn{
		{ID: "old", Outcome: commitO, Participants: []string{"a"}, DecidedAt: start.Add(-time.Hour).UnixNano()}}})
	c.Step(start, applied("t1", commitO, "", "a", "b"))
	c.Step(start, failed("t1", "a"))
	c.Step(start.Add(time.Second), Tick{})
	c.Step(start.Add(2*time.Second), applied("t2", abortO, "", "a"))
	c.Step(start.Add(2*time.Second), Acked{ID: "t2", Participant: "a", Term: 2})
	got := c.Phase2Backlog()
	want := []Phase2Txn{{ID: "old", Age: time.Hour + 2*time.Second, Sends: 1}, {ID: "t1", Age: 2 * time.Second, Sends: 3}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("backlog %+v, want %+v", got, want)
	}
}
