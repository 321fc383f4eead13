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
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
	"github.com/decree-tx/decree/txlog"
)

var (
	errSimTimeout    = errors.New("sim: call timed out")
	errSimRefused    = errors.New("sim: connection refused")
	errSimNotLeader  = errors.New("sim: not leader")
	errSimInProgress = errors.New("sim: deciding, ask again")
)

// simNode is one coordinator process: a Node driven by the simulation, its
// Core, and the glue the production Driver provides, as events.
type simNode struct {
	w      *world
	id     uint64
	name   string
	fs     *vfs.MemFS
	store  *txlog.Store
	node   *Node
	core   *Core
	inc    int // incarnation: callbacks from an earlier one are ignored
	up     bool
	paused bool
	inbox  []func()

	leader bool
	term   uint64
	// The follower lease and election timer the simulation keeps for raft.
	leaseAt, electAt time.Time

	props    []*simProp
	reads    []*simRead
	reqs     map[uint64]func(Reply)
	nextReq  uint64
	settling map[string]bool
}

type simProp struct {
	p        *proposal
	cancel   context.CancelFunc
	deadline time.Time
	ok       func(Result)
	fail     func(error)
}

type simRead struct {
	r        *readRequest
	cancel   context.CancelFunc
	deadline time.Time
	term     uint64
}

func (w *world) peers() map[uint64]string {
	m := map[uint64]string{}
	for _, n := range w.nodes {
		m[n.id] = fmt.Sprintf("n%d:1", n.id)
	}
	return m
}

func (sn *simNode) alive(inc int) bool { return sn.up && sn.inc == inc }

// boot opens the node's store from its file system and starts it.
func (sn *simNode) boot() {
	w := sn.w
	store, err := txlog.Open("node", txlog.Identity{ClusterID: 1, NodeID: sn.id}, txlog.Options{FS: sn.fs, Logger: zerolog.Nop()})
	if err != nil {
		w.violate("n%d: reopen store: %v", sn.id, err)
		return
	}
	cfg := Config{
		ID: sn.id, Peers: w.peers(), ClusterID: 1,
		ElectionTicks: simElectionTicks, HeartbeatTicks: 1,
		SnapshotEvery: w.plan.snapEvery, CatchUpEntries: w.plan.catchUp,
		Nonce: w.rng.Uint32() | 1, Logger: zerolog.Nop(),
	}
	node, err := newNode(cfg, store, &simTransport{sn: sn})
	if err != nil {
		w.violate("n%d: start node: %v", sn.id, err)
		return
	}
	node.collectLimit = w.plan.collectLimit
	sn.inc++
	sn.store, sn.node, sn.up, sn.paused = store, node, true, false
	collectEvery := time.Hour
	if w.plan.retention > 0 {
		collectEvery = w.plan.collectEvery
	}
	sn.core = NewCore(CoreConfig{
		PrepareTimeout: 300 * time.Millisecond, RetryMin: 20 * time.Millisecond, RetryMax: 300 * time.Millisecond,
		FinishDelay: 20 * time.Millisecond, RescanEvery: 2 * time.Second,
		Retention: w.plan.retention, CollectEvery: collectEvery,
		ParallelCommit: w.plan.parallel,
		// The jitter has a stream of its own, seeded from the run's seed,
		// so it does not shift the world's fault schedule.
		Rand: rand.New(rand.NewPCG(w.seed, uint64(sn.id)<<32|uint64(sn.inc))).Float64,
	})
	sn.leader, sn.term = false, 0
	sn.props, sn.reads, sn.inbox = nil, nil, nil
	sn.reqs, sn.settling = map[uint64]func(Reply){}, map[string]bool{}
	sn.heard()
	w.tracef("n%d booted (applied %d)", sn.id, node.Status().Applied)
	sn.pump()
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
	sn.up, sn.node, sn.core, sn.store = false, nil, nil, nil
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
	sn.coreStep(Tick{})
	sn.expire()
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

// pump handles raft Readies and hands finished proposals and reads back to
// the core until nothing moves.
func (sn *simNode) pump() {
	for range 1000 {
		if !sn.up {
			return
		}
		if err := sn.node.handleReadies(); err != nil {
			sn.w.violate("n%d: storage error: %v", sn.id, err)
			return
		}
		sn.node.publishStatus()
		moved := sn.checkLeadership()
		moved = sn.collectProposals() || moved
		moved = sn.collectReads() || moved
		if !moved && !sn.node.rn.HasReady() {
			return
		}
	}
	sn.w.violate("n%d: pump did not settle", sn.id)
}

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
	sn.coreStep(LeadershipChanged{Leader: isLeader, Term: st.Term})
	return true
}

