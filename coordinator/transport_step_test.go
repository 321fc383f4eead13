package coordinator

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/rs/zerolog"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/decree-tx/decree/internal/clock"
	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
)

// fakeRaftEdge is a stepped transport's network in memory: streams record
// what was sent on them; refuse makes opening fail.
type fakeRaftEdge struct {
	refuse  bool
	opened  int
	streams []*fakeRaftStream
	snaps   []*fakeSnapStream
}

type fakeRaftStream struct {
	batches []*decreev1.RaftBatch
	err     error // what Send returns once set
}

func (s *fakeRaftStream) Send(b *decreev1.RaftBatch) error {
	if s.err != nil {
		return s.err
	}
	s.batches = append(s.batches, b)
	return nil
}

type fakeSnapStream struct {
	chunks []*decreev1.SnapshotChunk
	closed int   // CloseAndRecv calls
	answer error // errNoReply until the peer answered
}

func (s *fakeSnapStream) Send(c *decreev1.SnapshotChunk) error {
	s.chunks = append(s.chunks, proto.CloneOf(c))
	return nil
}

func (s *fakeSnapStream) CloseAndRecv() (*decreev1.SnapshotAck, error) {
	s.closed++
	if s.answer != nil {
		return nil, s.answer
	}
	return &decreev1.SnapshotAck{}, nil
}

func (e *fakeRaftEdge) openStream(context.Context, uint64) (raftStream, error) {
	e.opened++
	if e.refuse {
		return nil, status.Error(codes.Unavailable, "refused")
	}
	s := &fakeRaftStream{}
	e.streams = append(e.streams, s)
	return s, nil
}

func (e *fakeRaftEdge) openSnapshot(context.Context, uint64) (snapshotStream, error) {
	if e.refuse {
		return nil, status.Error(codes.Unavailable, "refused")
	}
	s := &fakeSnapStream{answer: errNoReply}
	e.snaps = append(e.snaps, s)
	return s, nil
}

// recordingReporter records reports in order (a stepped transport makes
// them on its owner's goroutine).
type recordingReporter struct {
	unreachable int
	snapshots   []raft.SnapshotStatus
}

func (r *recordingReporter) ReportUnreachable(uint64) { r.unreachable++ }
func (r *recordingReporter) ReportSnapshot(_ uint64, st raft.SnapshotStatus) {
	r.snapshots = append(r.snapshots, st)
}

func newSteppedRaftTransport(t *testing.T, state stateSource) (*peerTransport, *fakeRaftEdge, *recordingReporter, *clock.Fake) {
	t.Helper()
	edge, rep := &fakeRaftEdge{}, &recordingReporter{}
	clk := clock.NewFake(time.Unix(1000, 0))
	tr := newSteppedPeerTransport(peerTransportConfig{ID: 1, ClusterID: 7, Peers: map[uint64]string{1: "a", 2: "b", 3: "c"},
		reporter: rep, Logger: zerolog.Nop(), Clock: clk, Rand: func() float64 { return 0 }, QueueSize: 100,
		State: state, SnapshotChunkBytes: 64}, edge)
	t.Cleanup(tr.Close)
	return tr, edge, rep, clk
}

func heartbeats(to uint64, n int) []*raftpb.Message {
	var ms []*raftpb.Message
	for i := range n {
		ms = append(ms, &raftpb.Message{Type: raftpb.MsgHeartbeat.Enum(), From: new(uint64(1)), To: new(to),
			Term: new(uint64(1)), Commit: new(uint64(i))})
	}
	return ms
}

// A stepped transport sends nothing until pumped; then it sends each
// peer's queue in order on one stream, in batches of at most maxSendBatch,
// with the wire's header.
func TestSteppedTransportBatchesInOrderOnPump(t *testing.T) {
	tr, edge, rep, _ := newSteppedRaftTransport(t, nil)
	tr.Send(heartbeats(2, maxSendBatch+6))
	if edge.opened != 0 {
		t.Fatalf("opened %d streams before pump", edge.opened)
	}
	tr.pump()
	if edge.opened != 1 {
		t.Fatalf("opened %d streams, want 1", edge.opened)
	}
	s := edge.streams[0]
	if len(s.batches) != 2 || len(s.batches[0].GetMessages()) != maxSendBatch || len(s.batches[1].GetMessages()) != 6 {
		t.Fatalf("batches of %v, want %d then 6", batchSizes(s.batches), maxSendBatch)
	}
	next := uint64(0)
	for _, b := range s.batches {
		if b.GetClusterId() != 7 || b.GetFrom() != 1 || b.GetTo() != 2 {
			t.Fatalf("batch header %d/%d->%d", b.GetClusterId(), b.GetFrom(), b.GetTo())
		}
		for _, raw := range b.GetMessages() {
			var m raftpb.Message
			if err := proto.Unmarshal(raw, &m); err != nil {
				t.Fatal(err)
			}
			if m.GetCommit() != next {
				t.Fatalf("message %d arrived as %d: out of order", m.GetCommit(), next)
			}
			next++
		}
	}
	tr.Send(heartbeats(2, 1))
	tr.pump()
	if edge.opened != 1 || len(s.batches) != 3 {
		t.Fatalf("a later message opened %d streams and made %d batches; want the open stream reused", edge.opened, len(s.batches))
	}
	if rep.unreachable != 0 {
		t.Fatalf("%d unreachable reports with every send working", rep.unreachable)
	}
}

