package coordinator_test

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/decree-tx/decree/coordinator"
	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
	"github.com/decree-tx/decree/txlog"
)

// fakeParticipant is a scripted participant server: it votes what it is
// told and records the decisions it receives.
type fakeParticipant struct {
	decreev1.UnimplementedParticipantServer
	addr string
	mu   sync.Mutex
	vote decreev1.Vote
	// decisions maps txn id to "commit" or "abort", in arrival order.
	decisions map[string][]string
	prepared  map[string]bool
}

func newFakeParticipant(t testing.TB, vote decreev1.Vote) *fakeParticipant {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeParticipant{addr: lis.Addr().String(), vote: vote, decisions: map[string][]string{}, prepared: map[string]bool{}}
	srv := grpc.NewServer()
	decreev1.RegisterParticipantServer(srv, f)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return f
}

func (f *fakeParticipant) Prepare(_ context.Context, r *decreev1.PrepareRequest) (*decreev1.PrepareResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v := f.vote
	if v == decreev1.Vote_VOTE_YES && r.GetOnePhase() {
		v = decreev1.Vote_VOTE_COMMITTED
	}
	f.prepared[r.GetTxnId()] = v == decreev1.Vote_VOTE_YES
	return &decreev1.PrepareResponse{Vote: v, Reason: "scripted"}, nil
}

func (f *fakeParticipant) decide(id, what string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.decisions[id] = append(f.decisions[id], what)
}

func (f *fakeParticipant) Commit(_ context.Context, r *decreev1.DecisionRequest) (*decreev1.DecisionResponse, error) {
	f.decide(r.GetTxnId(), "commit")
	return &decreev1.DecisionResponse{}, nil
}

func (f *fakeParticipant) Abort(_ context.Context, r *decreev1.DecisionRequest) (*decreev1.DecisionResponse, error) {
	f.decide(r.GetTxnId(), "abort")
	return &decreev1.DecisionResponse{}, nil
}

func (f *fakeParticipant) Resolve(_ context.Context, r *decreev1.ResolveRequest) (*decreev1.ResolveResponse, error) {
	f.decide(r.GetTxnId(), "resolve")
	return &decreev1.ResolveResponse{State: decreev1.ParticipantState_PARTICIPANT_STATE_ABORTED}, nil
}

func (f *fakeParticipant) decisionsFor(id string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.decisions[id]...)
}

func coordClient(t testing.TB, addr string) decreev1.CoordinatorClient {
	t.Helper()
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return decreev1.NewCoordinatorClient(conn)
}

// txnID mints a UUIDv7-shaped id with the given millisecond time.
func txnID(ms int64, n int) string {
	return fmt.Sprintf("%08x-%04x-7%03x-8%03x-%012x", uint32(ms>>16), uint16(ms), n>>12&0xfff, n&0xfff, n)
}

func newTxnID(n int) string { return txnID(time.Now().UnixMilli(), n) }

