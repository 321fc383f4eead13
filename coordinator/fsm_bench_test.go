package coordinator

import (
	"testing"

	"github.com/google/uuid"
	"github.com/rs/zerolog"

	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
	"github.com/decree-tx/decree/txlog"
)

// BenchmarkApply measures the state machine applying a transaction's
// commands on every replica: its Decide and its Finished, 64 transactions
// to a state batch (a busy raft Ready), on a real store. One op is one
// transaction.
func BenchmarkApply(b *testing.B) {
	store, err := txlog.Open(b.TempDir(), txlog.Identity{ClusterID: 1, NodeID: 1}, txlog.Options{Logger: zerolog.Nop()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { store.Close() })
	parts := []string{"p1:7000", "p2:7000"}
	ids := benchIDs(b, b.N) // every transaction new, as in production
	const perBatch = 64
	var index uint64
	var n int
	b.ResetTimer()
	for n < b.N {
		batch := store.NewStateBatch()
		ap := newApplier(store, batch, 0)
		start := n
		for ; n < b.N && n-start < perBatch; n++ {
			index++
			decide := decideCommand(ids[n], decreev1.Outcome_OUTCOME_COMMITTED, parts, "", 1)
			if res, err := ap.apply(decide, index); err != nil || res.Err != nil {
				b.Fatalf("decide: %v %v", err, res.Err)
			}
		}
		index++
		fin := &decreev1.Command{Kind: &decreev1.Command_Finished{Finished: &decreev1.Finished{TxnIds: ids[start:n], FinishedAt: 2}}}
		if res, err := ap.apply(fin, index); err != nil || res.Err != nil {
			b.Fatalf("finished: %v %v", err, res.Err)
		}
		if err := store.CommitState(batch, index); err != nil {
			b.Fatal(err)
		}
	}
}

// benchIDs mints n distinct UUIDv7 transaction ids.
func benchIDs(b *testing.B, n int) []string {
	ids := make([]string, n)
	for i := range ids {
		u, err := uuid.NewV7()
		if err != nil {
			b.Fatal(err)
		}
		ids[i] = u.String()
	}
	return ids
}
