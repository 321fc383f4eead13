package coordinator

import (
	"sync/atomic"
	"time"

	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
)

// NodeStats counts the background work of a node, for `decree status` and
// long-running measurements (make soak). Counters only grow.
type NodeStats struct {
	// SnapshotsSent and SnapshotBytesSent count state transfers streamed to
	// lagging peers; SnapshotSendTime is their total duration.
	SnapshotsSent     uint64
	SnapshotBytesSent uint64
	SnapshotSendTime  time.Duration
	// SnapshotsReceived and SnapshotBytesReceived count state transfers
	// installed from the leader; SnapshotReceiveTime is their total
	// duration, from the first chunk to the switch.
	SnapshotsReceived     uint64
	SnapshotBytesReceived uint64
	SnapshotReceiveTime   time.Duration
	// Collects counts applied Collect commands; CollectTime is the time
	// they spent on the apply path, CollectMaxTime the longest one.
	Collects         uint64
	CollectedRecords uint64
	CollectTime      time.Duration
	CollectMaxTime   time.Duration
	// LeaderChanges counts the times this node saw the group's leader
	// change (including to none).
	LeaderChanges uint64
	// RejectedMessages counts raft messages from peers dropped because no
	// correct peer could have sent them (see raftcheck.go).
	RejectedMessages uint64
}

// nodeStats is the concurrent form of NodeStats: each field is written by
// one owner (the raft loop, or a transfer goroutine) and read by anyone.
type nodeStats struct {
	snapshotsSent, snapshotBytesSent, snapshotSendNanos            atomic.Uint64
	snapshotsReceived, snapshotBytesReceived, snapshotReceiveNanos atomic.Uint64
	collects, collectedRecords, collectNanos, collectMaxNanos      atomic.Uint64
	leaderChanges                                                  atomic.Uint64
	rejectedMessages                                               atomic.Uint64
}

func (s *nodeStats) snapshot() NodeStats {
	return NodeStats{
		SnapshotsSent:         s.snapshotsSent.Load(),
		SnapshotBytesSent:     s.snapshotBytesSent.Load(),
		SnapshotSendTime:      time.Duration(s.snapshotSendNanos.Load()),
		SnapshotsReceived:     s.snapshotsReceived.Load(),
		SnapshotBytesReceived: s.snapshotBytesReceived.Load(),
		SnapshotReceiveTime:   time.Duration(s.snapshotReceiveNanos.Load()),
		Collects:              s.collects.Load(),
		CollectedRecords:      s.collectedRecords.Load(),
		CollectTime:           time.Duration(s.collectNanos.Load()),
		CollectMaxTime:        time.Duration(s.collectMaxNanos.Load()),
		LeaderChanges:         s.leaderChanges.Load(),
		RejectedMessages:      s.rejectedMessages.Load(),
	}
}

// Stats returns the node's counters so far.
func (n *Node) Stats() NodeStats { return n.stats.snapshot() }

// collected counts one applied Collect that deleted n records in d. A nil
// receiver (an applier outside a node) counts nothing.
func (s *nodeStats) collected(n int, d time.Duration) {
	if s == nil {
		return
	}
	s.collects.Add(1)
	s.collectedRecords.Add(uint64(n))
	s.collectNanos.Add(uint64(d))
	// Only the raft loop applies, so load-then-store cannot lose a maximum.
	if uint64(d) > s.collectMaxNanos.Load() {
		s.collectMaxNanos.Store(uint64(d))
	}
}

// nodeStatsToProto is s as the Admin status reports it.
func nodeStatsToProto(s NodeStats) *decreev1.NodeStats {
	return &decreev1.NodeStats{
		SnapshotsSent:          s.SnapshotsSent,
		SnapshotBytesSent:      s.SnapshotBytesSent,
		SnapshotSendSeconds:    s.SnapshotSendTime.Seconds(),
		SnapshotsReceived:      s.SnapshotsReceived,
		SnapshotBytesReceived:  s.SnapshotBytesReceived,
		SnapshotReceiveSeconds: s.SnapshotReceiveTime.Seconds(),
		Collects:               s.Collects,
		CollectedRecords:       s.CollectedRecords,
		CollectSeconds:         s.CollectTime.Seconds(),
		CollectMaxSeconds:      s.CollectMaxTime.Seconds(),
		LeaderChanges:          s.LeaderChanges,
	}
}
