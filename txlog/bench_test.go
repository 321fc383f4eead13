package txlog

import (
	"bytes"
	"fmt"
	"testing"

	"go.etcd.io/raft/v3/raftpb"
)

// BenchmarkSave measures one synced Save of a single 256-byte entry, the
// cost of persisting a small Raft Ready.
func BenchmarkSave(b *testing.B) {
	s := openStore(b, b.TempDir(), nil)
	data := bytes.Repeat([]byte{'x'}, 256)
	syncs := s.SyncCount()
	var i uint64
	for b.Loop() {
		i++
		e := &raftpb.Entry{Term: new(uint64(1)), Index: new(i), Data: data}
		if err := s.Save(hardState(1, 1, i), []*raftpb.Entry{e}, nil); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(s.SyncCount()-syncs)/float64(i), "fsyncs/op")
}

// BenchmarkCommitState measures applying one record: an unsynced batch with
// the record and the applied index.
func BenchmarkCommitState(b *testing.B) {
	s := openStore(b, b.TempDir(), nil)
	r := &Record{Outcome: OutcomeCommitted, Participants: []string{"p1:7000", "p2:7000", "p3:7000"}, DecidedAt: 1}
	var i uint64
	for b.Loop() {
		i++
		r.ID = fmt.Sprintf("tx-%d", i)
		batch := s.NewStateBatch()
		batch.PutRecord(r)
		if err := s.CommitState(batch, i); err != nil {
			b.Fatal(err)
		}
	}
}
