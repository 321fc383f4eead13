package coordinator

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"time"

	"github.com/rs/zerolog"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
)

// simKeepalive is how long a simulated peer connection whose messages a
// cut link swallows, or a snapshot transfer without an answer, lives on
// before the sender learns it is dead: gRPC's keepalive, scaled to the
// simulation's short partitions.
const simKeepalive = time.Second

// simTransport is a node's raft transport in the simulation: the
// production peerTransport, stepped, over simulated Raft and Snapshot
// streams (simRaftEdge). The node's pump and tick drive it.
type simTransport struct {
	sn *simNode
	pt *peerTransport
}

// newSimTransport builds the transport of sn's incarnation inc. It is
// attached to the node once the node exists (attach).
func newSimTransport(sn *simNode) *simTransport { return &simTransport{sn: sn} }

func (t *simTransport) attach(inc int) {
	sn, w := t.sn, t.sn.w
	t.pt = newSteppedPeerTransport(peerTransportConfig{
		ID: sn.id, ClusterID: w.clusterID, Peers: w.peers(),
		reporter: simReporter{sn: sn, inc: inc}, Logger: zerolog.Nop(),
		State: sn.store, SnapshotChunkBytes: 256, Clock: simClock{w},
		// The redial jitter has a stream of its own, seeded from the
		// run's seed, so it does not shift the world's fault schedule.
		Rand:  rand.New(rand.NewPCG(w.seed^0x7261667473656e64, uint64(sn.id)<<32|uint64(inc))).Float64,
		stats: &sn.node.stats,
	}, simRaftEdge{sn: sn, inc: inc})
}

func (t *simTransport) Close() {}

func (t *simTransport) Send(msgs []*raftpb.Message) {
	for _, m := range msgs {
		if typ := m.GetType(); typ != raftpb.MsgHeartbeat && typ != raftpb.MsgHeartbeatResp {
			t.sn.w.tracef("n%d -> n%d %s term %d index %d", m.GetFrom(), m.GetTo(), typ, m.GetTerm(), m.GetIndex())
		}
	}
	t.pt.Send(msgs)
}

// simReporter hands the transport's reports to the node's raft, on the
// simulation's goroutine, as the node's loop does with its reportc.
type simReporter struct {
	sn  *simNode
	inc int
}

func (r simReporter) ReportUnreachable(id uint64) {
	if r.sn.alive(r.inc) {
		r.sn.node.report(report{peer: id})
	}
}

func (r simReporter) ReportSnapshot(id uint64, st raft.SnapshotStatus) {
	if r.sn.alive(r.inc) {
		r.sn.node.report(report{peer: id, snapshot: true, snapshotErr: st == raft.SnapshotFailure})
	}
}

// simRaftEdge is the edge of node sn's transport (incarnation inc) to its
// peers: simulated connections through the world's network.
type simRaftEdge struct {
	sn  *simNode
	inc int
}

func (e simRaftEdge) peer(to uint64) (*simNode, error) {
	p := e.sn.w.nodes[to-1]
	if !p.up {
		return nil, status.Errorf(codes.Unavailable, "sim: connection to n%d refused", to)
	}
	return p, nil
}

func (e simRaftEdge) openStream(_ context.Context, to uint64) (raftStream, error) {
	p, err := e.peer(to)
	if err != nil {
		return nil, err
	}
	return &simRaftStream{e: e, to: p, toInc: p.inc}, nil
}

func (e simRaftEdge) openSnapshot(_ context.Context, to uint64) (snapshotStream, error) {
	p, err := e.peer(to)
	if err != nil {
		return nil, err
	}
	return &simSnapStream{e: e, to: p, toInc: p.inc}, nil
}

// simRaftStream is one simulated Raft stream from a node to a peer
// (incarnation toInc), received by the peer's production per-batch code
// (raftService.receiveBatch). Like TCP it delivers in order and never
// twice, and a cut link holds its batches back (retransmitting every
// simRTO) until the link heals or the sender's keepalive gives up on the
// stream; a dropped batch resets it.
type simRaftStream struct {
	e      simRaftEdge
	to     *simNode
	toInc  int
	err    error // Send's, once the sender has heard the stream broke
	broken bool  // no batch gets through any more
	// q holds the batches sent and not yet delivered, in order, each with
	// its arrival time; a delivery of the head is scheduled while q is
	// not empty.
	q       []simFrame
	last    time.Time // the arrival time of the last batch sent
	stalled time.Time // since when a cut link holds the head back
}

type simFrame struct {
	b  *decreev1.RaftBatch
	at time.Time
}

// simRTO is how often a cut link's held batch is retransmitted.
const simRTO = 200 * time.Millisecond

