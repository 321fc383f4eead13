package participant_test

import (
	"context"
	"reflect"
	"testing"
	"time"

	"github.com/decree-tx/decree/participant"
	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
	"github.com/decree-tx/decree/txlog"
)

const (
	outcomeCommitted = decreev1.TxnState_TXN_STATE_COMMITTED
	outcomeAborted   = decreev1.TxnState_TXN_STATE_ABORTED
	outcomeForgotten = decreev1.TxnState_TXN_STATE_FORGOTTEN
)

// TestRestartResolvesInDoubtThroughCoordinators prepares transactions,
// restarts the participant over the same log, and checks that they are in
// doubt and resolved only as the coordinators say, the first (unreachable)
// endpoint failing over to the second.
func TestRestartResolvesInDoubtThroughCoordinators(t *testing.T) {
	dir := t.TempDir()
	log := openLog(t, dir)
	r := &kvResource{}
	p := newParticipant(t, r, participant.Options{Log: log})
	ids := []string{"t-abort", "t-commit", "t-forgotten", "t-later"}
	for i, id := range ids {
		kv := string(rune('a'+i)) + "=" + id
		if resp, err := p.Server().Prepare(context.Background(), prepareReq(tid(id), "set "+kv, 1)); err != nil || resp.GetVote() != yes {
			t.Fatalf("prepare %s: %v %v", id, resp, err)
		}
	}
	p.Stop()
	if err := log.Close(); err != nil {
		t.Fatal(err)
	}

	coord := &fakeCoordinator{outcomes: map[string]decreev1.TxnState{
		tid("t-commit"): outcomeCommitted, tid("t-abort"): outcomeAborted, tid("t-forgotten"): outcomeForgotten,
	}}
	clock := newFakeClock()
	log = openLog(t, dir)
	p = newParticipant(t, r, participant.Options{
		Log: log, Clock: clock, Rand: func() float64 { return 0 },
		Coordinators: []string{unreachableAddr(t), serveCoordinator(t, coord)},
	})
	if got := inDoubtIDs(p); !reflect.DeepEqual(got, ids) {
		t.Fatalf("in doubt after restart %v, want %v", got, ids)
	}
	if d := p.InDoubt()[0]; len(d.Participants) != 2 || d.PreparedAt.IsZero() {
		t.Fatalf("in-doubt entry %+v", d)
	}
	p.Start(context.Background())
	waitFor(t, "committed and aborted outcomes applied", func() bool {
		return reflect.DeepEqual(inDoubtIDs(p), []string{"t-forgotten", "t-later"})
	})
	if userValue(t, log, "data/b") != "t-commit" || userValue(t, log, "lock/a") != "" || userValue(t, log, "data/a") != "" {
		t.Fatal("outcomes not applied to the resource")
	}
	if q := coord.query(0); len(q.GetParticipants()) != 2 {
		t.Fatalf("outcome query without participants: %v", q)
	}

	// Undecided and forgotten transactions stay in doubt, however often
	// the participant asks.
	for round := 2; round <= 6; round++ {
		waitFor(t, "recovery loop asleep", func() bool { return clock.Waiters() > 0 })
		clock.Advance(participant.DefaultRetryMax)
		waitFor(t, "another query", func() bool {
			return coord.queried(tid("t-later")) >= round && coord.queried(tid("t-forgotten")) >= round
		})
	}
	if got := inDoubtIDs(p); !reflect.DeepEqual(got, []string{"t-forgotten", "t-later"}) {
		t.Fatalf("in doubt %v", got)
	}
	if rec, _, _ := log.GetTxn(tid("t-forgotten")); rec.State != txlog.PStatePrepared {
		t.Fatalf("forgotten transaction decided alone: %v", rec.State)
	}
	if c, a := r.commits.Load(), r.aborts.Load(); c != 1 || a != 1 {
		t.Fatalf("resource saw %d commits and %d aborts, want 1 and 1", c, a)
	}

	coord.script("t-later", outcomeCommitted)
	waitFor(t, "recovery loop asleep", func() bool { return clock.Waiters() > 0 })
	clock.Advance(participant.DefaultRetryMax)
	waitFor(t, "t-later resolved", func() bool { return reflect.DeepEqual(inDoubtIDs(p), []string{"t-forgotten"}) })
	if userValue(t, log, "data/d") != "t-later" {
		t.Fatal("late commit not applied")
	}
}

