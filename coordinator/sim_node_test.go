package coordinator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/rs/zerolog"
	"go.etcd.io/raft/v3"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/decree-tx/decree/coordinator/internal/partcall"
	"github.com/decree-tx/decree/coordinator/internal/twopc"
	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
	"github.com/decree-tx/decree/txlog"
)

var (
	errSimTimeout    = errors.New("sim: call timed out")
	errSimRefused    = errors.New("sim: connection refused")
	errSimNotLeader  = errors.New("sim: not leader")
	errSimInProgress = errors.New("sim: deciding, ask again")
)

// simNode is one coordinator process: a Node driven by the simulation and
// the production Driver (with its Core) on top, stepped on the
// simulation's goroutine. Only the Driver's edges are the simulation's:
// the decision log it proposes to and reads (simLog, over the real Node),
// and the participant calls (simCaller, over the simulated network).
type simNode struct {
	w      *world
	id     uint64
	name   string
	fs     *vfs.MemFS
	store  *txlog.Store
	node   *Node
	drv    *Driver
	tr     *simTransport
	inc    int // incarnation: callbacks from an earlier one are ignored
	up     bool
	paused bool
	inbox  []func()

	leader bool
	term   uint64
	// The follower lease and election timer the simulation keeps for raft.
	leaseAt, electAt time.Time

	props []*simProp
	reads []*simRead
	// The node's gRPC health statuses, as its Driver reports them each
	// tick.
	health   healthReport
	statuses simHealth
	// The transactions this incarnation's core refused for overload, with
	// no request for them since, and the number of the last request for
	// each id (sim_clients_test.go).
	refused, askedReq map[string]uint64
}

// simHealth is a health server's statuses, per service.
type simHealth map[string]healthpb.HealthCheckResponse_ServingStatus

func (h simHealth) SetServingStatus(svc string, st healthpb.HealthCheckResponse_ServingStatus) {
	h[svc] = st
}

type simProp struct {
	p        *proposal
	cancel   context.CancelFunc
	deadline time.Time
	done     func(Result, error)
}

type simRead struct {
	r        *readRequest
	cancel   context.CancelFunc
	deadline time.Time
	done     func(error)
}

// simPeers is the cluster as an operator gives it to `decree start
// --peers`: the nodes are configured through the same parsing, and their
// cluster id is derived the same way.
const simPeers = "1=n1:1,2=n2:1,3=n3:1"

func (w *world) peers() map[uint64]string { return w.peerMap }

func (sn *simNode) alive(inc int) bool { return sn.up && sn.inc == inc }

// boot opens the node's store from its file system and starts it.
func (sn *simNode) boot() {
	w := sn.w
	store, err := txlog.Open("node", txlog.Identity{ClusterID: w.clusterID, NodeID: sn.id}, txlog.Options{FS: sn.fs, Logger: zerolog.Nop()})
	if err != nil {
		w.violate("n%d: reopen store: %v", sn.id, err)
		return
	}
	cfg := Config{
		ID: sn.id, Peers: w.peers(), ClusterID: w.clusterID,
		ElectionTicks: simElectionTicks, HeartbeatTicks: 1,
		SnapshotEvery: w.plan.snapEvery, CatchUpEntries: w.plan.catchUp,
		Nonce: w.rng.Uint32() | 1, Logger: zerolog.Nop(),
	}
	tr := newSimTransport(sn)
	node, err := newNode(cfg, store, tr)
	if err != nil {
		w.violate("n%d: start node: %v", sn.id, err)
		return
	}
	node.collectLimit = w.plan.collectLimit
	sn.inc++
	sn.store, sn.node, sn.up, sn.paused = store, node, true, false
	tr.attach(sn.inc)
	sn.tr = tr
	if sn.drv, err = sn.newDriver(); err != nil {
		w.violate("n%d: start driver: %v", sn.id, err)
		return
	}
	sn.leader, sn.term = false, 0
	sn.props, sn.reads, sn.inbox = nil, nil, nil
	sn.health, sn.statuses = healthReport{}, simHealth{}
	sn.heard()
	w.tracef("n%d booted (applied %d)", sn.id, node.Status().Applied)
	sn.pump()
}

