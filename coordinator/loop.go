package coordinator

import (
	"cmp"
	"errors"
	"fmt"
	"slices"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.etcd.io/raft/v3/tracker"
	"google.golang.org/protobuf/proto"
)

// drainLimit bounds how many queued inputs of one kind the loop takes before
// handling a Ready, so one fsync covers many messages or proposals without
// starving the other inputs.
const drainLimit = 256

// sweepEveryTicks is how often abandoned waiters are dropped.
const sweepEveryTicks = 10

func (n *Node) run() {
	defer close(n.donec)
	tickc, stopTick := n.cfg.Clock.NewTicker(n.cfg.RaftTickInterval)
	defer stopTick()
	for {
		select {
		case <-tickc:
			n.tick()
		case m := <-n.recvc:
			n.step(m)
			for i := 0; i < drainLimit && len(n.recvc) > 0; i++ {
				n.step(<-n.recvc)
			}
		case m := <-n.snapc:
			n.stepSnap(m)
		case p := <-n.propc:
			n.propose(p)
		case r := <-n.readc:
			n.readIndex(r)
		case r := <-n.reportc:
			n.report(r)
		case <-n.stopc:
			n.failWaiters(ErrStopped)
			return
		}
		if err := n.handleReadies(); err != nil {
			n.err = err
			n.log.Error().Err(err).Msg("raft loop stopped on a storage error")
			n.failWaiters(n.stoppedErr())
			return
		}
		n.publishStatus()
	}
}

func (n *Node) tick() {
	n.rn.Tick()
	n.ticks++
	n.publishMembers()
	if n.ticks%sweepEveryTicks == 0 {
		n.sweepAbandoned()
	}
}

func (n *Node) step(m *raftpb.Message) {
	if m.GetType() == raftpb.MsgSnap {
		// Its state would be missing: snapshots arrive by stepSnap, after
		// their state is staged.
		n.rejectMessage(m.GetFrom(), errors.New("snapshot message without its state (snapshots travel on the Snapshot stream)"))
		return
	}
	n.stepRaft(m)
}

// stepSnap steps a MsgSnap whose state the store has staged.
func (n *Node) stepSnap(m *raftpb.Message) {
	n.stepRaft(m)
}

func (n *Node) stepRaft(m *raftpb.Message) {
	if !n.admit(m) { // raftcheck.go: drop what no correct peer would send
		return
	}
	defer n.recoverStep(m) // raftcheck.go: a raft panic stops the node
	if err := n.rn.Step(m); err != nil && !errors.Is(err, raft.ErrStepPeerNotFound) {
		n.log.Debug().Err(err).Stringer("type", m.GetType()).Msg("raft rejected message")
	}
}

func (n *Node) report(r report) {
	if r.snapshot {
		status := raft.SnapshotFinish
		if r.snapshotErr {
			status = raft.SnapshotFailure
		}
		n.rn.ReportSnapshot(r.peer, status)
		return
	}
	n.rn.ReportUnreachable(r.peer)
}

// propose packs the given proposal and any others already queued into one
// raft entry: one consensus round and one fsync for all of them.
func (n *Node) propose(first *proposal) {
	batch := []*proposal{first}
	for len(batch) < n.cfg.MaxBatch && len(n.propc) > 0 {
		batch = append(batch, <-n.propc)
	}
	if n.rn.BasicStatus().Lead == raft.None {
		failProposals(batch, ErrNoLeader)
		return
	}
	for _, p := range batch {
		p.id = n.proposalID()
	}
	data, err := marshalBatch(batch, n.cfg.ID)
	if err != nil {
		failProposals(batch, fmt.Errorf("marshal proposals: %w", err))
		return
	}
	if err := n.rn.Propose(data); err != nil {
		if errors.Is(err, raft.ErrProposalDropped) {
			err = fmt.Errorf("%w: %w", ErrNoLeader, err)
		}
		failProposals(batch, err)
		return
	}
	for _, p := range batch {
		n.waiters[p.id] = p
	}
}

