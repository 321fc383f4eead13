package coordinator_test

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"

	"github.com/decree-tx/decree/coordinator"
	"github.com/decree-tx/decree/internal/testpoll"
	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
	"github.com/decree-tx/decree/txlog"
)

// testCluster is an in-process coordinator cluster: real nodes, real Pebble
// stores in temp dirs, real gRPC on loopback.
type testCluster struct {
	t       testing.TB
	peers   map[uint64]string
	cid     uint64
	dirs    map[uint64]string
	tune    func(*coordinator.Config)
	dtune   func(*coordinator.DriverConfig)
	members map[uint64]*member
}

type member struct {
	node   *coordinator.Node
	driver *coordinator.Driver
	store  *txlog.Store
	srv    *grpc.Server
	calls  *callLog // the unary calls its server received
}

func newTestCluster(t testing.TB, size int, tune func(*coordinator.Config)) *testCluster {
	t.Helper()
	return newTestClusterWith(t, size, tune, nil)
}

func newTestClusterWith(t testing.TB, size int, tune func(*coordinator.Config), dtune func(*coordinator.DriverConfig)) *testCluster {
	t.Helper()
	c := &testCluster{t: t, peers: map[uint64]string{}, dirs: map[uint64]string{}, tune: tune, dtune: dtune, members: map[uint64]*member{}}
	listeners := map[uint64]net.Listener{}
	for id := uint64(1); id <= uint64(size); id++ {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		listeners[id] = lis
		c.peers[id] = lis.Addr().String()
		c.dirs[id] = t.TempDir()
	}
	c.cid = coordinator.ClusterID("test", c.peers)
	for id, lis := range listeners {
		c.startOn(id, lis)
	}
	t.Cleanup(c.stopAll)
	return c
}

func (c *testCluster) config(id uint64) coordinator.Config {
	cfg := coordinator.Config{
		ID: id, Peers: c.peers, ClusterID: c.cid,
		RaftTickInterval: 20 * time.Millisecond, ElectionTicks: 10, HeartbeatTicks: 1,
		Logger: zerolog.New(zerolog.NewTestWriter(c.t)).Level(zerolog.WarnLevel).With().Timestamp().Logger(),
	}
	if c.tune != nil {
		c.tune(&cfg)
	}
	return cfg
}

func (c *testCluster) startOn(id uint64, lis net.Listener) {
	c.t.Helper()
	cfg := c.config(id)
	store, err := txlog.Open(c.dirs[id], txlog.Identity{ClusterID: c.cid, NodeID: id}, txlog.Options{Logger: cfg.Logger})
	if err != nil {
		c.t.Fatalf("open store %d: %v", id, err)
	}
	node, err := coordinator.NewNode(cfg, store, nil)
	if err != nil {
		c.t.Fatalf("start node %d: %v", id, err)
	}
	dcfg := coordinator.DriverConfig{Logger: cfg.Logger, Core: coordinator.CoreConfig{PrepareTimeout: 2 * time.Second}}
	if c.dtune != nil {
		c.dtune(&dcfg)
	}
	drv, err := coordinator.NewDriver(node, dcfg)
	if err != nil {
		c.t.Fatalf("start driver %d: %v", id, err)
	}
	calls := &callLog{}
	srv := grpc.NewServer(append(coordinator.ServerOptions(coordinator.ServerLimits{}), grpc.ChainUnaryInterceptor(calls.record))...)
	node.Register(srv)
	drv.Register(srv)
	go srv.Serve(lis)
	c.members[id] = &member{node: node, driver: drv, store: store, srv: srv, calls: calls}
}

// restart starts a stopped node again on its old address and data dir.
func (c *testCluster) restart(id uint64) {
	c.t.Helper()
	var lis net.Listener
	var err error
	waitFor(c.t, 5*time.Second, fmt.Sprintf("re-listen on %s", c.peers[id]), func() bool {
		lis, err = net.Listen("tcp", c.peers[id])
		return err == nil
	})
	c.startOn(id, lis)
}

func (c *testCluster) stop(id uint64) {
	m, ok := c.members[id]
	if !ok {
		return
	}
	delete(c.members, id)
	m.srv.Stop()
	m.driver.Stop()
	if err := m.node.Stop(); err != nil {
		c.t.Errorf("node %d stopped with error: %v", id, err)
	}
	if err := m.store.Close(); err != nil {
		c.t.Errorf("close store %d: %v", id, err)
	}
}

func (c *testCluster) stopAll() {
	for id := range c.members {
		c.stop(id)
	}
}

// leader waits until the running members agree on one leader in one term.
func (c *testCluster) leader() uint64 {
	c.t.Helper()
	var lead uint64
	waitFor(c.t, 10*time.Second, "one agreed leader", func() bool {
		lead = 0
		var term uint64
		leaders := 0
		for _, m := range c.members {
			st := m.node.Status()
			if st.Role.String() == "StateLeader" {
				leaders++
				lead, term = st.ID, st.Term
			}
		}
		if leaders != 1 {
			return false
		}
		for _, m := range c.members {
			if st := m.node.Status(); st.Leader != lead || st.Term != term {
				return false
			}
		}
		return true
	})
	return lead
}

func (c *testCluster) propose(via uint64, cmd *decreev1.Command) (coordinator.Result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return c.members[via].node.Propose(ctx, cmd)
}

// waitApplied waits until every running member has applied index.
func (c *testCluster) waitApplied(index uint64) {
	c.t.Helper()
	waitFor(c.t, 10*time.Second, fmt.Sprintf("all members applied %d", index), func() bool {
		for _, m := range c.members {
			if m.node.Status().Applied < index {
				return false
			}
		}
		return true
	})
}

func decide(id string, o decreev1.Outcome, parts ...string) *decreev1.Command {
	return &decreev1.Command{Kind: &decreev1.Command_Decide{Decide: &decreev1.Decide{
		TxnId: id, Outcome: o, Participants: parts, DecidedAt: 1,
	}}}
}

func finished(ids ...string) *decreev1.Command {
	return &decreev1.Command{Kind: &decreev1.Command_Finished{Finished: &decreev1.Finished{TxnIds: ids, FinishedAt: 2}}}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	testpoll.Until(t, d, what, cond)
}