func commitVia(t *testing.T, cc decreev1.CoordinatorClient, id string, parts ...string) (*decreev1.CommitResponse, error) {
	t.Helper()
	req := &decreev1.CommitRequest{TxnId: id}
	for _, p := range parts {
		req.Branches = append(req.Branches, &decreev1.Branch{Participant: p, Payload: []byte("x")})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return cc.Commit(ctx, req, grpc.WaitForReady(true))
}

func TestCommitAllYesReachesEveryParticipant(t *testing.T) {
	c := newTestClusterWith(t, 3, nil, nil)
	lead := c.leader()
	a, b := newFakeParticipant(t, decreev1.Vote_VOTE_YES), newFakeParticipant(t, decreev1.Vote_VOTE_YES)
	follower := lead%3 + 1
	for i, via := range []uint64{lead, follower} {
		id := newTxnID(i)
		resp, err := commitVia(t, coordClient(t, c.peers[via]), id, a.addr, b.addr)
		if err != nil || resp.GetState() != decreev1.TxnState_TXN_STATE_COMMITTED {
			t.Fatalf("commit via node %d: %v %v", via, resp, err)
		}
		for _, p := range []*fakeParticipant{a, b} {
			waitFor(t, 5*time.Second, "commit delivered", func() bool { return len(p.decisionsFor(id)) > 0 })
			if got := p.decisionsFor(id); got[0] != "commit" {
				t.Fatalf("participant got %v", got)
			}
		}
		waitFor(t, 5*time.Second, "record finished on every node", func() bool {
			for _, m := range c.members {
				r, ok, _ := m.node.Record(id)
				if !ok || !r.Finished || r.Outcome != txlog.OutcomeCommitted {
					return false
				}
			}
			return true
		})
		// The same id again: the same outcome, no new prepare round.
		again, err := commitVia(t, coordClient(t, c.peers[via]), id, a.addr, b.addr)
		if err != nil || again.GetState() != decreev1.TxnState_TXN_STATE_COMMITTED {
			t.Fatalf("retry: %v %v", again, err)
		}
	}
}

func TestCommitNoVoteAbortsWithReason(t *testing.T) {
	c := newTestClusterWith(t, 3, nil, nil)
	lead := c.leader()
	yesP, noP := newFakeParticipant(t, decreev1.Vote_VOTE_YES), newFakeParticipant(t, decreev1.Vote_VOTE_NO)
	id := newTxnID(1)
	resp, err := commitVia(t, coordClient(t, c.peers[lead]), id, yesP.addr, noP.addr)
	if err != nil || resp.GetState() != decreev1.TxnState_TXN_STATE_ABORTED {
		t.Fatalf("commit: %v %v", resp, err)
	}
	if !strings.Contains(resp.GetReason(), noP.addr+" voted no: scripted") {
		t.Fatalf("reason %q does not name the no voter", resp.GetReason())
	}
	waitFor(t, 5*time.Second, "abort delivered to the yes voter", func() bool { return len(yesP.decisionsFor(id)) > 0 })
	if got := yesP.decisionsFor(id); got[0] != "abort" {
		t.Fatalf("yes voter got %v", got)
	}
}

func TestCommitUnreachableParticipantAborts(t *testing.T) {
	c := newTestClusterWith(t, 3, nil, func(d *coordinator.DriverConfig) { d.Core.PrepareTimeout = 300 * time.Millisecond })
	lead := c.leader()
	yesP := newFakeParticipant(t, decreev1.Vote_VOTE_YES)
	dead := "127.0.0.1:1"
	resp, err := commitVia(t, coordClient(t, c.peers[lead]), newTxnID(2), yesP.addr, dead)
	if err != nil || resp.GetState() != decreev1.TxnState_TXN_STATE_ABORTED {
		t.Fatalf("commit: %v %v", resp, err)
	}
	if !strings.Contains(resp.GetReason(), dead) {
		t.Fatalf("reason %q does not name the unreachable participant", resp.GetReason())
	}
}

func TestOneParticipantCommitsInOnePhase(t *testing.T) {
	c := newTestClusterWith(t, 3, nil, nil)
	lead := c.leader()
	p := newFakeParticipant(t, decreev1.Vote_VOTE_YES)
	id := newTxnID(3)
	resp, err := commitVia(t, coordClient(t, c.peers[lead]), id, p.addr)
	if err != nil || resp.GetState() != decreev1.TxnState_TXN_STATE_COMMITTED {
		t.Fatalf("commit: %v %v", resp, err)
	}
	waitFor(t, 5*time.Second, "one-phase outcome recorded and finished", func() bool {
		r, ok, _ := c.members[lead].node.Record(id)
		return ok && r.Finished && r.Outcome == txlog.OutcomeCommitted
	})
	if got := p.decisionsFor(id); len(got) != 0 {
		t.Fatalf("one-phase participant got phase-2 calls %v", got)
	}
}

func TestOutcomeOfUnknownIDPresumesAbortDurably(t *testing.T) {
	c := newTestClusterWith(t, 3, nil, nil)
	lead := c.leader()
	follower := lead%3 + 1
	id := newTxnID(4)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	a, b := newFakeParticipant(t, decreev1.Vote_VOTE_YES), newFakeParticipant(t, decreev1.Vote_VOTE_YES)
	// Without its participants an unknown id is not settled: it might be a
	// one-phase transaction that committed at its only participant.
	if _, err := coordClient(t, c.peers[follower]).Outcome(ctx, &decreev1.OutcomeRequest{TxnId: id}, grpc.WaitForReady(true)); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("outcome without participants: %v, want InvalidArgument", err)
	}
	resp, err := coordClient(t, c.peers[follower]).Outcome(ctx, &decreev1.OutcomeRequest{TxnId: id, Participants: []string{a.addr, b.addr}}, grpc.WaitForReady(true))
	if err != nil || resp.GetState() != decreev1.TxnState_TXN_STATE_ABORTED {
		t.Fatalf("outcome: %v %v", resp, err)
	}
	for _, p := range []*fakeParticipant{a, b} {
		waitFor(t, 5*time.Second, "the presumed abort reaches "+p.addr, func() bool {
			d := p.decisionsFor(id)
			return len(d) > 0 && d[0] == "abort"
		})
	}
	for nid, m := range c.members {
		waitFor(t, 5*time.Second, "abort applied everywhere", func() bool {
			r, ok, _ := m.node.Record(id)
			return ok && r.Outcome == txlog.OutcomeAborted
		})
		_ = nid
	}
	// A commit of the same id now learns the abort.
	p := newFakeParticipant(t, decreev1.Vote_VOTE_YES)
	again, err := commitVia(t, coordClient(t, c.peers[lead]), id, p.addr, newFakeParticipant(t, decreev1.Vote_VOTE_YES).addr)
	if err != nil || again.GetState() != decreev1.TxnState_TXN_STATE_ABORTED {
		t.Fatalf("commit after presumed abort: %v %v", again, err)
	}
}