func failProposals(ps []*proposal, err error) {
	for _, p := range ps {
		p.done <- proposalResult{err: err}
	}
}

// readIndex asks raft for the commit index once for every read queued now.
func (n *Node) readIndex(first *readRequest) {
	reqs := []*readRequest{first}
	for len(reqs) < drainLimit && len(n.readc) > 0 {
		reqs = append(reqs, <-n.readc)
	}
	if n.rn.BasicStatus().Lead == raft.None {
		for _, r := range reqs {
			r.done <- ErrNoLeader
		}
		return
	}
	rctx := n.readCtx()
	n.readsByCtx[string(rctx)] = reqs
	n.rn.ReadIndex(rctx)
}

// sweepAbandoned forgets waiters whose callers gave up. Their commands may
// still apply; nobody is told.
func (n *Node) sweepAbandoned() {
	for id, p := range n.waiters {
		if p.ctx.Err() != nil {
			delete(n.waiters, id)
		}
	}
	for k, reqs := range n.readsByCtx {
		if allDone(reqs) {
			delete(n.readsByCtx, k)
		}
	}
	kept := n.readsByIndex[:0]
	for _, ir := range n.readsByIndex {
		if !allDone(ir.reqs) {
			kept = append(kept, ir)
		}
	}
	n.readsByIndex = kept
}

func allDone(reqs []*readRequest) bool {
	for _, r := range reqs {
		if r.ctx.Err() == nil {
			return false
		}
	}
	return true
}

func (n *Node) failWaiters(err error) {
	for id, p := range n.waiters {
		p.done <- proposalResult{err: err}
		delete(n.waiters, id)
	}
	for k, reqs := range n.readsByCtx {
		for _, r := range reqs {
			r.done <- err
		}
		delete(n.readsByCtx, k)
	}
	for _, ir := range n.readsByIndex {
		for _, r := range ir.reqs {
			r.done <- err
		}
	}
	n.readsByIndex = nil
}

func (n *Node) handleReadies() error {
	if err := n.checkFatal(); err != nil { // raftcheck.go
		return err
	}
	for n.rn.HasReady() {
		if err := n.handleReady(n.rn.Ready()); err != nil {
			return err
		}
	}
	return nil
}

// handleReady follows raft's contract: persist before send, apply only what
// is committed, then Advance.
func (n *Node) handleReady(rd raft.Ready) error {
	n.readies.Add(1)
	if rd.SoftState != nil {
		n.log.Debug().Stringer("role", rd.RaftState).Uint64("leader", rd.Lead).Msg("raft role changed")
		if rd.Lead != n.lead {
			n.lead = rd.Lead
			n.stats.leaderChanges.Add(1)
		}
	}
	// A leader may send its appends before persisting them (Raft thesis
	// 10.2.1): raft counts the leader's own copy only after Advance, so an
	// entry still commits only once a majority has it durably. This takes
	// the leader's fsync off the commit path. Anyone else persists first.
	leading := n.isLeading(rd)
	if leading {
		n.tr.Send(rd.Messages)
	}
	// One synced batch: hard state, new entries and a received snapshot
	// (which replaces the state machine in the same batch).
	if err := n.store.SaveReady(rd.HardState, rd.Entries, rd.Snapshot, rd.MustSync); err != nil {
		return fmt.Errorf("persist ready: %w", err)
	}
	if !raft.IsEmptySnap(rd.Snapshot) {
		if err := n.installedSnapshot(rd.Snapshot); err != nil {
			return err
		}
	}
	if !leading {
		// Only now may others learn of what we persisted (votes above all).
		n.tr.Send(rd.Messages)
	}
	if err := n.safeApply(rd.CommittedEntries); err != nil { // raftcheck.go: a panic names the entry
		return err
	}
	for _, rs := range rd.ReadStates {
		n.queueRead(rs)
	}
	n.releaseReads()
	if err := n.maybeSnapshot(); err != nil {
		return err
	}
	n.rn.Advance(rd)
	return nil
}