// newDriver builds the production Driver on this node's edges; the
// simulation steps it (tick, drain) instead of its goroutine.
func (sn *simNode) newDriver() (*Driver, error) {
	w := sn.w
	collectEvery := time.Hour
	if w.plan.retention > 0 {
		collectEvery = w.plan.collectEvery
	}
	cfg := DriverConfig{
		Core: twopc.Config{
			PrepareTimeout: 300 * time.Millisecond, RetryMin: 20 * time.Millisecond, RetryMax: 300 * time.Millisecond,
			FinishDelay: 20 * time.Millisecond, RescanEvery: 2 * time.Second,
			Retention: w.plan.retention, CollectEvery: collectEvery,
			ParallelCommit: w.plan.parallel,
			// The jitter has a stream of its own, seeded from the run's
			// seed, so it does not shift the world's fault schedule.
			Rand:         rand.New(rand.NewPCG(w.seed, uint64(sn.id)<<32|uint64(sn.inc))).Float64,
			MaxInFlight:  w.plan.actors.maxInFlight,
			MaxHeldBytes: w.plan.actors.maxHeldBytes,
		},
		MaxBranches: simMaxBranches,
		MaxPayload:  simMaxPayload,
		CallTimeout: simCallTimeout,
		Clock:       simClock{w},
		Logger:      zerolog.Nop(),
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	d := newDriver(cfg.EnsureDefaults(), sn.id)
	mux := partcall.NewStepped(d.ctx, simCalls{sn: sn, inc: sn.inc}, cfg.Clock, zerolog.Nop())
	// Short, so that links retire and reopen within a run.
	mux.SetIdleTimeout(simLinkIdle)
	d.rlog, d.calls, d.mux = newSimLog(sn), mux, mux
	d.leaderLink, d.stepped = simLeaderLink{sn}, true
	backlog := d.phase2Backlog // for the Admin status, as NewDriver does
	sn.node.phase2.Store(&backlog)
	sn.refused, sn.askedReq = map[string]uint64{}, map[string]uint64{}
	d.onAction = func(a twopc.Action) {
		w.tracef("n%d %s", sn.id, a)
		sn.onAction(a)
		if c, ok := a.(twopc.Conflict); ok {
			w.violate("n%d core conflict on %s: %s", sn.id, c.ID, c.What)
		}
	}
	return d, nil
}

// crash loses everything not synced: the store reopens from a crash clone.
func (sn *simNode) crash() {
	clone := sn.fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0})
	sn.shutdown()
	sn.fs = clone
}

func (sn *simNode) shutdown() {
	if !sn.up {
		return
	}
	for _, p := range sn.props {
		p.cancel()
	}
	for _, r := range sn.reads {
		r.cancel()
	}
	_ = sn.store.Close()
	sn.up, sn.node, sn.drv, sn.store, sn.tr = false, nil, nil, nil, nil
	sn.inc++
}

// run runs fn in this incarnation, or queues it while paused.
func (sn *simNode) run(inc int, fn func()) {
	if !sn.alive(inc) {
		return
	}
	if sn.paused {
		sn.inbox = append(sn.inbox, fn)
		return
	}
	fn()
	if sn.alive(inc) {
		sn.pump()
	}
}

func (sn *simNode) resume() {
	sn.paused = false
	inbox := sn.inbox
	sn.inbox = nil
	sn.heard()
	for _, fn := range inbox {
		sn.run(sn.inc, fn)
	}
	sn.pump()
}

// heard restarts the follower lease and election timer, as hearing from
// the leader does in raft.
func (sn *simNode) heard() {
	lease := simElectionTicks * simTick
	sn.leaseAt = sn.w.now.Add(lease)
	sn.electAt = sn.w.now.Add(lease + time.Duration(sn.w.rng.Int64N(int64(lease))))
}

// tick is one simTick of this process's life.
func (sn *simNode) tick() {
	if sn.node.Status().Role == raft.StateLeader {
		sn.node.tick()
	} else {
		sn.followerTimers()
	}
	sn.expire()
	if sn.up {
		sn.tr.pt.tick(sn.w.now)
	}
	if sn.up {
		sn.drv.mux.Tick(sn.w.now)
	}
	if sn.up {
		sn.drv.tick()
		sn.health = sn.drv.reportHealth(sn.statuses, sn.health)
	}
	sn.pump()
}

