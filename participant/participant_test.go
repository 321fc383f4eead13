package participant_test

import (
	"context"
	"maps"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/decree-tx/decree/participant"
	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
	"github.com/decree-tx/decree/txlog"
	"google.golang.org/grpc/codes"
)

// step is one call in a sequence: op is prepare, prepare1p (one-phase),
// commit, abort or resolve.
type step struct {
	op      string
	id      string
	payload string
	term    uint64
	code    codes.Code
	vote    decreev1.Vote
	reason  string // a substring of the NO vote's reason
	state   decreev1.ParticipantState
}

// run performs s against srv and checks the answer.
func (s step) run(t *testing.T, srv decreev1.ParticipantServer) {
	t.Helper()
	ctx := context.Background()
	var err error
	switch s.op {
	case "prepare", "prepare1p":
		req := prepareReq(s.id, s.payload, s.term)
		if s.op == "prepare1p" {
			req.OnePhase, req.Participants = true, []string{"self:1"}
		}
		var resp *decreev1.PrepareResponse
		if resp, err = srv.Prepare(ctx, req); err == nil {
			if resp.GetVote() != s.vote || !strings.Contains(resp.GetReason(), s.reason) {
				t.Fatalf("%+v: answered %v %q", s, resp.GetVote(), resp.GetReason())
			}
		}
	case "commit":
		_, err = srv.Commit(ctx, &decreev1.DecisionRequest{TxnId: s.id, Term: s.term})
	case "abort":
		_, err = srv.Abort(ctx, &decreev1.DecisionRequest{TxnId: s.id, Term: s.term})
	case "resolve":
		var resp *decreev1.ResolveResponse
		if resp, err = srv.Resolve(ctx, &decreev1.ResolveRequest{TxnId: s.id, Term: s.term}); err == nil && resp.GetState() != s.state {
			t.Fatalf("%+v: resolved %v", s, resp.GetState())
		}
	default:
		t.Fatalf("bad op %q", s.op)
	}
	if codeOf(err) != s.code {
		t.Fatalf("%+v: error %v, want code %v", s, err, s.code)
	}
}

const (
	yes       = decreev1.Vote_VOTE_YES
	no        = decreev1.Vote_VOTE_NO
	readOnly  = decreev1.Vote_VOTE_READ_ONLY
	committed = decreev1.Vote_VOTE_COMMITTED

	sPrepared  = decreev1.ParticipantState_PARTICIPANT_STATE_PREPARED
	sCommitted = decreev1.ParticipantState_PARTICIPANT_STATE_COMMITTED
	sAborted   = decreev1.ParticipantState_PARTICIPANT_STATE_ABORTED

	refused = codes.FailedPrecondition
)

