package coordinator_test

// End-to-end tests of two-phase commit: an in-process 3-node coordinator
// cluster, real participant-SDK servers with real Pebble logs on loopback,
// and the Go client. Each test is one case from DESIGN.md's invariants.

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/decree-tx/decree/coordinator"
	"github.com/decree-tx/decree/coordinator/client"
	"github.com/decree-tx/decree/participant"
	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
	"github.com/decree-tx/decree/txlog"
)

// setResource stages "set k=v" at prepare ("pending/<id>"), applies it to
// "data/k" at commit and drops it at abort; "no" votes NO.
type setResource struct{ prepares atomic.Int64 }

func (r *setResource) Prepare(_ context.Context, txn participant.Txn, w participant.Writer) (participant.Vote, string, error) {
	r.prepares.Add(1)
	if string(txn.Payload) == "no" {
		return participant.VoteNo, "refused by test", nil
	}
	kv, ok := strings.CutPrefix(string(txn.Payload), "set ")
	if !ok {
		return 0, "", fmt.Errorf("bad payload %q", txn.Payload)
	}
	w.Set([]byte("pending/"+txn.ID), []byte(kv))
	return participant.VoteYes, "", nil
}

func (r *setResource) Commit(_ context.Context, id string, w participant.Writer) error {
	kv, ok, err := w.Get([]byte("pending/" + id))
	if err != nil || !ok {
		return fmt.Errorf("commit %s: nothing pending (%v)", id, err)
	}
	k, v, _ := strings.Cut(string(kv), "=")
	w.Set([]byte("data/"+k), []byte(v))
	w.Delete([]byte("pending/" + id))
	return nil
}

func (r *setResource) Abort(_ context.Context, id string, w participant.Writer) error {
	w.Delete([]byte("pending/" + id))
	return nil
}

// gate lets a test refuse or hold calls to one participant, to place a
// crash exactly between two protocol steps.
type gate struct {
	mu     sync.Mutex
	refuse map[string]bool          // method name -> answer Unavailable
	hold   map[string]chan struct{} // method name -> wait until closed
	held   chan string
}

func newGate() *gate {
	return &gate{refuse: map[string]bool{}, hold: map[string]chan struct{}{}, held: make(chan string, 16)}
}

func (g *gate) set(method string, refuse bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.refuse[method] = refuse
}

func (g *gate) holdCalls(method string) (release func()) {
	ch := make(chan struct{})
	g.mu.Lock()
	g.hold[method] = ch
	g.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			g.mu.Lock()
			delete(g.hold, method)
			g.mu.Unlock()
			close(ch)
		})
	}
}

// pass runs a call of method through the gate: refused, held, or let by.
func (g *gate) pass(method string) error {
	g.mu.Lock()
	refuse, hold := g.refuse[method], g.hold[method]
	g.mu.Unlock()
	if refuse {
		return status.Error(codes.Unavailable, "gated by test")
	}
	if hold != nil {
		g.held <- method
		<-hold
	}
	return nil
}

// gatedService wraps a participant's service so that every call, unary or
// carried by the Calls stream, passes the gate first.
type gatedService struct {
	decreev1.ParticipantServer
	p         *participant.Participant
	gate      *gate
	unaryOnly bool // refuse the Calls stream, as a participant that predates it
}

func (s gatedService) Prepare(ctx context.Context, req *decreev1.PrepareRequest) (*decreev1.PrepareResponse, error) {
	if err := s.gate.pass("Prepare"); err != nil {
		return nil, err
	}
	return s.ParticipantServer.Prepare(ctx, req)
}

func (s gatedService) Commit(ctx context.Context, req *decreev1.DecisionRequest) (*decreev1.DecisionResponse, error) {
	if err := s.gate.pass("Commit"); err != nil {
		return nil, err
	}
	return s.ParticipantServer.Commit(ctx, req)
}

func (s gatedService) Abort(ctx context.Context, req *decreev1.DecisionRequest) (*decreev1.DecisionResponse, error) {
	if err := s.gate.pass("Abort"); err != nil {
		return nil, err
	}
	return s.ParticipantServer.Abort(ctx, req)
}

