package coordinator

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/rs/zerolog"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/decree-tx/decree/coordinator/internal/twopc"
	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
	"github.com/decree-tx/decree/txlog"
)

var (
	// ErrStopped is returned by calls on a node that has stopped.
	ErrStopped = errors.New("coordinator node stopped")
	// ErrNoLeader is returned when the group has no known leader, so a
	// proposal or read cannot make progress now; retry later or elsewhere.
	ErrNoLeader = errors.New("no raft leader known")
)

// Transport delivers raft messages to peers. Send must not block: a message
// that cannot be queued is dropped (raft retransmits) and, through the
// node's ReportUnreachable, raft learns the peer is unreachable.
type Transport interface {
	Send(msgs []*raftpb.Message)
	Close()
}

// Node is one member of a coordinator raft group. All raft state is owned by
// the goroutine started in NewNode; other goroutines talk to it through
// channels.
type Node struct {
	cfg   Config
	log   zerolog.Logger
	store *txlog.Store
	rn    *raft.RawNode
	tr    Transport
	// phase2 reports the 2PC driver's phase-2 backlog for Admin Status;
	// the driver sets it (NewDriver), a node without one reports none.
	phase2 atomic.Pointer[func(context.Context) ([]twopc.Phase2Txn, error)]

	propc   chan *proposal
	recvc   chan *raftpb.Message
	snapc   chan *raftpb.Message // MsgSnaps whose state is staged
	readc   chan *readRequest
	reportc chan report
	stopc   chan struct{}
	donec   chan struct{}
	stop    sync.Once
	err     error // why the loop ended; written before donec closes

	status  atomic.Pointer[Status]
	members atomic.Pointer[[]Member] // the leader's view of its followers; nil elsewhere
	readies atomic.Uint64
	stats   nodeStats
	// collectLimit, when set, replaces the package's collectLimit; the
	// simulation lowers it, on every replica alike.
	collectLimit int
	guard        raftGuard // raftcheck.go
	// horizon is the applied retention horizon (unix nanos): written by the
	// loop after the batch that raised it commits, read by any goroutine.
	horizon atomic.Int64

	// Owned by the loop goroutine.
	nextProposal uint64
	waiters      map[uint64]*proposal
	nextRead     uint64
	readsByCtx   map[string][]*readRequest
	readsByIndex []indexedReads
	confState    *raftpb.ConfState
	applied      uint64
	snapIndex    uint64
	ticks        uint64
	role         raft.StateType // as of the last Ready handled
	lead         uint64         // as of the last Ready handled
}

// Status is a node's view of its raft group.
type Status struct {
	ID      uint64
	Role    raft.StateType
	Term    uint64
	Leader  uint64
	Commit  uint64
	Applied uint64
}

type proposal struct {
	ctx  context.Context
	cmd  *decreev1.Command
	id   uint64
	done chan proposalResult // buffered(1): the loop never blocks on it
}

type proposalResult struct {
	res Result
	err error
}

type readRequest struct {
	ctx  context.Context
	done chan error // buffered(1)
}

type indexedReads struct {
	index uint64
	reqs  []*readRequest
}

type report struct {
	peer        uint64
	snapshot    bool
	snapshotErr bool
}

// ErrLostState refuses to bootstrap a node whose store holds no raft state
// although its cluster already exists: its log and votes are lost.
var ErrLostState = errors.New("the data dir holds no raft state but this node's cluster already exists " +
	"(its data dir was lost or wiped): starting it empty could vote twice in one term and lose committed data; " +
	"replace the node instead: remove it from the cluster and add a new member with an empty data dir " +
	"(membership commands come in issue 13), or restore its data dir")

// Fresh reports whether store holds no raft state yet, so that a node
// started on it would bootstrap a new group.
func Fresh(store *txlog.Store) (bool, error) {
	hs, _, err := store.InitialState()
	if err != nil {
		return false, fmt.Errorf("load raft state: %w", err)
	}
	snap, err := store.Snapshot()
	if err != nil {
		return false, fmt.Errorf("load snapshot: %w", err)
	}
	last, err := store.LastIndex()
	if err != nil {
		return false, fmt.Errorf("load last index: %w", err)
	}
	return isFresh(hs, snap, last), nil
}

// isFresh is the one rule for a store that has never held raft state: no
// hard state, no log, no snapshot. Fresh and initRaft both decide by it.
func isFresh(hs *raftpb.HardState, snap *raftpb.Snapshot, last uint64) bool {
	return raft.IsEmptyHardState(hs) && last == 0 && raft.IsEmptySnap(snap)
}

// Member is the leader's view of one member's log: Match is the highest
// index the member has acknowledged (raft's Progress.Match).
type Member struct {
	ID    uint64
	Match uint64
}

