package txlog

import (
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// loadMirror reads the durable Raft state and rebuilds the in-memory
// mirror from it. Memory stays bounded because the log is compacted below
// snapshots.
func (s *Store) loadMirror() (*raft.MemoryStorage, error) {
	snap := &raftpb.Snapshot{}
	hasSnap, err := getProto(s, snapshotKey, snap)
	if err != nil {
		return nil, err
	}
	if !hasSnap {
		snap = nil
	} else if _, err := UnmarshalSnapshotDescriptor(snap.GetData()); err != nil {
		// A snapshot written before descriptors (its data the whole state,
		// which the state keyspace also holds): keep only a descriptor.
		snap.Data = SnapshotDescriptor{ClusterID: s.identity.ClusterID, Index: snap.GetMetadata().GetIndex()}.Marshal()
	}
	hs := &raftpb.HardState{}
	hasHS, err := getProto(s, hardStateKey, hs)
	if err != nil {
		return nil, err
	}
	if !hasHS {
		hs = nil
	}
	ents, err := s.loadEntries()
	if err != nil {
		return nil, err
	}
	return buildMirror(snap, hs, ents)
}

// loadEntries reads every stored log entry in index order and checks that
// they are contiguous.
func (s *Store) loadEntries() ([]*raftpb.Entry, error) {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: entryPrefix, UpperBound: entryEnd})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var ents []*raftpb.Entry
	for it.First(); it.Valid(); it.Next() {
		e, err := decodeEntry(it.Key(), it.Value())
		if err != nil {
			return nil, err
		}
		if n := len(ents); n > 0 && e.GetIndex() != ents[n-1].GetIndex()+1 {
			return nil, fmt.Errorf("gap in stored log: entry %d follows %d", e.GetIndex(), ents[n-1].GetIndex())
		}
		ents = append(ents, e)
	}
	return ents, it.Error()
}

func decodeEntry(key, val []byte) (*raftpb.Entry, error) {
	idx, ok := entryIndex(key)
	if !ok {
		return nil, fmt.Errorf("malformed entry key %q", key)
	}
	e := &raftpb.Entry{}
	if err := proto.Unmarshal(val, e); err != nil {
		return nil, fmt.Errorf("unmarshal entry %d: %w", idx, err)
	}
	if e.GetIndex() != idx {
		return nil, fmt.Errorf("entry stored at index %d claims index %d", idx, e.GetIndex())
	}
	return e, nil
}

// buildMirror builds a MemoryStorage holding snap, hs and the contiguous
// entries ents.
//
// Compact keeps entries between the compaction point and the snapshot (for
// slow followers). To restore them, the oldest stored entry becomes the
// mirror's dummy entry, exactly as MemoryStorage.Compact left it, and the
// snapshot is then re-created on top. Otherwise the snapshot is applied and
// the entries after it appended.
func buildMirror(snap *raftpb.Snapshot, hs *raftpb.HardState, ents []*raftpb.Entry) (*raft.MemoryStorage, error) {
	mem := raft.NewMemoryStorage()
	snapIdx := snap.GetMetadata().GetIndex()
	var err error
	if len(ents) > 0 && ents[0].GetIndex() < snapIdx && ents[len(ents)-1].GetIndex() >= snapIdx {
		err = restoreAroundSnapshot(mem, snap, ents)
	} else {
		err = restoreAfterSnapshot(mem, snap, ents)
	}
	if err != nil {
		return nil, err
	}
	if hs != nil {
		_ = mem.SetHardState(hs)
	}
	return mem, nil
}

func restoreAroundSnapshot(mem *raft.MemoryStorage, snap *raftpb.Snapshot, ents []*raftpb.Entry) error {
	// A log starting at 1 was never compacted: keep the initial dummy at 0.
	if ents[0].GetIndex() > 1 {
		base := &raftpb.Snapshot{Metadata: &raftpb.SnapshotMetadata{Index: ents[0].Index, Term: ents[0].Term}}
		if err := mem.ApplySnapshot(base); err != nil {
			return err
		}
		ents = ents[1:]
	}
	if err := mem.Append(ents); err != nil {
		return err
	}
	md := snap.GetMetadata()
	_, err := mem.CreateSnapshot(md.GetIndex(), raftpb.EnsureConfState(md.GetConfState()), snap.GetData())
	return err
}

func restoreAfterSnapshot(mem *raft.MemoryStorage, snap *raftpb.Snapshot, ents []*raftpb.Entry) error {
	snapIdx := snap.GetMetadata().GetIndex()
	if len(ents) > 0 && ents[0].GetIndex() > snapIdx+1 {
		return fmt.Errorf("gap in stored log: first entry %d after snapshot %d", ents[0].GetIndex(), snapIdx)
	}
	if snap != nil {
		if err := mem.ApplySnapshot(snap); err != nil {
			return err
		}
	}
	// Append skips entries the snapshot covers.
	return mem.Append(ents)
}