// isLeading reports whether this node was leader before this Ready and
// still is in it: only then are its messages appends and heartbeats of the
// current term, safe to send before persisting.
func (n *Node) isLeading(rd raft.Ready) bool {
	was := n.role == raft.StateLeader
	if rd.SoftState != nil {
		n.role = rd.RaftState
	}
	return was && n.role == raft.StateLeader
}

func (n *Node) installedSnapshot(snap *raftpb.Snapshot) error {
	md := snap.GetMetadata()
	n.confState = proto.Clone(md.GetConfState()).(*raftpb.ConfState)
	n.applied = md.GetIndex()
	n.snapIndex = md.GetIndex()
	if err := n.loadHorizon(); err != nil {
		return err
	}
	n.log.Info().Uint64("index", md.GetIndex()).Uint64("term", md.GetTerm()).Msg("installed snapshot from leader")
	return nil
}

// loadHorizon reads the retention horizon of the stored state into memory.
func (n *Node) loadHorizon() error {
	h, err := readHorizon(n.store)
	if err != nil {
		return fmt.Errorf("load retention horizon: %w", err)
	}
	n.horizon.Store(h)
	return nil
}

// apply applies committed entries in one state batch and tells waiting
// proposers their results only after that batch is written. Entries at or
// below the stored applied index were applied before a restart: their data
// is skipped, but configuration changes are handed to raft again because
// raft's membership is rebuilt from the log on every start.
func (n *Node) apply(ents []*raftpb.Entry) error {
	if len(ents) == 0 {
		return nil
	}
	stored := n.store.Applied()
	batch := n.store.NewStateBatch()
	ap := newApplier(n.store, batch, n.horizon.Load())
	ap.stats = &n.stats
	if n.collectLimit > 0 {
		ap.limit = n.collectLimit
	}
	var results []applyResult
	last := n.applied
	for _, e := range ents {
		n.guard.applying = e.GetIndex() // raftcheck.go: named if applying it panics
		switch e.GetType() {
		case raftpb.EntryConfChange, raftpb.EntryConfChangeV2:
			if err := n.applyConfChange(e); err != nil {
				return err
			}
		case raftpb.EntryNormal:
			if e.GetIndex() > stored && len(e.GetData()) > 0 {
				ds, err := n.applyNormal(ap, e)
				if err != nil {
					return err
				}
				results = append(results, ds...)
			}
		}
		last = max(last, e.GetIndex())
	}
	if last > stored {
		if err := n.store.CommitState(batch, last); err != nil {
			return fmt.Errorf("apply entries up to %d: %w", last, err)
		}
		if ap.horizon != nil {
			n.horizon.Store(*ap.horizon)
		}
	}
	n.applied = last
	n.pruneDecoded()
	for _, d := range results {
		if p, ok := n.waiters[d.id]; ok {
			delete(n.waiters, d.id)
			p.done <- proposalResult{res: d.res}
		}
	}
	return nil
}

type applyResult struct {
	id  uint64
	res Result
}

func (n *Node) applyNormal(ap *applier, e *raftpb.Entry) ([]applyResult, error) {
	b, err := n.decodedBatch(e) // raftcheck.go: decoded once, when admitted
	if err != nil {
		// Every replica skips the same bytes the same way, so the state
		// machines stay identical; the entry's proposer times out.
		n.log.Error().Err(err).Uint64("index", e.GetIndex()).Msg("skipping undecodable raft entry")
		return nil, nil
	}
	var out []applyResult
	for _, p := range b.GetProposals() {
		res, err := ap.apply(p.GetCommand(), e.GetIndex())
		if err != nil {
			return nil, err
		}
		if p.GetProposer() == n.cfg.ID && p.GetId() != 0 {
			out = append(out, applyResult{id: p.GetId(), res: res})
		}
	}
	return out, nil
}