func TestOutcomeOfOnePhaseAsksItsParticipant(t *testing.T) {
	c := newTestClusterWith(t, 3, nil, nil)
	lead := c.leader()
	p := newFakeParticipant(t, decreev1.Vote_VOTE_YES)
	id := newTxnID(5)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := coordClient(t, c.peers[lead]).Outcome(ctx, &decreev1.OutcomeRequest{TxnId: id, Participants: []string{p.addr}})
	if err != nil || resp.GetState() != decreev1.TxnState_TXN_STATE_ABORTED {
		t.Fatalf("outcome: %v %v", resp, err)
	}
	if got := p.decisionsFor(id); len(got) == 0 || got[0] != "resolve" {
		t.Fatalf("participant was not asked: %v", got)
	}
}

func TestBadRequestsAreRefused(t *testing.T) {
	c := newTestClusterWith(t, 3, nil, func(d *coordinator.DriverConfig) { d.MaxBranches = 3; d.MaxPayload = 10 })
	cc := coordClient(t, c.peers[c.leader()])
	ok := newTxnID(6)
	branch := func(p string, n int) *decreev1.Branch {
		return &decreev1.Branch{Participant: p, Payload: make([]byte, n)}
	}
	for name, req := range map[string]*decreev1.CommitRequest{
		"empty id":              {Branches: []*decreev1.Branch{branch("127.0.0.1:9", 1)}},
		"oversized id":          {TxnId: strings.Repeat("a", 1000), Branches: []*decreev1.Branch{branch("127.0.0.1:9", 1)}},
		"not a uuid v7":         {TxnId: "0189aaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee", Branches: []*decreev1.Branch{branch("127.0.0.1:9", 1)}},
		"no branches":           {TxnId: ok},
		"too many branches":     {TxnId: ok, Branches: []*decreev1.Branch{branch("h:1", 1), branch("h:2", 1), branch("h:3", 1), branch("h:4", 1)}},
		"duplicate participant": {TxnId: ok, Branches: []*decreev1.Branch{branch("h:1", 1), branch("h:1", 1)}},
		"bad participant":       {TxnId: ok, Branches: []*decreev1.Branch{branch("nohostport", 1)}},
		"oversized payload":     {TxnId: ok, Branches: []*decreev1.Branch{branch("h:1", 11)}},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := cc.Commit(ctx, req)
		cancel()
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: got %v, want InvalidArgument", name, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cc.Outcome(ctx, &decreev1.OutcomeRequest{TxnId: "nope"}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("outcome of a bad id: %v", err)
	}
	// Nothing accepted before is lost: a good transaction still works.
	if _, err := cc.Outcome(ctx, &decreev1.OutcomeRequest{TxnId: ok, Participants: []string{"127.0.0.1:9", "127.0.0.1:10"}}); err != nil {
		t.Errorf("good request after bad ones: %v", err)
	}
}

