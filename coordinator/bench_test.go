package coordinator_test

import (
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/decree-tx/decree/coordinator"
)

// BenchmarkPropose measures replicated Decide proposals on a 3-node
// loopback cluster, from many concurrent proposers, and reports fsyncs per
// proposal and per raft Ready on the leader.
func BenchmarkPropose(b *testing.B) {
	for _, par := range []int{1, 64} {
		b.Run(fmt.Sprintf("proposers=%d", par), func(b *testing.B) {
			c := newBenchCluster(b)
			lead := c.leader()
			node := c.members[lead].node
			syncs0, readies0 := node.SyncCount(), node.ReadyCount()
			var seq atomic.Uint64
			b.SetParallelism(par)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					id := fmt.Sprintf("bench-%d", seq.Add(1))
					if _, err := c.propose(lead, decide(id, committed, "a:1", "b:1")); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			syncs, readies := node.SyncCount()-syncs0, node.ReadyCount()-readies0
			b.ReportMetric(float64(syncs)/float64(b.N), "fsyncs/op")
			b.ReportMetric(float64(syncs)/float64(max(readies, 1)), "fsyncs/ready")
		})
	}
}

func newBenchCluster(b *testing.B) *testCluster {
	return newTestCluster(b, 3, func(cfg *coordinator.Config) { cfg.Logger = cfg.Logger.Level(5) })
}