func (sn *simNode) coreStep(ev Event) {
	for _, a := range sn.core.Step(sn.w.now, ev) {
		sn.w.tracef("n%d %s", sn.id, a)
		sn.execute(a)
		if !sn.up {
			return
		}
	}
}

func (sn *simNode) execute(a Action) {
	switch a := a.(type) {
	case SendPrepare:
		sn.prepare(a)
	case ResolveAtParticipant:
		sn.call(a.Participant, simCallTimeout, func(svc decreev1.ParticipantServer) (any, error) {
			resp, err := svc.Resolve(context.Background(), &decreev1.ResolveRequest{TxnId: a.ID, Term: a.Term})
			sn.w.observe(sn.w.byAddr[a.Participant], a.ID)
			return resp, err
		}, func(r any, err error) {
			ev := ParticipantResolved{ID: a.ID, Participant: a.Participant, Term: a.Term}
			if err != nil {
				ev.Err = err.Error()
			} else {
				ev.State = r.(*decreev1.ResolveResponse).GetState()
				ev.ParticipantID = r.(*decreev1.ResolveResponse).GetParticipantId()
			}
			sn.coreStep(ev)
		})
	case ProposeDecide:
		cmd := decideCommand(a.ID, a.Outcome, a.Participants, a.Reason, a.DecidedAt)
		cmd.GetDecide().Presumed = a.Presumed
		sn.propose(cmd, func(r Result) {
			sn.w.noteDecision(a.ID, r.Outcome, fmt.Sprintf("n%d applied", sn.id))
			sn.coreStep(DecisionApplied{ID: a.ID, Term: a.Term, Outcome: r.Outcome, Reason: r.Reason, Participants: r.Participants})
		}, func(error) { sn.coreStep(ProposeFailed{ID: a.ID, Term: a.Term}) })
	case ProposeStaged:
		sn.propose(stagedCommand(a.ID, a.Participants), func(r Result) {
			sn.coreStep(StagedApplied{ID: a.ID, Term: a.Term, Outcome: r.Outcome, Reason: r.Reason})
		}, nil)
	case ProposeFinished:
		cmd := &decreev1.Command{Kind: &decreev1.Command_Finished{Finished: &decreev1.Finished{TxnIds: a.IDs, FinishedAt: a.At}}}
		sn.propose(cmd, nil, func(error) { sn.coreStep(ProposeFailed{Term: a.Term, Finished: a.IDs}) })
	case ProposeCollect:
		cmd := &decreev1.Command{Kind: &decreev1.Command_Collect{Collect: &decreev1.Collect{Before: a.Before}}}
		sn.propose(cmd, func(r Result) { sn.coreStep(CollectApplied{Term: a.Term, More: r.More}) }, nil)
	case SendDecision:
		sn.deliverDecision(a)
	case Reply:
		if fn, ok := sn.reqs[a.Req]; ok {
			delete(sn.reqs, a.Req)
			fn(a)
		}
	case LoadUnfinished:
		sn.readIndex(a.Term)
	case Conflict:
		sn.w.violate("n%d core conflict on %s: %s", sn.id, a.ID, a.What)
	}
}

