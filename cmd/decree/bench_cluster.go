package main

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/decree-tx/decree/coordinator"
	"github.com/decree-tx/decree/participant"
	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
	"github.com/decree-tx/decree/txlog"
)

// embeddedCluster is a 3-node coordinator cluster in this process, wired
// like `decree start`: its own Pebble store, node, driver and gRPC server
// on 127.0.0.1 per node.
type embeddedCluster struct {
	endpoints []string
	members   []*embeddedNode
}

type embeddedNode struct {
	store *txlog.Store
	node  *coordinator.Node
	drv   *coordinator.Driver
	srv   *grpc.Server
}

const embeddedSize = 3

func startEmbeddedCluster(dir string, parallel bool, logger zerolog.Logger) (_ *embeddedCluster, err error) {
	c := &embeddedCluster{}
	defer func() {
		if err != nil {
			c.stop()
		}
	}()
	peers := map[uint64]string{}
	listeners := map[uint64]net.Listener{}
	defer func() {
		for _, l := range listeners { // the ones no server took over
			l.Close()
		}
	}()
	for id := uint64(1); id <= embeddedSize; id++ {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("listen on 127.0.0.1: %w", err)
		}
		listeners[id] = lis
		peers[id] = lis.Addr().String()
		c.endpoints = append(c.endpoints, peers[id])
	}
	cid := coordinator.ClusterID("decree-bench", peers)
	for id := uint64(1); id <= embeddedSize; id++ {
		cfg := coordinator.Config{ID: id, Peers: peers, ClusterID: cid, Logger: logger, Driver: coordinator.DriverConfig{
			Core:        coordinator.CoreConfig{ParallelCommit: parallel},
			MaxBranches: benchMaxParticipants, MaxPayload: benchMaxPayload,
		}}
		ndir := filepath.Join(dir, strconv.FormatUint(id, 10))
		if err := os.MkdirAll(ndir, 0o755); err != nil {
			return nil, fmt.Errorf("create data dir: %w", err)
		}
		m := &embeddedNode{}
		m.store, err = txlog.Open(ndir, txlog.Identity{ClusterID: cid, NodeID: id},
			txlog.Options{Logger: logger.With().Str("component", "txlog").Logger()})
		if err != nil {
			return nil, fmt.Errorf("open store of node %d: %w", id, err)
		}
		c.members = append(c.members, m)
		coord, err := coordinator.New(cfg, m.store)
		if err != nil {
			return nil, fmt.Errorf("start node %d: %w", id, err)
		}
		m.node, m.drv = coord.Node, coord.Driver
		m.srv = grpc.NewServer(coordinator.ServerOptions(coordinator.ServerLimits{MaxBranches: benchMaxParticipants, MaxPayload: benchMaxPayload})...)
		coord.Register(m.srv)
		lis := listeners[id]
		delete(listeners, id)
		go m.srv.Serve(lis)
	}
	return c, nil
}

// stop stops every member in the order `decree start` does.
func (c *embeddedCluster) stop() error {
	var errs []error
	for _, m := range c.members {
		if m.srv != nil {
			m.srv.Stop()
		}
		if m.drv != nil {
			m.drv.Stop()
		}
		if m.node != nil {
			if err := m.node.Stop(); err != nil {
				errs = append(errs, fmt.Errorf("node %d: %w", m.node.ID(), err))
			}
		}
		if err := m.store.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close store: %w", err))
		}
	}
	c.members = nil
	return errors.Join(errs...)
}

// nullResource is a participant that takes nothing and changes nothing: it
// votes YES, or NO for the share abortRatio of transactions. Only the SDK's
// durable vote and outcome records are written, so what is measured is the
// protocol's own cost.
type nullResource struct{ abortRatio float64 }

func (r nullResource) Prepare(_ context.Context, txn participant.Txn, _ participant.Writer) (participant.Vote, string, error) {
	if votesNo(txn.ID, r.abortRatio) {
		return participant.VoteNo, "bench: refused by --abort-ratio", nil
	}
	return participant.VoteYes, "", nil
}

func (nullResource) Commit(context.Context, string, participant.Writer) error { return nil }
func (nullResource) Abort(context.Context, string, participant.Writer) error  { return nil }

// votesNo decides by a hash of the transaction id, so a repeated Prepare,
// and every participant of the transaction, answers the same: the share
// ratio of transactions, and of prepares, votes NO.
func votesNo(id string, ratio float64) bool {
	switch {
	case ratio <= 0:
		return false
	case ratio >= 1:
		return true
	}
	h := fnv.New64a()
	h.Write([]byte(id))
	return float64(h.Sum64()>>11)/(1<<53) < ratio
}

