package coordinator

import (
	"slices"
	"strings"
	"testing"
	"time"

	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
)

// coreStep is one event fed to the core at time `at` after the start, and
// the actions it must produce, in order.
type coreStep struct {
	at   time.Duration
	ev   Event
	want []string
}

const (
	yes      = decreev1.Vote_VOTE_YES
	no       = decreev1.Vote_VOTE_NO
	readOnly = decreev1.Vote_VOTE_READ_ONLY
	oneDone  = decreev1.Vote_VOTE_COMMITTED
	commitO  = decreev1.Outcome_OUTCOME_COMMITTED
	abortO   = decreev1.Outcome_OUTCOME_ABORTED
)

func commitReq(req uint64, id string, parts ...string) ClientCommit {
	e := ClientCommit{Req: req, ID: id}
	for _, p := range parts {
		e.Branches = append(e.Branches, BranchSpec{Participant: p, Payload: []byte("x")})
	}
	return e
}

func vote(id, p string, v decreev1.Vote) VoteReceived {
	return VoteReceived{ID: id, Participant: p, Term: 2, Vote: v, Reason: "no funds"}
}

func applied(id string, o decreev1.Outcome, reason string, parts ...string) DecisionApplied {
	return DecisionApplied{ID: id, Term: 2, Outcome: o, Reason: reason, Participants: parts}
}

var becomeLeader = coreStep{ev: LeadershipChanged{Leader: true, Term: 2}, want: []string{"load unfinished (term 2)"}}

