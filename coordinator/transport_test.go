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

	"github.com/decree-tx/decree/internal/clock"
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
	tr := startPeerTransport(peerTransportConfig{ID: 1, Peers: map[uint64]string{1: "127.0.0.1:1", 2: "127.0.0.1:2"},
		Dial: dial, reporter: nopReporter{}, Logger: zerolog.Nop()})
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

type countingReporter struct{ unreachable atomic.Int64 }

func (r *countingReporter) ReportUnreachable(uint64)                   { r.unreachable.Add(1) }
func (r *countingReporter) ReportSnapshot(uint64, raft.SnapshotStatus) {}

// Between attempts to stream to a down peer the transport waits on its
// injected clock, with the backoff: at Rand 0 (no jitter) every wait is
// the full delay, doubling from minRedial to maxRedial.
func TestPeerTransportRedialBackoffOnInjectedClock(t *testing.T) {
	rep := &countingReporter{}
	clk := clock.NewFake(time.Unix(1000, 0))
	tr := startPeerTransport(peerTransportConfig{ID: 1, Peers: map[uint64]string{1: "127.0.0.1:1", 2: "127.0.0.1:2"},
		Dial:     func(context.Context, string) (net.Conn, error) { return nil, errors.New("peer is down") },
		reporter: rep, Logger: zerolog.Nop(), Clock: clk, Rand: func() float64 { return 0 }})
	defer tr.Close()
	waits := []time.Duration{minRedial, 2 * minRedial, 4 * minRedial, 8 * minRedial, 16 * minRedial, maxRedial, maxRedial}
	for i, d := range waits {
		waitFor(t, 10*time.Second, "the sender backing off", func() bool {
			return clk.Waiters() == 1 && rep.unreachable.Load() == int64(i+1)
		})
		clk.Advance(d - 1)
		if clk.Waiters() != 1 {
			t.Fatalf("wait %d ended before %v", i, d)
		}
		clk.Advance(1)
	}
	waitFor(t, 10*time.Second, "the last redial", func() bool { return rep.unreachable.Load() == int64(len(waits)+1) })
}