func (s *simRaftStream) Send(b *decreev1.RaftBatch) error {
	switch {
	case s.err != nil:
		return io.EOF
	case s.broken:
		return nil // lost with the connection; the sender hears soon
	}
	w := s.e.sn.w
	if w.faultsOn && w.rng.Float64() < w.plan.drop {
		w.faults["connection-reset"]++
		s.reset("connection reset", simNetDelay(w))
		return nil
	}
	at := w.now.Add(simNetDelay(w))
	if at.Before(s.last) {
		at = s.last
	}
	s.last = at
	s.q = append(s.q, simFrame{b: b, at: at})
	if len(s.q) == 1 {
		w.at(at.Sub(w.now), s.deliver)
	}
	return nil
}

// deliver delivers the head of q, or holds it while the link is cut.
func (s *simRaftStream) deliver() {
	if s.broken {
		s.q = nil
		return
	}
	from, to, w := s.e.sn, s.to, s.e.sn.w
	if w.cut[[2]string{from.name, to.name}] {
		if s.stalled.IsZero() {
			s.stalled = w.now
		}
		if w.now.Sub(s.stalled) >= simKeepalive {
			s.q = nil
			s.reset("keepalive timed out", 0)
			return
		}
		w.at(simRTO, s.deliver)
		return
	}
	s.stalled = time.Time{}
	if !to.alive(s.toInc) {
		s.q = nil
		s.reset("the peer process is gone", simNetDelay(w))
		return
	}
	b := s.q[0].b
	s.q = s.q[1:]
	if len(s.q) > 0 {
		w.at(max(0, s.q[0].at.Sub(w.now)), s.deliver)
	}
	to.run(s.toInc, func() {
		svc := &raftService{node: to.node, log: zerolog.Nop()}
		if _, err := svc.receiveBatch(b, to.stepPeer); err != nil {
			w.violate("n%d refused a correct peer's raft batch: %v", to.id, err)
		}
		w.injectHostile(to, b) // sim_hostile_test.go
	})
}

// reset breaks the stream: its sender hears of it after d.
func (s *simRaftStream) reset(why string, d time.Duration) {
	if s.broken {
		return
	}
	s.broken = true
	sn := s.e.sn
	sn.w.at(d, func() {
		sn.run(s.e.inc, func() { s.err = status.Error(codes.Unavailable, "sim: "+why) })
	})
}

func simNetDelay(w *world) time.Duration {
	return 200*time.Microsecond + time.Duration(w.rng.Int64N(int64(w.plan.maxDelay)))
}

// simSnapStream is one simulated Snapshot stream: the chunks travel
// together as one message once the sender closes the stream, and the
// receiver's production receiveSnapshot stages them; the answer travels
// back as another. An answer that does not come within simKeepalive
// fails the transfer.
type simSnapStream struct {
	e      simRaftEdge
	to     *simNode
	toInc  int
	pipe   simChunks
	closed bool
	done   bool
	err    error
}

func (s *simSnapStream) Send(c *decreev1.SnapshotChunk) error { return s.pipe.Send(c) }

var errSimSnapshotLost = errors.New("sim: snapshot transfer lost")

func (s *simSnapStream) CloseAndRecv() (*decreev1.SnapshotAck, error) {
	if s.done {
		return &decreev1.SnapshotAck{}, s.err
	}
	if s.closed {
		return nil, errNoReply
	}
	s.closed = true
	from, to, w := s.e.sn, s.to, s.e.sn.w
	answer := func(err error) {
		from.run(s.e.inc, func() {
			if !s.done {
				s.done, s.err = true, err
			}
		})
	}
	w.at(simKeepalive, func() { answer(status.Error(codes.DeadlineExceeded, "sim: no answer to the snapshot")) })
	arrived := false
	w.send(from.name, to.name, func() {
		if arrived {
			return // the network's duplicate: a stream arrives once
		}
		arrived = true
		if !to.alive(s.toInc) {
			answer(status.Error(codes.Unavailable, "sim: the peer process is gone"))
			return
		}
		to.run(s.toInc, func() {
			step := func(m *raftpb.Message) error {
				to.node.stepSnap(m)
				to.heard()
				return nil
			}
			_, err := to.node.receiveSnapshot(&s.pipe, from.id, step)
			if err != nil {
				w.violate("n%d: receive snapshot from n%d: %v", to.id, from.id, err)
			}
			// answer keeps the first of any duplicates.
			w.send(to.name, from.name, func() { answer(err) }, func() { answer(errSimSnapshotLost) })
		})
	}, func() { answer(errSimSnapshotLost) })
	return nil, errNoReply
}

// stepPeer steps a message from a peer's Raft stream into the node.
func (sn *simNode) stepPeer(m *raftpb.Message) error {
	// Simulated peers are correct, so the node's input checks must pass
	// every message they send.
	if err := sn.node.checkMessage(m); err != nil {
		sn.w.violate("n%d would drop a correct peer's message: %v", sn.id, err)
		return nil
	}
	sn.node.step(m)
	switch m.GetType() {
	case raftpb.MsgApp, raftpb.MsgHeartbeat, raftpb.MsgSnap:
		if sn.node.rn.BasicStatus().Lead == m.GetFrom() {
			sn.heard()
		}
	}
	return nil
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
