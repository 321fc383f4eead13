package coordinator_test

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

// BenchmarkCommit2PC commits 2-participant transactions one after another
// on a 3-node loopback cluster with real participant-SDK servers, and
// reports latency percentiles and fsyncs per transaction: on the leader,
// on all coordinators, and at the participants.
//
//	go test ./coordinator -run xxx -bench Commit2PC -benchtime 1000x
func BenchmarkCommit2PC(b *testing.B) {
	b.Run("classic", func(b *testing.B) { benchCommit(b, false) })
	b.Run("parallel", func(b *testing.B) { benchCommit(b, true) })
}

func benchCommit(b *testing.B, parallel bool) {
	e := newE2EWith(b, 2, parallel)
	lead := e.leader()
	syncs := func() (leader, all, parts uint64) {
		for id, m := range e.members {
			all += m.node.SyncCount()
			if id == lead {
				leader = m.node.SyncCount()
			}
		}
		for _, p := range e.parts {
			parts += p.log.SyncCount()
		}
		return
	}
	// Warm up connections before measuring.
	e.commit(e.txn(newTxnID(1<<30), "set w=0", "set w=0"))
	l0, a0, p0 := syncs()
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		start := time.Now()
		e.commit(e.txn(newTxnID(i), fmt.Sprintf("set k=%d", i), fmt.Sprintf("set k=%d", i)))
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	l1, a1, p1 := syncs()
	slices.Sort(lat)
	pct := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) }
	b.ReportMetric(pct(0.5), "p50-µs")
	b.ReportMetric(pct(0.99), "p99-µs")
	n := float64(b.N)
	b.ReportMetric(float64(l1-l0)/n, "leader-fsyncs/op")
	b.ReportMetric(float64(a1-a0)/n, "coord-fsyncs/op")
	b.ReportMetric(float64(p1-p0)/n, "participant-fsyncs/op")
}