// TestInDoubtTimeoutTriggersQuery checks that a transaction prepared while
// running is asked about only once InDoubtTimeout has passed.
func TestInDoubtTimeoutTriggersQuery(t *testing.T) {
	coord := &fakeCoordinator{outcomes: map[string]decreev1.TxnState{tid("t"): outcomeAborted}}
	clock := newFakeClock()
	log := openLog(t, t.TempDir())
	p := newParticipant(t, &kvResource{}, participant.Options{
		Log: log, Clock: clock, InDoubtTimeout: time.Minute, Coordinators: []string{serveCoordinator(t, coord)},
	})
	p.Start(context.Background())
	if _, err := p.Server().Prepare(context.Background(), prepareReq(tid("t"), "set a=1", 1)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "recovery loop asleep", func() bool { return clock.Waiters() > 0 })
	clock.Advance(time.Minute - time.Nanosecond)
	if n := coord.queried(tid("t")); n != 0 {
		t.Fatalf("asked %d times before the timeout", n)
	}
	if len(p.InDoubt()) != 1 {
		t.Fatal("transaction left doubt before the timeout")
	}
	clock.Advance(time.Nanosecond)
	waitFor(t, "resolved after the timeout", func() bool { return len(p.InDoubt()) == 0 })
	if rec, _, _ := log.GetTxn(tid("t")); rec.State != txlog.PStateAborted {
		t.Fatalf("state %v, want aborted", rec.State)
	}
}

// TestCoordinatorDecisionStopsQueries checks that a transaction decided by
// the coordinator's Commit leaves doubt and is never asked about, while one
// still prepared is.
func TestCoordinatorDecisionStopsQueries(t *testing.T) {
	coord := &fakeCoordinator{outcomes: map[string]decreev1.TxnState{tid("u"): outcomeAborted}}
	clock := newFakeClock()
	log := openLog(t, t.TempDir())
	p := newParticipant(t, &kvResource{}, participant.Options{
		Log: log, Clock: clock, Coordinators: []string{serveCoordinator(t, coord)},
	})
	p.Start(context.Background())
	srv, ctx := p.Server(), context.Background()
	for _, req := range []*decreev1.PrepareRequest{prepareReq(tid("t"), "set a=1", 1), prepareReq(tid("u"), "set b=1", 1)} {
		if _, err := srv.Prepare(ctx, req); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := srv.Commit(ctx, &decreev1.DecisionRequest{TxnId: tid("t"), Term: 1}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "recovery loop asleep", func() bool { return clock.Waiters() > 0 })
	clock.Advance(time.Hour)
	waitFor(t, "u resolved", func() bool { return len(p.InDoubt()) == 0 })
	if n := coord.queried(tid("t")); n != 0 {
		t.Fatalf("decided transaction asked about %d times", n)
	}
}

func TestBackoff(t *testing.T) {
	log := openLog(t, t.TempDir())
	jitter := 0.0
	p := newParticipant(t, &kvResource{}, participant.Options{
		Log: log, RetryMin: 100 * time.Millisecond, RetryMax: time.Second, Rand: func() float64 { return jitter },
	})
	// Rand 0 takes nothing off: RetryMin doubling, capped at RetryMax.
	for attempt, want := range map[int]time.Duration{1: 100, 2: 200, 3: 400, 4: 800, 5: 1000, 50: 1000} {
		if got := p.Backoff(attempt); got != want*time.Millisecond {
			t.Errorf("backoff(%d) at Rand 0 = %v, want %v", attempt, got, want*time.Millisecond)
		}
	}
	jitter = 0.5
	if got := p.Backoff(1); got != 75*time.Millisecond {
		t.Errorf("backoff(1) with jitter 0.5 = %v, want 75ms", got)
	}
}
