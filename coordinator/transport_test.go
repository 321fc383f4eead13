package coordinator

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

type nopReporter struct{}

func (nopReporter) ReportUnreachable(uint64)                   {}
func (nopReporter) ReportSnapshot(uint64, raft.SnapshotStatus) {}

// TestPeerTransportRedialsADownPeerOften keeps sending to a peer that does
// not answer and counts the transport's connection attempts: they must
// stay about a second apart at most, so that a restarted follower hears
// its leader at once. With gRPC's default backoff (1 s growing by 1.6x)
// there are about four attempts in these four seconds.
func TestPeerTransportRedialsADownPeerOften(t *testing.T) {
	var dials atomic.Int64
	dial := func(context.Context, string) (net.Conn, error) {
		dials.Add(1)
		return nil, errors.New("peer is down")
	}
	tr := NewPeerTransport(PeerTransportConfig{ID: 1, Peers: map[uint64]string{1: "127.0.0.1:1", 2: "127.0.0.1:2"},
		Dial: dial, Reporter: nopReporter{}, Logger: zerolog.Nop()})
	defer tr.Close()
	hb := &raftpb.Message{Type: raftpb.MsgHeartbeat.Enum(), From: new(uint64(1)), To: new(uint64(2)), Term: new(uint64(1))}
	end := time.Now().Add(4 * time.Second)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for time.Now().Before(end) {
		tr.Send([]*raftpb.Message{hb})
		<-tick.C
	}
	if got := dials.Load(); got < 7 {
		t.Fatalf("%d connection attempts to a down peer in 4 s; a returning peer would wait seconds to be reached", got)
	}
}
