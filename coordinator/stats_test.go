package coordinator

import (
	"testing"
	"time"
)

func TestNodeStatsToProto(t *testing.T) {
	p := nodeStatsToProto(NodeStats{
		SnapshotsSent: 1, SnapshotBytesSent: 2, SnapshotSendTime: 3 * time.Second,
		SnapshotsReceived: 4, SnapshotBytesReceived: 5, SnapshotReceiveTime: 6 * time.Second,
		Collects: 7, CollectedRecords: 8, CollectTime: 9 * time.Second, CollectMaxTime: 10 * time.Second,
		LeaderChanges: 11,
	})
	got := []float64{float64(p.GetSnapshotsSent()), float64(p.GetSnapshotBytesSent()), p.GetSnapshotSendSeconds(),
		float64(p.GetSnapshotsReceived()), float64(p.GetSnapshotBytesReceived()), p.GetSnapshotReceiveSeconds(),
		float64(p.GetCollects()), float64(p.GetCollectedRecords()), p.GetCollectSeconds(), p.GetCollectMaxSeconds(),
		float64(p.GetLeaderChanges())}
	for i, v := range got {
		if v != float64(i+1) {
			t.Fatalf("field %d is %v, want %d: %v", i, v, i+1, p)
		}
	}
}
