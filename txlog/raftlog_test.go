package txlog

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

func TestSaveRoundTrip(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, nil)
	checkLog(t, s, 1, 0, nil)

	ents := entryRange(1, 1, 6)
	hs := hardState(1, 1, 3)
	mustSave(t, s, hs, ents, nil)
	checkLog(t, s, 1, 5, ents)
	checkHardState(t, s, hs)
	if term, err := s.Term(3); err != nil || term != 1 {
		t.Fatalf("term(3) = %d, %v; want 1", term, err)
	}

	s = reopen(t, s, dir, nil)
	checkLog(t, s, 1, 5, ents)
	checkHardState(t, s, hs)
}

func TestSaveOverwritesSuffix(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, nil)
	mustSave(t, s, hardState(1, 1, 2), entryRange(1, 1, 6), nil)

	// A new leader overwrites 3..5 with a shorter suffix.
	mustSave(t, s, hardState(2, 2, 2), entryRange(2, 3, 5), nil)
	want := append(entryRange(1, 1, 3), entryRange(2, 3, 5)...)
	checkLog(t, s, 1, 4, want)

	s = reopen(t, s, dir, nil)
	checkLog(t, s, 1, 4, want)

	// And again with a longer one.
	mustSave(t, s, nil, entryRange(3, 2, 8), nil)
	want = append(entryRange(1, 1, 2), entryRange(3, 2, 8)...)
	checkLog(t, s, 1, 7, want)
	s = reopen(t, s, dir, nil)
	checkLog(t, s, 1, 7, want)
	checkHardState(t, s, hardState(2, 2, 2))
}

func TestSaveSyncsOncePerCall(t *testing.T) {
	s := openMem(t)
	before := s.SyncCount()
	mustSave(t, s, nil, nil, nil)
	mustSave(t, s, &raftpb.HardState{}, nil, &raftpb.Snapshot{})
	if got := s.SyncCount(); got != before {
		t.Fatalf("empty saves synced %d times", got-before)
	}
	mustSave(t, s, hardState(1, 1, 1), entryRange(1, 1, 4), nil)
	if got := s.SyncCount(); got != before+1 {
		t.Fatalf("save synced %d times, want 1", got-before)
	}
}

func TestSaveRejectsBadEntries(t *testing.T) {
	s := openMem(t)
	mustSave(t, s, nil, entryRange(1, 1, 4), nil)
	if err := s.Save(nil, entryRange(1, 5, 6), nil); err == nil {
		t.Fatal("save after a gap succeeded")
	}
	if err := s.Save(nil, []*raftpb.Entry{entry(1, 4), entry(1, 6)}, nil); err == nil {
		t.Fatal("save of non-contiguous entries succeeded")
	}
	checkLog(t, s, 1, 3, entryRange(1, 1, 4))
}

func TestCompaction(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, nil)
	ents := entryRange(1, 1, 11)
	mustSave(t, s, hardState(1, 1, 10), ents, nil)
	commitRecords(t, s, 8, record("t1", OutcomeCommitted))
	cs := &raftpb.ConfState{Voters: []uint64{1, 2, 3}}

	snap, err := s.CreateSnapshot(8, cs)
	if err != nil {
		t.Fatalf("create snapshot: %v", err)
	}
	if md := snap.GetMetadata(); md.GetIndex() != 8 || md.GetTerm() != 1 || !proto.Equal(md.GetConfState(), cs) {
		t.Fatalf("snapshot metadata = %v", md)
	}
	if _, err := s.CreateSnapshot(8, cs); !errors.Is(err, raft.ErrSnapOutOfDate) {
		t.Fatalf("second snapshot at 8: %v, want ErrSnapOutOfDate", err)
	}
	if err := s.Compact(9); err == nil {
		t.Fatal("compaction beyond the snapshot succeeded")
	}

	if err := s.Compact(6); err != nil {
		t.Fatalf("compact: %v", err)
	}
	checkCompacted(t, s, 6, ents, snap)
	if err := s.Compact(6); !errors.Is(err, raft.ErrCompacted) {
		t.Fatalf("compact again: %v, want ErrCompacted", err)
	}

	s = reopen(t, s, dir, nil)
	checkCompacted(t, s, 6, ents, snap)
	if _, cs2, _ := s.InitialState(); !proto.Equal(cs2, cs) {
		t.Fatalf("conf state after reopen = %v, want %v", cs2, cs)
	}

	if err := s.Compact(8); err != nil {
		t.Fatalf("compact to snapshot: %v", err)
	}
	s = reopen(t, s, dir, nil)
	checkCompacted(t, s, 8, ents, snap)
}