func (s gatedService) Resolve(ctx context.Context, req *decreev1.ResolveRequest) (*decreev1.ResolveResponse, error) {
	if err := s.gate.pass("Resolve"); err != nil {
		return nil, err
	}
	return s.ParticipantServer.Resolve(ctx, req)
}

func (s gatedService) Calls(stream decreev1.Participant_CallsServer) error {
	if s.unaryOnly {
		return status.Error(codes.Unimplemented, "test participant serves unary calls only")
	}
	return s.p.ServeCalls(stream, s)
}

type testParticipant struct {
	t    testing.TB
	addr string
	dir  string
	gate *gate
	// unaryOnly makes the participant refuse the Calls stream.
	unaryOnly bool
	res       *setResource
	log       *txlog.ParticipantLog
	p         *participant.Participant
	srv       *grpc.Server
	coords    []string
}

func startParticipant(t testing.TB, coords []string) *testParticipant {
	t.Helper()
	return startParticipantWith(t, coords, false)
}

func startParticipantWith(t testing.TB, coords []string, unaryOnly bool) *testParticipant {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tp := &testParticipant{t: t, addr: lis.Addr().String(), dir: t.TempDir(), gate: newGate(), res: &setResource{}, coords: coords, unaryOnly: unaryOnly}
	tp.serve(lis)
	t.Cleanup(tp.stop)
	return tp
}

func (tp *testParticipant) serve(lis net.Listener) {
	tp.t.Helper()
	logger := zerolog.New(zerolog.NewTestWriter(tp.t)).Level(zerolog.WarnLevel)
	l, err := txlog.OpenParticipantLog(tp.dir, txlog.Options{Logger: logger})
	if err != nil {
		tp.t.Fatal(err)
	}
	p, err := participant.New(tp.res, participant.Options{
		Log: l, Coordinators: tp.coords, InDoubtTimeout: 300 * time.Millisecond,
		RetryMin: 20 * time.Millisecond, RetryMax: 200 * time.Millisecond, Logger: logger,
	})
	if err != nil {
		tp.t.Fatal(err)
	}
	srv := grpc.NewServer()
	decreev1.RegisterParticipantServer(srv, gatedService{ParticipantServer: p.Service(), p: p, gate: tp.gate, unaryOnly: tp.unaryOnly})
	go srv.Serve(lis)
	p.Start(context.Background())
	tp.log, tp.p, tp.srv = l, p, srv
}

// stop takes the participant down: server, SDK and log (safe twice).
func (tp *testParticipant) stop() {
	if tp.srv == nil {
		return
	}
	tp.srv.Stop()
	tp.p.Stop()
	tp.log.Close()
	tp.srv = nil
}

// gracefulStop takes the participant down as a careful user does: the SDK
// stops (ending its Calls streams), the server drains. It fails the test
// if GracefulStop hangs.
func (tp *testParticipant) gracefulStop() {
	tp.t.Helper()
	done := make(chan struct{})
	go func() {
		tp.p.Stop()
		tp.srv.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		tp.t.Fatal("GracefulStop did not return while a coordinator held a Calls stream")
	}
	tp.log.Close()
	tp.srv = nil
}

// restart brings the participant back on the same address and log.
func (tp *testParticipant) restart() {
	tp.t.Helper()
	var lis net.Listener
	waitFor(tp.t, 5*time.Second, "re-listen "+tp.addr, func() bool {
		var err error
		lis, err = net.Listen("tcp", tp.addr)
		return err == nil
	})
	tp.serve(lis)
}

func (tp *testParticipant) value(k string) string {
	var v string
	err := tp.p.ReadState(func(r participant.Reader) error {
		b, ok, err := r.Get([]byte("data/" + k))
		if ok {
			v = string(b)
		}
		return err
	})
	if err != nil {
		tp.t.Fatal(err)
	}
	return v
}

func (tp *testParticipant) inDoubt() []string {
	var ids []string
	for _, d := range tp.p.InDoubt() {
		ids = append(ids, d.ID)
	}
	return ids
}

func (tp *testParticipant) waitSettled() {
	tp.t.Helper()
	waitFor(tp.t, 10*time.Second, tp.addr+" holds nothing in doubt", func() bool { return len(tp.p.InDoubt()) == 0 })
}