// propose hands a command to raft; ok or fail runs when it applied or
// failed (or simCallTimeout passed), as the Driver's proposal goroutines do.
func (sn *simNode) propose(cmd *decreev1.Command, ok func(Result), fail func(error)) {
	ctx, cancel := context.WithCancel(context.Background())
	p := &proposal{ctx: ctx, cmd: cmd, done: make(chan proposalResult, 1)}
	sn.node.propose(p)
	sn.props = append(sn.props, &simProp{p: p, cancel: cancel, deadline: sn.w.now.Add(simCallTimeout), ok: ok, fail: fail})
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
			switch {
			case err != nil && sp.fail != nil:
				sp.fail(err)
			case err == nil && sp.ok != nil:
				sp.ok(r.res)
			}
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

func (sn *simNode) readIndex(term uint64) {
	ctx, cancel := context.WithCancel(context.Background())
	r := &readRequest{ctx: ctx, done: make(chan error, 1)}
	sn.node.readIndex(r)
	sn.reads = append(sn.reads, &simRead{r: r, cancel: cancel, deadline: sn.w.now.Add(simCallTimeout), term: term})
}

// collectReads finishes LoadUnfinished: after the read index, scan the
// applied records (retrying while the leadership lasts).
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
			if err != nil {
				sn.retryRead(sr.term)
				continue
			}
			txns, staged := sn.unfinished()
			sn.coreStep(Recovered{Term: sr.term, Txns: txns, Staged: staged})
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

func (sn *simNode) retryRead(term uint64) {
	inc := sn.inc
	sn.w.at(50*time.Millisecond, func() {
		sn.run(inc, func() {
			if sn.leader && sn.term == term {
				sn.readIndex(term)
			}
		})
	})
}

func (sn *simNode) unfinished() (txns, staged []RecoveredTxn) {
	txns, staged, err := scanUnfinished(sn.store)
	if err != nil {
		sn.w.violate("n%d: scan records: %v", sn.id, err)
	}
	for _, t := range txns {
		sn.w.noteDecision(t.ID, t.Outcome, fmt.Sprintf("n%d recovered", sn.id))
	}
	return txns, staged
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
		if sp.fail != nil {
			sp.fail(errSimTimeout)
		}
		if !sn.up {
			return
		}
	}
	sn.props = append(keep, sn.props...)
	reads := sn.reads
	sn.reads = nil
	for _, sr := range reads {
		if now.Before(sr.deadline) {
			sn.reads = append(sn.reads, sr)
			continue
		}
		sr.cancel()
		sn.retryRead(sr.term)
	}
}

// call sends one RPC to a participant and runs done with its answer, or
// with an error on timeout or refusal, at most once, in this incarnation.
func (sn *simNode) call(addr string, timeout time.Duration, rpc func(decreev1.ParticipantServer) (any, error), done func(any, error)) {
	w, p, inc := sn.w, sn.w.byAddr[addr], sn.inc
	finished := false
	finish := func(r any, err error) {
		sn.run(inc, func() {
			if !finished {
				finished = true
				done(r, err)
			}
		})
	}
	w.at(timeout, func() { finish(nil, errSimTimeout) })
	w.send(sn.name, p.name, func() {
		if !p.up {
			w.send(p.name, sn.name, func() { finish(nil, errSimRefused) }, nil)
			return
		}
		r, err := rpc(p.svc)
		w.send(p.name, sn.name, func() { finish(r, err) }, nil)
	}, nil)
}

func (sn *simNode) prepare(a SendPrepare) {
	w := sn.w
	sn.call(a.Participant, 300*time.Millisecond, func(svc decreev1.ParticipantServer) (any, error) {
		p := w.byAddr[a.Participant]
		resp, err := svc.Prepare(context.Background(), &decreev1.PrepareRequest{TxnId: a.ID, Payload: a.Payload,
			Participants: a.Participants, OnePhase: a.OnePhase, Term: a.Term})
		if err == nil {
			w.noteVote(a.Participant, a.ID, resp.GetVote())
		}
		w.observe(p, a.ID)
		return resp, err
	}, func(r any, err error) {
		if err != nil {
			sn.coreStep(PrepareFailed{ID: a.ID, Participant: a.Participant, Term: a.Term, Err: err.Error()})
			return
		}
		resp := r.(*decreev1.PrepareResponse)
		sn.coreStep(VoteReceived{ID: a.ID, Participant: a.Participant, Term: a.Term, Vote: resp.GetVote(), Reason: resp.GetReason(),
			ParticipantID: resp.GetParticipantId()})
	})
}

func (sn *simNode) deliverDecision(a SendDecision) {
	w := sn.w
	commit := a.Outcome == decreev1.Outcome_OUTCOME_COMMITTED
	w.noteDecision(a.ID, a.Outcome, fmt.Sprintf("n%d delivering", sn.id))
	sn.call(a.Participant, simCallTimeout, func(svc decreev1.ParticipantServer) (any, error) {
		p := w.byAddr[a.Participant]
		if commit && !w.votedYes[a.Participant][a.ID] {
			w.violate("commit of %s delivered to %s, which never voted YES", a.ID, a.Participant)
		}
		req := &decreev1.DecisionRequest{TxnId: a.ID, Term: a.Term}
		var err error
		if commit {
			_, err = svc.Commit(context.Background(), req)
		} else {
			_, err = svc.Abort(context.Background(), req)
		}
		if status.Code(err) == codes.FailedPrecondition && !isStaleTerm(err) {
			w.violate("%s refused %s of %s: %v", a.Participant, decisionVerb(a.Outcome), a.ID, err)
		}
		if err == nil {
			st := txlog.PStateAborted
			if commit {
				st = txlog.PStateCommitted
			}
			if rec, ok, _ := p.log.GetTxn(a.ID); ok && rec.State == txlog.PStateReadOnly {
				st = txlog.PStateReadOnly
			}
			w.noteAck(p, a.ID, st)
		}
		w.observe(p, a.ID)
		return nil, err
	}, func(_ any, err error) {
		if err != nil {
			sn.coreStep(DeliveryFailed{ID: a.ID, Participant: a.Participant, Term: a.Term, Err: err.Error()})
			return
		}
		sn.coreStep(Acked{ID: a.ID, Participant: a.Participant, Term: a.Term})
	})
}

