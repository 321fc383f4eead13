package coordinator

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/decree-tx/decree/internal/backoff"
	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
)

// reporter receives the transport's delivery feedback for raft.
type reporter interface {
	ReportUnreachable(id uint64)
	ReportSnapshot(id uint64, status raft.SnapshotStatus)
}

// peerTransportConfig configures a peerTransport.
type peerTransportConfig struct {
	ID        uint64
	ClusterID uint64
	Peers     map[uint64]string
	Dial      func(ctx context.Context, addr string) (net.Conn, error)
	reporter  reporter
	Logger    zerolog.Logger
	// QueueSize bounds each peer's outgoing queue (default 4096).
	QueueSize int
	// State is read to stream snapshots to peers (the node's store); nil
	// fails every snapshot.
	State stateSource
	// SnapshotChunkBytes sizes snapshot chunks (default
	// DefaultSnapshotChunkBytes).
	SnapshotChunkBytes int
	// Clock times redials and snapshot transfers (default the wall clock).
	Clock Clock
	// Rand returns a number in [0, 1) to jitter redials (default
	// math/rand/v2.Float64); it must be safe for concurrent use.
	Rand func() float64

	stats *nodeStats // the node's, when the node built the transport
}

// raftEdge is a stepped peerTransport's edge to its peers: the
// simulation's network. A production transport speaks gRPC instead
// (grpcPeer).
type raftEdge interface {
	// openStream opens a Raft stream to peer to. It ends at the latest
	// when ctx does.
	openStream(ctx context.Context, to uint64) (raftStream, error)
	// openSnapshot opens a Snapshot stream to peer to.
	openSnapshot(ctx context.Context, to uint64) (snapshotStream, error)
}

// raftStream is one open Raft stream. In production Send may block (flow
// control); a stepped stream's must not. Either returns an error once the
// stream is broken.
type raftStream interface {
	Send(*decreev1.RaftBatch) error
}

// snapshotStream is one open Snapshot stream, as decreev1.Raft_SnapshotClient
// declares it. A stepped stream's CloseAndRecv must not block: it returns
// errNoReply until the peer's answer has arrived, and the transport asks
// again on a later pump.
type snapshotStream interface {
	Send(*decreev1.SnapshotChunk) error
	CloseAndRecv() (*decreev1.SnapshotAck, error)
}

// errNoReply is a stepped snapshotStream's CloseAndRecv while the peer's
// answer has not arrived.
var errNoReply = errors.New("no answer yet")

// peerTransport sends raft messages to peers over one Raft stream per peer.
// Each peer has its own bounded queue, so a slow or dead peer never blocks
// the raft loop or the other peers.
//
// A transport runs in one of two modes, with the same per-peer logic
// (enqueue, take, send, broke, dropQueued, writeSnapshot, snapshotEnded):
//
//   - Production (newPeerTransport): gRPC, and a goroutine per peer (run)
//     and per snapshot transfer.
//   - Stepped (newSteppedPeerTransport), for the deterministic simulation:
//     no goroutine at all. One goroutine owns the transport: it alone
//     calls Send, pump and tick, and every report to the reporter is made
//     on it, from within pump and tick. Nothing is sent until pump; no
//     redial backoff ends until tick (or a pump after it). Peers are
//     visited in id order, so a run is a function of the owner's inputs.
type peerTransport struct {
	ctx    context.Context // cancelled by Close
	cfg    peerTransportConfig
	log    zerolog.Logger
	peers  map[uint64]*peerSender
	order  []*peerSender // by id
	cancel context.CancelFunc
	wg     sync.WaitGroup
	// edge is a stepped transport's network; nil in production.
	edge raftEdge
}