// nullParticipants are participant-SDK servers of nullResource on
// 127.0.0.1, each with its own participant log.
type nullParticipants struct {
	addrs   []string
	members []*nullParticipant
}

type nullParticipant struct {
	log *txlog.ParticipantLog
	p   *participant.Participant
	srv *grpc.Server
}

func startNullParticipants(ctx context.Context, dir string, k int, coordinators []string, abortRatio float64, logger zerolog.Logger) (_ *nullParticipants, err error) {
	n := &nullParticipants{}
	defer func() {
		if err != nil {
			n.stop()
		}
	}()
	for i := range k {
		pdir := filepath.Join(dir, strconv.Itoa(i+1))
		if err := os.MkdirAll(pdir, 0o755); err != nil {
			return nil, fmt.Errorf("create participant dir: %w", err)
		}
		plog, err := txlog.OpenParticipantLog(pdir, txlog.Options{Logger: logger.With().Str("component", "plog").Logger()})
		if err != nil {
			return nil, fmt.Errorf("open participant log: %w", err)
		}
		m := &nullParticipant{log: plog}
		n.members = append(n.members, m)
		m.p, err = participant.New(nullResource{abortRatio: abortRatio}, participant.Options{
			Log: plog, Coordinators: coordinators, MaxPayload: benchMaxPayload,
			Logger: logger.With().Int("participant", i+1).Logger(),
		})
		if err != nil {
			return nil, err
		}
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("listen on 127.0.0.1: %w", err)
		}
		m.srv = grpc.NewServer()
		m.p.Register(m.srv)
		m.p.Start(ctx)
		go m.srv.Serve(lis)
		n.addrs = append(n.addrs, lis.Addr().String())
	}
	return n, nil
}

// syncs is how many synced batches the participant logs have written.
func (n *nullParticipants) syncs() (s uint64) {
	for _, m := range n.members {
		s += m.log.SyncCount()
	}
	return s
}

func (n *nullParticipants) stop() error {
	var errs []error
	for _, m := range n.members {
		if m.srv != nil {
			m.srv.Stop()
		}
		if m.p != nil {
			m.p.Stop()
		}
		if err := m.log.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close participant log: %w", err))
		}
	}
	n.members = nil
	return errors.Join(errs...)
}

// adminConns read the Admin status (fsyncs, CPU) of every coordinator.
type adminConns struct {
	endpoints []string
	conns     []*grpc.ClientConn
}

// adminConnectParams reconnect to a restarted node within a second: with
// gRPC's default back-off (up to 2 minutes) a node down for a minute was
// not asked again until long after it was back.
var adminConnectParams = grpc.ConnectParams{
	Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
	MinConnectTimeout: 2 * time.Second,
}

func dialAdmin(endpoints []string) (*adminConns, error) {
	a := &adminConns{endpoints: endpoints}
	for _, ep := range endpoints {
		cc, err := grpc.NewClient("passthrough:///"+ep, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithConnectParams(adminConnectParams))
		if err != nil {
			a.close()
			return nil, fmt.Errorf("dial %s: %w", ep, err)
		}
		a.conns = append(a.conns, cc)
	}
	return a, nil
}

// read asks every node in parallel; a node that does not answer is left
// out of the measurement (ok false).
func (a *adminConns) read(ctx context.Context) []nodeCounters {
	out := make([]nodeCounters, len(a.conns))
	for i, st := range a.statuses(ctx, 2*time.Second) {
		out[i].endpoint = a.endpoints[i]
		if st != nil {
			out[i] = nodeCounters{endpoint: a.endpoints[i], id: st.GetId(), fsyncs: st.GetFsyncs(), cpu: st.GetCpuSeconds(), ok: true}
		}
	}
	return out
}

// statuses asks every node for its status in parallel, each within
// timeout; the entry of a node that does not answer is nil.
func (a *adminConns) statuses(ctx context.Context, timeout time.Duration) []*decreev1.StatusResponse {
	out := make([]*decreev1.StatusResponse, len(a.conns))
	var wg sync.WaitGroup
	for i, cc := range a.conns {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			if st, err := decreev1.NewAdminClient(cc).Status(ctx, &decreev1.StatusRequest{}); err == nil {
				out[i] = st
			}
		})
	}
	wg.Wait()
	return out
}

func (a *adminConns) close() {
	for _, cc := range a.conns {
		cc.Close()
	}
}
