package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/decree-tx/decree/coordinator"

	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
)

// Values of --initial-cluster-state (etcd's flag of the same name).
const (
	clusterStateAuto     = ""
	clusterStateNew      = "new"
	clusterStateExisting = "existing"
)

// probeTimeout bounds the questions a node with an empty data dir asks its
// peers before it bootstraps.
const probeTimeout = 2 * time.Second

// checkNeverJoined is asked, with no --initial-cluster-state, by a node
// whose data dir holds no raft state, before it bootstraps a new group: it
// refuses (ErrLostState) if a peer's leader reports that this node's id has
// acknowledged log entries beyond the bootstrap ones, which means this node
// ran before and lost its disk.
//
// A brand-new cluster whose nodes start seconds apart still forms: a leader
// elected without this node reports Match 0 for it. The check has limits
// an operator must know (use --initial-cluster-state existing for
// certainty): a leader learns Match only from acknowledgements it received
// itself, so a leader elected after the wiped node stopped reports 0; a
// leader that is down or unreachable, or a wiped node that was the leader,
// is not asked; peers answer without authentication.
func checkNeverJoined(ctx context.Context, cfg coordinator.Config) error {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	bootstrapEntries := uint64(len(cfg.Peers))
	var (
		mu    sync.Mutex
		found error
		wg    sync.WaitGroup
	)
	for id, addr := range cfg.Peers {
		if id == cfg.ID {
			continue
		}
		wg.Go(func() {
			st, err := peerStatus(ctx, addr)
			if err != nil || st.GetClusterId() != cfg.ClusterID {
				return
			}
			for _, m := range st.GetMembers() {
				if m.GetId() == cfg.ID && m.GetMatch() > bootstrapEntries {
					mu.Lock()
					found = fmt.Errorf("leader %d (%s) reports that node %d acknowledged log index %d: %w",
						id, addr, cfg.ID, m.GetMatch(), coordinator.ErrLostState)
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	return found
}

func peerStatus(ctx context.Context, addr string) (*decreev1.StatusResponse, error) {
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return decreev1.NewAdminClient(conn).Status(ctx, &decreev1.StatusRequest{})
}