// checkCompacted asserts that the log was compacted at index c and that
// the snapshot is snap.
func checkCompacted(t *testing.T, s *Store, c uint64, ents []*raftpb.Entry, snap *raftpb.Snapshot) {
	t.Helper()
	checkLog(t, s, c+1, 10, ents[c:])
	if _, err := s.Entries(c, 11, 1<<30); !errors.Is(err, raft.ErrCompacted) {
		t.Fatalf("entries from %d: %v, want ErrCompacted", c, err)
	}
	if term, err := s.Term(c); err != nil || term != 1 {
		t.Fatalf("term(%d) = %d, %v; want 1", c, term, err)
	}
	got, err := s.Snapshot()
	if err != nil || !proto.Equal(got, snap) {
		t.Fatalf("snapshot = %v, %v; want %v", got, err, snap)
	}
}

func TestCreateSnapshotNeedsAppliedIndex(t *testing.T) {
	s := openMem(t)
	mustSave(t, s, hardState(1, 1, 5), entryRange(1, 1, 6), nil)
	commitRecords(t, s, 4, record("t1", OutcomeAborted))
	if _, err := s.CreateSnapshot(3, nil); err == nil {
		t.Fatal("snapshot below the applied index succeeded")
	}
	if _, err := s.CreateSnapshot(5, nil); err == nil {
		t.Fatal("snapshot above the applied index succeeded")
	}
	snap, err := s.CreateSnapshot(4, nil)
	if err != nil {
		t.Fatalf("create snapshot: %v", err)
	}
	kvs, err := DecodeState(snap.GetData())
	if err != nil {
		t.Fatalf("decode snapshot data: %v", err)
	}
	want := []KV{ // the record, its index entry, and the index's marker
		{Key: []byte("index-version"), Value: encodeUint64(indexVersion)},
		{Key: []byte("txn/t1"), Value: record("t1", OutcomeAborted).Marshal()},
		{Key: []byte("unf/t1"), Value: []byte{}},
	}
	if !slices.EqualFunc(kvs, want, kvEqual) {
		t.Fatalf("snapshot data = %q, want %q", kvs, want)
	}
}

func TestSaveInstallsSnapshot(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, nil)
	mustSave(t, s, hardState(1, 1, 3), entryRange(1, 1, 4), nil)
	commitRecords(t, s, 3, record("old", OutcomeCommitted))
	b := s.NewStateBatch()
	b.Set([]byte("meta/x"), []byte("old"))
	if err := s.CommitState(b, 4); err != nil {
		t.Fatalf("commit state: %v", err)
	}

	data, err := EncodeState([]KV{
		{Key: []byte("meta/y"), Value: []byte("new")},
		{Key: []byte("txn/a"), Value: record("a", OutcomeCommitted).Marshal()},
		{Key: []byte("txn/b"), Value: record("b", OutcomeAborted).Marshal()},
	})
	if err != nil {
		t.Fatalf("encode state: %v", err)
	}
	snap := &raftpb.Snapshot{
		Metadata: &raftpb.SnapshotMetadata{Index: new(uint64(20)), Term: new(uint64(3)),
			ConfState: &raftpb.ConfState{Voters: []uint64{1, 2}}},
		Data: data,
	}
	syncs := s.SyncCount()
	// The Ready that carries the snapshot may also carry entries after it.
	after := entryRange(3, 21, 23)
	mustSave(t, s, hardState(3, 2, 20), after, snap)
	if got := s.SyncCount() - syncs; got != 1 {
		t.Fatalf("snapshot install synced %d times, want 1", got)
	}
	checkInstalled(t, s, snap, after)

	s = reopen(t, s, dir, nil)
	checkInstalled(t, s, snap, after)
}

func checkInstalled(t *testing.T, s *Store, snap *raftpb.Snapshot, after []*raftpb.Entry) {
	t.Helper()
	checkLog(t, s, 21, 22, after)
	if got, _ := s.Snapshot(); !proto.Equal(got, snap) {
		t.Fatalf("snapshot = %v, want %v", got, snap)
	}
	if got := s.Applied(); got != 20 {
		t.Fatalf("applied = %d, want 20", got)
	}
	ids := recordIDs(allRecords(t, s))
	if !slices.Equal(ids, []string{"a", "b"}) {
		t.Fatalf("records = %q, want [a b]", ids)
	}
	if _, found, _ := s.GetState([]byte("meta/x")); found {
		t.Fatal("state key from before the snapshot survived")
	}
	if v, found, _ := s.GetState([]byte("meta/y")); !found || string(v) != "new" {
		t.Fatalf("meta/y = %q, %v; want new", v, found)
	}
}

