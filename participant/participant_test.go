package participant_test

import (
	"context"
	"fmt"
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
	id := tid(s.id)
	switch s.op {
	case "prepare", "prepare1p":
		req := prepareReq(id, s.payload, s.term)
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
		_, err = srv.Commit(ctx, &decreev1.DecisionRequest{TxnId: id, Term: s.term})
	case "abort":
		_, err = srv.Abort(ctx, &decreev1.DecisionRequest{TxnId: id, Term: s.term})
	case "resolve":
		var resp *decreev1.ResolveResponse
		if resp, err = srv.Resolve(ctx, &decreev1.ResolveRequest{TxnId: id, Term: s.term}); err == nil && resp.GetState() != s.state {
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
			{op: "prepare", id: "t", payload: "no out of stock", vote: no, reason: "out of stock"},
			{op: "prepare", id: "t", payload: "set a=1", code: refused},
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
			case strings.HasPrefix(key, "data/"):
				data[key] = string(v)
			case strings.HasPrefix(key, "lock/"):
				data[key] = name(string(v))
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

// TestInvalidRequests checks that the SDK refuses, before it locks or
// writes anything, every request the coordinator would refuse from a
// client (txnspec): such a prepare could never be resolved.
func TestInvalidRequests(t *testing.T) {
	log := openLog(t, t.TempDir())
	p := newParticipant(t, &kvResource{}, participant.Options{Log: log, MaxPayload: 16, MaxParticipants: 3})
	srv, ctx := p.Server(), context.Background()
	id := tid("t")
	badIDs := map[string]string{
		"empty id":          "",
		"not a uuid":        "t",
		"uuid v4":           "01890a5d-ac96-474b-bcce-b302099a8057",
		"control character": "01890a5d-ac96-774b-bcce-b302099a805\n",
		"long id":           strings.Repeat("x", 100_000),
	}
	prepares := map[string]*decreev1.PrepareRequest{
		"big payload":           prepareReq(id, strings.Repeat("p", 17), 0),
		"no participants":       {TxnId: id, Payload: []byte("set a=1")},
		"too many participants": prepareReq(id, "set a=1", 0, "a:1", "b:1", "c:1", "d:1"),
		"duplicate":             prepareReq(id, "set a=1", 0, "a:1", "b:1", "a:1"),
		"empty participant":     prepareReq(id, "set a=1", 0, "a:1", ""),
		"not an address":        prepareReq(id, "set a=1", 0, "a:1", "b"),
		"control in address":    prepareReq(id, "set a=1", 0, "a:1", "b\x00:1"),
		"one phase with two":    {TxnId: id, Payload: []byte("set a=1"), Participants: []string{"a:1", "b:1"}, OnePhase: true},
	}
	for name, bad := range badIDs {
		prepares[name] = prepareReq(bad, "set a=1", 0)
	}
	for name, req := range prepares {
		if _, err := srv.Prepare(ctx, req); codeOf(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
	for name, bad := range badIDs {
		d := &decreev1.DecisionRequest{TxnId: bad}
		_, errC := srv.Commit(ctx, d)
		_, errA := srv.Abort(ctx, d)
		_, errR := srv.Resolve(ctx, &decreev1.ResolveRequest{TxnId: bad})
		for _, err := range []error{errC, errA, errR} {
			if codeOf(err) != codes.InvalidArgument {
				t.Errorf("%s: %v, want InvalidArgument", name, err)
			}
		}
	}
	// Nothing was recorded or locked.
	_ = log.ScanTxns(func(tx *txlog.PTxn) bool { t.Errorf("recorded %+v", tx); return true })
	if got := resourceData(t, p); len(got) != 0 {
		t.Errorf("resource data %v", got)
	}
	if _, err := srv.Prepare(ctx, prepareReq(id, strings.Repeat("p", 16), 0, "a:1", "b:1", "c:1")); codeOf(err) == codes.InvalidArgument {
		t.Errorf("a prepare at the limits: %v", err)
	}
}

// TestDefaultParticipantLimit checks the default list limit, the
// coordinator's --max-branches default.
func TestDefaultParticipantLimit(t *testing.T) {
	p := newParticipant(t, &kvResource{}, participant.Options{Log: openLog(t, t.TempDir())})
	ps := make([]string, participant.DefaultMaxParticipants+1)
	for i := range ps {
		ps[i] = fmt.Sprintf("p%d:1", i)
	}
	_, err := p.Server().Prepare(context.Background(), prepareReq(tid("t"), "set a=1", 1, ps...))
	if codeOf(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "exceed the limit of 64") {
		t.Fatalf("65 participants: %v", err)
	}
}

// TestPrepareMustNameTheParticipant checks, over gRPC, that a Prepare
// whose participant list does not name the address the caller reached
// this participant by is refused, and one that does is served.
func TestPrepareMustNameTheParticipant(t *testing.T) {
	log := openLog(t, t.TempDir())
	p := newParticipant(t, &kvResource{}, participant.Options{Log: log})
	client := serveParticipant(t, p, "bank:7")
	ctx := context.Background()
	_, err := client.Prepare(ctx, prepareReq(tid("t"), "set a=1", 1, "other:1", "another:1"))
	if codeOf(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "does not name this participant") {
		t.Fatalf("prepare not naming bank:7: %v, want InvalidArgument", err)
	}
	_ = log.ScanTxns(func(tx *txlog.PTxn) bool { t.Errorf("recorded %+v", tx); return true })
	resp, err := client.Prepare(ctx, prepareReq(tid("t"), "set a=1", 1, "other:1", "bank:7"))
	if err != nil || resp.GetVote() != yes {
		t.Fatalf("prepare naming bank:7: %v %v", resp, err)
	}
}

// TestRepliesCarryIdentity checks that votes and resolutions name the
// participant's durable identity, which survives a restart.
func TestRepliesCarryIdentity(t *testing.T) {
	dir := t.TempDir()
	log := openLog(t, dir)
	p := newParticipant(t, &kvResource{}, participant.Options{Log: log})
	ctx := context.Background()
	id := p.ID()
	if id == "" || id != log.ID() {
		t.Fatalf("participant id %q, log id %q", id, log.ID())
	}
	v, err := p.Server().Prepare(ctx, prepareReq(tid("t"), "set a=1", 1))
	if err != nil || v.GetParticipantId() != id {
		t.Fatalf("vote %v %v, want participant id %s", v, err, id)
	}
	r, err := p.Server().Resolve(ctx, &decreev1.ResolveRequest{TxnId: tid("u"), Term: 1})
	if err != nil || r.GetParticipantId() != id {
		t.Fatalf("resolve %v %v, want participant id %s", r, err, id)
	}
	p.Stop()
	if err := log.Close(); err != nil {
		t.Fatal(err)
	}
	p = newParticipant(t, &kvResource{}, participant.Options{Log: openLog(t, dir)})
	if v, err := p.Server().Prepare(ctx, prepareReq(tid("t"), "set a=1", 1)); err != nil || v.GetParticipantId() != id {
		t.Fatalf("vote after restart %v %v, want participant id %s", v, err, id)
	}
}

// TestConflictingPrepareIsRefused checks that a Prepare reusing the id of
// a transaction prepared here with another payload or participant list is
// refused, whatever became of the first, while an identical one is
// answered as the first was. Repeating the first answer to a different
// prepare is how one participant reached under two addresses lost money.
func TestConflictingPrepareIsRefused(t *testing.T) {
	log := openLog(t, t.TempDir())
	r := &kvResource{}
	p := newParticipant(t, r, participant.Options{Log: log})
	srv, ctx := p.Server(), context.Background()
	for _, first := range []string{"set a=1", "no broke", "ro"} {
		id := tid("t " + first[:2])
		if _, err := srv.Prepare(ctx, prepareReq(id, first, 1, "x:1", "y:1")); err != nil {
			t.Fatal(err)
		}
		for name, req := range map[string]*decreev1.PrepareRequest{
			"other payload":      prepareReq(id, "set b=2", 1, "x:1", "y:1"),
			"other participants": prepareReq(id, first, 1, "x:1", "z:1"),
			"reordered":          prepareReq(id, first, 1, "y:1", "x:1"),
		} {
			if resp, err := srv.Prepare(ctx, req); codeOf(err) != codes.FailedPrecondition {
				t.Errorf("%s after %q: %v %v, want FailedPrecondition", name, first, resp, err)
			}
		}
		if _, err := srv.Prepare(ctx, prepareReq(id, first, 1, "x:1", "y:1")); err != nil {
			t.Errorf("identical repeat of %q: %v", first, err)
		}
	}
	if n := r.prepares.Load(); n != 3 {
		t.Fatalf("resource asked to vote %d times, want 3", n)
	}
	if got := resourceData(t, p); !maps.Equal(got, map[string]string{"lock/a": "t se"}) {
		t.Fatalf("resource data %v", got)
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
		prepareReq(tid("yes"), "set a=1", 1), prepareReq(tid("no"), "no nope", 1), prepareReq(tid("ro"), "ro", 1),
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
	rec, found, err := log.GetTxn(tid("yes"))
	if err != nil || !found || rec.State != txlog.PStatePrepared || rec.Term != 1 {
		t.Fatalf("yes record %+v, %v, %v", rec, found, err)
	}
	if userValue(t, log, "lock/a") != tid("yes") || userValue(t, log, "pending/"+tid("yes")) != "a=1" {
		t.Fatal("YES vote's writes are not durable with it")
	}
	for _, id := range []string{"no", "ro"} {
		if userValue(t, log, "scratch/"+tid(id)) != "" {
			t.Errorf("%s vote's writes were kept", id)
		}
	}
	p = newParticipant(t, r, participant.Options{Log: log})
	if _, err := p.Server().Commit(ctx, &decreev1.DecisionRequest{TxnId: tid("yes"), Term: 1}); err != nil {
		t.Fatal(err)
	}
	if userValue(t, log, "data/a") != "1" || userValue(t, log, "lock/a") != "" {
		t.Fatal("commit's writes are missing")
	}
	if rec, _, _ := log.GetTxn(tid("yes")); rec.State != txlog.PStateCommitted || rec.DecidedAt == 0 {
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
	if _, err := srv.Prepare(ctx, prepareReq(tid("t"), "set a=1", 1)); err != nil {
		t.Fatal(err)
	}
	r.failCommit.Store(true)
	if _, err := srv.Commit(ctx, &decreev1.DecisionRequest{TxnId: tid("t"), Term: 1}); codeOf(err) != codes.Internal {
		t.Fatalf("failing commit: %v, want Internal", err)
	}
	if rec, _, _ := log.GetTxn(tid("t")); rec.State != txlog.PStatePrepared {
		t.Fatalf("state after failed commit %v", rec.State)
	}
	if ids := inDoubtIDs(p); len(ids) != 1 {
		t.Fatalf("in doubt %v", ids)
	}
	r.failCommit.Store(false)
	if _, err := srv.Commit(ctx, &decreev1.DecisionRequest{TxnId: tid("t"), Term: 1}); err != nil {
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
			resp, err := p.Server().Prepare(context.Background(), prepareReq(tid("t"), "set a=1", 1))
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
