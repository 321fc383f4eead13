package coordinator

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

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
}

// PeerTransport sends raft messages to peers over one gRPC client stream per
// peer. Each peer has its own goroutine and bounded queue, so a slow or dead
// peer never blocks the raft loop or the other peers.
type PeerTransport struct {
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
	ctx, cancel := context.WithCancel(context.Background())
	t := &PeerTransport{
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
	if m.GetType() == raftpb.MsgSnap {
		t.cfg.Reporter.ReportSnapshot(m.GetTo(), raft.SnapshotFailure)
	}
}

type peerSender struct {
	t     *PeerTransport
	id    uint64
	addr  string
	queue chan *raftpb.Message
}

const (
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
	backoff := minRedial
	for ctx.Err() == nil {
		err := p.stream(ctx, client)
		if ctx.Err() != nil {
			return
		}
		log.Debug().Err(err).Dur("retry_in", backoff).Msg("peer stream broken")
		p.t.cfg.Reporter.ReportUnreachable(p.id)
		p.dropFor(ctx, backoff)
		backoff = min(2*backoff, maxRedial)
		if err == nil {
			backoff = minRedial
		}
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
	err := s.Send(out)
	for _, m := range batch {
		if m.GetType() != raftpb.MsgSnap {
			continue
		}
		status := raft.SnapshotFinish
		if err != nil {
			status = raft.SnapshotFailure
		}
		p.t.cfg.Reporter.ReportSnapshot(p.id, status)
	}
	return err
}

// dropFor discards queued messages for d: while the peer is down they would
// only be stale by the time it is back, and raft resends what matters.
func (p *peerSender) dropFor(ctx context.Context, d time.Duration) {
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		select {
		case m := <-p.queue:
			p.t.dropped(m)
		case <-timer.C:
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