func (sn *simNode) followerTimers() {
	st := sn.node.Status()
	now := sn.w.now
	if st.Role == raft.StateFollower && st.Leader != 0 && !now.Before(sn.leaseAt) {
		sn.w.tracef("n%d lease on leader %d expired", sn.id, st.Leader)
		_ = sn.node.rn.ForgetLeader()
	}
	if !now.Before(sn.electAt) {
		sn.w.tracef("n%d election timeout: campaign (term %d)", sn.id, st.Term)
		_ = sn.node.rn.Campaign()
		sn.heard()
	}
}

// pump handles raft Readies, hands finished proposals and reads back to
// the driver, and steps the driver's events until nothing moves.
func (sn *simNode) pump() {
	for range 1000 {
		if !sn.up {
			return
		}
		if err := sn.node.handleReadies(); err != nil {
			sn.w.violate("n%d: storage error: %v", sn.id, err)
			return
		}
		sn.tr.pt.pump()
		if !sn.up {
			return
		}
		sn.node.publishStatus()
		moved := sn.checkLeadership()
		moved = sn.collectProposals() || moved
		moved = sn.collectReads() || moved
		if !sn.up {
			return
		}
		sn.drv.mux.Pump()
		moved = sn.drv.drain() > 0 || moved
		if !moved && !sn.node.rn.HasReady() {
			return
		}
	}
	sn.w.violate("n%d: pump did not settle", sn.id)
}

// checkLeadership follows the node's role for the simulation (the world
// needs the leader; a deposed one starts its follower timers) and lets
// the driver take the change up.
func (sn *simNode) checkLeadership() bool {
	st := sn.node.Status()
	isLeader := st.Role == raft.StateLeader
	if isLeader == sn.leader && st.Term == sn.term {
		return false
	}
	was := sn.leader
	sn.leader, sn.term = isLeader, st.Term
	sn.w.tracef("n%d role %s term %d", sn.id, st.Role, st.Term)
	if was && !isLeader {
		sn.heard()
	}
	sn.drv.checkLeadership()
	return true
}

// propose hands a command to raft; done runs when it applied or failed
// (or timeout passed), in this incarnation.
func (sn *simNode) propose(cmd *decreev1.Command, timeout time.Duration, done func(Result, error)) {
	ctx, cancel := context.WithCancel(context.Background())
	p := &proposal{ctx: ctx, cmd: cmd, done: make(chan proposalResult, 1)}
	sn.node.propose(p)
	sn.props = append(sn.props, &simProp{p: p, cancel: cancel, deadline: sn.w.now.Add(timeout), done: done})
}

func (sn *simNode) collectProposals() bool {
	moved := false
	props := sn.props
	sn.props = nil
	var keep []*simProp
	for _, sp := range props {
		select {
		case r := <-sp.p.done:
			sp.cancel()
			moved = true
			err := r.err
			if err == nil {
				err = r.res.Err
			}
			sp.done(r.res, err)
		default:
			keep = append(keep, sp)
		}
		if !sn.up {
			return moved
		}
	}
	sn.props = append(keep, sn.props...)
	return moved
}

func (sn *simNode) readIndex(timeout time.Duration, done func(error)) {
	ctx, cancel := context.WithCancel(context.Background())
	r := &readRequest{ctx: ctx, done: make(chan error, 1)}
	sn.node.readIndex(r)
	sn.reads = append(sn.reads, &simRead{r: r, cancel: cancel, deadline: sn.w.now.Add(timeout), done: done})
}

func (sn *simNode) collectReads() bool {
	moved := false
	reads := sn.reads
	sn.reads = nil
	var keep []*simRead
	for _, sr := range reads {
		select {
		case err := <-sr.r.done:
			sr.cancel()
			moved = true
			sr.done(err)
		default:
			keep = append(keep, sr)
		}
		if !sn.up {
			return moved
		}
	}
	sn.reads = append(keep, sn.reads...)
	return moved
}