func TestSequences(t *testing.T) {
	cases := []struct {
		name    string
		steps   []step
		inDoubt []string
		data    map[string]string // committed user keys under data/ and lock/
	}{{
		name: "prepare commit, repeated",
		steps: []step{
			{op: "prepare", id: "t", payload: "set a=1", vote: yes},
			{op: "prepare", id: "t", payload: "set a=1", vote: yes},
			{op: "commit", id: "t"},
			{op: "commit", id: "t"},
			{op: "prepare", id: "t", payload: "set a=1", vote: yes},
			{op: "resolve", id: "t", state: sCommitted},
		},
		data: map[string]string{"data/a": "1"},
	}, {
		name: "prepare abort, repeated",
		steps: []step{
			{op: "prepare", id: "t", payload: "set a=1", vote: yes},
			{op: "abort", id: "t"},
			{op: "abort", id: "t"},
			{op: "resolve", id: "t", state: sAborted},
			{op: "prepare", id: "t", payload: "set a=1", vote: no, reason: "aborted"},
		},
	}, {
		name: "prepared stays in doubt",
		steps: []step{
			{op: "prepare", id: "t", payload: "set a=1", vote: yes},
			{op: "resolve", id: "t", state: sPrepared},
		},
		inDoubt: []string{"t"},
		data:    map[string]string{"lock/a": "t"},
	}, {
		name: "abort before prepare makes prepare vote no",
		steps: []step{
			{op: "abort", id: "t"},
			{op: "prepare", id: "t", payload: "set a=1", vote: no, reason: "aborted before prepare"},
			{op: "commit", id: "t", code: refused},
		},
	}, {
		name: "resolve of unknown aborts it",
		steps: []step{
			{op: "resolve", id: "t", state: sAborted},
			{op: "prepare", id: "t", payload: "set a=1", vote: no},
			{op: "resolve", id: "t", state: sAborted},
		},
	}, {
		name: "commit of never prepared is refused and changes nothing",
		steps: []step{
			{op: "commit", id: "t", code: refused},
			{op: "prepare", id: "t", payload: "set a=1", vote: yes},
			{op: "commit", id: "t"},
		},
		data: map[string]string{"data/a": "1"},
	}, {
		name: "conflicting decisions are refused",
		steps: []step{
			{op: "prepare", id: "c", payload: "set a=1", vote: yes},
			{op: "commit", id: "c"},
			{op: "abort", id: "c", code: refused},
			{op: "prepare", id: "a", payload: "set b=1", vote: yes},
			{op: "abort", id: "a"},
			{op: "commit", id: "a", code: refused},
		},
		data: map[string]string{"data/a": "1"},
	}, {
		name: "no vote is repeated and discards writes",
		steps: []step{
			{op: "prepare", id: "t", payload: "no out of stock", vote: no, reason: "out of stock"},
			{op: "prepare", id: "t", payload: "set a=1", vote: no, reason: "out of stock"},
			{op: "commit", id: "t", code: refused},
			{op: "abort", id: "t"},
			{op: "resolve", id: "t", state: sAborted},
		},
	}, {
		name: "lock conflict votes no",
		steps: []step{
			{op: "prepare", id: "t1", payload: "set a=1", vote: yes},
			{op: "prepare", id: "t2", payload: "set a=2", vote: no, reason: "locked"},
			{op: "commit", id: "t1"},
			{op: "prepare", id: "t3", payload: "set a=3", vote: yes},
			{op: "commit", id: "t3"},
		},
		data: map[string]string{"data/a": "3"},
	}, {
		name: "read only",
		steps: []step{
			{op: "prepare", id: "t", payload: "ro", vote: readOnly},
			{op: "prepare", id: "t", payload: "ro", vote: readOnly},
			{op: "commit", id: "t"},
			{op: "abort", id: "t"},
			{op: "resolve", id: "t", state: sCommitted},
		},
	}, {
		name: "one phase",
		steps: []step{
			{op: "prepare1p", id: "t", payload: "set a=1", vote: committed},
			{op: "prepare1p", id: "t", payload: "set a=1", vote: committed},
			{op: "resolve", id: "t", state: sCommitted},
			{op: "commit", id: "t"},
			{op: "abort", id: "t", code: refused},
		},
		data: map[string]string{"data/a": "1"},
	}, {
		name: "one phase no",
		steps: []step{
			{op: "prepare1p", id: "t", payload: "no nope", vote: no, reason: "nope"},
			{op: "resolve", id: "t", state: sAborted},
		},
	}, {
		name: "resource error records nothing",
		steps: []step{
			{op: "prepare", id: "t", payload: "err", code: codes.Internal},
			{op: "prepare", id: "t", payload: "set a=1", vote: yes},
		},
		inDoubt: []string{"t"},
		data:    map[string]string{"lock/a": "t"},
	}, {
		name: "stale term is refused and changes nothing",
		steps: []step{
			{op: "prepare", id: "t", payload: "set a=1", term: 5, vote: yes},
			{op: "prepare", id: "t", payload: "set a=1", term: 4, code: refused},
			{op: "commit", id: "t", term: 4, code: refused},
			{op: "abort", id: "t", term: 4, code: refused},
			{op: "resolve", id: "t", term: 4, code: refused},
			{op: "resolve", id: "t", term: 5, state: sPrepared},
		},
		inDoubt: []string{"t"},
		data:    map[string]string{"lock/a": "t"},
	}, {
		name: "higher term raises the fence",
		steps: []step{
			{op: "prepare", id: "t", payload: "set a=1", term: 1, vote: yes},
			{op: "resolve", id: "t", term: 3, state: sPrepared},
			{op: "commit", id: "t", term: 2, code: refused},
			{op: "commit", id: "t", term: 3},
			{op: "commit", id: "t", term: 7},
			{op: "commit", id: "t", term: 6, code: refused},
		},
		data: map[string]string{"data/a": "1"},
	}, {
		name: "tombstone keeps its term",
		steps: []step{
			{op: "abort", id: "t", term: 5},
			{op: "prepare", id: "t", payload: "set a=1", term: 4, code: refused},
			{op: "prepare", id: "t", payload: "set a=1", term: 5, vote: no},
		},
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			log := openLog(t, t.TempDir())
			p := newParticipant(t, &kvResource{}, participant.Options{Log: log})
			for _, s := range tc.steps {
				s.run(t, p.Server())
			}
			if got := inDoubtIDs(p); !reflect.DeepEqual(got, tc.inDoubt) {
				t.Errorf("in doubt %v, want %v", got, tc.inDoubt)
			}
			if got := resourceData(t, p); !maps.Equal(got, tc.data) {
				t.Errorf("data %v, want %v", got, tc.data)
			}
		})
	}
}

