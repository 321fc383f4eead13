package txlog

import (
	"errors"
	"fmt"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

var testID = Identity{ClusterID: 0xc1, NodeID: 1}

// openStore opens a store in dir on fsys (nil for the real filesystem) and
// closes it when the test ends, unless the test closed it already.
func openStore(t testing.TB, dir string, fsys vfs.FS) *Store {
	t.Helper()
	s, err := Open(dir, testID, Options{FS: fsys})
	if err != nil {
		t.Fatalf("open %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil && !errors.Is(err, errClosed) {
			t.Errorf("close: %v", err)
		}
	})
	return s
}

// openMem opens a store on a fresh in-memory filesystem.
func openMem(t testing.TB) *Store {
	t.Helper()
	return openStore(t, "db", vfs.NewMem())
}

// reopen closes s and opens dir again.
func reopen(t testing.TB, s *Store, dir string, fsys vfs.FS) *Store {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	return openStore(t, dir, fsys)
}

func entry(term, index uint64) *raftpb.Entry {
	return &raftpb.Entry{
		Term:  new(term),
		Index: new(index),
		Type:  raftpb.EntryNormal.Enum(),
		Data:  fmt.Appendf(nil, "entry %d term %d", index, term),
	}
}

func entryRange(term, lo, hi uint64) []*raftpb.Entry {
	var ents []*raftpb.Entry
	for i := lo; i < hi; i++ {
		ents = append(ents, entry(term, i))
	}
	return ents
}

func hardState(term, vote, commit uint64) *raftpb.HardState {
	return &raftpb.HardState{Term: new(term), Vote: new(vote), Commit: new(commit)}
}

func mustSave(t testing.TB, s *Store, hs *raftpb.HardState, ents []*raftpb.Entry, snap *raftpb.Snapshot) {
	t.Helper()
	if err := s.Save(hs, ents, snap); err != nil {
		t.Fatalf("save: %v", err)
	}
}

// checkLog asserts the store's log bounds and that it holds want.
func checkLog(t testing.TB, s *Store, first, last uint64, want []*raftpb.Entry) {
	t.Helper()
	gotFirst, _ := s.FirstIndex()
	gotLast, _ := s.LastIndex()
	if gotFirst != first || gotLast != last {
		t.Fatalf("log bounds = [%d, %d], want [%d, %d]", gotFirst, gotLast, first, last)
	}
	if len(want) == 0 {
		return
	}
	got, err := s.Entries(want[0].GetIndex(), want[len(want)-1].GetIndex()+1, 1<<30)
	if err != nil {
		t.Fatalf("entries: %v", err)
	}
	checkEntries(t, got, want)
}

func checkEntries(t testing.TB, got, want []*raftpb.Entry) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d entries, want %d", len(got), len(want))
	}
	for i := range want {
		if !proto.Equal(got[i], want[i]) {
			t.Fatalf("entry %d = %v, want %v", i, got[i], want[i])
		}
	}
}

func checkHardState(t testing.TB, s *Store, want *raftpb.HardState) {
	t.Helper()
	hs, _, err := s.InitialState()
	if err != nil {
		t.Fatalf("initial state: %v", err)
	}
	if !proto.Equal(hs, want) {
		t.Fatalf("hard state = %v, want %v", hs, want)
	}
}

// commitRecords commits records at applied index applied.
func commitRecords(t testing.TB, s *Store, applied uint64, recs ...*Record) {
	t.Helper()
	b := s.NewStateBatch()
	for _, r := range recs {
		b.PutRecord(r)
	}
	if err := s.CommitState(b, applied); err != nil {
		t.Fatalf("commit state at %d: %v", applied, err)
	}
}

// allRecords returns the store's records in scan order.
func allRecords(t testing.TB, s *Store) []*Record {
	t.Helper()
	var recs []*Record
	if err := s.ScanRecords(func(r *Record) bool {
		recs = append(recs, r)
		return true
	}); err != nil {
		t.Fatalf("scan records: %v", err)
	}
	return recs
}

func record(id string, o Outcome) *Record {
	return &Record{ID: id, Outcome: o, Participants: []string{"p1", "p2"}, DecidedAt: 42}
}