func TestCoreSequences(t *testing.T) {
	for name, steps := range map[string][]coreStep{
		"all yes commits, then finishes in a batch": {
			becomeLeader,
			{ev: commitReq(1, "t1", "a", "b"), want: []string{"prepare t1 -> a (2pc, term 2)", "prepare t1 -> b (2pc, term 2)"}},
			{ev: vote("t1", "a", yes)},
			{ev: vote("t1", "b", yes), want: []string{"propose decide t1 committed [a b]"}},
			{ev: applied("t1", commitO, "", "a", "b"), want: []string{"reply 1 t1 committed", "commit t1 -> a (term 2)", "commit t1 -> b (term 2)"}},
			{ev: Acked{ID: "t1", Participant: "a", Term: 2}},
			{ev: Acked{ID: "t1", Participant: "b", Term: 2}},
			{at: 10 * time.Millisecond, ev: Tick{}},
			{at: 20 * time.Millisecond, ev: Tick{}, want: []string{"propose finished t1"}},
		},
		"one no aborts at once; the no voter needs no abort": {
			becomeLeader,
			{ev: commitReq(1, "t1", "a", "b"), want: []string{"prepare t1 -> a (2pc, term 2)", "prepare t1 -> b (2pc, term 2)"}},
			{ev: vote("t1", "a", no), want: []string{"propose decide t1 aborted [a b]: a voted no: no funds"}},
			{ev: vote("t1", "b", yes)},
			{ev: applied("t1", abortO, "a voted no: no funds", "a", "b"), want: []string{"reply 1 t1 aborted: a voted no: no funds", "abort t1 -> b (term 2)"}},
		},
		"prepare timeout aborts and names the silent participant": {
			becomeLeader,
			{ev: commitReq(1, "t1", "a", "b"), want: []string{"prepare t1 -> a (2pc, term 2)", "prepare t1 -> b (2pc, term 2)"}},
			{ev: vote("t1", "a", yes)},
			{at: 4999 * time.Millisecond, ev: Tick{}},
			{at: 5 * time.Second, ev: Tick{}, want: []string{"propose decide t1 aborted [a b]: prepare timed out after 5s waiting for [b]"}},
			{ev: applied("t1", abortO, "timeout", "a", "b"), want: []string{"reply 1 t1 aborted: timeout", "abort t1 -> a (term 2)", "abort t1 -> b (term 2)"}},
		},
		"prepare error aborts": {
			becomeLeader,
			{ev: commitReq(1, "t1", "a", "b"), want: []string{"prepare t1 -> a (2pc, term 2)", "prepare t1 -> b (2pc, term 2)"}},
			{ev: PrepareFailed{ID: "t1", Participant: "b", Term: 2, Err: "connection refused"}, want: []string{"propose decide t1 aborted [a b]: b failed to prepare: connection refused"}},
		},
		"one phase to a non-participant aborts without asking it": {
			becomeLeader,
			{ev: commitReq(1, "t1", "a"), want: []string{"prepare t1 -> a (1pc, term 2)"}},
			{ev: PrepareFailed{ID: "t1", Participant: "a", Term: 2, Err: "unknown service", Refused: true},
				want: []string{"propose decide t1 aborted [a]: a is not a participant: unknown service"}},
			{ev: applied("t1", abortO, "a is not a participant", "a"), want: []string{"reply 1 t1 aborted: a is not a participant"}},
			{at: 20 * time.Millisecond, ev: Tick{}, want: []string{"propose finished t1"}},
		},
		"two phase: a non-participant is a no, and gets no abort": {
			becomeLeader,
			{ev: commitReq(1, "t1", "a", "b"), want: []string{"prepare t1 -> a (2pc, term 2)", "prepare t1 -> b (2pc, term 2)"}},
			{ev: vote("t1", "a", yes)},
			{ev: PrepareFailed{ID: "t1", Participant: "b", Term: 2, Err: "unknown service", Refused: true},
				want: []string{"propose decide t1 aborted [a b]: b is not a participant: unknown service"}},
			{ev: applied("t1", abortO, "b is not a participant", "a", "b"), want: []string{"reply 1 t1 aborted: b is not a participant", "abort t1 -> a (term 2)"}},
			{ev: Acked{ID: "t1", Participant: "a", Term: 2}},
			{at: 20 * time.Millisecond, ev: Tick{}, want: []string{"propose finished t1"}},
		},
		"one phase whose resolve meets a non-participant keeps asking: its prepare may have committed elsewhere": {
			becomeLeader,
			{ev: commitReq(1, "t1", "a"), want: []string{"prepare t1 -> a (1pc, term 2)"}},
			{ev: PrepareFailed{ID: "t1", Participant: "a", Term: 2, Err: "deadline exceeded"}, want: []string{"resolve t1 at a (term 2)"}},
			{ev: ParticipantResolved{ID: "t1", Participant: "a", Term: 2, Err: "unknown service"}},
			{at: 50 * time.Millisecond, ev: Tick{}, want: []string{"resolve t1 at a (term 2)"}},
		},
		"read-only voter takes no part in phase 2": {
			becomeLeader,
			{ev: commitReq(1, "t1", "a", "b"), want: []string{"prepare t1 -> a (2pc, term 2)", "prepare t1 -> b (2pc, term 2)"}},
			{ev: vote("t1", "a", readOnly)},
			{ev: vote("t1", "b", yes), want: []string{"propose decide t1 committed [a b]"}},
			{ev: applied("t1", commitO, "", "a", "b"), want: []string{"reply 1 t1 committed", "commit t1 -> b (term 2)"}},
		},
		"one phase: the participant's commit is the outcome": {
			becomeLeader,
			{ev: commitReq(1, "t1", "a"), want: []string{"prepare t1 -> a (1pc, term 2)"}},
			{ev: vote("t1", "a", oneDone), want: []string{"reply 1 t1 committed", "propose decide t1 committed [a]"}},
			{ev: applied("t1", commitO, "", "a")},
			{at: 20 * time.Millisecond, ev: Tick{}, want: []string{"propose finished t1"}},
		},
		"one phase that votes no aborts after the decision applies": {
			becomeLeader,
			{ev: commitReq(1, "t1", "a"), want: []string{"prepare t1 -> a (1pc, term 2)"}},
			{ev: vote("t1", "a", no), want: []string{"propose decide t1 aborted [a]: a voted no: no funds"}},
			{ev: applied("t1", abortO, "a voted no: no funds", "a"), want: []string{"reply 1 t1 aborted: a voted no: no funds"}},
		},
		"one phase whose prepare got no answer asks the participant: committed": {
			becomeLeader,
			{ev: commitReq(1, "t1", "a"), want: []string{"prepare t1 -> a (1pc, term 2)"}},
			{ev: PrepareFailed{ID: "t1", Participant: "a", Term: 2, Err: "deadline exceeded"}, want: []string{"resolve t1 at a (term 2)"}},
			{ev: ParticipantResolved{ID: "t1", Participant: "a", Term: 2, Err: "unavailable"}},
			{at: 50 * time.Millisecond, ev: Tick{}, want: []string{"resolve t1 at a (term 2)"}},
			{ev: ParticipantResolved{ID: "t1", Participant: "a", Term: 2, State: decreev1.ParticipantState_PARTICIPANT_STATE_COMMITTED},
				want: []string{"reply 1 t1 committed", "propose decide t1 committed [a]"}},
			{ev: applied("t1", commitO, "", "a")},
			{at: 70 * time.Millisecond, ev: Tick{}, want: []string{"propose finished t1"}},
		},
		"one phase silent past the timeout asks the participant: aborted": {
			becomeLeader,
			{ev: commitReq(1, "t1", "a"), want: []string{"prepare t1 -> a (1pc, term 2)"}},
			{at: 5 * time.Second, ev: Tick{}, want: []string{"resolve t1 at a (term 2)"}},
			{ev: ParticipantResolved{ID: "t1", Participant: "a", Term: 2, State: decreev1.ParticipantState_PARTICIPANT_STATE_ABORTED},
				want: []string{"propose decide t1 aborted [a]: prepare timed out after 5s waiting for [a]"}},
			{ev: applied("t1", abortO, "timeout", "a"), want: []string{"reply 1 t1 aborted: timeout"}},
		},
		"one phase: a late vote settles it before the resolve answers": {
			becomeLeader,
			{ev: commitReq(1, "t1", "a"), want: []string{"prepare t1 -> a (1pc, term 2)"}},
			{ev: PrepareFailed{ID: "t1", Participant: "a", Term: 2, Err: "timeout"}, want: []string{"resolve t1 at a (term 2)"}},
			{ev: vote("t1", "a", oneDone), want: []string{"reply 1 t1 committed", "propose decide t1 committed [a]"}},
			{ev: ParticipantResolved{ID: "t1", Participant: "a", Term: 2, State: decreev1.ParticipantState_PARTICIPANT_STATE_COMMITTED}},
		},
		"duplicate, stale and stray votes change nothing": {
			becomeLeader,
			{ev: commitReq(1, "t1", "a", "b"), want: []string{"prepare t1 -> a (2pc, term 2)", "prepare t1 -> b (2pc, term 2)"}},
			{ev: vote("t1", "b", yes)},
			{ev: vote("t1", "b", yes)},
			{ev: vote("t1", "zz", no)},
			{ev: VoteReceived{ID: "t1", Participant: "a", Term: 1, Vote: no}},
			{ev: vote("nope", "a", no)},
			{ev: vote("t1", "a", yes), want: []string{"propose decide t1 committed [a b]"}},
			{ev: vote("t1", "a", no)},
		},
		"a retried commit joins the transaction in flight": {
			becomeLeader,
			{ev: commitReq(1, "t1", "a", "b"), want: []string{"prepare t1 -> a (2pc, term 2)", "prepare t1 -> b (2pc, term 2)"}},
			{ev: commitReq(2, "t1", "a", "b")},
			{ev: vote("t1", "a", yes)},
			{ev: vote("t1", "b", yes), want: []string{"propose decide t1 committed [a b]"}},
			{ev: applied("t1", commitO, "", "a", "b"), want: []string{"reply 1 t1 committed", "reply 2 t1 committed", "commit t1 -> a (term 2)", "commit t1 -> b (term 2)"}},
			{ev: commitReq(3, "t1", "a", "b"), want: []string{"reply 3 t1 committed"}},
		},
		"leadership lost mid-vote: clients told to ask, late votes ignored": {
			becomeLeader,
			{ev: commitReq(1, "t1", "a", "b"), want: []string{"prepare t1 -> a (2pc, term 2)", "prepare t1 -> b (2pc, term 2)"}},
			{ev: vote("t1", "a", yes)},
			{ev: LeadershipChanged{Leader: false, Term: 3}, want: []string{"reply 1 t1 error: this coordinator is not the leader"}},
			{ev: vote("t1", "b", yes)},
			{ev: commitReq(2, "t2", "a"), want: []string{"reply 2 t2 error: this coordinator is not the leader"}},
		},
		"a conflicting decision applied first wins": {
			becomeLeader,
			{ev: commitReq(1, "t1", "a", "b"), want: []string{"prepare t1 -> a (2pc, term 2)", "prepare t1 -> b (2pc, term 2)"}},
			{ev: vote("t1", "a", yes)},
			{ev: vote("t1", "b", yes), want: []string{"propose decide t1 committed [a b]"}},
			{ev: applied("t1", abortO, "presumed abort", "a", "b"), want: []string{"reply 1 t1 aborted: presumed abort", "abort t1 -> a (term 2)", "abort t1 -> b (term 2)"}},
		},
		"failed proposal is retried with backoff": {
			becomeLeader,
			{ev: commitReq(1, "t1", "a"), want: []string{"prepare t1 -> a (1pc, term 2)"}},
			{ev: vote("t1", "a", no), want: []string{"propose decide t1 aborted [a]: a voted no: no funds"}},
			{ev: ProposeFailed{ID: "t1", Term: 2, Err: "timeout"}},
			{at: 49 * time.Millisecond, ev: Tick{}},
			{at: 50 * time.Millisecond, ev: Tick{}, want: []string{"propose decide t1 aborted [a]: a voted no: no funds"}},
		},
		"phase-2 delivery retries with exponential backoff until acked": {
			becomeLeader,
			{ev: Recovered{Term: 2, Txns: []RecoveredTxn{{ID: "t9", Outcome: commitO, Participants: []string{"a"}}}}, want: []string{"commit t9 -> a (term 2)"}},
			{ev: DeliveryFailed{ID: "t9", Participant: "a", Term: 2, Err: "unavailable"}},
			{at: 50 * time.Millisecond, ev: Tick{}, want: []string{"commit t9 -> a (term 2)"}},
			{at: 60 * time.Millisecond, ev: DeliveryFailed{ID: "t9", Participant: "a", Term: 2}},
			{at: 159 * time.Millisecond, ev: Tick{}},
			{at: 160 * time.Millisecond, ev: Tick{}, want: []string{"commit t9 -> a (term 2)"}},
			{at: 170 * time.Millisecond, ev: Acked{ID: "t9", Participant: "a", Term: 2}},
			{at: 190 * time.Millisecond, ev: Tick{}, want: []string{"propose finished t9"}},
		},
		"new leader resumes phase 2 of recovered decisions only for its term": {
			{ev: LeadershipChanged{Leader: true, Term: 3}, want: []string{"load unfinished (term 3)"}},
			{ev: Recovered{Term: 2, Txns: []RecoveredTxn{{ID: "old", Outcome: commitO, Participants: []string{"a"}}}}},
			{ev: Recovered{Term: 3, Txns: []RecoveredTxn{{ID: "t9", Outcome: abortO, Participants: []string{"a", "b"}}}}, want: []string{"abort t9 -> a (term 3)", "abort t9 -> b (term 3)"}},
			{ev: Acked{ID: "t9", Participant: "a", Term: 2}},
		},
		"not leader refuses commits": {
			{ev: commitReq(1, "t1", "a"), want: []string{"reply 1 t1 error: this coordinator is not the leader"}},
		},
		"presumed abort proposed by the driver gets its phase 2": {
			becomeLeader,
			{ev: applied("px", abortO, "presumed abort", "a"), want: []string{"abort px -> a (term 2)"}},
			{ev: Acked{ID: "px", Participant: "a", Term: 2}},
			{at: 20 * time.Millisecond, ev: Tick{}, want: []string{"propose finished px"}},
		},
		"old records are collected every minute, unfinished ones rescanned every 30s": {
			becomeLeader,
			{at: 29 * time.Second, ev: Tick{}},
			{at: 30 * time.Second, ev: Tick{}, want: []string{"load unfinished (term 2)"}},
			{at: 59 * time.Second, ev: Tick{}},
			{at: 60 * time.Second, ev: Tick{}, want: []string{"propose collect before -86340000000000", "load unfinished (term 2)"}},
		},
		"a collect that left expired records is followed by another at the next tick": {
			becomeLeader,
			{at: 60 * time.Second, ev: Tick{}, want: []string{"propose collect before -86340000000000", "load unfinished (term 2)"}},
			{at: 61 * time.Second, ev: CollectApplied{Term: 2, More: true}},
			{at: 61 * time.Second, ev: Tick{}, want: []string{"propose collect before -86339000000000"}},
			{at: 62 * time.Second, ev: CollectApplied{Term: 1, More: true}}, // an earlier leadership's
			{at: 62 * time.Second, ev: Tick{}},
			{at: 63 * time.Second, ev: CollectApplied{Term: 2, More: false}},
			{at: 63 * time.Second, ev: Tick{}},
			{at: 121 * time.Second, ev: Tick{}, want: []string{"propose collect before -86279000000000", "load unfinished (term 2)"}},
		},
	} {
		t.Run(name, func(t *testing.T) { runCore(t, CoreConfig{}, steps) })
	}
}