// expire fails proposals and reads past their deadline.
func (sn *simNode) expire() {
	now := sn.w.now
	props := sn.props
	sn.props = nil
	var keep []*simProp
	for _, sp := range props {
		if now.Before(sp.deadline) {
			keep = append(keep, sp)
			continue
		}
		sp.cancel()
		sp.done(Result{}, errSimTimeout)
		if !sn.up {
			return
		}
	}
	sn.props = append(keep, sn.props...)
	reads := sn.reads
	sn.reads = nil
	var kept []*simRead
	for _, sr := range reads {
		if now.Before(sr.deadline) {
			kept = append(kept, sr)
			continue
		}
		sr.cancel()
		sr.done(errSimTimeout)
	}
	sn.reads = append(kept, sn.reads...)
}

// simLog is the Driver's decision log in the simulation: the production
// adapter of the real Node (nodeLog) for status and reads, with proposals
// and reads through raft completed by the node's pump instead of waiting
// goroutines. It notes every outcome that leaves the log for the world's
// checks.
type simLog struct {
	nodeLog
	sn *simNode
}

func newSimLog(sn *simNode) simLog { return simLog{nodeLog: nodeLog{n: sn.node}, sn: sn} }

func (l simLog) Propose(cmd *decreev1.Command, timeout time.Duration, done func(Result, error)) {
	sn := l.sn
	sn.propose(cmd, timeout, func(r Result, err error) {
		if d := cmd.GetDecide(); d != nil && err == nil {
			sn.w.noteDecision(d.GetTxnId(), r.Outcome, fmt.Sprintf("n%d applied", sn.id))
		}
		done(r, err)
	})
}

func (l simLog) ReadIndex(timeout time.Duration, done func(error)) { l.sn.readIndex(timeout, done) }

func (l simLog) Record(id string) (*txlog.Record, bool, error) {
	l.sn.noteAsked(id)
	r, ok, err := l.nodeLog.Record(id)
	if ok && r.Outcome != txlog.OutcomeUnknown {
		l.sn.w.noteDecision(id, outcomeFromRecord(r.Outcome), fmt.Sprintf("n%d record", l.sn.id))
	}
	return r, ok, err
}

func (l simLog) ScanUnfinished(fn func(*txlog.Record) bool) error {
	sn := l.sn
	return l.nodeLog.ScanUnfinished(func(r *txlog.Record) bool {
		if r.Outcome != txlog.OutcomeUnknown {
			sn.w.noteDecision(r.ID, outcomeFromRecord(r.Outcome), fmt.Sprintf("n%d recovered", sn.id))
		}
		return fn(r)
	})
}

// simLeaderLink forwards a follower's requests to the leader over the
// simulated network, where the leader's own serve method answers them. A
// lost message is never answered: the caller's retry covers it, as its
// deadline does in production.
type simLeaderLink struct{ sn *simNode }

func (l simLeaderLink) Commit(_ context.Context, addr string, req *decreev1.CommitRequest, done func(*decreev1.CommitResponse, error)) {
	l.sn.forward(addr, func(to *simNode, ctx context.Context, answer func(func())) {
		to.drv.serveCommit(ctx, req, func(r *decreev1.CommitResponse, err error) { answer(func() { done(r, err) }) })
	})
}

func (l simLeaderLink) Outcome(_ context.Context, addr string, req *decreev1.OutcomeRequest, done func(*decreev1.OutcomeResponse, error)) {
	l.sn.forward(addr, func(to *simNode, ctx context.Context, answer func(func())) {
		to.drv.serveOutcome(ctx, req, func(r *decreev1.OutcomeResponse, err error) { answer(func() { done(r, err) }) })
	})
}

func (l simLeaderLink) ListTransactions(_ context.Context, addr string, req *decreev1.ListTransactionsRequest, done func(*decreev1.ListTransactionsResponse, error)) {
	l.sn.forward(addr, func(to *simNode, ctx context.Context, answer func(func())) {
		to.drv.serveList(ctx, req, func(r *decreev1.ListTransactionsResponse, err error) { answer(func() { done(r, err) }) })
	})
}

// forward carries a request from sn to the node at addr, marked as
// forwarded, and has serve answer it there; answer carries the reply back
// to sn, in this incarnation.
func (sn *simNode) forward(addr string, serve func(to *simNode, ctx context.Context, answer func(func()))) {
	w, inc := sn.w, sn.inc
	var to *simNode
	for _, n := range w.nodes {
		if w.peers()[n.id] == addr {
			to = n
		}
	}
	if to == nil {
		w.violate("n%d forwards to %s, which is no node", sn.id, addr)
		return
	}
	w.tracef("n%d forwards a request to n%d", sn.id, to.id)
	w.send(sn.name, to.name, func() {
		if !to.up {
			return
		}
		to.run(to.inc, func() {
			ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs(forwardedKey, "1"))
			serve(to, ctx, func(deliver func()) {
				w.send(to.name, sn.name, func() { sn.run(inc, deliver) }, nil)
			})
		})
	}, nil)
}