// isStaleTerm recognises the participant's fencing of a deposed leader,
// which is not a violation: the call carried an older term.
func isStaleTerm(err error) bool {
	s, _ := status.FromError(err)
	return s != nil && strings.HasPrefix(s.Message(), "stale term")
}

// serveCommit is the Coordinator service's Commit on this node.
func (sn *simNode) serveCommit(t *simTxn, respond func(decreev1.Outcome, string, error)) {
	if !sn.leader {
		respond(0, "", errSimNotLeader)
		return
	}
	r, staged, _ := sn.store.GetRecord(t.id)
	if staged && r.Outcome != txlog.OutcomeUnknown {
		o := outcomeFromRecord(r.Outcome)
		sn.w.noteDecision(t.id, o, fmt.Sprintf("n%d record", sn.id))
		respond(o, r.Reason, nil)
		return
	}
	if isForgotten(t.id, sn.node.horizon.Load()) {
		sn.w.noteForgotten(sn, t.id, "a client")
		respond(0, "", ErrForgotten)
		return
	}
	sn.nextReq++
	req := sn.nextReq
	sn.reqs[req] = func(r Reply) { respond(r.Outcome, r.Reason, r.Err) }
	branches := make([]BranchSpec, len(t.parts))
	for i, p := range t.parts {
		branches[i] = BranchSpec{Participant: p, Payload: []byte(t.payloads[i])}
	}
	sn.coreStep(ClientCommit{Req: req, ID: t.id, Branches: branches, Staged: staged})
}

// serveOutcome is the Coordinator service's Outcome on this node: the
// record, or a durable decision for an unknown id (settle).
func (sn *simNode) serveOutcome(id string, parts []string, respond func(decreev1.Outcome, string, error)) {
	if !sn.leader {
		respond(0, "", errSimNotLeader)
		return
	}
	if r, ok, _ := sn.store.GetRecord(id); ok && r.Outcome != txlog.OutcomeUnknown {
		o := outcomeFromRecord(r.Outcome)
		sn.w.noteDecision(id, o, fmt.Sprintf("n%d record", sn.id))
		respond(o, r.Reason, nil)
		return
	} else if ok {
		sn.coreStep(RecoverStaged{ID: id, Participants: r.Participants})
		respond(0, "", errSimInProgress)
		return
	}
	if isForgotten(id, sn.node.horizon.Load()) {
		sn.w.noteForgotten(sn, id, "a client")
		respond(0, "", ErrForgotten)
		return
	}
	if len(parts) != 1 {
		sn.settle(id, parts, decreev1.ParticipantState_PARTICIPANT_STATE_UNSPECIFIED, respond)
		return
	}
	term := sn.term
	sn.call(parts[0], simCallTimeout, func(svc decreev1.ParticipantServer) (any, error) {
		resp, err := svc.Resolve(context.Background(), &decreev1.ResolveRequest{TxnId: id, Term: term})
		sn.w.observe(sn.w.byAddr[parts[0]], id)
		return resp, err
	}, func(r any, err error) {
		if err != nil {
			respond(0, "", err)
			return
		}
		sn.settle(id, parts, r.(*decreev1.ResolveResponse).GetState(), respond)
	})
}

