package coordinator

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/decree-tx/decree/internal/backoff"
	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
)

// Reporter receives the transport's delivery feedback for raft.
type Reporter interface {
	ReportUnreachable(id uint64)
	ReportSnapshot(id uint64, status raft.SnapshotStatus)
}

// PeerTransportConfig configures a PeerTransport.
type PeerTransportConfig struct {
	ID        uint64
	ClusterID uint64
	Peers     map[uint64]string
	Dial      func(ctx context.Context, addr string) (net.Conn, error)
	Reporter  Reporter
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

// PeerTransport sends raft messages to peers over one gRPC client stream per
// peer. Each peer has its own goroutine and bounded queue, so a slow or dead
// peer never blocks the raft loop or the other peers.
type PeerTransport struct {
	ctx    context.Context // cancelled by Close
	cfg    PeerTransportConfig
	log    zerolog.Logger
	peers  map[uint64]*peerSender
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// NewPeerTransport starts a sender for every peer except cfg.ID.
func NewPeerTransport(cfg PeerTransportConfig) *PeerTransport {
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
	t := &PeerTransport{
		ctx:    ctx,
		cfg:    cfg,
		log:    cfg.Logger.With().Str("component", "transport").Uint64("node", cfg.ID).Logger(),
		peers:  make(map[uint64]*peerSender),
		cancel: cancel,
	}
	for id, addr := range cfg.Peers {
		if id == cfg.ID {
			continue
		}
		p := &peerSender{t: t, id: id, addr: addr, queue: make(chan *raftpb.Message, cfg.QueueSize)}
		t.peers[id] = p
		t.wg.Go(func() { p.run(ctx) })
	}
	return t
}

// Send queues messages for their peers without blocking. A full queue drops
// the message and reports the peer unreachable; raft will retransmit.
func (t *PeerTransport) Send(msgs []*raftpb.Message) {
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
		select {
		case p.queue <- m:
		default:
			t.dropped(m)
		}
	}
}

// Close stops every sender and waits for them.
func (t *PeerTransport) Close() {
	t.cancel()
	t.wg.Wait()
}

func (t *PeerTransport) dropped(m *raftpb.Message) {
	t.cfg.Reporter.ReportUnreachable(m.GetTo())
}

type peerSender struct {
	t        *PeerTransport
	id       uint64
	addr     string
	queue    chan *raftpb.Message
	snapping atomic.Bool // a snapshot transfer to this peer is running
}

// sendSnapshot starts streaming a snapshot to p on its own goroutine and
// connection, so that heartbeats and appends to p, and the raft loop, never
// wait for it. Raft sends no other snapshot to a peer until it hears how
// this one went, so a second one while one runs is dropped.
func (t *PeerTransport) sendSnapshot(p *peerSender, m *raftpb.Message) {
	if !p.snapping.CompareAndSwap(false, true) {
		t.log.Warn().Uint64("peer", p.id).Msg("snapshot transfer already running; dropping another")
		return
	}
	t.wg.Go(func() {
		defer p.snapping.Store(false)
		start := t.cfg.Clock.Now()
		ts, err := p.streamSnapshot(t.ctx, m)
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
		t.cfg.Reporter.ReportSnapshot(p.id, status)
	})
}

// streamSnapshot runs one transfer on a connection of its own.
func (p *peerSender) streamSnapshot(ctx context.Context, m *raftpb.Message) (transferStats, error) {
	if p.t.cfg.State == nil {
		return transferStats{}, errors.New("no state to stream")
	}
	conn, err := grpc.NewClient("passthrough:///"+p.addr, peerDialOptions(p.t.cfg.Dial)...)
	if err != nil {
		return transferStats{}, fmt.Errorf("dial: %w", err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := decreev1.NewRaftClient(conn).Snapshot(ctx)
	if err != nil {
		return transferStats{}, fmt.Errorf("open snapshot stream: %w", err)
	}
	hdr := &decreev1.SnapshotHeader{ClusterId: p.t.cfg.ClusterID, From: p.t.cfg.ID, To: p.id}
	ts, err := sendSnapshot(p.t.cfg.State, hdr, m, s, p.t.cfg.SnapshotChunkBytes)
	if err != nil {
		return ts, err
	}
	if _, err := s.CloseAndRecv(); err != nil {
		return ts, fmt.Errorf("peer did not take the snapshot: %w", err)
	}
	return ts, nil
}

const (
	// minRedial and maxRedial bound the backoff between attempts to
	// stream to a peer that is down.
	minRedial = 50 * time.Millisecond
	maxRedial = time.Second
	// maxSendBatch bounds how many queued messages ride in one stream send.
	maxSendBatch = 64
)

func (p *peerSender) run(ctx context.Context) {
	log := p.t.log.With().Uint64("peer", p.id).Str("addr", p.addr).Logger()
	conn, err := grpc.NewClient("passthrough:///"+p.addr, peerDialOptions(p.t.cfg.Dial)...)
	if err != nil {
		log.Error().Err(err).Msg("cannot create peer client; peer stays unreachable")
		p.dropUntilDone(ctx)
		return
	}
	defer conn.Close()
	client := decreev1.NewRaftClient(conn)
	redial := backoff.Backoff{Policy: backoff.Policy{Min: minRedial, Max: maxRedial, Rand: p.t.cfg.Rand}}
	for ctx.Err() == nil {
		err := p.stream(ctx, client)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			// The stream had worked: the peer was up, so this is a new
			// outage and the backoff starts over.
			redial.Reset()
		}
		d := redial.Next()
		log.Debug().Err(err).Dur("retry_in", d).Msg("peer stream broken")
		p.t.cfg.Reporter.ReportUnreachable(p.id)
		p.dropFor(ctx, d)
	}
}

// stream opens a stream and pumps the queue into it until it breaks. It
// returns nil if the stream had worked before breaking (redial at once).
func (p *peerSender) stream(ctx context.Context, client decreev1.RaftClient) error {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := client.Stream(sctx)
	if err != nil {
		return fmt.Errorf("open stream: %w", err)
	}
	sent := false
	for {
		var first *raftpb.Message
		select {
		case first = <-p.queue:
		case <-ctx.Done():
			return ctx.Err()
		}
		batch := []*raftpb.Message{first}
		for len(batch) < maxSendBatch && len(p.queue) > 0 {
			batch = append(batch, <-p.queue)
		}
		if err := p.send(s, batch); err != nil {
			if sent {
				return nil
			}
			return err
		}
		sent = true
	}
}

func (p *peerSender) send(s decreev1.Raft_StreamClient, batch []*raftpb.Message) error {
	out := &decreev1.RaftBatch{ClusterId: p.t.cfg.ClusterID, From: p.t.cfg.ID, To: p.id}
	for _, m := range batch {
		b, err := proto.Marshal(m)
		if err != nil {
			p.t.log.Error().Err(err).Msg("cannot marshal raft message")
			continue
		}
		out.Messages = append(out.Messages, b)
	}
	return s.Send(out)
}

// dropFor discards queued messages for d: while the peer is down they would
// only be stale by the time it is back, and raft resends what matters.
func (p *peerSender) dropFor(ctx context.Context, d time.Duration) {
	timer := p.t.cfg.Clock.After(d)
	for {
		select {
		case m := <-p.queue:
			p.t.dropped(m)
		case <-timer:
			return
		case <-ctx.Done():
			return
		}
	}
}

func (p *peerSender) dropUntilDone(ctx context.Context) {
	for {
		select {
		case m := <-p.queue:
			p.t.dropped(m)
		case <-ctx.Done():
			return
		}
	}
}

// RaftService receives peers' raft streams and steps their messages into the
// node.
type RaftService struct {
	decreev1.UnimplementedRaftServer
	node *Node
	log  zerolog.Logger
	// snapping admits one incoming snapshot transfer at a time: a second
	// would only stage a state that the first one's install discards.
	snapping sync.Mutex
}

// Snapshot implements decreev1.RaftServer: it receives a streamed snapshot
// (see snapshot.go).
func (s *RaftService) Snapshot(stream decreev1.Raft_SnapshotServer) error {
	if !s.snapping.TryLock() {
		return status.Error(codes.ResourceExhausted, "a snapshot transfer to this node is already running")
	}
	defer s.snapping.Unlock()
	step := func(m *raftpb.Message) error { return s.node.stepSnapshot(stream.Context(), m) }
	ts, err := s.node.receiveSnapshot(stream, 0, step)
	if err != nil {
		s.log.Warn().Err(err).Msg("snapshot transfer failed")
		return err
	}
	return stream.SendAndClose(&decreev1.SnapshotAck{Pairs: ts.pairs})
}

// Stream implements decreev1.RaftServer.
func (s *RaftService) Stream(stream decreev1.Raft_StreamServer) error {
	var received uint64
	for {
		b, err := stream.Recv()
		if err != nil {
			return stream.SendAndClose(&decreev1.RaftStreamSummary{Received: received})
		}
		if err := s.checkBatch(b); err != nil {
			return err
		}
		for _, raw := range b.GetMessages() {
			var m raftpb.Message
			if err := proto.Unmarshal(raw, &m); err != nil {
				return invalidArgument("undecodable raft message from %d: %v", b.GetFrom(), err)
			}
			if !s.node.admitFromStream(b.GetFrom(), &m) { // raftcheck.go
				continue
			}
			if err := s.node.Step(stream.Context(), &m); err != nil {
				return unavailable("node stopped: %v", err)
			}
			received++
		}
	}
}

func (s *RaftService) checkBatch(b *decreev1.RaftBatch) error {
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