// simCalls is the participant-call edge of a node's production callMux,
// stepped by the simulation: each Calls stream is a simulated connection to
// one participant process. Like TCP, a stream delivers in order and never
// twice: the world's reordering and duplication do not apply to it. A cut
// link swallows its messages (the calls time out and the mux resets the
// stream); a dropped message resets the connection, as does a participant
// that restarted or stopped. simCalls also checks, before each decision
// leaves, that the world has seen no other decision for the transaction.
type simCalls struct {
	sn  *simNode
	inc int // the node's incarnation that owns the mux
}

func (c simCalls) OpenCalls(_ context.Context, addr string) (partcall.Stream, error) {
	p, ok := c.sn.w.byAddr[addr]
	if !ok || !p.up {
		return nil, status.Errorf(codes.Unavailable, "sim: connection to %s refused", addr)
	}
	return &simStream{c: c, p: p, pinc: p.inc}, nil
}

func (c simCalls) Unary(addr string) (partcall.UnaryParticipant, error) {
	p, ok := c.sn.w.byAddr[addr]
	if !ok {
		return nil, status.Errorf(codes.Unavailable, "sim: no participant at %s", addr)
	}
	return simUnary{c: c, p: p}, nil
}

func (c simCalls) Release(string) {}

// simStream is one simulated Calls connection from a node to a participant
// process (incarnation pinc).
type simStream struct {
	c       simCalls
	p       *simPart
	pinc    int
	replies []*decreev1.ReplyBatch
	err     error // Recv's, once the replies are read
	broken  bool  // no message gets through any more
	// The arrival time of the last message each way: a later one never
	// arrives before it.
	toPart, toNode time.Time
}

func (s *simStream) Send(b *decreev1.CallBatch) error {
	switch {
	case s.err != nil:
		return io.EOF
	case s.broken:
		return nil // swallowed; the calls time out
	}
	sn, w := s.c.sn, s.c.sn.w
	for _, call := range b.GetCalls() {
		s.c.leaving(call)
	}
	s.transmit(sn.name, s.p.name, &s.toPart, func() {
		if !s.p.up || s.p.inc != s.pinc {
			s.reset("the participant process is gone")
			return
		}
		if s.p.oldSDK {
			s.unimplemented()
			return
		}
		replies := make([]*decreev1.Reply, 0, len(b.GetCalls()))
		for _, call := range b.GetCalls() {
			replies = append(replies, s.p.answer(call))
		}
		// The SDK's workers answer a batch's calls in any order.
		w.rng.Shuffle(len(replies), func(i, j int) { replies[i], replies[j] = replies[j], replies[i] })
		s.transmit(s.p.name, sn.name, &s.toNode, func() {
			sn.run(s.c.inc, func() { s.replies = append(s.replies, &decreev1.ReplyBatch{Replies: replies}) })
		})
	})
	return nil
}

// transmit carries one message of the stream from -> to after a network
// delay, in order; a cut link swallows it and every later one, a dropped
// message resets the connection.
func (s *simStream) transmit(from, to string, last *time.Time, fn func()) {
	w := s.c.sn.w
	if s.broken || w.cut[[2]string{from, to}] {
		s.broken = true
		return
	}
	if w.faultsOn && w.rng.Float64() < w.plan.drop {
		w.faults["connection-reset"]++
		s.reset("connection reset")
		return
	}
	d := 200*time.Microsecond + time.Duration(w.rng.Int64N(int64(w.plan.maxDelay)))
	at := w.now.Add(d)
	if at.Before(*last) {
		at = *last
	}
	*last = at
	w.at(at.Sub(w.now), func() {
		if s.broken || w.cut[[2]string{from, to}] {
			s.broken = true
			return
		}
		fn()
	})
}