func batchSizes(bs []*decreev1.RaftBatch) []int {
	var n []int
	for _, b := range bs {
		n = append(n, len(b.GetMessages()))
	}
	return n
}

// A peer that cannot be reached is reported once per attempt; what is
// queued while it is backed off is dropped and reported, and the next
// attempt waits for the backoff (doubling from minRedial at no jitter),
// which starts over once a stream has worked.
func TestSteppedTransportBacksOffAndDrops(t *testing.T) {
	tr, edge, rep, clk := newSteppedRaftTransport(t, nil)
	edge.refuse = true
	tr.Send(heartbeats(2, 3))
	tr.pump()
	// One report for the failed attempt, three for the dropped messages.
	if edge.opened != 1 || rep.unreachable != 4 {
		t.Fatalf("opened %d, reported %d; want 1 and 4", edge.opened, rep.unreachable)
	}
	for i, d := range []time.Duration{minRedial, 2 * minRedial, 4 * minRedial} {
		clk.Advance(d - 1)
		tr.Send(heartbeats(2, 1))
		tr.tick(clk.Now())
		if edge.opened != i+1 {
			t.Fatalf("attempt %d: redialled before its %v backoff", i+2, d)
		}
		if p := tr.peers[2]; p.queued() != 0 {
			t.Fatalf("%d messages kept queued while the peer is backed off", p.queued())
		}
		clk.Advance(1)
		tr.Send(heartbeats(2, 1))
		tr.tick(clk.Now())
		if edge.opened != i+2 {
			t.Fatalf("attempt %d not made after its %v backoff", i+2, d)
		}
	}
	// The peer is back: the stream works, then breaks. The next attempt
	// waits only minRedial.
	edge.refuse = false
	clk.Advance(8 * minRedial)
	tr.Send(heartbeats(2, 1))
	tr.pump()
	s := edge.streams[0]
	if len(s.batches) != 1 {
		t.Fatalf("peer back: %d batches sent", len(s.batches))
	}
	s.err = io.EOF
	before := rep.unreachable
	tr.Send(heartbeats(2, 1))
	tr.pump()
	if rep.unreachable != before+1 {
		t.Fatalf("a broken stream made %d reports, want 1", rep.unreachable-before)
	}
	clk.Advance(minRedial)
	tr.Send(heartbeats(2, 1))
	tr.pump()
	if len(edge.streams) != 2 || len(edge.streams[1].batches) != 1 {
		t.Fatalf("no new stream minRedial after a working one broke (streams %d)", len(edge.streams))
	}
	// Peer 3 was never involved.
	if tr.peers[3].queued() != 0 || !tr.peers[3].downUntil.IsZero() {
		t.Fatal("peer 3 affected by peer 2's outage")
	}
}

// A full queue drops the message and reports the peer.
func TestSteppedTransportFullQueueDrops(t *testing.T) {
	tr, edge, rep, _ := newSteppedRaftTransport(t, nil)
	tr.Send(heartbeats(3, 105))
	if rep.unreachable != 5 {
		t.Fatalf("%d reports for 5 messages past a queue of 100", rep.unreachable)
	}
	tr.pump()
	if n := len(edge.streams[0].batches); n != 2 {
		t.Fatalf("%d batches for 100 messages", n)
	}
}

