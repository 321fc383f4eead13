package coordinator

import (
	"testing"

	"github.com/rs/zerolog"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/decree-tx/decree/internal/procstats"
	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
	"github.com/decree-tx/decree/txlog"
)

// BenchmarkApplyPipeline measures a replica applying transactions as a busy
// cluster commits them: each state batch holds the Decides of 64 new
// transactions and the Finished of the 64 decided two batches before, so
// that Finished reads records from the store, not from the batch. One op
// is one transaction (its Decide and its Finished, on one replica);
// cpu-ns/op counts the process's CPU, Pebble's flushes and compactions
// included, which is steadier than the time on a shared machine.
func BenchmarkApplyPipeline(b *testing.B) {
	store, err := txlog.Open(b.TempDir(), txlog.Identity{ClusterID: 1, NodeID: 1}, txlog.Options{Logger: zerolog.Nop()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { store.Close() })
	parts := []string{"127.0.0.1:40001", "127.0.0.1:40002"}
	const perBatch, lag = 64, 2
	ids := benchIDs(b, b.N+lag*perBatch)
	var index uint64
	b.ResetTimer()
	cpu0 := procstats.CPUSeconds()
	for n := 0; n < b.N+lag*perBatch; n += perBatch {
		batch := store.NewStateBatch()
		ap := newApplier(store, batch, 0)
		end := min(n+perBatch, len(ids))
		if n < b.N {
			for _, id := range ids[n:min(end, b.N)] {
				index++
				decide := decideCommand(id, decreev1.Outcome_OUTCOME_COMMITTED, parts, "", 1)
				if res, err := ap.apply(decide, index); err != nil || res.Err != nil {
					b.Fatalf("decide: %v %v", err, res.Err)
				}
			}
		}
		if done := n - lag*perBatch; done >= 0 {
			index++
			fin := &decreev1.Command{Kind: &decreev1.Command_Finished{Finished: &decreev1.Finished{TxnIds: ids[done:min(done+perBatch, b.N)], FinishedAt: 2}}}
			if res, err := ap.apply(fin, index); err != nil || res.Err != nil {
				b.Fatalf("finished: %v %v", err, res.Err)
			}
		}
		if err := store.CommitState(batch, index+1); err != nil {
			b.Fatal(err)
		}
		index++
	}
	b.ReportMetric((procstats.CPUSeconds()-cpu0)*1e9/float64(b.N), "cpu-ns/op")
}

// BenchmarkFollowerAppend measures what a follower's loop spends on the
// leader's appends besides persisting them: each op is one entry carrying
// the Decides of 64 new transactions, checked as it arrives (raftcheck.go)
// and applied. (Persisting is left out: on the fixture's crashable memory
// file system each sync copies the whole log.)
func BenchmarkFollowerAppend(b *testing.B) {
	f := newFollower(b, nil)
	parts := []string{"127.0.0.1:40001", "127.0.0.1:40002"}
	const perEntry = 64
	ids := benchIDs(b, b.N*perEntry)
	data := make([][]byte, b.N)
	for i := range data {
		batch := &decreev1.ProposalBatch{}
		for j, id := range ids[i*perEntry : (i+1)*perEntry] {
			batch.Proposals = append(batch.Proposals, &decreev1.Proposal{Id: uint64(j + 1), Proposer: fixLeader,
				Command: decideCommand(id, decreev1.Outcome_OUTCOME_COMMITTED, parts, "", 1)})
		}
		var err error
		if data[i], err = proto.Marshal(batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	cpu0 := procstats.CPUSeconds()
	for i := range b.N {
		m := f.appendNext(raftpb.EntryNormal, data[i])
		if !f.node.admit(m) {
			b.Fatal("append not admitted")
		}
		if err := f.node.apply(m.GetEntries()); err != nil {
			b.Fatal(err)
		}
		f.disk.last++
	}
	b.StopTimer()
	if f.node.applied != f.disk.last {
		b.Fatalf("applied %d, want %d", f.node.applied, f.disk.last)
	}
	b.ReportMetric((procstats.CPUSeconds()-cpu0)*1e9/float64(b.N), "cpu-ns/op")
}