func runCore(t *testing.T, cfg CoreConfig, steps []coreStep) {
	t.Helper()
	c := NewCore(cfg)
	start := time.Unix(0, 0)
	for i, s := range steps {
		got := actionStrings(c.Step(start.Add(s.at), s.ev))
		if !slices.Equal(got, s.want) {
			t.Fatalf("step %d (%T %+v):\n got  %s\n want %s", i, s.ev, s.ev, show(got), show(s.want))
		}
	}
}

func actionStrings(as []Action) []string {
	var out []string
	for _, a := range as {
		out = append(out, a.String())
	}
	return out
}

func show(ss []string) string {
	if len(ss) == 0 {
		return "(nothing)"
	}
	return "\n    " + strings.Join(ss, "\n    ")
}

func TestCoreRefusesTransactionsPastItsLimits(t *testing.T) {
	big := func(req uint64, id string, n int, parts ...string) ClientCommit {
		e := ClientCommit{Req: req, ID: id}
		for _, p := range parts {
			e.Branches = append(e.Branches, BranchSpec{Participant: p, Payload: make([]byte, n)})
		}
		return e
	}
	for name, tc := range map[string]struct {
		cfg   CoreConfig
		steps []coreStep
	}{
		"in flight": {cfg: CoreConfig{MaxInFlight: 1}, steps: []coreStep{
			becomeLeader,
			{ev: commitReq(1, "t1", "a"), want: []string{"prepare t1 -> a (1pc, term 2)"}},
			{ev: commitReq(2, "t2", "a"), want: []string{"reply 2 t2 error: the leader is at its limit: 1 transactions in flight (limit 1); retry later"}},
			// A retry of the transaction in flight joins it.
			{ev: commitReq(3, "t1", "a")},
			{ev: vote("t1", "a", no), want: []string{"propose decide t1 aborted [a]: a voted no: no funds"}},
			{ev: applied("t1", abortO, "no", "a"), want: []string{"reply 1 t1 aborted: no", "reply 3 t1 aborted: no"}},
			// In phase 2 it no longer counts.
			{ev: commitReq(4, "t2", "a"), want: []string{"prepare t2 -> a (1pc, term 2)"}},
		}},
		"payload bytes held": {cfg: CoreConfig{MaxHeldBytes: 100}, steps: []coreStep{
			becomeLeader,
			// One transaction alone always runs, whatever its size.
			{ev: big(1, "t1", 150, "a"), want: []string{"prepare t1 -> a (1pc, term 2)"}},
			{ev: big(2, "t2", 1, "b"), want: []string{"reply 2 t2 error: the leader is at its limit: 150 payload bytes held for prepares, 1 more exceed the limit of 100; retry later"}},
			{ev: vote("t1", "a", oneDone), want: []string{"reply 1 t1 committed", "propose decide t1 committed [a]"}},
			{ev: applied("t1", commitO, "", "a")},
			{ev: big(3, "t3", 60, "a", "b"), want: []string{"prepare t3 -> a (2pc, term 2)", "prepare t3 -> b (2pc, term 2)"}},
			{ev: big(4, "t4", 50, "c"), want: []string{"reply 4 t4 error: the leader is at its limit: 120 payload bytes held for prepares, 50 more exceed the limit of 100; retry later"}},
			// A lost leadership releases everything it held.
			{ev: LeadershipChanged{Leader: false, Term: 3}, want: []string{"reply 3 t3 error: this coordinator is not the leader"}},
			{ev: LeadershipChanged{Leader: true, Term: 4}, want: []string{"load unfinished (term 4)"}},
			{ev: big(5, "t5", 100, "c"), want: []string{"prepare t5 -> c (1pc, term 4)"}},
		}},
	} {
		t.Run(name, func(t *testing.T) { runCore(t, tc.cfg, tc.steps) })
	}
}