func newPeerTransport(cfg peerTransportConfig, edge raftEdge) *peerTransport {
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = 4096
	}
	if cfg.SnapshotChunkBytes <= 0 {
		cfg.SnapshotChunkBytes = DefaultSnapshotChunkBytes
	}
	if cfg.Clock == nil {
		cfg.Clock = WallClock{}
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Float64
	}
	ctx, cancel := context.WithCancel(context.Background())
	t := &peerTransport{
		ctx:    ctx,
		cfg:    cfg,
		log:    cfg.Logger.With().Str("component", "transport").Uint64("node", cfg.ID).Logger(),
		peers:  make(map[uint64]*peerSender),
		cancel: cancel,
		edge:   edge,
	}
	for id, addr := range cfg.Peers {
		if id == cfg.ID {
			continue
		}
		p := &peerSender{t: t, id: id, addr: addr, wake: make(chan struct{}, 1),
			redial: backoff.Backoff{Policy: backoff.Policy{Min: minRedial, Max: maxRedial, Rand: cfg.Rand}}}
		t.peers[id] = p
		t.order = append(t.order, p)
	}
	slices.SortFunc(t.order, func(a, b *peerSender) int { return cmp.Compare(a.id, b.id) })
	return t
}

// newSteppedPeerTransport returns a transport driven by its owner over
// edge; see peerTransport, pump and tick. cfg.Rand need not be safe for
// concurrent use.
func newSteppedPeerTransport(cfg peerTransportConfig, edge raftEdge) *peerTransport {
	return newPeerTransport(cfg, edge)
}

func (t *peerTransport) stepped() bool { return t.edge != nil }

// Send queues messages for their peers without blocking. A full queue drops
// the message and reports the peer unreachable; raft will retransmit.
func (t *peerTransport) Send(msgs []*raftpb.Message) {
	for _, m := range msgs {
		p, ok := t.peers[m.GetTo()]
		if !ok {
			t.log.Warn().Uint64("to", m.GetTo()).Msg("no transport for raft peer")
			continue
		}
		if m.GetType() == raftpb.MsgSnap {
			t.sendSnapshot(p, m)
			continue
		}
		if !p.enqueue(m) {
			t.dropped(m)
		}
	}
}

// Close stops every sender and waits for them.
func (t *peerTransport) Close() {
	t.cancel()
	t.wg.Wait()
}

func (t *peerTransport) dropped(m *raftpb.Message) {
	t.cfg.reporter.ReportUnreachable(m.GetTo())
}

// pump does for a stepped transport what the production goroutines do: for
// each peer, it ends a snapshot transfer whose answer arrived and starts
// one raft asked for; drops what is queued while the peer is backed off;
// and otherwise opens a stream if none is open and sends the queue on it
// in batches. The owner calls pump after anything that may have queued a
// message (Send) or given a stream or transfer something to return.
func (t *peerTransport) pump() { t.pumpAt(t.cfg.Clock.Now()) }

// tick is pump for a stepped transport whose time has passed: the peers
// whose redial backoff ended by now are reached again.
func (t *peerTransport) tick(now time.Time) { t.pumpAt(now) }

func (t *peerTransport) pumpAt(now time.Time) {
	if t.ctx.Err() != nil {
		for _, p := range t.order {
			p.dropQueued()
		}
		return
	}
	for _, p := range t.order {
		p.pumpSnapshot()
		p.pumpStream(now)
	}
}

type peerSender struct {
	t    *peerTransport
	id   uint64
	addr string
	// wake is signalled when a message is queued (production).
	wake chan struct{}

	mu    sync.Mutex
	queue []*raftpb.Message

	snapping atomic.Bool // a snapshot transfer to this peer is running

	// The rest is owned by the sender: its goroutine in production, the
	// owner of a stepped transport.
	redial backoff.Backoff
	sent   bool // a send on the current stream has worked
	// Stepped only: the open stream (nil: none), the end of the backoff,
	// and the snapshot transfer waiting to start or for its answer.
	cur       raftStream
	downUntil time.Time
	snap      *snapTransfer
}

// snapTransfer is a stepped transport's snapshot transfer to one peer.
type snapTransfer struct {
	m      *raftpb.Message
	s      snapshotStream // nil until started
	start  time.Time
	ts     transferStats
	cancel context.CancelFunc
}

// enqueue queues m, or reports false if the queue is full.
func (p *peerSender) enqueue(m *raftpb.Message) bool {
	p.mu.Lock()
	if len(p.queue) >= p.t.cfg.QueueSize {
		p.mu.Unlock()
		return false
	}
	p.queue = append(p.queue, m)
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
	return true
}

