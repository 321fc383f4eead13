package coordinator

import (
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

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
	c := NewCore(CoreConfig{})
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

// The driver logs the events the core ignores with their transaction and
// kind, at most once per kind and reason every dropLogEvery, counting the
// lines it held back; one no correct driver feeds is a warning.
func TestDriverLogsIgnoredEventsRateLimited(t *testing.T) {
	var logs strings.Builder
	clock := &stepClock{now: time.Unix(1000, 0)}
	d := &Driver{cfg: DriverConfig{Clock: clock}, core: NewCore(CoreConfig{}),
		log: zerolog.New(&logs).Level(zerolog.DebugLevel)}
	for range 3 {
		d.step(vote("t1", "a", yes)) // not leader: stale
	}
	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	if len(lines) != 1 || !strings.Contains(lines[0], `"level":"debug"`) || !strings.Contains(lines[0], `"event":"VoteReceived"`) ||
		!strings.Contains(lines[0], `"txn":"t1"`) || !strings.Contains(lines[0], `"also_dropped":0`) {
		t.Fatalf("after 3 stale votes within a second, want one debug line naming the event and txn: %q", lines)
	}
	d.step(Acked{ID: "t2", Participant: "a", Term: 2}) // another kind has its own budget
	clock.advance(dropLogEvery)
	d.step(vote("t3", "a", yes))
	lines = strings.Split(strings.TrimSpace(logs.String()), "\n")
	if len(lines) != 3 || !strings.Contains(lines[1], `"event":"Acked"`) || !strings.Contains(lines[2], `"txn":"t3"`) ||
		!strings.Contains(lines[2], `"also_dropped":2`) {
		t.Fatalf("want an Acked line, then after %v a VoteReceived line counting the 2 held back: %q", dropLogEvery, lines)
	}

	// Straight to the core: this driver has no node or participant links
	// to carry out the actions.
	d.core.Step(clock.Now(), LeadershipChanged{Leader: true, Term: 2})
	d.core.Step(clock.Now(), commitReq(1, "t4", "a"))
	d.step(vote("t4", "z", yes))
	if last := lastLine(logs.String()); !strings.Contains(last, `"level":"warn"`) || !strings.Contains(last, dropUnknownParticipant) {
		t.Fatalf("a vote from a participant the transaction lacks: %q, want a warning", last)
	}
	if got := d.core.Stats().Dropped; got["VoteReceived"] != 5 || got["Acked"] != 1 {
		t.Fatalf("Dropped = %v, want 5 VoteReceived and 1 Acked", got)
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
