package txlog

import (
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// The raft.Storage methods are served by the in-memory mirror, which always
// reflects what is durable in Pebble.

// InitialState implements raft.Storage. Like raft.MemoryStorage's, it must
// not be called concurrently with itself.
func (s *Store) InitialState() (*raftpb.HardState, *raftpb.ConfState, error) {
	return s.mem.InitialState()
}

// Entries implements raft.Storage.
func (s *Store) Entries(lo, hi, maxSize uint64) ([]*raftpb.Entry, error) {
	return s.mem.Entries(lo, hi, maxSize)
}

// Term implements raft.Storage.
func (s *Store) Term(i uint64) (uint64, error) {
	return s.mem.Term(i)
}

// LastIndex implements raft.Storage.
func (s *Store) LastIndex() (uint64, error) {
	return s.mem.LastIndex()
}

// FirstIndex implements raft.Storage.
func (s *Store) FirstIndex() (uint64, error) {
	return s.mem.FirstIndex()
}

// Snapshot implements raft.Storage.
func (s *Store) Snapshot() (*raftpb.Snapshot, error) {
	return s.mem.Snapshot()
}

// Save persists what a Raft Ready asks to persist, in one synced batch, and
// then updates the mirror. It is the only fsync per call, and there is none
// when there is nothing to write.
//
//   - A non-empty snapshot is a snapshot received from the leader: it
//     replaces the whole log and the whole state keyspace with the state
//     staged for it (see Stager), together with the hard state and entries,
//     in one atomic ingestion, so a crash never leaves the log and the
//     state disagreeing. The applied index becomes the staged state's.
//   - Entries starting at index i replace any stored entries from i on.
//   - A non-empty hard state replaces the stored one.
func (s *Store) Save(hs *raftpb.HardState, ents []*raftpb.Entry, snap *raftpb.Snapshot) error {
	return s.SaveReady(hs, ents, snap, true)
}

// SaveReady is Save for a raft Ready: when raft says the Ready need not be
// synced (mustSync false: only the commit index moved) and there is no
// snapshot, the batch is written without an fsync. That is safe because a
// commit index can always be relearned from the leader, and Pebble's WAL is
// ordered: if this write survives a crash, every earlier synced write did.
func (s *Store) SaveReady(hs *raftpb.HardState, ents []*raftpb.Entry, snap *raftpb.Snapshot, mustSync bool) error {
	if raft.IsEmptySnap(snap) && raft.IsEmptyHardState(hs) && len(ents) == 0 {
		return nil
	}
	if err := checkContiguous(ents); err != nil {
		return fmt.Errorf("save: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !raft.IsEmptySnap(snap) {
		ents, err := s.saveSnapshot(hs, ents, snap)
		if err != nil {
			return fmt.Errorf("save: %w", err)
		}
		return s.updateMirror(hs, ents, snap)
	}
	b := s.db.NewBatch()
	defer b.Close()
	ents, err := s.stageSave(b, hs, ents)
	if err != nil {
		return fmt.Errorf("save: %w", err)
	}
	if mustSync || len(ents) > 0 {
		err = s.commitSync(b)
	} else {
		err = b.Commit(pebble.NoSync)
	}
	if err != nil {
		return fmt.Errorf("save: %w", err)
	}
	return s.updateMirror(hs, ents, nil)
}

// stageSave adds a Save's writes to b and returns the entries to append to
// the mirror.
func (s *Store) stageSave(b *pebble.Batch, hs *raftpb.HardState, ents []*raftpb.Entry) ([]*raftpb.Entry, error) {
	first, _ := s.mem.FirstIndex()
	last, _ := s.mem.LastIndex()
	ents, err := stageEntries(b, ents, first, last)
	if err != nil {
		return nil, err
	}
	if !raft.IsEmptyHardState(hs) {
		if err := setProto(b, hardStateKey, hs); err != nil {
			return nil, err
		}
	}
	return ents, nil
}

// stageEntries adds ents to b, given the current log bounds, and returns
// the entries actually written. Entries below first are already covered by
// the snapshot and are dropped, as MemoryStorage.Append drops them. Stored
// entries after the last new one are deleted: a leader overwrote them.
func stageEntries(b *pebble.Batch, ents []*raftpb.Entry, first, last uint64) ([]*raftpb.Entry, error) {
	if len(ents) == 0 {
		return nil, nil
	}
	if lo := ents[0].GetIndex(); lo > last+1 {
		return nil, fmt.Errorf("append at index %d leaves a gap after last index %d", lo, last)
	}
	for len(ents) > 0 && ents[0].GetIndex() < first {
		ents = ents[1:]
	}
	if len(ents) == 0 {
		return nil, nil
	}
	newLast := ents[len(ents)-1].GetIndex()
	if newLast < last {
		_ = b.DeleteRange(entryKey(newLast+1), entryKey(last+1), nil)
	}
	for _, e := range ents {
		if err := setProto(b, entryKey(e.GetIndex()), e); err != nil {
			return nil, err
		}
	}
	return ents, nil
}

// updateMirror applies a committed Save to the mirror. The checks made
// before committing mean it cannot fail; if it does, the mirror no longer
// matches Pebble and the store must not be used further.
func (s *Store) updateMirror(hs *raftpb.HardState, ents []*raftpb.Entry, snap *raftpb.Snapshot) error {
	if !raft.IsEmptySnap(snap) {
		if err := s.mem.ApplySnapshot(snap); err != nil {
			return fmt.Errorf("save: mirror diverged from disk: %w", err)
		}
		s.snapMeta = proto.CloneOf(snap.GetMetadata())
	}
	if err := s.mem.Append(ents); err != nil {
		return fmt.Errorf("save: mirror diverged from disk: %w", err)
	}
	if !raft.IsEmptyHardState(hs) {
		_ = s.mem.SetHardState(proto.CloneOf(hs))
	}
	return nil
}

// Compact discards the log entries before compactIndex; the entry at
// compactIndex is kept for its term, as in raft.MemoryStorage. compactIndex
// must not exceed the snapshot index, so that every discarded entry is
// covered by the durable snapshot. An error wrapping raft.ErrCompacted is
// returned if compactIndex is already compacted.
//
// The deletion is not synced. Losing it in a crash is harmless: the
// snapshot that covers the entries is already durable, so the entries are
// merely served again after the restart until the next Compact. Pebble's
// write-ahead log is also a prefix, so any later synced write makes the
// deletion durable anyway.
func (s *Store) Compact(compactIndex uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if snapIdx := s.snapMeta.GetIndex(); compactIndex > snapIdx {
		return fmt.Errorf("compact to %d: beyond snapshot index %d", compactIndex, snapIdx)
	}
	if err := s.mem.Compact(compactIndex); err != nil {
		return fmt.Errorf("compact to %d: %w", compactIndex, err)
	}
	if err := s.db.DeleteRange(entryPrefix, entryKey(compactIndex), pebble.NoSync); err != nil {
		return fmt.Errorf("compact to %d: %w", compactIndex, err)
	}
	return nil
}

// commitSync commits b durably and counts the fsync.
func (s *Store) commitSync(b *pebble.Batch) error {
	if err := b.Commit(pebble.Sync); err != nil {
		return err
	}
	s.syncs.Add(1)
	return nil
}

func checkContiguous(ents []*raftpb.Entry) error {
	for i := 1; i < len(ents); i++ {
		if ents[i].GetIndex() != ents[i-1].GetIndex()+1 {
			return fmt.Errorf("entries not contiguous: index %d follows %d", ents[i].GetIndex(), ents[i-1].GetIndex())
		}
	}
	return nil
}

func setProto(b *pebble.Batch, key []byte, m proto.Message) error {
	val, err := proto.Marshal(m)
	if err != nil {
		return fmt.Errorf("marshal %s: %w", key, err)
	}
	_ = b.Set(key, val, nil)
	return nil
}

func getProto(s *Store, key []byte, m proto.Message) (bool, error) {
	val, found, err := s.get(key)
	if err != nil || !found {
		return false, err
	}
	if err := proto.Unmarshal(val, m); err != nil {
		return false, fmt.Errorf("unmarshal %s: %w", key, err)
	}
	return true, nil
}
