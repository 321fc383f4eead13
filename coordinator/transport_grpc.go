package coordinator

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
)

// This file is the production side of the peerTransport and raftService:
// gRPC, and the goroutines that drive the peers' senders. Everything they
// run is shared with the stepped transport (transport.go); keep it that
// way, so the simulation runs the same logic.

// startPeerTransport starts a sender for every peer except cfg.ID.
func startPeerTransport(cfg peerTransportConfig) *peerTransport {
	t := newPeerTransport(cfg, nil)
	for _, p := range t.order {
		t.wg.Go(func() { p.run(t.ctx) })
	}
	return t
}

// streamSnapshot runs one production transfer on a connection of its own.
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
	ts, err := p.writeSnapshot(s, m)
	if err != nil {
		return ts, err
	}
	_, err = s.CloseAndRecv()
	return ts, snapshotAnswer(err)
}

// run is a production peer's sender goroutine.
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
	for ctx.Err() == nil {
		err := p.stream(ctx, client)
		if ctx.Err() != nil {
			return
		}
		p.dropFor(ctx, p.broke(err))
	}
}

// stream opens a stream and sends the queue on it until it breaks.
func (p *peerSender) stream(ctx context.Context, client decreev1.RaftClient) error {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := client.Stream(sctx)
	if err != nil {
		return fmt.Errorf("open stream: %w", err)
	}
	for {
		batch := p.take()
		if len(batch) == 0 {
			select {
			case <-p.wake:
				continue
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if err := p.send(s, batch); err != nil {
			return err
		}
	}
}

// dropFor discards queued messages for d (see dropQueued).
func (p *peerSender) dropFor(ctx context.Context, d time.Duration) {
	timer := p.t.cfg.Clock.After(d)
	p.dropQueued()
	for {
		select {
		case <-p.wake:
			p.dropQueued()
		case <-timer:
			return
		case <-ctx.Done():
			return
		}
	}
}

func (p *peerSender) dropUntilDone(ctx context.Context) {
	for {
		p.dropQueued()
		select {
		case <-p.wake:
		case <-ctx.Done():
			return
		}
	}
}

// Snapshot implements decreev1.RaftServer: it receives a streamed snapshot
// (see snapshot.go).
func (s *raftService) Snapshot(stream decreev1.Raft_SnapshotServer) error {
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
func (s *raftService) Stream(stream decreev1.Raft_StreamServer) error {
	var received uint64
	step := func(m *raftpb.Message) error {
		if err := s.node.Step(stream.Context(), m); err != nil {
			return unavailable("node stopped: %v", err)
		}
		return nil
	}
	for {
		b, err := stream.Recv()
		if err != nil {
			return stream.SendAndClose(&decreev1.RaftStreamSummary{Received: received})
		}
		n, err := s.receiveBatch(b, step)
		received += n
		if err != nil {
			return err
		}
	}
}

// peerConnectParams reconnect to a peer within about a second of its
// return. gRPC's default backoff grows to two minutes: a follower down for
// half a minute would then wait up to 16 s after restarting before the
// leader reached it again, and campaign meanwhile.
var peerConnectParams = grpc.ConnectParams{
	Backoff:           backoff.Config{BaseDelay: minRedial, Multiplier: 1.6, Jitter: 0.2, MaxDelay: maxRedial},
	MinConnectTimeout: 2 * time.Second,
}

func peerDialOptions(dial func(context.Context, string) (net.Conn, error)) []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(peerConnectParams),
		grpc.WithContextDialer(dial),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(peerMessageBytes), grpc.MaxCallRecvMsgSize(peerMessageBytes)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 10 * time.Second, Timeout: 5 * time.Second, PermitWithoutStream: true}),
		grpc.WithChainStreamInterceptor(splitRaftBatches(peerMessageBytes)),
	}
}

// splitRaftBatches sends a RaftBatch larger than limit as several smaller
// ones, so that a burst of MsgApps to a catching-up follower stays within
// the receiver's message limit. The order of the messages is kept.
func splitRaftBatches(limit int) grpc.StreamClientInterceptor {
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string,
		streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		s, err := streamer(ctx, desc, cc, method, opts...)
		if err != nil {
			return nil, err
		}
		return &splittingStream{ClientStream: s, limit: limit}, nil
	}
}

type splittingStream struct {
	grpc.ClientStream
	limit int
}

func (s *splittingStream) SendMsg(m any) error {
	b, ok := m.(*decreev1.RaftBatch)
	if !ok || proto.Size(b) <= s.limit {
		return s.ClientStream.SendMsg(m)
	}
	for _, part := range splitBatch(b, s.limit) {
		if err := s.ClientStream.SendMsg(part); err != nil {
			return err
		}
	}
	return nil
}

// splitBatch cuts b into batches of at most limit bytes each; a single
// message larger than that goes alone (and the receiver refuses it).
func splitBatch(b *decreev1.RaftBatch, limit int) []*decreev1.RaftBatch {
	head := func() *decreev1.RaftBatch {
		return &decreev1.RaftBatch{ClusterId: b.GetClusterId(), From: b.GetFrom(), To: b.GetTo()}
	}
	cur, size := head(), proto.Size(head())
	var out []*decreev1.RaftBatch
	for _, raw := range b.GetMessages() {
		n := 1 + protowire.SizeBytes(len(raw)) // tag, length, bytes
		if len(cur.Messages) > 0 && size+n > limit {
			out = append(out, cur)
			cur, size = head(), proto.Size(head())
		}
		cur.Messages = append(cur.Messages, raw)
		size += n
	}
	return append(out, cur)
}