// Members returns, on the leader, what each member has acknowledged, as of
// the last tick; nil on other nodes. A leader learns Match only from
// acknowledgements it received itself: after a restart or a change of
// leader it starts from 0.
func (n *Node) Members() []Member {
	if m := n.members.Load(); m != nil {
		return *m
	}
	return nil
}

// NewNode starts a node on an opened store. On a fresh store it bootstraps
// the group from cfg.Peers; on a used one it resumes from what is stored.
// If tr is nil, a peerTransport to cfg.Peers is used. The caller keeps
// ownership of the store and closes it after Stop.
func NewNode(cfg Config, store *txlog.Store, tr Transport) (*Node, error) {
	n, err := newNode(cfg, store, tr)
	if err != nil {
		return nil, err
	}
	if n.tr == nil {
		n.tr = startPeerTransport(peerTransportConfig{
			ID: n.cfg.ID, ClusterID: n.cfg.ClusterID, Peers: n.cfg.Peers,
			Dial: n.cfg.Dial, reporter: n, Logger: n.cfg.Logger,
			State: n.store, SnapshotChunkBytes: n.cfg.SnapshotChunkBytes, Clock: n.cfg.Clock, stats: &n.stats,
		})
	}
	go n.run()
	return n, nil
}

// newNode builds a node without starting its loop, so the caller can drive
// it (NewNode's goroutine, or the simulation).
func newNode(cfg Config, store *txlog.Store, tr Transport) (*Node, error) {
	cfg, err := cfg.EnsureDefaults()
	if err != nil {
		return nil, err
	}
	n := &Node{
		cfg:          cfg,
		log:          cfg.Logger.With().Str("component", "raftnode").Uint64("node", cfg.ID).Logger(),
		store:        store,
		tr:           tr,
		propc:        make(chan *proposal, 4096),
		recvc:        make(chan *raftpb.Message, 4096),
		snapc:        make(chan *raftpb.Message),
		readc:        make(chan *readRequest, 4096),
		reportc:      make(chan report, 1024),
		stopc:        make(chan struct{}),
		donec:        make(chan struct{}),
		waiters:      make(map[uint64]*proposal),
		readsByCtx:   make(map[string][]*readRequest),
		nextProposal: uint64(cfg.Nonce) << 32,
		nextRead:     uint64(cfg.Nonce) << 32,
	}
	if err := n.initRaft(); err != nil {
		return nil, err
	}
	n.publishStatus()
	return n, nil
}

func (n *Node) initRaft() error {
	hs, cs, err := n.store.InitialState()
	if err != nil {
		return fmt.Errorf("load raft state: %w", err)
	}
	snap, err := n.store.Snapshot()
	if err != nil {
		return fmt.Errorf("load snapshot: %w", err)
	}
	last, err := n.store.LastIndex()
	if err != nil {
		return fmt.Errorf("load last index: %w", err)
	}
	if err := n.loadHorizon(); err != nil {
		return err
	}
	n.confState = cs
	n.snapIndex = snap.GetMetadata().GetIndex()
	// A state received with a snapshot can be ahead of the log (txlog's
	// Stager): raft applies from the snapshot again, and apply skips what
	// the state already holds.
	n.applied = max(min(n.store.Applied(), last), n.snapIndex)
	rn, err := raft.NewRawNode(&raft.Config{
		ID:              n.cfg.ID,
		ElectionTick:    n.cfg.ElectionTicks,
		HeartbeatTick:   n.cfg.HeartbeatTicks,
		Storage:         n.store,
		MaxSizePerMsg:   1 << 20,
		MaxInflightMsgs: 256,
		CheckQuorum:     true,
		PreVote:         true,
		ReadOnlyOption:  raft.ReadOnlySafe,
		Logger:          raftLogger{n.cfg.Logger.With().Str("component", "raft").Uint64("node", n.cfg.ID).Logger()},
	})
	if err != nil {
		return fmt.Errorf("start raft: %w", err)
	}
	n.rn = rn
	n.role = rn.BasicStatus().RaftState
	fresh := isFresh(hs, snap, last)
	if fresh && n.cfg.JoinExisting {
		return fmt.Errorf("node %d: %w", n.cfg.ID, ErrLostState)
	}
	if fresh {
		peers := make([]raft.Peer, 0, len(n.cfg.Peers))
		for id := range n.cfg.Peers {
			peers = append(peers, raft.Peer{ID: id})
		}
		if err := rn.Bootstrap(peers); err != nil {
			return fmt.Errorf("bootstrap raft group: %w", err)
		}
		n.log.Info().Int("peers", len(peers)).Msg("bootstrapped new raft group")
	} else {
		n.log.Info().Uint64("applied", n.applied).Uint64("snapshot", n.snapIndex).
			Uint64("last", last).Uint64("term", hs.GetTerm()).Msg("restarting from stored state")
	}
	return nil
}

