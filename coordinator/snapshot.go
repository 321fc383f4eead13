package coordinator

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
	"github.com/decree-tx/decree/txlog"
)

// Snapshot transfer. A raft snapshot is a descriptor (txlog); when raft
// sends one to a lagging peer, the sender streams its state beside it:
//
//	header  {cluster, from, to, the MsgSnap, applied index of the state}
//	chunks  {state pairs in txlog's state codec, ~DefaultSnapshotChunkBytes each}
//	trailer {pair count, data bytes, CRC-32C of the data}
//
// The state is read from a Pebble snapshot of the sender's store taken when
// the transfer starts (so at or above the raft snapshot's index), on the
// transfer's own goroutine and connection; the raft loop only hands over
// the message. The receiver stages the pairs on disk (txlog.Stager) on the
// handler's goroutine, and only once all of them are staged and verified
// steps the MsgSnap into raft, whose next Ready installs the staged state
// atomically (txlog.Store.SaveReady). Flow control is gRPC's: the sender
// blocks in Send while the receiver is busy writing.

// DefaultSnapshotChunkBytes is the data carried by one snapshot chunk.
const DefaultSnapshotChunkBytes = 1 << 20

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// stateSource opens a consistent view of a store's state (txlog.Store).
type stateSource interface {
	OpenStateReader() (*txlog.StateReader, error)
}

// chunkSink takes a transfer's chunks in order (a gRPC client stream).
type chunkSink interface {
	Send(*decreev1.SnapshotChunk) error
}

// chunkSource yields a transfer's chunks in order (a gRPC server stream);
// io.EOF ends it.
type chunkSource interface {
	Recv() (*decreev1.SnapshotChunk, error)
}

// transferStats is what one transfer moved.
type transferStats struct {
	pairs, bytes uint64
}

// sendSnapshot streams m (a MsgSnap) and the current state of src to sink.
func sendSnapshot(src stateSource, hdr *decreev1.SnapshotHeader, m *raftpb.Message, sink chunkSink, chunkBytes int) (transferStats, error) {
	var ts transferStats
	msg, err := proto.Marshal(m)
	if err != nil {
		return ts, fmt.Errorf("marshal snapshot message: %w", err)
	}
	r, err := src.OpenStateReader()
	if err != nil {
		return ts, err
	}
	defer r.Close()
	hdr.Message, hdr.Applied = msg, r.Applied()
	if err := sink.Send(&decreev1.SnapshotChunk{Header: hdr}); err != nil {
		return ts, fmt.Errorf("send snapshot header: %w", err)
	}
	var crc uint32
	for {
		kvs, err := r.Next(chunkBytes)
		if err != nil {
			return ts, err
		}
		if len(kvs) == 0 {
			break
		}
		data, err := txlog.EncodeState(kvs)
		if err != nil {
			return ts, err
		}
		crc = crc32.Update(crc, castagnoli, data)
		ts.pairs += uint64(len(kvs))
		ts.bytes += uint64(len(data))
		if err := sink.Send(&decreev1.SnapshotChunk{Data: data}); err != nil {
			return ts, fmt.Errorf("send snapshot chunk: %w", err)
		}
	}
	trailer := &decreev1.SnapshotTrailer{Pairs: ts.pairs, DataBytes: ts.bytes, Crc32C: crc}
	if err := sink.Send(&decreev1.SnapshotChunk{Trailer: trailer}); err != nil {
		return ts, fmt.Errorf("send snapshot trailer: %w", err)
	}
	return ts, nil
}

// receiveSnapshot stages a streamed snapshot on the node's store and, once
// it is complete and verified, hands its MsgSnap to step. sender is the
// peer the stream came from, as the transport knows it (0: take the
// header's word). The returned error is a gRPC status for the sender.
func (n *Node) receiveSnapshot(src chunkSource, sender uint64, step func(*raftpb.Message) error) (transferStats, error) {
	start := n.cfg.Clock.Now()
	first, err := src.Recv()
	if err != nil {
		return transferStats{}, invalidArgument("snapshot stream ended before its header: %v", err)
	}
	m, applied, err := n.checkSnapshotHeader(first.GetHeader(), sender)
	if err != nil {
		return transferStats{}, err
	}
	st, err := n.store.NewStager(m.GetSnapshot().GetMetadata().GetIndex(), applied)
	if err != nil {
		return transferStats{}, unavailable("stage snapshot: %v", err)
	}
	ts, err := stageChunks(st, first, src)
	if err != nil {
		st.Abort()
		return ts, err
	}
	if err := st.Finish(); err != nil {
		return ts, unavailable("stage snapshot: %v", err)
	}
	if err := step(m); err != nil {
		return ts, unavailable("hand snapshot to raft: %v", err)
	}
	n.stats.snapshotsReceived.Add(1)
	n.stats.snapshotBytesReceived.Add(ts.bytes)
	n.stats.snapshotReceiveNanos.Add(uint64(n.cfg.Clock.Now().Sub(start)))
	n.log.Info().Uint64("from", m.GetFrom()).Uint64("index", m.GetSnapshot().GetMetadata().GetIndex()).
		Uint64("applied", applied).Uint64("pairs", ts.pairs).Uint64("bytes", ts.bytes).
		Dur("took", n.cfg.Clock.Now().Sub(start)).Msg("received snapshot state")
	return ts, nil
}