func (sn *simNode) settle(id string, parts []string, st decreev1.ParticipantState, respond func(decreev1.Outcome, string, error)) {
	outcome, reason := settleDecision(st)
	term := sn.term
	cmd := decideCommand(id, outcome, parts, reason, sn.w.now.UnixNano())
	cmd.GetDecide().Presumed = true // as the service does
	sn.propose(cmd, func(r Result) {
		if r.Outcome == decreev1.Outcome_OUTCOME_UNSPECIFIED {
			sn.coreStep(RecoverStaged{ID: id, Participants: r.Participants})
			respond(0, "", errSimInProgress)
			return
		}
		sn.w.noteDecision(id, r.Outcome, fmt.Sprintf("n%d settled", sn.id))
		sn.coreStep(DecisionApplied{ID: id, Term: term, Outcome: r.Outcome, Reason: r.Reason, Participants: r.Participants})
		respond(r.Outcome, r.Reason, nil)
	}, func(err error) { respond(0, "", err) })
}

// simTransport carries raft messages through the simulated network,
// marshalled as on the wire.
type simTransport struct{ sn *simNode }

func (t *simTransport) Close() {}

func (t *simTransport) Send(msgs []*raftpb.Message) {
	from := t.sn
	w := from.w
	for _, m := range msgs {
		to := w.nodes[m.GetTo()-1]
		data, err := proto.Marshal(m)
		if err != nil {
			w.violate("marshal raft message: %v", err)
			return
		}
		typ, inc := m.GetType(), from.inc
		if typ != raftpb.MsgHeartbeat && typ != raftpb.MsgHeartbeatResp {
			w.tracef("n%d -> n%d %s term %d index %d", m.GetFrom(), m.GetTo(), typ, m.GetTerm(), m.GetIndex())
		}
		var lost func()
		if typ == raftpb.MsgSnap {
			lost = func() { from.reportSnapshot(inc, m.GetTo(), raft.SnapshotFailure) }
		}
		if typ == raftpb.MsgSnap {
			w.send(from.name, to.name, func() {
				st := raft.SnapshotFailure
				to.run(to.inc, func() {
					if from.transferSnapshot(inc, to, m) {
						st = raft.SnapshotFinish
					}
				})
				from.reportSnapshot(inc, m.GetTo(), st)
			}, lost)
			continue
		}
		w.send(from.name, to.name, func() {
			to.run(to.inc, func() { to.stepRaft(data) })
		}, lost)
	}
}

// transferSnapshot streams a snapshot's state from sn (in incarnation inc)
// to to through the production sender and receiver, over an in-memory
// pipe, in small chunks. It reports whether raft got the snapshot.
func (sn *simNode) transferSnapshot(inc int, to *simNode, m *raftpb.Message) bool {
	if !sn.alive(inc) {
		return false
	}
	var pipe simChunks
	hdr := &decreev1.SnapshotHeader{ClusterId: 1, From: sn.id, To: to.id}
	if _, err := sendSnapshot(sn.store, hdr, m, &pipe, 256); err != nil {
		sn.w.violate("n%d: send snapshot: %v", sn.id, err)
		return false
	}
	step := func(m *raftpb.Message) error {
		to.node.stepSnap(m)
		to.heard()
		return nil
	}
	if _, err := to.node.receiveSnapshot(&pipe, sn.id, step); err != nil {
		sn.w.violate("n%d: receive snapshot from n%d: %v", to.id, sn.id, err)
		return false
	}
	return true
}

// simChunks is an in-memory snapshot stream.
type simChunks struct{ chunks []*decreev1.SnapshotChunk }

func (p *simChunks) Send(c *decreev1.SnapshotChunk) error {
	p.chunks = append(p.chunks, proto.CloneOf(c))
	return nil
}

func (p *simChunks) Recv() (*decreev1.SnapshotChunk, error) {
	if len(p.chunks) == 0 {
		return nil, io.EOF
	}
	c := p.chunks[0]
	p.chunks = p.chunks[1:]
	return c, nil
}

func (sn *simNode) reportSnapshot(inc int, to uint64, st raft.SnapshotStatus) {
	sn.run(inc, func() { sn.node.rn.ReportSnapshot(to, st) })
}

func (sn *simNode) stepRaft(data []byte) {
	var m raftpb.Message
	if err := proto.Unmarshal(data, &m); err != nil {
		sn.w.violate("unmarshal raft message: %v", err)
		return
	}
	// Simulated peers are correct, so the node's input checks must pass
	// every message they send.
	if err := sn.node.checkMessage(&m); err != nil {
		sn.w.violate("n%d would drop a correct peer's message: %v", sn.id, err)
		return
	}
	sn.node.step(&m)
	switch m.GetType() {
	case raftpb.MsgApp, raftpb.MsgHeartbeat, raftpb.MsgSnap:
		if sn.node.rn.BasicStatus().Lead == m.GetFrom() {
			sn.heard()
		}
	}
}
