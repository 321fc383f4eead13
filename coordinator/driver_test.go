package coordinator

import (
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/decree-tx/decree/coordinator/internal/twopc"
	"github.com/decree-tx/decree/internal/clock"
	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
)

func vote(id, p string) twopc.VoteReceived {
	return twopc.VoteReceived{ID: id, Participant: p, Term: 2, Vote: decreev1.Vote_VOTE_YES}
}

// The driver logs the events the core ignores with their transaction and
// kind, at most once per kind and reason every dropLogEvery, counting the
// lines it held back; one no correct driver feeds is a warning.
func TestDriverLogsIgnoredEventsRateLimited(t *testing.T) {
	var logs strings.Builder
	clk := clock.NewFake(time.Unix(1000, 0))
	d := &Driver{cfg: DriverConfig{Clock: clk}, core: twopc.New(twopc.Config{}),
		log: zerolog.New(&logs).Level(zerolog.DebugLevel)}
	for range 3 {
		d.step(vote("t1", "a")) // not leader: stale
	}
	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	if len(lines) != 1 || !strings.Contains(lines[0], `"level":"debug"`) || !strings.Contains(lines[0], `"event":"VoteReceived"`) ||
		!strings.Contains(lines[0], `"txn":"t1"`) || !strings.Contains(lines[0], `"also_dropped":0`) {
		t.Fatalf("after 3 stale votes within a second, want one debug line naming the event and txn: %q", lines)
	}
	d.step(twopc.Acked{ID: "t2", Participant: "a", Term: 2}) // another kind has its own budget
	clk.Advance(dropLogEvery)
	d.step(vote("t3", "a"))
	lines = strings.Split(strings.TrimSpace(logs.String()), "\n")
	if len(lines) != 3 || !strings.Contains(lines[1], `"event":"Acked"`) || !strings.Contains(lines[2], `"txn":"t3"`) ||
		!strings.Contains(lines[2], `"also_dropped":2`) {
		t.Fatalf("want an Acked line, then after %v a VoteReceived line counting the 2 held back: %q", dropLogEvery, lines)
	}

	// Straight to the core: this driver has no node or participant links
	// to carry out the actions.
	d.core.Step(clk.Now(), twopc.LeadershipChanged{Leader: true, Term: 2})
	d.core.Step(clk.Now(), twopc.ClientCommit{Req: 1, ID: "t4", Branches: []twopc.BranchSpec{{Participant: "a"}}})
	d.step(vote("t4", "z"))
	if last := lastLine(logs.String()); !strings.Contains(last, `"level":"warn"`) || !strings.Contains(last, "no such participant") {
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