// Stop ends the node loop and closes the transport. It returns the error
// that stopped the loop early, if any. Stop is idempotent.
func (n *Node) Stop() error {
	n.stop.Do(func() { close(n.stopc) })
	<-n.donec
	n.tr.Close()
	return n.err
}

// Done is closed when the node loop has ended.
func (n *Node) Done() <-chan struct{} { return n.donec }

// Err is why the loop ended early; nil while running or after a clean Stop.
func (n *Node) Err() error {
	select {
	case <-n.donec:
		return n.err
	default:
		return nil
	}
}

// ID is this node's raft id.
func (n *Node) ID() uint64 { return n.cfg.ID }

// Status returns the node's latest published view of the group.
func (n *Node) Status() Status { return *n.status.Load() }

// SyncCount is how many synced storage batches the node has written.
func (n *Node) SyncCount() uint64 { return n.store.SyncCount() }

// ReadyCount is how many raft Ready structs the node has handled.
func (n *Node) ReadyCount() uint64 { return n.readies.Load() }

// Record returns the state machine's record for a transaction, as applied
// locally. For a linearizable answer call ReadIndex first.
func (n *Node) Record(id string) (*txlog.Record, bool, error) { return n.store.GetRecord(id) }

// ScanRecords visits the locally applied records in id order.
func (n *Node) ScanRecords(fn func(*txlog.Record) bool) error { return n.store.ScanRecords(fn) }

// Propose replicates cmd and waits until it is applied locally, returning
// the applied result. A context error means the outcome is unknown: the
// command may still apply later, which is safe because commands are
// idempotent.
func (n *Node) Propose(ctx context.Context, cmd *decreev1.Command) (Result, error) {
	p := &proposal{ctx: ctx, cmd: cmd, done: make(chan proposalResult, 1)}
	select {
	case n.propc <- p:
	case <-ctx.Done():
		return Result{}, ctx.Err()
	case <-n.donec:
		return Result{}, n.stoppedErr()
	}
	select {
	case r := <-p.done:
		return r.res, r.err
	case <-ctx.Done():
		return Result{}, ctx.Err()
	case <-n.donec:
		return Result{}, n.stoppedErr()
	}
}

// ReadIndex waits until this node has applied everything the group had
// committed when the call was made, so a local read after it is
// linearizable. It works on followers (raft asks the leader).
func (n *Node) ReadIndex(ctx context.Context) error {
	r := &readRequest{ctx: ctx, done: make(chan error, 1)}
	select {
	case n.readc <- r:
	case <-ctx.Done():
		return ctx.Err()
	case <-n.donec:
		return n.stoppedErr()
	}
	select {
	case err := <-r.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-n.donec:
		return n.stoppedErr()
	}
}

// Step hands a message received from a peer to raft.
func (n *Node) Step(ctx context.Context, m *raftpb.Message) error {
	select {
	case n.recvc <- m:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-n.donec:
		return n.stoppedErr()
	}
}

// ReportUnreachable tells raft a peer could not be reached. It never blocks;
// reports are hints and may be dropped.
func (n *Node) ReportUnreachable(id uint64) {
	select {
	case n.reportc <- report{peer: id}:
	default:
	}
}

// ReportSnapshot tells raft whether a snapshot reached a peer.
func (n *Node) ReportSnapshot(id uint64, status raft.SnapshotStatus) {
	select {
	case n.reportc <- report{peer: id, snapshot: true, snapshotErr: status == raft.SnapshotFailure}:
	default:
	}
}

func (n *Node) stoppedErr() error {
	if n.err != nil {
		return fmt.Errorf("%w: %w", ErrStopped, n.err)
	}
	return ErrStopped
}

func (n *Node) publishStatus() {
	st := n.rn.BasicStatus()
	n.status.Store(&Status{
		ID:      n.cfg.ID,
		Role:    st.RaftState,
		Term:    st.HardState.GetTerm(),
		Leader:  st.Lead,
		Commit:  st.HardState.GetCommit(),
		Applied: n.applied,
	})
}

// proposalID and readCtx mint ids unique within this incarnation; the nonce
// in the high bits keeps them apart from a previous incarnation's ids that
// are still in the log.
func (n *Node) proposalID() uint64 {
	n.nextProposal++
	return n.nextProposal
}

func (n *Node) readCtx() []byte {
	n.nextRead++
	return binary.BigEndian.AppendUint64(nil, n.nextRead)
}

func marshalBatch(ps []*proposal, proposer uint64) ([]byte, error) {
	b := &decreev1.ProposalBatch{Proposals: make([]*decreev1.Proposal, len(ps))}
	for i, p := range ps {
		b.Proposals[i] = &decreev1.Proposal{Id: p.id, Proposer: proposer, Command: p.cmd}
	}
	return proto.Marshal(b)
}