func TestCoreFinishedBatchesBySize(t *testing.T) {
	c := NewCore(CoreConfig{FinishBatch: 2})
	now := time.Unix(0, 0)
	c.Step(now, LeadershipChanged{Leader: true, Term: 2})
	var got []string
	for _, id := range []string{"x", "y", "z"} {
		got = append(got, actionStrings(c.Step(now, applied(id, abortO, "")))...)
	}
	want := []string{"propose finished x y"}
	if !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

func TestIsForgotten(t *testing.T) {
	good := "01890a5d-ac96-774b-bcce-b302099a8057"
	ts := time.UnixMilli(0x01890a5dac96)
	if !isForgotten(good, ts.UnixNano()+1) || isForgotten(good, ts.UnixNano()) || isForgotten(good, 0) {
		t.Fatal("isForgotten compares the id's time with the horizon")
	}
	if isForgotten("not-a-uuid", ts.UnixNano()+1) {
		t.Fatal("an id that does not parse is never forgotten")
	}
}

func TestCoreParallelCommit(t *testing.T) {
	prepared := decreev1.ParticipantState_PARTICIPANT_STATE_PREPARED
	abortedSt := decreev1.ParticipantState_PARTICIPANT_STATE_ABORTED
	resolved := func(id, p string, st decreev1.ParticipantState) ParticipantResolved {
		return ParticipantResolved{ID: id, Participant: p, Term: 2, State: st}
	}
	staged := func(id string) StagedApplied { return StagedApplied{ID: id, Term: 2} }
	start := []coreStep{
		becomeLeader,
		{ev: commitReq(1, "t1", "a", "b"), want: []string{"prepare t1 -> a (2pc, term 2)", "prepare t1 -> b (2pc, term 2)", "propose staged t1 [a b]"}},
	}
	for name, steps := range map[string][]coreStep{
		"staged, then every yes: committed at once, phase 2 at once, no second round": append(start[:2:2],
			coreStep{ev: staged("t1")},
			coreStep{ev: vote("t1", "a", yes)},
			coreStep{ev: vote("t1", "b", yes), want: []string{"reply 1 t1 committed", "commit t1 -> a (term 2)", "commit t1 -> b (term 2)"}},
			coreStep{ev: Acked{ID: "t1", Participant: "a", Term: 2}},
			coreStep{ev: Acked{ID: "t1", Participant: "b", Term: 2}},
			coreStep{at: 20 * time.Millisecond, ev: Tick{}, want: []string{"propose finished t1"}},
		),
		"every yes, then staged: committed when the stage applies": append(start[:2:2],
			coreStep{ev: vote("t1", "a", yes)},
			coreStep{ev: vote("t1", "b", yes), want: []string{"propose decide t1 committed [a b]"}},
			coreStep{ev: staged("t1"), want: []string{"reply 1 t1 committed"}},
			coreStep{ev: applied("t1", commitO, "", "a", "b"), want: []string{"commit t1 -> a (term 2)", "commit t1 -> b (term 2)"}},
		),
		"a no vote aborts as in classic 2PC": append(start[:2:2],
			coreStep{ev: staged("t1")},
			coreStep{ev: vote("t1", "a", no), want: []string{"propose decide t1 aborted [a b]: a voted no: no funds"}},
			coreStep{ev: applied("t1", abortO, "a voted no", "a", "b"), want: []string{"reply 1 t1 aborted: a voted no", "abort t1 -> b (term 2)"}},
		),
		"a decision applied before the stage wins": append(start[:2:2],
			coreStep{ev: StagedApplied{ID: "t1", Term: 2, Outcome: abortO, Reason: "presumed abort"},
				want: []string{"reply 1 t1 aborted: presumed abort", "abort t1 -> a (term 2)", "abort t1 -> b (term 2)"}},
			coreStep{ev: vote("t1", "a", yes)},
		),
		"a new leader commits a staged transaction every participant prepared": {
			becomeLeader,
			{ev: Recovered{Term: 2, Staged: []RecoveredTxn{{ID: "t9", Participants: []string{"a", "b"}}}},
				want: []string{"resolve t9 at a (term 2)", "resolve t9 at b (term 2)"}},
			{ev: commitReq(5, "t9", "a", "b")},
			{ev: resolved("t9", "a", prepared)},
			{ev: resolved("t9", "b", prepared), want: []string{"propose decide t9 committed [a b]"}},
			{ev: applied("t9", commitO, "", "a", "b"), want: []string{"reply 5 t9 committed", "commit t9 -> a (term 2)", "commit t9 -> b (term 2)"}},
		},
		"a new leader aborts a staged transaction a participant never voted on": {
			becomeLeader,
			{ev: RecoverStaged{ID: "t9", Participants: []string{"a", "b"}}, want: []string{"resolve t9 at a (term 2)", "resolve t9 at b (term 2)"}},
			{ev: ParticipantResolved{ID: "t9", Participant: "b", Term: 2, Err: "unavailable"}},
			{ev: resolved("t9", "a", prepared)},
			{at: 50 * time.Millisecond, ev: Tick{}, want: []string{"resolve t9 at b (term 2)"}},
			{ev: resolved("t9", "b", abortedSt), want: []string{"propose decide t9 aborted [a b]: recovered a staged transaction: b had not voted yes"}},
			{ev: applied("t9", abortO, "recovered", "a", "b"), want: []string{"abort t9 -> a (term 2)"}},
		},
	} {
		t.Run(name, func(t *testing.T) { runCore(t, CoreConfig{ParallelCommit: true}, steps) })
	}
}

func TestCoreParallelCommitNeverAbortsAStagedTransactionOnAFailure(t *testing.T) {
	prepared := decreev1.ParticipantState_PARTICIPANT_STATE_PREPARED
	staged := DecisionApplied{ID: "t1", Term: 2, Outcome: decreev1.Outcome_OUTCOME_UNSPECIFIED, Participants: []string{"a", "b"}}
	for name, steps := range map[string][]coreStep{
		"a prepare timeout aborts only if nothing was staged; else the votes decide": {
			becomeLeader,
			{ev: commitReq(1, "t1", "a", "b"), want: []string{"prepare t1 -> a (2pc, term 2)", "prepare t1 -> b (2pc, term 2)", "propose staged t1 [a b]"}},
			{ev: StagedApplied{ID: "t1", Term: 2}},
			{ev: vote("t1", "a", yes)},
			{at: 5 * time.Second, ev: Tick{}, want: []string{"propose decide t1 aborted [a b] (presumed): prepare timed out after 5s waiting for [b]"}},
			{ev: staged, want: []string{"resolve t1 at a (term 2)", "resolve t1 at b (term 2)"}},
			{ev: ParticipantResolved{ID: "t1", Participant: "a", Term: 2, State: prepared}},
			{ev: ParticipantResolved{ID: "t1", Participant: "b", Term: 2, State: prepared}, want: []string{"propose decide t1 committed [a b]"}},
			{ev: applied("t1", commitO, "", "a", "b"), want: []string{"reply 1 t1 committed", "commit t1 -> a (term 2)", "commit t1 -> b (term 2)"}},
		},
		"a commit of a staged transaction joins its recovery instead of voting again": {
			becomeLeader,
			{ev: ClientCommit{Req: 1, ID: "t1", Branches: []BranchSpec{{Participant: "a"}, {Participant: "b"}}, Staged: true},
				want: []string{"resolve t1 at a (term 2)", "resolve t1 at b (term 2)"}},
			{ev: ParticipantResolved{ID: "t1", Participant: "a", Term: 2, State: prepared}},
			{ev: ParticipantResolved{ID: "t1", Participant: "b", Term: 2, State: prepared}, want: []string{"propose decide t1 committed [a b]"}},
			{ev: applied("t1", commitO, "", "a", "b"), want: []string{"reply 1 t1 committed", "commit t1 -> a (term 2)", "commit t1 -> b (term 2)"}},
		},
	} {
		t.Run(name, func(t *testing.T) { runCore(t, CoreConfig{ParallelCommit: true}, steps) })
	}
}

// TestCoreBranchesReachingOneParticipant: two branches whose votes carry
// the same participant identity are one participant under two addresses.
// It would take the second prepare for a repeat of the first, so the
// transaction must abort, whatever the votes, and never commit implicitly
// (parallel commit) or on recovery.
func TestCoreBranchesReachingOneParticipant(t *testing.T) {
	prepared := decreev1.ParticipantState_PARTICIPANT_STATE_PREPARED
	as := func(v VoteReceived, pid string) VoteReceived { v.ParticipantID = pid; return v }
	resolvedAs := func(id, p, pid string) ParticipantResolved {
		return ParticipantResolved{ID: id, Participant: p, Term: 2, State: prepared, ParticipantID: pid}
	}
	alias := "branches a and b reach the same participant (identity P); give each participant one branch"
	classic := map[string][]coreStep{
		"two yes votes from one participant abort, naming both branches": {
			becomeLeader,
			{ev: commitReq(1, "t1", "a", "b", "c"), want: []string{"prepare t1 -> a (2pc, term 2)", "prepare t1 -> b (2pc, term 2)", "prepare t1 -> c (2pc, term 2)"}},
			{ev: as(vote("t1", "a", yes), "P")},
			{ev: as(vote("t1", "c", yes), "Q")},
			{ev: as(vote("t1", "b", yes), "P"), want: []string{"propose decide t1 aborted [a b c]: " + alias}},
			{ev: applied("t1", abortO, alias, "a", "b", "c"), want: []string{"reply 1 t1 aborted: " + alias, "abort t1 -> a (term 2)", "abort t1 -> c (term 2)"}},
		},
		"distinct identities commit": {
			becomeLeader,
			{ev: commitReq(1, "t1", "a", "b"), want: []string{"prepare t1 -> a (2pc, term 2)", "prepare t1 -> b (2pc, term 2)"}},
			{ev: as(vote("t1", "a", yes), "P")},
			{ev: as(vote("t1", "b", yes), "Q"), want: []string{"propose decide t1 committed [a b]"}},
		},
	}
	for name, steps := range classic {
		t.Run(name, func(t *testing.T) { runCore(t, CoreConfig{}, steps) })
	}
	parallel := map[string][]coreStep{
		"staged, then two yes votes from one participant: no implicit commit": {
			becomeLeader,
			{ev: commitReq(1, "t1", "a", "b"), want: []string{"prepare t1 -> a (2pc, term 2)", "prepare t1 -> b (2pc, term 2)", "propose staged t1 [a b]"}},
			{ev: StagedApplied{ID: "t1", Term: 2}},
			{ev: as(vote("t1", "a", yes), "P")},
			{ev: as(vote("t1", "b", yes), "P"), want: []string{"propose decide t1 aborted [a b]: " + alias}},
			{ev: applied("t1", abortO, alias, "a", "b"), want: []string{"reply 1 t1 aborted: " + alias, "abort t1 -> a (term 2)"}},
		},
		"two yes votes from one participant, then staged: still no commit": {
			becomeLeader,
			{ev: commitReq(1, "t1", "a", "b"), want: []string{"prepare t1 -> a (2pc, term 2)", "prepare t1 -> b (2pc, term 2)", "propose staged t1 [a b]"}},
			{ev: as(vote("t1", "a", yes), "P")},
			{ev: as(vote("t1", "b", yes), "P"), want: []string{"propose decide t1 aborted [a b]: " + alias}},
			{ev: StagedApplied{ID: "t1", Term: 2}},
			{ev: applied("t1", abortO, alias, "a", "b"), want: []string{"reply 1 t1 aborted: " + alias, "abort t1 -> a (term 2)"}},
		},
		"a new leader aborts a staged transaction whose branches resolve as one participant": {
			becomeLeader,
			{ev: RecoverStaged{ID: "t9", Participants: []string{"a", "b"}}, want: []string{"resolve t9 at a (term 2)", "resolve t9 at b (term 2)"}},
			{ev: resolvedAs("t9", "a", "P")},
			{ev: resolvedAs("t9", "b", "P"), want: []string{"propose decide t9 aborted [a b]: recovered a staged transaction: " + alias}},
			{ev: applied("t9", abortO, "recovered", "a", "b"), want: []string{"abort t9 -> a (term 2)"}},
		},
	}
	for name, steps := range parallel {
		t.Run(name, func(t *testing.T) { runCore(t, CoreConfig{ParallelCommit: true}, steps) })
	}
}
