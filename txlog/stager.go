package txlog

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"strconv"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/objstorage/objstorageprovider"
	"github.com/cockroachdb/pebble/v2/sstable"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// Receiving a snapshot, and why it is crash-safe:
//
//  1. A Stager writes the streamed pairs, in key order, into SSTables in
//     <dir>/staging/<n>/, a bounded file at a time, each synced when full.
//     The store is untouched; a crash leaves only staging files, which Open
//     deletes.
//  2. Finish registers the staged files as pending for the snapshot index.
//  3. When raft hands the node a Ready carrying that snapshot, SaveReady
//     writes one more small SSTable (the Ready's entries past the snapshot,
//     the hard state and the snapshot descriptor) and ingests all of them
//     with one Pebble IngestAndExcise over the whole raft and state
//     keyspace: one atomic, durable version edit. Before it, the store is
//     entirely the old one; after it, entirely the new one.
//
// No step holds more than one chunk of the state in memory.

const stagingDir = "staging"

// DefaultStagingFileSize is the size at which a Stager starts a new SSTable.
const DefaultStagingFileSize = 32 << 20

// exciseSpan covers the raft log, hard state, snapshot and the whole state
// keyspace (with the applied index): everything a snapshot replaces. The
// identity (m/...) lies outside it.
var exciseSpan = pebble.KeyRange{Start: []byte("r/"), End: stateEnd}

// stagedState is a fully received state waiting for raft to install it.
type stagedState struct {
	dir     string
	files   []string
	applied uint64
}

// Stager writes a state streamed from a peer into staging SSTables. Add
// pairs in strictly increasing key order, then Finish; or Abort. It is not
// safe for concurrent use.
type Stager struct {
	s       *Store
	dir     string
	index   uint64
	applied uint64
	target  uint64

	w              *sstable.Writer
	files          []string
	last           []byte
	pairs          uint64
	appliedWritten bool
	closed         bool
}

// NewStager starts staging the state of the snapshot at index, which
// reflects the log up to applied (at or above index).
func (s *Store) NewStager(index, applied uint64) (*Stager, error) {
	if applied < index {
		return nil, fmt.Errorf("stage snapshot %d: state at applied index %d is older than the snapshot", index, applied)
	}
	n := s.stagings.Add(1)
	dir := filepath.Join(s.dir, stagingDir, strconv.FormatUint(index, 10)+"-"+strconv.FormatUint(n, 10))
	if err := s.fs.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("stage snapshot %d: %w", index, err)
	}
	return &Stager{s: s, dir: dir, index: index, applied: applied, target: s.stagingFileSize}, nil
}

// Add stages one pair; key is relative to the state keyspace.
func (st *Stager) Add(key, value []byte) error {
	if err := checkNextKey(key, st.last, st.pairs > 0); err != nil {
		return fmt.Errorf("stage snapshot %d: %w", st.index, err)
	}
	if !st.appliedWritten && bytes.Compare(key, []byte(reservedStateKey)) > 0 {
		if err := st.writeApplied(); err != nil {
			return err
		}
	}
	if err := st.set(stateKey(key), value); err != nil {
		return err
	}
	st.last = append(st.last[:0], key...)
	st.pairs++
	return nil
}

func (st *Stager) writeApplied() error {
	st.appliedWritten = true
	return st.set(appliedKey, encodeUint64(st.applied))
}

func (st *Stager) set(key, value []byte) error {
	if st.w == nil {
		w, err := st.s.newSSTable(filepath.Join(st.dir, fmt.Sprintf("%06d.sst", len(st.files))))
		if err != nil {
			return fmt.Errorf("stage snapshot %d: %w", st.index, err)
		}
		st.w = w
	}
	if err := st.w.Set(key, value); err != nil {
		return fmt.Errorf("stage snapshot %d: %w", st.index, err)
	}
	if st.w.Raw().EstimatedSize() >= st.target {
		return st.closeFile()
	}
	return nil
}

// closeFile finishes (and syncs) the current SSTable.
func (st *Stager) closeFile() error {
	if st.w == nil {
		return nil
	}
	w := st.w
	st.w = nil
	if err := w.Close(); err != nil {
		return fmt.Errorf("stage snapshot %d: %w", st.index, err)
	}
	st.files = append(st.files, filepath.Join(st.dir, fmt.Sprintf("%06d.sst", len(st.files))))
	return nil
}

// Finish completes the staged state and makes it the one installed when
// raft delivers the snapshot at its index. A newer staged state replaces
// any older one still pending.
func (st *Stager) Finish() error {
	if st.closed {
		return fmt.Errorf("stage snapshot %d: stager already finished or aborted", st.index)
	}
	if !st.appliedWritten {
		if err := st.writeApplied(); err != nil {
			st.Abort()
			return err
		}
	}
	if err := st.closeFile(); err != nil {
		st.Abort()
		return err
	}
	st.closed = true
	st.s.addPending(st.index, &stagedState{dir: st.dir, files: st.files, applied: st.applied})
	return nil
}