type e2e struct {
	*testCluster
	client *client.Client
	parts  []*testParticipant
}

func newE2E(t testing.TB, participants int) *e2e {
	t.Helper()
	return newE2EWith(t, participants, false)
}

func newE2EWith(t testing.TB, participants int, parallel bool) *e2e {
	t.Helper()
	c := newTestClusterWith(t, 3, nil, func(d *coordinator.DriverConfig) {
		d.Core.PrepareTimeout = 2 * time.Second
		d.Core.RetryMax = 200 * time.Millisecond
		d.Core.ParallelCommit = parallel
	})
	var eps []string
	for id := uint64(1); id <= 3; id++ {
		eps = append(eps, c.peers[id])
	}
	cl, err := client.Dial(eps, client.Options{RetryMax: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	e := &e2e{testCluster: c, client: cl}
	for range participants {
		e.parts = append(e.parts, startParticipant(t, eps))
	}
	c.leader()
	return e
}

func (e *e2e) txn(id string, payloads ...string) client.Txn {
	txn := client.Txn{ID: id}
	for i, p := range payloads {
		txn.Branches = append(txn.Branches, client.Branch{Participant: e.parts[i].addr, Payload: []byte(p)})
	}
	return txn
}

func (e *e2e) commit(txn client.Txn) client.Result {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res, err := e.client.Commit(ctx, txn)
	if err != nil {
		e.t.Fatalf("commit %s: %v", txn.ID, err)
	}
	return res
}

func TestE2EAllCommit(t *testing.T) {
	e := newE2E(t, 2)
	res := e.commit(e.txn(newTxnID(1), "set x=1", "set y=2"))
	if res.State != client.StateCommitted {
		t.Fatalf("got %+v", res)
	}
	waitFor(t, 5*time.Second, "both applied", func() bool { return e.parts[0].value("x") == "1" && e.parts[1].value("y") == "2" })
}

// A participant that does not serve the Calls stream is called with the
// unary methods, next to one that does, in both outcomes and in phase 2
// retries.
func TestE2EUnaryOnlyParticipant(t *testing.T) {
	e := newE2E(t, 1)
	e.parts = append(e.parts, startParticipantWith(t, e.parts[0].coords, true))
	old := e.parts[1]
	old.gate.set("Commit", true)
	if res := e.commit(e.txn(newTxnID(1), "set x=1", "set y=2")); res.State != client.StateCommitted {
		t.Fatalf("got %+v", res)
	}
	waitFor(t, 5*time.Second, "the unary participant refuses commits", func() bool { return len(old.inDoubt()) == 1 })
	old.gate.set("Commit", false)
	waitFor(t, 5*time.Second, "both applied", func() bool { return e.parts[0].value("x") == "1" && old.value("y") == "2" })
	res := e.commit(e.txn(newTxnID(2), "set x=3", "no"))
	if res.State != client.StateAborted || !strings.Contains(res.Reason, old.addr+" voted no") {
		t.Fatalf("got %+v", res)
	}
	e.parts[0].waitSettled()
	if v := e.parts[0].value("x"); v != "1" {
		t.Fatalf("aborted write applied: x=%q", v)
	}
}

func TestE2EParticipantVotesNo(t *testing.T) {
	e := newE2E(t, 2)
	res := e.commit(e.txn(newTxnID(1), "set x=1", "no"))
	if res.State != client.StateAborted || !strings.Contains(res.Reason, e.parts[1].addr+" voted no: refused by test") {
		t.Fatalf("got %+v", res)
	}
	e.parts[0].waitSettled()
	if v := e.parts[0].value("x"); v != "" {
		t.Fatalf("aborted write applied: x=%q", v)
	}
}

func TestE2EParticipantDownDuringPrepare(t *testing.T) {
	e := newE2E(t, 2)
	e.parts[1].stop()
	res := e.commit(e.txn(newTxnID(1), "set x=1", "set y=2"))
	if res.State != client.StateAborted || !strings.Contains(res.Reason, e.parts[1].addr) {
		t.Fatalf("got %+v, want aborted naming %s", res, e.parts[1].addr)
	}
	e.parts[0].waitSettled()
	if v := e.parts[0].value("x"); v != "" {
		t.Fatalf("aborted write applied: x=%q", v)
	}
}

// A participant that voted YES crashes before hearing the decision; on
// restart it reloads the prepared transaction and resolves it.
func TestE2EParticipantRestartsAfterYes(t *testing.T) {
	e := newE2E(t, 2)
	a := e.parts[0]
	a.gate.set("Commit", true)
	id := newTxnID(1)
	if res := e.commit(e.txn(id, "set x=1", "set y=2")); res.State != client.StateCommitted {
		t.Fatalf("got %+v", res)
	}
	if got := a.inDoubt(); !slices.Equal(got, []string{id}) {
		t.Fatalf("in doubt before the crash: %v", got)
	}
	a.stop()
	a.gate = newGate()
	a.restart()
	a.waitSettled()
	if v := a.value("x"); v != "1" {
		t.Fatalf("after restart x=%q, want 1", v)
	}
}

// The leader dies after the decision applied and before phase 2 reached
// anyone: the new leader finishes phase 2 from the replicated record.
func TestE2ELeaderKilledAfterDecision(t *testing.T) {
	e := newE2E(t, 2)
	for _, p := range e.parts {
		p.gate.set("Commit", true)
	}
	id := newTxnID(1)
	if res := e.commit(e.txn(id, "set x=1", "set y=2")); res.State != client.StateCommitted {
		t.Fatalf("got %+v", res)
	}
	old := e.leader()
	e.stop(old)
	for _, p := range e.parts {
		p.gate.set("Commit", false)
	}
	for _, p := range e.parts {
		p.waitSettled()
	}
	if e.parts[0].value("x") != "1" || e.parts[1].value("y") != "2" {
		t.Fatal("committed writes not applied after failover")
	}
	waitFor(t, 10*time.Second, "the new leader marks it finished", func() bool {
		for _, m := range e.members {
			if r, ok, _ := m.node.Record(id); !ok || !r.Finished {
				return false
			}
		}
		return true
	})
}

// The leader dies while a participant is still voting: the client still
// gets a definitive outcome and no participant is left holding the
// transaction; both apply the same outcome.
func TestE2ELeaderKilledDuringVoting(t *testing.T) {
	e := newE2E(t, 2)
	a, b := e.parts[0], e.parts[1]
	release := b.gate.holdCalls("Prepare")
	defer release()
	id := newTxnID(1)
	type answer struct {
		res client.Result
		err error
	}
	done := make(chan answer, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		res, err := e.client.Commit(ctx, e.txn(id, "set x=1", "set y=2"))
		done <- answer{res, err}
	}()
	select {
	case <-b.gate.held:
	case <-time.After(10 * time.Second):
		t.Fatal("prepare never reached participant b")
	}
	waitFor(t, 5*time.Second, "a voted yes", func() bool { return slices.Contains(a.inDoubt(), id) })
	e.stop(e.leader())
	release()
	var ans answer
	select {
	case ans = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("client got no answer")
	}
	if ans.err != nil || (ans.res.State != client.StateCommitted && ans.res.State != client.StateAborted) {
		t.Fatalf("client got %+v, %v; want a definitive outcome", ans.res, ans.err)
	}
	a.waitSettled()
	b.waitSettled()
	want := ""
	if ans.res.State == client.StateCommitted {
		want = "1"
	}
	if got := a.value("x"); got != want {
		t.Fatalf("outcome %v but a has x=%q", ans.res.State, got)
	}
	if got := b.value("y"); (got != "") != (want != "") {
		t.Fatalf("outcome %v but b has y=%q", ans.res.State, got)
	}
}

func TestE2EClientRetrySameIDSameOutcome(t *testing.T) {
	e := newE2E(t, 2)
	for i, payloads := range [][]string{{"set x=1", "set y=2"}, {"set x=3", "no"}} {
		txn := e.txn(newTxnID(i), payloads...)
		first := e.commit(txn)
		prepares := e.parts[0].res.prepares.Load()
		for range 3 {
			if again := e.commit(txn); again.State != first.State || again.Reason != first.Reason {
				t.Fatalf("retry got %+v, first %+v", again, first)
			}
		}
		if n := e.parts[0].res.prepares.Load(); n != prepares {
			t.Fatalf("retries of a decided transaction prepared again (%d -> %d)", prepares, n)
		}
	}
}

// After a presumed abort, a late Prepare (say from a deposed leader) votes NO.
func TestE2ELatePrepareAfterAbortVotesNo(t *testing.T) {
	e := newE2E(t, 2)
	id := newTxnID(1)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := e.client.Outcome(ctx, id, e.parts[0].addr, e.parts[1].addr)
	if err != nil || res.State != client.StateAborted {
		t.Fatalf("outcome: %+v %v", res, err)
	}
	conn, err := grpc.NewClient("passthrough:///"+e.parts[0].addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	pc := decreev1.NewParticipantClient(conn)
	var vote *decreev1.PrepareResponse
	waitFor(t, 10*time.Second, "the abort reaches the participant", func() bool {
		// Until the abort (or its tombstone) lands, a prepare could still
		// win; so probe with Resolve, which itself leaves a tombstone.
		st, err := pc.Resolve(ctx, &decreev1.ResolveRequest{TxnId: id, Term: 1 << 40})
		return err == nil && st.GetState() == decreev1.ParticipantState_PARTICIPANT_STATE_ABORTED
	})
	vote, err = pc.Prepare(ctx, &decreev1.PrepareRequest{TxnId: id, Payload: []byte("set x=9"),
		Participants: []string{e.parts[0].addr, e.parts[1].addr}, Term: 1 << 40})
	if err != nil || vote.GetVote() != decreev1.Vote_VOTE_NO {
		t.Fatalf("late prepare: %v %v; want NO", vote, err)
	}
	if v := e.parts[0].value("x"); v != "" {
		t.Fatalf("late prepare applied x=%q", v)
	}
}

// TestE2EOneParticipantUnderTwoAddresses: a transaction whose two branches
// name one participant under two spellings must abort and change nothing.
// It used to be answered COMMITTED while the participant, taking the
// second prepare for a repeat of the first, applied one branch only.
func TestE2EOneParticipantUnderTwoAddresses(t *testing.T) {
	for _, parallel := range []bool{false, true} {
		t.Run(fmt.Sprintf("parallel=%v", parallel), func(t *testing.T) {
			e := newE2EWith(t, 1, parallel)
			p := e.parts[0]
			_, port, _ := net.SplitHostPort(p.addr)
			alias := net.JoinHostPort("localhost", port)
			for i, payloads := range [][2]string{{"set x=1", "set y=2"}, {"set x=1", "set x=1"}} {
				txn := client.Txn{ID: newTxnID(i + 1), Branches: []client.Branch{
					{Participant: p.addr, Payload: []byte(payloads[0])},
					{Participant: alias, Payload: []byte(payloads[1])},
				}}
				res := e.commit(txn)
				if res.State != client.StateAborted {
					t.Fatalf("payloads %q: %+v, want aborted", payloads, res)
				}
				if payloads[0] == payloads[1] && !strings.Contains(res.Reason, "reach the same participant") {
					t.Errorf("identical payloads aborted for %q, want the two branches named", res.Reason)
				}
				p.waitSettled()
				if x, y := p.value("x"), p.value("y"); x != "" || y != "" {
					t.Fatalf("payloads %q: the participant applied x=%q y=%q", payloads, x, y)
				}
			}
		})
	}
}

// TestE2EParticipantGracefulStopAndBack: a participant's GracefulStop
// returns although the leader holds a Calls stream to it, and the leader
// reconnects when it comes back.
func TestE2EParticipantGracefulStopAndBack(t *testing.T) {
	e := newE2E(t, 2)
	if res := e.commit(e.txn(newTxnID(1), "set x=1", "set y=1")); res.State != client.StateCommitted {
		t.Fatalf("first transaction: %+v", res)
	}
	e.parts[0].waitSettled()
	e.parts[0].gracefulStop()
	e.parts[0].restart()
	if res := e.commit(e.txn(newTxnID(2), "set x=2", "set y=2")); res.State != client.StateCommitted {
		t.Fatalf("after the participant came back: %+v", res)
	}
	waitFor(t, 5*time.Second, "both applied", func() bool { return e.parts[0].value("x") == "2" && e.parts[1].value("y") == "2" })
}