// checkSnapshotHeader validates a transfer's header and returns its
// MsgSnap and the applied index of the streamed state.
func (n *Node) checkSnapshotHeader(h *decreev1.SnapshotHeader, sender uint64) (*raftpb.Message, uint64, error) {
	if h == nil {
		return nil, 0, invalidArgument("snapshot stream must start with a header")
	}
	if h.GetClusterId() != n.cfg.ClusterID {
		return nil, 0, failedPrecondition("snapshot from another cluster")
	}
	if h.GetTo() != n.cfg.ID || (sender != 0 && h.GetFrom() != sender) {
		return nil, 0, invalidArgument("snapshot header from %d to %d reached node %d", h.GetFrom(), h.GetTo(), n.cfg.ID)
	}
	m := &raftpb.Message{}
	if err := proto.Unmarshal(h.GetMessage(), m); err != nil {
		return nil, 0, invalidArgument("undecodable snapshot message: %v", err)
	}
	if m.GetType() != raftpb.MsgSnap || m.GetFrom() != h.GetFrom() || m.GetTo() != n.cfg.ID {
		return nil, 0, invalidArgument("snapshot header carries a %v from %d to %d", m.GetType(), m.GetFrom(), m.GetTo())
	}
	md := m.GetSnapshot().GetMetadata()
	desc, err := txlog.UnmarshalSnapshotDescriptor(m.GetSnapshot().GetData())
	if err != nil {
		return nil, 0, invalidArgument("snapshot data: %v", err)
	}
	if desc.ClusterID != n.cfg.ClusterID || desc.Index != md.GetIndex() || md.GetIndex() == 0 {
		return nil, 0, invalidArgument("snapshot descriptor %+v does not match index %d", desc, md.GetIndex())
	}
	if h.GetApplied() < md.GetIndex() {
		return nil, 0, invalidArgument("streamed state at %d is older than snapshot %d", h.GetApplied(), md.GetIndex())
	}
	return m, h.GetApplied(), nil
}

// stageChunks adds the pairs of every chunk to st until the trailer, and
// checks the trailer against what arrived.
func stageChunks(st *txlog.Stager, first *decreev1.SnapshotChunk, src chunkSource) (transferStats, error) {
	var ts transferStats
	var crc uint32
	for c := first; ; {
		if len(c.GetData()) > 0 {
			kvs, err := txlog.DecodeState(c.GetData())
			if err != nil {
				return ts, invalidArgument("snapshot chunk: %v", err)
			}
			for _, kv := range kvs {
				if err := st.Add(kv.Key, kv.Value); err != nil {
					return ts, invalidArgument("snapshot chunk: %v", err)
				}
			}
			crc = crc32.Update(crc, castagnoli, c.GetData())
			ts.pairs += uint64(len(kvs))
			ts.bytes += uint64(len(c.GetData()))
		}
		if t := c.GetTrailer(); t != nil {
			if t.GetPairs() != ts.pairs || t.GetDataBytes() != ts.bytes || t.GetCrc32C() != crc {
				return ts, invalidArgument("snapshot trailer (%d pairs, %d bytes, crc %08x) does not match what arrived (%d, %d, %08x)",
					t.GetPairs(), t.GetDataBytes(), t.GetCrc32C(), ts.pairs, ts.bytes, crc)
			}
			return ts, nil
		}
		var err error
		if c, err = src.Recv(); err != nil {
			if errors.Is(err, io.EOF) {
				return ts, invalidArgument("snapshot stream ended without a trailer")
			}
			return ts, unavailable("snapshot stream broken: %v", err)
		}
	}
}

// noteSnapshotSent counts a finished outgoing transfer.
func (s *nodeStats) noteSnapshotSent(ts transferStats, took time.Duration) {
	if s == nil {
		return
	}
	s.snapshotsSent.Add(1)
	s.snapshotBytesSent.Add(ts.bytes)
	s.snapshotSendNanos.Add(uint64(took))
}

// stepSnapshot hands a fully staged snapshot's MsgSnap to the raft loop.
func (n *Node) stepSnapshot(ctx context.Context, m *raftpb.Message) error {
	select {
	case n.snapc <- m:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-n.donec:
		return n.stoppedErr()
	}
}