func TestSaveRejectsBadSnapshot(t *testing.T) {
	s := openMem(t)
	mustSave(t, s, hardState(1, 1, 3), entryRange(1, 1, 4), nil)
	snap := &raftpb.Snapshot{
		Metadata: &raftpb.SnapshotMetadata{Index: new(uint64(9)), Term: new(uint64(2))},
		Data:     []byte{stateV1, 5},
	}
	if err := s.Save(nil, nil, snap); err == nil {
		t.Fatal("install of garbled snapshot data succeeded")
	}
	checkLog(t, s, 1, 3, entryRange(1, 1, 4))
}

func recordIDs(recs []*Record) []string {
	var ids []string
	for _, r := range recs {
		ids = append(ids, r.ID)
	}
	return ids
}

func kvEqual(a, b KV) bool {
	return string(a.Key) == string(b.Key) && string(a.Value) == string(b.Value)
}

func TestSnapshotWithoutCompactionSurvivesReopen(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, nil)
	ents := entryRange(1, 1, 6)
	mustSave(t, s, hardState(1, 1, 5), ents, nil)
	commitRecords(t, s, 3, record("t1", OutcomeCommitted))
	snap, err := s.CreateSnapshot(3, &raftpb.ConfState{Voters: []uint64{1}})
	if err != nil {
		t.Fatalf("create snapshot: %v", err)
	}
	s = reopen(t, s, dir, nil)
	checkLog(t, s, 1, 5, ents)
	if got, _ := s.Snapshot(); !proto.Equal(got, snap) {
		t.Fatalf("snapshot = %v, want %v", got, snap)
	}
}

func TestConcurrentUse(t *testing.T) {
	s := openMem(t)
	const n = 100
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := uint64(1); i <= n; i++ {
			if err := s.Save(hardState(1, 1, i), []*raftpb.Entry{entry(1, i)}, nil); err != nil {
				t.Errorf("save %d: %v", i, err)
				return
			}
		}
	})
	wg.Go(func() {
		for i := uint64(1); i <= n; i++ {
			b := s.NewStateBatch()
			b.PutRecord(record(fmt.Sprint(i), OutcomeCommitted))
			if err := s.CommitState(b, i); err != nil {
				t.Errorf("commit state %d: %v", i, err)
				return
			}
			if last, _ := s.LastIndex(); last > 0 {
				if _, err := s.Term(last); err != nil {
					t.Errorf("term(%d): %v", last, err)
				}
			}
			if _, _, err := s.GetRecord(fmt.Sprint(i)); err != nil {
				t.Errorf("get record: %v", err)
			}
		}
	})
	wg.Wait()
	checkLog(t, s, 1, n, entryRange(1, 1, n+1))
	if got := len(allRecords(t, s)); got != n {
		t.Fatalf("%d records, want %d", got, n)
	}
}

// TestSaveReadyCommitOnlyIsNotSynced: a Ready that only moves the commit
// index (raft's MustSync false) costs no fsync, yet is readable and survives
// a clean reopen; entries are always synced whatever the caller says.
func TestSaveReadyCommitOnlyIsNotSynced(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, nil)
	mustSave(t, s, hardState(1, 1, 0), entryRange(1, 1, 4), nil)
	before := s.SyncCount()
	if err := s.SaveReady(hardState(1, 1, 3), nil, nil, false); err != nil {
		t.Fatal(err)
	}
	if got := s.SyncCount(); got != before {
		t.Fatalf("commit-only Ready synced: %d -> %d", before, got)
	}
	checkHardState(t, s, hardState(1, 1, 3))
	if err := s.SaveReady(hardState(1, 1, 3), entryRange(1, 4, 5), nil, false); err != nil {
		t.Fatal(err)
	}
	if got := s.SyncCount(); got != before+1 {
		t.Fatalf("new entries were not synced: %d -> %d", before, got)
	}
	s = reopen(t, s, dir, nil)
	checkHardState(t, s, hardState(1, 1, 3))
	checkLog(t, s, 1, 4, entryRange(1, 1, 5))
}