// A snapshot starts at the next pump on a stream of its own, streams the
// state and reports to raft once the peer answered; a second one while
// one runs is dropped.
func TestSteppedTransportSnapshot(t *testing.T) {
	store := snapStore(t, "n1", vfs.NewMem(), 1)
	seedState(t, store, 10, 40)
	tr, edge, rep, _ := newSteppedRaftTransport(t, store)
	tr.cfg.ClusterID = snapTestCluster
	tr.Send([]*raftpb.Message{snapMsg(10)})
	if len(edge.snaps) != 0 {
		t.Fatal("snapshot started before pump")
	}
	tr.pump()
	tr.Send([]*raftpb.Message{snapMsg(10)}) // raft would not; dropped
	tr.pump()
	if len(edge.snaps) != 1 {
		t.Fatalf("%d snapshot streams, want 1", len(edge.snaps))
	}
	s := edge.snaps[0]
	if len(s.chunks) < 3 || s.chunks[0].GetHeader().GetTo() != 2 || s.chunks[len(s.chunks)-1].GetTrailer() == nil {
		t.Fatalf("%d chunks, want a header, data and a trailer", len(s.chunks))
	}
	if len(rep.snapshots) != 0 {
		t.Fatalf("reported %v before the peer answered", rep.snapshots)
	}
	// The receiver takes the stream as a peer would.
	recv := receiver(snapStore(t, "n2", vfs.NewMem(), 2))
	if _, err := recv.receiveSnapshot(&simChunks{chunks: s.chunks}, 1, install(recv.store)); err != nil {
		t.Fatalf("receive: %v", err)
	}
	s.answer = nil
	tr.pump()
	if len(rep.snapshots) != 1 || rep.snapshots[0] != raft.SnapshotFinish {
		t.Fatalf("reports %v, want one finish", rep.snapshots)
	}
	// The peer may get another; this one the peer refuses.
	tr.Send([]*raftpb.Message{snapMsg(10)})
	tr.pump()
	edge.snaps[1].answer = status.Error(codes.ResourceExhausted, "busy")
	tr.pump()
	if len(rep.snapshots) != 2 || rep.snapshots[1] != raft.SnapshotFailure {
		t.Fatalf("reports %v, want finish then failure", rep.snapshots)
	}
	// No state, or no peer: a failure at once.
	edge.refuse = true
	tr.Send([]*raftpb.Message{snapMsg(10)})
	tr.pump()
	if len(rep.snapshots) != 3 || rep.snapshots[2] != raft.SnapshotFailure {
		t.Fatalf("reports %v, want a third, failed", rep.snapshots)
	}
}

// receiveBatch rejects a batch of another cluster or for another node,
// skips a message that does not come from the batch's sender, and stops at
// an undecodable one or a failing step.
func TestReceiveBatch(t *testing.T) {
	n := &Node{cfg: Config{ID: 2, ClusterID: 7, Peers: map[uint64]string{1: "a", 2: "b", 3: "c"}, Clock: WallClock{}}, log: zerolog.Nop()}
	svc := &raftService{node: n, log: zerolog.Nop()}
	enc := func(ms ...*raftpb.Message) [][]byte {
		var out [][]byte
		for _, m := range ms {
			b, _ := proto.Marshal(m)
			out = append(out, b)
		}
		return out
	}
	hb := func(from uint64) *raftpb.Message {
		return &raftpb.Message{Type: raftpb.MsgHeartbeat.Enum(), From: new(from), To: new(uint64(2)), Term: new(uint64(1))}
	}
	var stepped []uint64
	step := func(m *raftpb.Message) error { stepped = append(stepped, m.GetFrom()); return nil }
	cases := []struct {
		name string
		b    *decreev1.RaftBatch
		code codes.Code
		n    uint64
	}{
		{"another cluster", &decreev1.RaftBatch{ClusterId: 8, From: 1, To: 2, Messages: enc(hb(1))}, codes.FailedPrecondition, 0},
		{"another node", &decreev1.RaftBatch{ClusterId: 7, From: 1, To: 3, Messages: enc(hb(1))}, codes.FailedPrecondition, 0},
		{"forged sender skipped", &decreev1.RaftBatch{ClusterId: 7, From: 1, To: 2, Messages: enc(hb(1), hb(3), hb(1))}, codes.OK, 2},
		{"undecodable", &decreev1.RaftBatch{ClusterId: 7, From: 1, To: 2, Messages: append(enc(hb(1)), []byte{0xff})}, codes.InvalidArgument, 1},
	}
	for _, c := range cases {
		stepped = nil
		got, err := svc.receiveBatch(c.b, step)
		if status.Code(err) != c.code || got != c.n || uint64(len(stepped)) != c.n {
			t.Errorf("%s: stepped %d (%v), err %v; want %d, %v", c.name, got, stepped, err, c.n, c.code)
		}
		for _, from := range stepped {
			if from != 1 {
				t.Errorf("%s: stepped a message from %d", c.name, from)
			}
		}
	}
	stop := errors.New("stopped")
	got, err := svc.receiveBatch(&decreev1.RaftBatch{ClusterId: 7, From: 1, To: 2, Messages: enc(hb(1), hb(1))},
		func(*raftpb.Message) error { return stop })
	if !errors.Is(err, stop) || got != 0 {
		t.Errorf("failing step: %d, %v", got, err)
	}
}