// Abort discards what was staged. It is a no-op after Finish.
func (st *Stager) Abort() {
	if st.closed {
		return
	}
	st.closed = true
	if st.w != nil {
		_ = st.w.Close()
	}
	_ = st.s.fs.RemoveAll(st.dir)
}

func (s *Store) newSSTable(path string) (*sstable.Writer, error) {
	f, err := s.fs.Create(path, "")
	if err != nil {
		return nil, err
	}
	opts := &pebble.Options{}
	opts.EnsureDefaults()
	return sstable.NewWriter(objstorageprovider.NewFileWritable(f), opts.MakeWriterOptions(0, s.db.TableFormat())), nil
}

// addPending records a staged state; at most one stays pending, the newest,
// so abandoned transfers cannot pile up on disk.
func (s *Store) addPending(index uint64, st *stagedState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, old := range s.pending {
		if i <= index {
			_ = s.fs.RemoveAll(old.dir)
			delete(s.pending, i)
		}
	}
	if len(s.pending) > 0 { // a newer one arrived first
		_ = s.fs.RemoveAll(st.dir)
		return
	}
	s.pending[index] = st
}

// saveSnapshot persists a Ready that carries a received snapshot: it
// switches the store to the staged state of that snapshot, with the
// Ready's hard state and entries, atomically. Called with mu held.
func (s *Store) saveSnapshot(hs *raftpb.HardState, ents []*raftpb.Entry, snap *raftpb.Snapshot) ([]*raftpb.Entry, error) {
	idx := snap.GetMetadata().GetIndex()
	if cur := s.snapMeta.GetIndex(); idx <= cur {
		return nil, fmt.Errorf("install snapshot %d over snapshot %d: %w", idx, cur, raft.ErrSnapOutOfDate)
	}
	desc, err := UnmarshalSnapshotDescriptor(snap.GetData())
	if err != nil {
		return nil, fmt.Errorf("install snapshot %d: %w", idx, err)
	}
	if desc.Index != idx || desc.ClusterID != s.identity.ClusterID {
		return nil, fmt.Errorf("install snapshot %d: descriptor names cluster %x index %d", idx, desc.ClusterID, desc.Index)
	}
	st, ok := s.pending[idx]
	if !ok {
		return nil, fmt.Errorf("install snapshot %d: no staged state was received for it", idx)
	}
	for len(ents) > 0 && ents[0].GetIndex() <= idx {
		ents = ents[1:]
	}
	if len(ents) > 0 && ents[0].GetIndex() != idx+1 {
		return nil, fmt.Errorf("install snapshot %d: entries start at %d", idx, ents[0].GetIndex())
	}
	if raft.IsEmptyHardState(hs) {
		hs, _, _ = s.mem.InitialState()
	}
	meta := filepath.Join(st.dir, "meta.sst")
	if err := s.writeSnapshotMeta(meta, hs, ents, snap); err != nil {
		return nil, fmt.Errorf("install snapshot %d: %w", idx, err)
	}
	s.recent.invalidate() // until the new state is in place
	if _, err := s.db.IngestAndExcise(context.Background(), append(st.files, meta), nil, nil, exciseSpan); err != nil {
		return nil, fmt.Errorf("install snapshot %d: ingest staged state: %w", idx, err)
	}
	s.syncs.Add(1)
	delete(s.pending, idx)
	_ = s.fs.RemoveAll(st.dir) // Pebble holds its own links to the files
	s.applied.Store(st.applied)
	// A state from a leader that predates the record indexes has none:
	// build them, as Open does.
	if err := s.ensureIndex(); err != nil {
		return nil, fmt.Errorf("install snapshot %d: %w", idx, err)
	}
	if err := s.recent.reset(s.db, stateKey(recordPrefix), UnmarshalRecord); err != nil {
		return nil, fmt.Errorf("install snapshot %d: %w", idx, err)
	}
	return ents, nil
}

// writeSnapshotMeta writes the raft part of an installed snapshot, in key
// order: entries, hard state, snapshot.
func (s *Store) writeSnapshotMeta(path string, hs *raftpb.HardState, ents []*raftpb.Entry, snap *raftpb.Snapshot) error {
	w, err := s.newSSTable(path)
	if err != nil {
		return err
	}
	put := func(key []byte, m proto.Message) error {
		val, err := proto.Marshal(m)
		if err != nil {
			return fmt.Errorf("marshal %s: %w", key, err)
		}
		return w.Set(key, val)
	}
	for _, e := range ents {
		if err := put(entryKey(e.GetIndex()), e); err != nil {
			_ = w.Close()
			return err
		}
	}
	if err := put(hardStateKey, hs); err != nil {
		_ = w.Close()
		return err
	}
	if err := put(snapshotKey, snap); err != nil {
		_ = w.Close()
		return err
	}
	return w.Close()
}