// take removes up to maxSendBatch queued messages.
func (p *peerSender) take() []*raftpb.Message {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := min(len(p.queue), maxSendBatch)
	if n == 0 {
		return nil
	}
	batch := slices.Clone(p.queue[:n])
	clear(p.queue[:n])
	p.queue = p.queue[n:]
	if len(p.queue) == 0 {
		p.queue = nil
	}
	return batch
}

func (p *peerSender) queued() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.queue)
}

// dropQueued discards what is queued, reporting each message: while the
// peer is down it would only be stale by the time it is back, and raft
// resends what matters.
func (p *peerSender) dropQueued() {
	p.mu.Lock()
	q := p.queue
	p.queue = nil
	p.mu.Unlock()
	for _, m := range q {
		p.t.dropped(m)
	}
}

// send sends batch as one RaftBatch on s.
func (p *peerSender) send(s raftStream, batch []*raftpb.Message) error {
	out := &decreev1.RaftBatch{ClusterId: p.t.cfg.ClusterID, From: p.t.cfg.ID, To: p.id}
	for _, m := range batch {
		b, err := proto.Marshal(m)
		if err != nil {
			p.t.log.Error().Err(err).Msg("cannot marshal raft message")
			continue
		}
		out.Messages = append(out.Messages, b)
	}
	if err := s.Send(out); err != nil {
		return err
	}
	p.sent = true
	return nil
}

// broke takes a stream's end (err: why it could not be opened or sent
// on) and returns how long to wait before streaming to the peer again. A
// stream that had worked means the peer was up, so this is a new outage
// and the backoff starts over. Raft hears that the peer is unreachable.
func (p *peerSender) broke(err error) time.Duration {
	if p.sent {
		p.redial.Reset()
	}
	p.sent = false
	d := p.redial.Next()
	p.t.log.Debug().Err(err).Uint64("peer", p.id).Dur("retry_in", d).Msg("peer stream broken")
	p.t.cfg.reporter.ReportUnreachable(p.id)
	return d
}

// pumpStream is a stepped transport's run: see peerTransport.pump.
func (p *peerSender) pumpStream(now time.Time) {
	if now.Before(p.downUntil) {
		p.dropQueued()
		return
	}
	for p.queued() > 0 {
		if p.cur == nil {
			s, err := p.t.edge.openStream(p.t.ctx, p.id)
			if err != nil {
				p.downUntil = now.Add(p.broke(fmt.Errorf("open stream: %w", err)))
				p.dropQueued()
				return
			}
			p.cur = s
		}
		if err := p.send(p.cur, p.take()); err != nil {
			p.cur = nil
			p.downUntil = now.Add(p.broke(err))
			p.dropQueued()
			return
		}
	}
}

// sendSnapshot starts streaming a snapshot to p: in production on its own
// goroutine and connection, so that heartbeats and appends to p, and the
// raft loop, never wait for it; stepped, at the next pump. Raft sends no
// other snapshot to a peer until it hears how this one went, so a second
// one while one runs is dropped.
func (t *peerTransport) sendSnapshot(p *peerSender, m *raftpb.Message) {
	if !p.snapping.CompareAndSwap(false, true) {
		t.log.Warn().Uint64("peer", p.id).Msg("snapshot transfer already running; dropping another")
		return
	}
	if t.stepped() {
		p.snap = &snapTransfer{m: m}
		return
	}
	t.wg.Go(func() {
		start := t.cfg.Clock.Now()
		ts, err := p.streamSnapshot(t.ctx, m)
		p.snapshotEnded(m, start, ts, err)
	})
}

// writeSnapshot streams m's header and the state to s.
func (p *peerSender) writeSnapshot(s snapshotStream, m *raftpb.Message) (transferStats, error) {
	hdr := &decreev1.SnapshotHeader{ClusterId: p.t.cfg.ClusterID, From: p.t.cfg.ID, To: p.id}
	return sendSnapshot(p.t.cfg.State, hdr, m, s, p.t.cfg.SnapshotChunkBytes)
}

// snapshotAnswer is the end of a transfer, given the peer's answer.
func snapshotAnswer(err error) error {
	if err != nil {
		return fmt.Errorf("peer did not take the snapshot: %w", err)
	}
	return nil
}

