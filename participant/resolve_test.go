package participant_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/decree-tx/decree/participant"
	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
)

// scriptedSource is an OutcomeSource answering from a map; ids missing
// from it fail as if no coordinator answered.
type scriptedSource struct {
	mu      sync.Mutex
	answers map[string]decreev1.TxnState
	asked   []string
}

func (s *scriptedSource) Outcome(_ context.Context, id string, _ []string) (decreev1.TxnState, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.asked = append(s.asked, id)
	st, ok := s.answers[id]
	if !ok {
		return 0, errors.New("no coordinator answered")
	}
	return st, nil
}

// TestResolveDueWithOutcomeSource drives recovery synchronously through an
// injected OutcomeSource, without Coordinators or Start.
func TestResolveDueWithOutcomeSource(t *testing.T) {
	src := &scriptedSource{answers: map[string]decreev1.TxnState{tid("t-commit"): decreev1.TxnState_TXN_STATE_COMMITTED}}
	clock := newFakeClock()
	log := openLog(t, t.TempDir())
	p, err := participant.New(&kvResource{}, participant.Options{Log: log, Outcomes: src, Clock: clock, InDoubtTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop()
	ctx := context.Background()
	for _, id := range []string{"t-commit", "t-unknown"} {
		if v, err := p.Service().Prepare(ctx, prepareReq(tid(id), "set "+id+"=1", 1)); err != nil || v.GetVote() != decreev1.Vote_VOTE_YES {
			t.Fatalf("prepare %s: %v %v", id, v, err)
		}
	}
	if n := p.ResolveDue(ctx); n != 0 || len(src.asked) != 0 {
		t.Fatalf("asked before the in-doubt timeout: settled %d, asked %v", n, src.asked)
	}
	clock.Advance(time.Second)
	if n := p.ResolveDue(ctx); n != 1 {
		t.Fatalf("settled %d, want 1", n)
	}
	if got := inDoubtIDs(p); len(got) != 1 || got[0] != "t-unknown" {
		t.Fatalf("in doubt %v, want [t-unknown]", got)
	}
	if v := userValue(t, log, "data/t-commit"); v != "1" {
		t.Fatalf("learned commit not applied: %q", v)
	}
	if len(src.asked) != 2 || src.asked[0] != tid("t-commit") {
		t.Fatalf("asked %v, want both in id order", src.asked)
	}
}
