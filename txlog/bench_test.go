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

// BenchmarkGetRecordMiss measures looking up an id that has no record (a
// new transaction's first Decide or Staged) in a store whose 200k records
// have been flushed to a table.
func BenchmarkGetRecordMiss(b *testing.B) {
	s := openStore(b, b.TempDir(), nil)
	r := &Record{Outcome: OutcomeCommitted, Participants: []string{"p1:7000", "p2:7000"}, DecidedAt: 1}
	const n = 200_000
	for i := 0; i < n; i += 1000 {
		batch := s.NewStateBatch()
		for j := i; j < i+1000; j++ {
			r.ID = fmt.Sprintf("tx-%08d", j)
			batch.PutRecord(r)
		}
		if err := s.CommitState(batch, uint64(i/1000+1)); err != nil {
			b.Fatal(err)
		}
	}
	if err := s.db.Flush(); err != nil {
		b.Fatal(err)
	}
	var i int
	for b.Loop() {
		i++
		if _, ok, err := s.GetRecord(fmt.Sprintf("tx-%08d-new", i%n)); err != nil || ok {
			b.Fatalf("found %v, err %v", ok, err)
		}
	}
}

// BenchmarkMarshal measures encoding the records every transaction writes:
// a coordinator's finished Record and a participant's prepared PTxn.
func BenchmarkMarshal(b *testing.B) {
	parts := []string{"127.0.0.1:40001", "127.0.0.1:40002"}
	id := "0198d0c0-7c2e-7a51-8f3e-2b1d4c5e6f70"
	b.Run("record", func(b *testing.B) {
		r := &Record{ID: id, Outcome: OutcomeCommitted, Participants: parts, Acked: parts,
			DecidedAt: 1_764_000_000_000_000_000, Finished: true, FinishedAt: 1_764_000_000_100_000_000}
		for b.Loop() {
			_ = r.Marshal()
		}
	})
	b.Run("ptxn", func(b *testing.B) {
		t := &PTxn{ID: id, State: PStatePrepared, Participants: parts, Term: 3,
			PreparedAt: 1_764_000_000_000_000_000, PayloadDigest: bytes.Repeat([]byte{7}, 32)}
		for b.Loop() {
			_ = t.Marshal()
		}
	})
}