// snapshotEnded logs and counts a transfer that ended and tells raft how it
// went; then the peer may get another.
func (p *peerSender) snapshotEnded(m *raftpb.Message, start time.Time, ts transferStats, err error) {
	t := p.t
	took := t.cfg.Clock.Now().Sub(start)
	status := raft.SnapshotFinish
	log := t.log.Info()
	if err != nil {
		status, log = raft.SnapshotFailure, t.log.Warn().Err(err)
	} else {
		t.cfg.stats.noteSnapshotSent(ts, took)
	}
	log.Uint64("peer", p.id).Uint64("index", m.GetSnapshot().GetMetadata().GetIndex()).
		Uint64("pairs", ts.pairs).Uint64("bytes", ts.bytes).Dur("took", took).Msg("snapshot transfer ended")
	t.cfg.reporter.ReportSnapshot(p.id, status)
	p.snapping.Store(false)
}

// pumpSnapshot is a stepped transport's transfer: it starts the one raft
// asked for (writing the whole state to the stream at once) and ends it
// when the peer's answer is there.
func (p *peerSender) pumpSnapshot() {
	x := p.snap
	if x == nil {
		return
	}
	if x.s == nil {
		x.start = p.t.cfg.Clock.Now()
		if p.t.cfg.State == nil {
			p.endSnap(transferStats{}, errors.New("no state to stream"))
			return
		}
		ctx, cancel := context.WithCancel(p.t.ctx)
		x.cancel = cancel
		s, err := p.t.edge.openSnapshot(ctx, p.id)
		if err != nil {
			p.endSnap(transferStats{}, fmt.Errorf("open snapshot stream: %w", err))
			return
		}
		x.s = s
		if x.ts, err = p.writeSnapshot(s, x.m); err != nil {
			p.endSnap(x.ts, err)
			return
		}
	}
	_, err := x.s.CloseAndRecv()
	if errors.Is(err, errNoReply) {
		return
	}
	p.endSnap(x.ts, snapshotAnswer(err))
}

func (p *peerSender) endSnap(ts transferStats, err error) {
	x := p.snap
	p.snap = nil
	if x.cancel != nil {
		x.cancel()
	}
	p.snapshotEnded(x.m, x.start, ts, err)
}

const (
	// minRedial and maxRedial bound the backoff between attempts to
	// stream to a peer that is down.
	minRedial = 50 * time.Millisecond
	maxRedial = time.Second
	// maxSendBatch bounds how many queued messages ride in one stream send.
	maxSendBatch = 64
)

// raftService receives peers' raft streams and steps their messages into the
// node.
type raftService struct {
	decreev1.UnimplementedRaftServer
	node *Node
	log  zerolog.Logger
	// snapping admits one incoming snapshot transfer at a time: a second
	// would only stage a state that the first one's install discards.
	snapping sync.Mutex
}

// receiveBatch takes one batch of a peer's Raft stream: it checks the
// batch, and hands each of its messages that claims to come from the
// batch's sender to step. It returns how many it handed on; an error (a
// gRPC status: the batch is not for this node, a message is undecodable,
// step failed) ends the stream.
func (s *raftService) receiveBatch(b *decreev1.RaftBatch, step func(*raftpb.Message) error) (uint64, error) {
	if err := s.checkBatch(b); err != nil {
		return 0, err
	}
	var n uint64
	for _, raw := range b.GetMessages() {
		m := &raftpb.Message{}
		if err := proto.Unmarshal(raw, m); err != nil {
			return n, invalidArgument("undecodable raft message from %d: %v", b.GetFrom(), err)
		}
		if !s.node.admitFromStream(b.GetFrom(), m) { // raftcheck.go
			continue
		}
		if err := step(m); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

func (s *raftService) checkBatch(b *decreev1.RaftBatch) error {
	if b.GetClusterId() != s.node.cfg.ClusterID {
		s.log.Warn().Uint64("from", b.GetFrom()).Uint64("their_cluster", b.GetClusterId()).
			Msg("rejecting raft stream from another cluster")
		return failedPrecondition("cluster id %x does not match this node's %x", b.GetClusterId(), s.node.cfg.ClusterID)
	}
	if b.GetTo() != s.node.cfg.ID {
		return failedPrecondition("raft batch for node %d reached node %d", b.GetTo(), s.node.cfg.ID)
	}
	return nil
}