func TestCollectForgetsOldFinishedRecords(t *testing.T) {
	c := newTestClusterWith(t, 3, nil, nil)
	lead := c.leader()
	old := txnID(time.Now().Add(-48*time.Hour).UnixMilli(), 7)
	if _, err := c.propose(lead, decide(old, committed)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.propose(lead, finished(old)); err != nil {
		t.Fatal(err)
	}
	// Finished long ago by the leader's clock, but with an id from a
	// client clock that runs ahead: it must stay, or its outcome query
	// would be presumed aborted rather than answered FORGOTTEN.
	skewed := newTxnID(9)
	if _, err := c.propose(lead, decide(skewed, committed)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.propose(lead, finished(skewed)); err != nil {
		t.Fatal(err)
	}
	before := time.Now().Add(-24 * time.Hour).UnixNano()
	res, err := c.propose(lead, &decreev1.Command{Kind: &decreev1.Command_Collect{Collect: &decreev1.Collect{Before: before}}})
	if err != nil {
		t.Fatal(err)
	}
	c.waitApplied(res.Index)
	for _, m := range c.members {
		if _, ok, _ := m.node.Record(old); ok {
			t.Fatal("collected record still present")
		}
		if _, ok, _ := m.node.Record(skewed); !ok {
			t.Fatal("a record whose id is above the horizon was collected")
		}
		if st := m.node.Stats(); st.Collects < 1 || st.CollectedRecords < 1 || st.CollectTime <= 0 || st.CollectMaxTime < st.CollectTime/time.Duration(st.Collects) {
			t.Fatalf("collect stats = %+v", st)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := coordClient(t, c.peers[lead]).Outcome(ctx, &decreev1.OutcomeRequest{TxnId: old})
	if err != nil || resp.GetState() != decreev1.TxnState_TXN_STATE_FORGOTTEN {
		t.Fatalf("outcome of a collected id: %v %v", resp, err)
	}
	// Deciding it again is refused by the state machine itself.
	r, err := c.propose(lead, decide(txnID(time.Now().Add(-30*time.Hour).UnixMilli(), 8), aborted))
	if err != nil || r.Err == nil {
		t.Fatalf("decide of an id older than the horizon: %+v %v", r, err)
	}
}

func TestListUnfinishedReadsTheUnfinishedRecords(t *testing.T) {
	c := newTestClusterWith(t, 3, nil, nil)
	lead := c.leader()
	ids := []string{newTxnID(1), newTxnID(2), newTxnID(3)}
	for _, id := range ids {
		// A participant nobody listens at: a leader that finds the record
		// keeps delivering, and never finishes it behind the test's back.
		if _, err := c.propose(lead, decide(id, committed, "127.0.0.1:9")); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.propose(lead, finished(ids[1])); err != nil {
		t.Fatal(err)
	}
	cc := coordClient(t, c.peers[lead])
	list := func(limit uint32) []string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := cc.ListTransactions(ctx, &decreev1.ListTransactionsRequest{Filter: decreev1.TxnFilter_TXN_FILTER_UNFINISHED, Limit: limit})
		if err != nil {
			t.Fatalf("list unfinished: %v", err)
		}
		var got []string
		for _, tx := range resp.GetTxns() {
			got = append(got, tx.GetTxnId())
		}
		return got
	}
	if got, want := list(0), []string{ids[0], ids[2]}; !slices.Equal(got, want) {
		t.Fatalf("unfinished = %q, want %q", got, want)
	}
	if got, want := list(1), ids[:1]; !slices.Equal(got, want) {
		t.Fatalf("unfinished, limit 1 = %q, want %q", got, want)
	}
}

// A participant that never acknowledges phase 2 leaves its transactions
// in the leader's backlog: Admin Status counts them with the oldest's age,
// and the unfinished listing shows how often the leader sent each one.
func TestStatusShowsThePhase2Backlog(t *testing.T) {
	// The leader takes up decisions proposed behind its back at a rescan.
	c := newTestClusterWith(t, 3, nil, func(d *coordinator.DriverConfig) { d.Core.RescanEvery = 100 * time.Millisecond })
	lead := c.leader()
	ids := []string{newTxnID(1), newTxnID(2)}
	for _, id := range ids {
		// Nobody listens at port 9: the decision never arrives.
		if _, err := c.propose(lead, decide(id, committed, "127.0.0.1:9")); err != nil {
			t.Fatal(err)
		}
	}
	conn, err := grpc.NewClient(c.peers[lead], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	admin, cc := decreev1.NewAdminClient(conn), decreev1.NewCoordinatorClient(conn)
	var st *decreev1.StatusResponse
	var list *decreev1.ListTransactionsResponse
	coordinator.WaitFor(t, 20*time.Second, "the backlog of retried sends in status and the unfinished listing", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var err error
		if st, err = admin.Status(ctx, &decreev1.StatusRequest{}); err != nil {
			t.Fatalf("status: %v", err)
		}
		if list, err = cc.ListTransactions(ctx, &decreev1.ListTransactionsRequest{Filter: decreev1.TxnFilter_TXN_FILTER_UNFINISHED}); err != nil {
			t.Fatalf("list unfinished: %v", err)
		}
		sent := len(list.GetTxns()) == len(ids)
		for _, tx := range list.GetTxns() {
			sent = sent && tx.GetDecisionSends() >= 2 // the first send and at least one retry
		}
		return st.GetPhase2Backlog() == uint64(len(ids)) && st.GetPhase2OldestAgeSeconds() > 0 && sent
	})
}