// resourceData returns the committed data/ and lock/ keys, and fails on
// any other key left behind (staged writes of discarded prepares).
func resourceData(t *testing.T, p *participant.Participant) map[string]string {
	t.Helper()
	data := map[string]string{}
	err := p.ReadState(func(r participant.Reader) error {
		return r.Scan(nil, func(k, v []byte) bool {
			switch key := string(k); {
			case strings.HasPrefix(key, "data/"), strings.HasPrefix(key, "lock/"):
				data[key] = string(v)
			case strings.HasPrefix(key, "pending/"):
				// staged with a lock; checked through the lock
			default:
				t.Errorf("unexpected key %q = %q", k, v)
			}
			return true
		})
	})
	if err != nil {
		t.Fatalf("read state: %v", err)
	}
	return data
}

func TestInvalidRequests(t *testing.T) {
	log := openLog(t, t.TempDir())
	p := newParticipant(t, &kvResource{}, participant.Options{Log: log, MaxPayload: 16})
	srv, ctx := p.Server(), context.Background()
	long := strings.Repeat("x", participant.MaxIDLen+1)
	prepares := map[string]*decreev1.PrepareRequest{
		"empty id":             prepareReq("", "set a=1", 0),
		"long id":              prepareReq(long, "set a=1", 0),
		"big payload":          prepareReq("t", strings.Repeat("p", 17), 0),
		"no participants":      {TxnId: "t", Payload: []byte("set a=1")},
		"duplicate":            prepareReq("t", "set a=1", 0, "a:1", "b:1", "a:1"),
		"empty participant":    prepareReq("t", "set a=1", 0, "a:1", ""),
		"one phase with two":   {TxnId: "t", Payload: []byte("set a=1"), Participants: []string{"a", "b"}, OnePhase: true},
		"nil payload is valid": nil,
	}
	for name, req := range prepares {
		if req == nil {
			continue
		}
		if _, err := srv.Prepare(ctx, req); codeOf(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
	for _, id := range []string{"", long} {
		d := &decreev1.DecisionRequest{TxnId: id}
		_, errC := srv.Commit(ctx, d)
		_, errA := srv.Abort(ctx, d)
		_, errR := srv.Resolve(ctx, &decreev1.ResolveRequest{TxnId: id})
		for _, err := range []error{errC, errA, errR} {
			if codeOf(err) != codes.InvalidArgument {
				t.Errorf("id of %d bytes: %v, want InvalidArgument", len(id), err)
			}
		}
	}
	// Nothing was recorded: the log holds no transactions.
	_ = log.ScanTxns(func(tx *txlog.PTxn) bool { t.Errorf("recorded %+v", tx); return true })
	if _, err := srv.Prepare(ctx, prepareReq(strings.Repeat("x", participant.MaxIDLen), "set a=1", 0)); err != nil {
		t.Errorf("id of the maximum length: %v", err)
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	log := openLog(t, t.TempDir())
	for name, o := range map[string]participant.Options{
		"no log":          {Coordinators: []string{"c:1"}},
		"no coordinators": {Log: log},
		"empty endpoint":  {Log: log, Coordinators: []string{""}},
	} {
		if _, err := participant.New(&kvResource{}, o); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if _, err := participant.New(nil, participant.Options{Log: log, Coordinators: []string{"c:1"}}); err == nil {
		t.Error("nil resource: no error")
	}
}

// TestVoteIsAtomicWithResourceWrites checks that a YES vote's writes are
// durable together with the record, that NO and READ_ONLY votes discard
// them, and that an outcome's writes land with the outcome.
func TestVoteIsAtomicWithResourceWrites(t *testing.T) {
	dir := t.TempDir()
	log := openLog(t, dir)
	r := &kvResource{}
	p := newParticipant(t, r, participant.Options{Log: log})
	srv, ctx := p.Server(), context.Background()
	for _, req := range []*decreev1.PrepareRequest{
		prepareReq("yes", "set a=1", 1), prepareReq("no", "no nope", 1), prepareReq("ro", "ro", 1),
	} {
		if _, err := srv.Prepare(ctx, req); err != nil {
			t.Fatal(err)
		}
	}
	p.Stop()
	if err := log.Close(); err != nil {
		t.Fatal(err)
	}
	log = openLog(t, dir)
	rec, found, err := log.GetTxn("yes")
	if err != nil || !found || rec.State != txlog.PStatePrepared || rec.Term != 1 {
		t.Fatalf("yes record %+v, %v, %v", rec, found, err)
	}
	if userValue(t, log, "lock/a") != "yes" || userValue(t, log, "pending/yes") != "a=1" {
		t.Fatal("YES vote's writes are not durable with it")
	}
	for _, id := range []string{"no", "ro"} {
		if userValue(t, log, "scratch/"+id) != "" {
			t.Errorf("%s vote's writes were kept", id)
		}
	}
	p = newParticipant(t, r, participant.Options{Log: log})
	if _, err := p.Server().Commit(ctx, &decreev1.DecisionRequest{TxnId: "yes", Term: 1}); err != nil {
		t.Fatal(err)
	}
	if userValue(t, log, "data/a") != "1" || userValue(t, log, "lock/a") != "" {
		t.Fatal("commit's writes are missing")
	}
	if rec, _, _ := log.GetTxn("yes"); rec.State != txlog.PStateCommitted || rec.DecidedAt == 0 {
		t.Fatalf("record after commit %+v", rec)
	}
}

// TestFailedOutcomeLeavesPrepared checks that a resource failing to apply
// an outcome leaves the transaction prepared, so the call can be repeated.
func TestFailedOutcomeLeavesPrepared(t *testing.T) {
	log := openLog(t, t.TempDir())
	r := &kvResource{}
	p := newParticipant(t, r, participant.Options{Log: log})
	srv, ctx := p.Server(), context.Background()
	if _, err := srv.Prepare(ctx, prepareReq("t", "set a=1", 1)); err != nil {
		t.Fatal(err)
	}
	r.failCommit.Store(true)
	if _, err := srv.Commit(ctx, &decreev1.DecisionRequest{TxnId: "t", Term: 1}); codeOf(err) != codes.Internal {
		t.Fatalf("failing commit: %v, want Internal", err)
	}
	if rec, _, _ := log.GetTxn("t"); rec.State != txlog.PStatePrepared {
		t.Fatalf("state after failed commit %v", rec.State)
	}
	if ids := inDoubtIDs(p); len(ids) != 1 {
		t.Fatalf("in doubt %v", ids)
	}
	r.failCommit.Store(false)
	if _, err := srv.Commit(ctx, &decreev1.DecisionRequest{TxnId: "t", Term: 1}); err != nil {
		t.Fatal(err)
	}
	if userValue(t, log, "data/a") != "1" {
		t.Fatal("commit not applied")
	}
}

// TestConcurrentDuplicatePrepares sends the same Prepare from many
// goroutines: the resource votes once and everyone hears its vote.
func TestConcurrentDuplicatePrepares(t *testing.T) {
	log := openLog(t, t.TempDir())
	r := &kvResource{}
	p := newParticipant(t, r, participant.Options{Log: log})
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			resp, err := p.Server().Prepare(context.Background(), prepareReq("t", "set a=1", 1))
			if err != nil || resp.GetVote() != yes {
				t.Errorf("prepare: %v %v", resp, err)
			}
		})
	}
	wg.Wait()
	if n := r.prepares.Load(); n != 1 {
		t.Fatalf("resource voted %d times", n)
	}
}

func TestVoteString(t *testing.T) {
	for v, want := range map[participant.Vote]string{
		participant.VoteYes: "yes", participant.VoteNo: "no", participant.VoteReadOnly: "read-only", 0: "Vote(0)",
	} {
		if got := v.String(); got != want {
			t.Errorf("%d: %q, want %q", int(v), got, want)
		}
	}
}