func (n *Node) applyConfChange(e *raftpb.Entry) error {
	var cc raftpb.ConfChangeI
	if e.GetType() == raftpb.EntryConfChange {
		var v1 raftpb.ConfChange
		if err := proto.Unmarshal(e.GetData(), &v1); err != nil {
			return fmt.Errorf("decode conf change at %d: %w", e.GetIndex(), err)
		}
		cc = &v1
	} else {
		var v2 raftpb.ConfChangeV2
		if err := proto.Unmarshal(e.GetData(), &v2); err != nil {
			return fmt.Errorf("decode conf change v2 at %d: %w", e.GetIndex(), err)
		}
		cc = &v2
	}
	n.confState = n.rn.ApplyConfChange(cc)
	return nil
}

func (n *Node) queueRead(rs raft.ReadState) {
	reqs, ok := n.readsByCtx[string(rs.RequestCtx)]
	if !ok {
		return
	}
	delete(n.readsByCtx, string(rs.RequestCtx))
	n.readsByIndex = append(n.readsByIndex, indexedReads{index: rs.Index, reqs: reqs})
}

func (n *Node) releaseReads() {
	kept := n.readsByIndex[:0]
	for _, ir := range n.readsByIndex {
		if ir.index > n.applied {
			kept = append(kept, ir)
			continue
		}
		for _, r := range ir.reqs {
			r.done <- nil
		}
	}
	n.readsByIndex = kept
}

// maybeSnapshot snapshots the state machine every SnapshotEvery applied
// entries and compacts the log below it, keeping CatchUpEntries so a
// follower that is only a little behind needs no snapshot. A snapshot is a
// descriptor (txlog): taking one writes a few bytes, whatever the state.
func (n *Node) maybeSnapshot() error {
	if n.applied < n.snapIndex+n.cfg.SnapshotEvery {
		return nil
	}
	if _, err := n.store.CreateSnapshot(n.applied, n.confState); err != nil {
		return fmt.Errorf("snapshot at %d: %w", n.applied, err)
	}
	n.snapIndex = n.applied
	if n.applied > n.cfg.CatchUpEntries {
		if err := n.compact(n.applied - n.cfg.CatchUpEntries); err != nil {
			return err
		}
	}
	n.log.Debug().Uint64("index", n.snapIndex).Msg("took snapshot")
	return nil
}

// compact discards the log below compact, but never past a snapshot still
// being streamed to a peer: the peer needs the entries after it next, and
// without them it would be sent another snapshot, and another.
func (n *Node) compact(compact uint64) error {
	if n.role == raft.StateLeader {
		for _, pr := range n.rn.Status().Progress {
			if pr.State == tracker.StateSnapshot && pr.PendingSnapshot > 0 {
				compact = min(compact, pr.PendingSnapshot)
			}
		}
	}
	first, err := n.store.FirstIndex()
	if err != nil {
		return fmt.Errorf("first index: %w", err)
	}
	if compact <= first {
		return nil
	}
	if err := n.store.Compact(compact); err != nil && !errors.Is(err, raft.ErrCompacted) {
		return fmt.Errorf("compact log below %d: %w", compact, err)
	}
	return nil
}

// publishMembers records the leader's progress of every member for Status;
// once per tick, so the hot path pays nothing.
func (n *Node) publishMembers() {
	if n.role != raft.StateLeader {
		if n.members.Load() != nil {
			n.members.Store(nil)
		}
		return
	}
	var ms []Member
	n.rn.WithProgress(func(id uint64, _ raft.ProgressType, pr tracker.Progress) {
		ms = append(ms, Member{ID: id, Match: pr.Match})
	})
	slices.SortFunc(ms, func(a, b Member) int { return cmp.Compare(a.ID, b.ID) })
	n.members.Store(&ms)
}
