package twopc

import (
	"maps"
	"testing"
	"time"

	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
)

const yes, no = decreev1.Vote_VOTE_YES, decreev1.Vote_VOTE_NO

func vote(id, p string, v decreev1.Vote) VoteReceived {
	return VoteReceived{ID: id, Participant: p, Term: 2, Vote: v}
}

func commitReq(req uint64, id string, parts ...string) ClientCommit {
	e := ClientCommit{Req: req, ID: id}
	for _, p := range parts {
		e.Branches = append(e.Branches, BranchSpec{Participant: p, Payload: []byte("x")})
	}
	return e
}

func committed(id string, parts ...string) DecisionApplied {
	return DecisionApplied{ID: id, Term: 2, Outcome: decreev1.Outcome_OUTCOME_COMMITTED, Participants: parts}
}

// Every event the core ignores is counted per kind and reported with its
// transaction and reason; events it acts on are not.
func TestCoreCountsTheEventsItIgnores(t *testing.T) {
	c := New(Config{})
	now := time.Unix(0, 0)
	for i, s := range []struct {
		ev      Event
		dropped string // its Why, or "" when the core acts on it
		id      string
	}{
		{ev: vote("t0", "a", yes), dropped: dropStale, id: "t0"}, // not leader yet
		{ev: LeadershipChanged{Leader: true, Term: 2}},
		{ev: LeadershipChanged{Leader: true, Term: 2}}, // a repeat is a no-op, not a drop
		{ev: commitReq(1, "t1", "a", "b")},
		{ev: VoteReceived{ID: "t1", Participant: "a", Term: 1, Vote: yes}, dropped: dropStale, id: "t1"},
		{ev: vote("t1", "c", yes), dropped: dropUnknownParticipant, id: "t1"},
		{ev: vote("t9", "a", yes), dropped: dropUnknownTxn, id: "t9"},
		{ev: vote("t1", "a", yes)},
		{ev: vote("t1", "a", yes), dropped: dropRepeated, id: "t1"},
		{ev: PrepareFailed{ID: "t1", Participant: "a", Term: 2, Err: "late"}, dropped: dropRepeated, id: "t1"},
		{ev: vote("t1", "b", yes)},
		{ev: vote("t1", "b", no), dropped: dropWrongPhase, id: "t1"}, // deciding now
		{ev: Acked{ID: "t1", Participant: "a", Term: 2}, dropped: dropWrongPhase, id: "t1"},
		{ev: committed("t1", "a", "b")},
		{ev: committed("t1", "a", "b"), dropped: dropRepeated, id: "t1"},
		{ev: ProposeFailed{ID: "t1", Term: 2, Err: "late"}, dropped: dropWrongPhase, id: "t1"},
		{ev: Acked{ID: "t1", Participant: "a", Term: 2}},
		{ev: Acked{ID: "t1", Participant: "a", Term: 2}, dropped: dropRepeated, id: "t1"},
		{ev: DeliveryFailed{ID: "t1", Participant: "z", Term: 2}, dropped: dropUnknownParticipant, id: "t1"},
		{ev: StagedApplied{ID: "t1", Term: 2}, dropped: dropWrongPhase, id: "t1"},
		{ev: ParticipantResolved{ID: "t1", Participant: "a", Term: 2}, dropped: dropWrongPhase, id: "t1"},
		{ev: RecoverStaged{ID: "t1", Participants: []string{"a", "b"}}, dropped: dropSettling, id: "t1"},
		{ev: Acked{ID: "t1", Participant: "b", Term: 2}}, // finished: t1 leaves the core
		{ev: Acked{ID: "t1", Participant: "b", Term: 2}, dropped: dropUnknownTxn, id: "t1"},
		{ev: Recovered{Term: 1}, dropped: dropStale},
		{ev: CollectApplied{Term: 1, More: true}, dropped: dropStale},
		{ev: Tick{}},
	} {
		c.Step(now, s.ev)
		d, ok := c.LastDropped()
		if ok != (s.dropped != "") || d.Why != s.dropped || d.ID != s.id {
			t.Fatalf("step %d (%T %+v): dropped %v %+v, want %q for %q", i, s.ev, s.ev, ok, d, s.dropped, s.id)
		}
	}
	want := map[string]uint64{
		"VoteReceived": 6, "PrepareFailed": 1, "Acked": 3, "DecisionApplied": 1, "ProposeFailed": 1,
		"DeliveryFailed": 1, "StagedApplied": 1, "ParticipantResolved": 1, "RecoverStaged": 1,
		"Recovered": 1, "CollectApplied": 1,
	}
	if got := c.Stats().Dropped; !maps.Equal(got, want) {
		t.Fatalf("Stats().Dropped = %v\nwant %v", got, want)
	}
	if d, _ := c.LastDropped(); d.Kind != "" {
		t.Fatalf("LastDropped after a Tick = %+v, want nothing", d)
	}
	c.Step(now, vote("t9", "a", yes))
	if d, _ := c.LastDropped(); d.Kind != "VoteReceived" || d.Suspect() {
		t.Fatalf("LastDropped = %+v, want a VoteReceived, not suspect", d)
	}
}
