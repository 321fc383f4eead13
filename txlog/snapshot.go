package txlog

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// Raft snapshots are descriptors. The state machine's state already lives
// in Pebble, so a snapshot's Data only says which cluster and index it
// belongs to; a peer that needs the state gets it streamed (StateReader on
// the sender, Stager on the receiver), never as one value. Nothing on the
// raft loop reads or writes the state to take a snapshot, and the raft
// storage mirror holds no state.

// snapshotDescV2 is the version byte of a descriptor. Version 1 was the
// whole state encoded in the snapshot data (statecodec.go's format); a
// store written by that version is read as if it held a descriptor.
const snapshotDescV2 = 2

// SnapshotDescriptor is the content of a raft snapshot's Data.
type SnapshotDescriptor struct {
	// ClusterID is the cluster the snapshot's state belongs to.
	ClusterID uint64
	// Index is the raft index the snapshot stands for.
	Index uint64
}

// Marshal encodes d: the version byte, then the fields as uvarints.
func (d SnapshotDescriptor) Marshal() []byte {
	b := []byte{snapshotDescV2}
	b = binary.AppendUvarint(b, d.ClusterID)
	return binary.AppendUvarint(b, d.Index)
}

// UnmarshalSnapshotDescriptor decodes snapshot data written by Marshal. It
// rejects anything else, including the version 1 format, with an error.
func UnmarshalSnapshotDescriptor(b []byte) (SnapshotDescriptor, error) {
	dec := &decoder{what: "snapshot descriptor", buf: b}
	if v := dec.byte("version"); dec.err == nil && v != snapshotDescV2 {
		return SnapshotDescriptor{}, fmt.Errorf("decode snapshot descriptor: unsupported version %d", v)
	}
	d := SnapshotDescriptor{ClusterID: dec.uvarint("cluster id"), Index: dec.uvarint("index")}
	if err := dec.end(); err != nil {
		return SnapshotDescriptor{}, err
	}
	return d, nil
}

// CreateSnapshot records a snapshot at index i, which must not be above
// the applied index (whatever raft sends after it, the state holds). cs is
// the configuration at i; nil keeps the current one. The snapshot is
// persisted (synced) before the mirror serves it, so that a later Compact
// never discards entries that no durable snapshot covers. It costs one
// small synced write, whatever the size of the state.
//
// An error wrapping raft.ErrSnapOutOfDate is returned if i is not above the
// current snapshot index.
func (s *Store) CreateSnapshot(i uint64, cs *raftpb.ConfState) (*raftpb.Snapshot, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if applied := s.applied.Load(); i > applied {
		return nil, fmt.Errorf("create snapshot %d: state is only at applied index %d", i, applied)
	}
	snap, err := s.buildSnapshot(i, cs)
	if err != nil {
		return nil, err
	}
	b := s.db.NewBatch()
	defer b.Close()
	if err := setProto(b, snapshotKey, snap); err != nil {
		return nil, fmt.Errorf("create snapshot %d: %w", i, err)
	}
	if err := s.commitSync(b); err != nil {
		return nil, fmt.Errorf("create snapshot %d: %w", i, err)
	}
	if _, err := s.mem.CreateSnapshot(i, snap.GetMetadata().GetConfState(), snap.GetData()); err != nil {
		return nil, fmt.Errorf("create snapshot %d: mirror diverged from disk: %w", i, err)
	}
	s.snapMeta = proto.CloneOf(snap.GetMetadata())
	return snap, nil
}

// checkSnapshotIndex checks that i is above the current snapshot and within
// the log. The mirror would panic on the latter.
func (s *Store) checkSnapshotIndex(i uint64) error {
	if cur := s.snapMeta.GetIndex(); i <= cur {
		return fmt.Errorf("create snapshot %d: current snapshot is at %d: %w", i, cur, raft.ErrSnapOutOfDate)
	}
	if last, _ := s.mem.LastIndex(); i > last {
		return fmt.Errorf("create snapshot %d: beyond last index %d", i, last)
	}
	return nil
}

// buildSnapshot assembles the snapshot descriptor at i.
func (s *Store) buildSnapshot(i uint64, cs *raftpb.ConfState) (*raftpb.Snapshot, error) {
	if err := s.checkSnapshotIndex(i); err != nil {
		return nil, err
	}
	term, err := s.mem.Term(i)
	if err != nil {
		return nil, fmt.Errorf("create snapshot %d: %w", i, err)
	}
	if cs == nil {
		cs = s.snapMeta.GetConfState()
	}
	return &raftpb.Snapshot{
		Metadata: &raftpb.SnapshotMetadata{
			Index:     new(i),
			Term:      new(term),
			ConfState: proto.CloneOf(raftpb.EnsureConfState(cs)),
		},
		Data: SnapshotDescriptor{ClusterID: s.identity.ClusterID, Index: i}.Marshal(),
	}, nil
}

// StateReader reads the state keyspace from a consistent view of the store,
// a bounded run of pairs at a time, for streaming it to a peer. It holds a
// Pebble snapshot, not the state: memory stays bounded by the runs asked
// for. Close it when done. It is not safe for concurrent use.
type StateReader struct {
	view    *pebble.Snapshot
	it      *pebble.Iterator
	applied uint64
	done    bool
}

// OpenStateReader opens a view of the state as it is now. Its applied
// index is at or above every snapshot the store has taken, so it serves
// any of them: the receiver skips re-applying the entries up to Applied.
func (s *Store) OpenStateReader() (*StateReader, error) {
	view := s.db.NewSnapshot()
	r := &StateReader{view: view}
	val, closer, err := view.Get(appliedKey)
	switch {
	case errors.Is(err, pebble.ErrNotFound):
	case err != nil:
		_ = view.Close()
		return nil, fmt.Errorf("open state reader: %w", err)
	default:
		if len(val) == 8 {
			r.applied = binary.BigEndian.Uint64(val)
		}
		_ = closer.Close()
	}
	r.it, err = view.NewIter(&pebble.IterOptions{LowerBound: statePrefix, UpperBound: stateEnd})
	if err != nil {
		_ = view.Close()
		return nil, fmt.Errorf("open state reader: %w", err)
	}
	r.it.First()
	return r, nil
}

// Applied is the applied index of the state the reader sees.
func (r *StateReader) Applied() uint64 { return r.applied }

// Next returns the next pairs, in key order, of about maxBytes of keys and
// values together (at least one pair while any remain; keys relative to the
// state keyspace, the applied index left out). It returns no pairs and a
// nil error once the state is exhausted. The pairs are copies.
func (r *StateReader) Next(maxBytes int) ([]KV, error) {
	var kvs []KV
	size := 0
	for ; r.it.Valid() && (size < maxBytes || len(kvs) == 0); r.it.Next() {
		key := r.it.Key()
		if string(key) == string(appliedKey) {
			continue
		}
		val, err := r.it.ValueAndErr()
		if err != nil {
			return nil, fmt.Errorf("read state: %w", err)
		}
		kv := KV{Key: append([]byte(nil), key[len(statePrefix):]...), Value: append([]byte(nil), val...)}
		kvs = append(kvs, kv)
		size += len(kv.Key) + len(kv.Value)
	}
	if err := r.it.Error(); err != nil {
		return nil, fmt.Errorf("read state: %w", err)
	}
	return kvs, nil
}

// Close releases the view.
func (r *StateReader) Close() error {
	return errors.Join(r.it.Close(), r.view.Close())
}