// reset breaks the connection: the node hears of it a network delay later.
func (s *simStream) reset(why string) {
	if s.broken {
		return
	}
	s.broken = true
	sn, w := s.c.sn, s.c.sn.w
	w.at(200*time.Microsecond+time.Duration(w.rng.Int64N(int64(w.plan.maxDelay))), func() {
		sn.run(s.c.inc, func() { s.err = status.Error(codes.Unavailable, "sim: "+why) })
	})
}

func (s *simStream) Recv() (*decreev1.ReplyBatch, error) {
	switch {
	case len(s.replies) > 0:
		b := s.replies[0]
		s.replies = s.replies[1:]
		return b, nil
	case s.err != nil:
		return nil, s.err
	}
	return nil, partcall.ErrNoReply
}

func (s *simStream) Cancel() {
	s.broken = true
	if s.err == nil {
		s.err = status.Error(codes.Canceled, "sim: stream cancelled")
	}
}

// answer runs one call at the participant, as its Calls service does: the
// reply, or the call's error in the reply.
func (sp *simPart) answer(c *decreev1.Call) *decreev1.Reply {
	r, err := sp.serve(c)
	if err != nil {
		st := status.Convert(err)
		return &decreev1.Reply{Seq: c.GetSeq(), Kind: &decreev1.Reply_Error{Error: &decreev1.CallError{
			Code: uint32(st.Code()), Message: st.Message()}}}
	}
	r.Seq = c.GetSeq()
	return r
}

// serve runs one call at the participant's real service.
func (sp *simPart) serve(c *decreev1.Call) (*decreev1.Reply, error) {
	w := sp.w
	ctx := context.Background()
	switch k := c.GetKind().(type) {
	case *decreev1.Call_Prepare:
		req := k.Prepare
		resp, err := sp.svc.Prepare(ctx, req)
		if err == nil {
			w.noteVote(sp.addr, req.GetTxnId(), resp.GetVote())
		}
		w.observe(sp, req.GetTxnId())
		return &decreev1.Reply{Kind: &decreev1.Reply_Prepare{Prepare: resp}}, err
	case *decreev1.Call_Commit:
		return sp.serveDecision(k.Commit, decreev1.Outcome_OUTCOME_COMMITTED)
	case *decreev1.Call_Abort:
		return sp.serveDecision(k.Abort, decreev1.Outcome_OUTCOME_ABORTED)
	case *decreev1.Call_Resolve:
		resp, err := sp.svc.Resolve(ctx, k.Resolve)
		w.observe(sp, k.Resolve.GetTxnId())
		return &decreev1.Reply{Kind: &decreev1.Reply_Resolve{Resolve: resp}}, err
	default:
		return nil, fmt.Errorf("call of unknown kind %T", k)
	}
}

func (sp *simPart) serveDecision(req *decreev1.DecisionRequest, o decreev1.Outcome) (*decreev1.Reply, error) {
	w, id := sp.w, req.GetTxnId()
	commit := o == decreev1.Outcome_OUTCOME_COMMITTED
	if commit && !w.votedYes[sp.addr][id] {
		w.violate("commit of %s delivered to %s, which never voted YES", id, sp.addr)
	}
	var resp *decreev1.DecisionResponse
	var err error
	if commit {
		resp, err = sp.svc.Commit(context.Background(), req)
	} else {
		resp, err = sp.svc.Abort(context.Background(), req)
	}
	if status.Code(err) == codes.FailedPrecondition && !isStaleTerm(err) {
		w.violate("%s refused %s of %s: %v", sp.addr, twopc.DecisionVerb(o), id, err)
	}
	if err == nil {
		st := txlog.PStateAborted
		if commit {
			st = txlog.PStateCommitted
		}
		if rec, ok, _ := sp.log.GetTxn(id); ok && rec.State == txlog.PStateReadOnly {
			st = txlog.PStateReadOnly
		}
		w.noteAck(sp, id, st)
	}
	w.observe(sp, id)
	return &decreev1.Reply{Kind: &decreev1.Reply_Decision{Decision: resp}}, err
}

// isStaleTerm recognises the participant's fencing of a deposed leader,
// which is not a violation: the call carried an older term.
func isStaleTerm(err error) bool {
	s, _ := status.FromError(err)
	return s != nil && strings.HasPrefix(s.Message(), "stale term")
}
