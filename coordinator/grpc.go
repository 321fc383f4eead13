package coordinator

import (
	"context"
	"fmt"
	"time"

	"go.etcd.io/raft/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	"github.com/decree-tx/decree/internal/procstats"
	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
)

// ServerLimits bound what a node's gRPC server takes in. Zero values take
// the defaults.
type ServerLimits struct {
	// MaxBranches and MaxPayload are the driver's request limits (defaults
	// 64 and 1 MiB, as DriverConfig's): the largest Commit they allow sizes
	// the largest message accepted.
	MaxBranches int
	MaxPayload  int
	// MaxStreams caps the concurrent calls on one connection (default 1024).
	MaxStreams uint32
}

const (
	// branchOverhead bounds what a branch adds to its payload on the wire:
	// the participant address (validateAddr caps its host) and framing.
	branchOverhead = 1 << 10
	// requestOverhead bounds the rest of a request: id and framing.
	requestOverhead = 4 << 10
	// peerMessageBytes bounds one message of the raft peer stream. Raft
	// packs at most 1 MiB of entries in a MsgApp (MaxSizePerMsg; more only
	// for a single larger entry), and the sending side splits a batch of
	// messages to stay under this (splitRaftBatches). Snapshots travel in
	// chunks of their own, not as one message.
	peerMessageBytes = 16 << 20
)

func (l ServerLimits) withDefaults() ServerLimits {
	if l.MaxBranches <= 0 {
		l.MaxBranches = 64
	}
	if l.MaxPayload <= 0 {
		l.MaxPayload = 1 << 20
	}
	if l.MaxStreams == 0 {
		l.MaxStreams = 1024
	}
	return l
}

// MaxRecvBytes is the largest message the server accepts: a Commit of
// MaxBranches branches of MaxPayload bytes each, or a peer message,
// whichever is larger. gRPC refuses a larger one (ResourceExhausted) from
// its length prefix, before reading it.
func (l ServerLimits) MaxRecvBytes() int {
	l = l.withDefaults()
	client := l.MaxBranches*(l.MaxPayload+branchOverhead) + requestOverhead
	return max(client, peerMessageBytes)
}

// ServerOptions are the gRPC server options a coordinator node needs:
// messages bounded by l, a bounded number of concurrent calls per
// connection, and keepalive pings allowed so peers notice a dead or paused
// node. The number of connections is bounded by the listener (cmd/decree).
func ServerOptions(l ServerLimits) []grpc.ServerOption {
	l = l.withDefaults()
	return []grpc.ServerOption{
		grpc.MaxRecvMsgSize(l.MaxRecvBytes()),
		grpc.MaxConcurrentStreams(l.MaxStreams),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 10 * time.Second, Timeout: 5 * time.Second}),
	}
}

// Register adds the node's gRPC services (peer raft stream and admin) to s.
func (n *Node) Register(s *grpc.Server) {
	decreev1.RegisterRaftServer(s, &raftService{node: n, log: n.log.With().Str("component", "raftservice").Logger()})
	decreev1.RegisterAdminServer(s, &adminService{node: n})
}

type adminService struct {
	decreev1.UnimplementedAdminServer
	node *Node
}

func (a *adminService) Status(ctx context.Context, _ *decreev1.StatusRequest) (*decreev1.StatusResponse, error) {
	st := a.node.Status()
	count, oldest := a.phase2(ctx)
	return &decreev1.StatusResponse{
		Phase2Backlog:          count,
		Phase2OldestAgeSeconds: oldest.Seconds(),
		Id:                     st.ID,
		Role:                   roleToProto(st.Role),
		Term:                   st.Term,
		Leader:                 st.Leader,
		Commit:                 st.Commit,
		Applied:                st.Applied,
		ClusterId:              a.node.cfg.ClusterID,
		Fsyncs:                 a.node.SyncCount(),
		Readies:                a.node.ReadyCount(),
		Peers:                  a.node.cfg.Peers,
		CpuSeconds:             procstats.CPUSeconds(),
		RssBytes:               procstats.RSSBytes(),
		GoHeapBytes:            procstats.GoHeapBytes(),
		Stats:                  nodeStatsToProto(a.node.Stats()),
		Members:                membersToProto(a.node.Members()),
	}, nil
}

// phase2 summarizes the driver's phase-2 backlog. The status of a node
// whose driver is busy or gone still answers, without it.
func (a *adminService) phase2(ctx context.Context) (uint64, time.Duration) {
	f := a.node.phase2.Load()
	if f == nil {
		return 0, 0
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	backlog, err := (*f)(ctx)
	if err != nil || len(backlog) == 0 {
		return 0, 0
	}
	return uint64(len(backlog)), backlog[0].Age
}

func membersToProto(ms []Member) []*decreev1.MemberProgress {
	out := make([]*decreev1.MemberProgress, len(ms))
	for i, m := range ms {
		out[i] = &decreev1.MemberProgress{Id: m.ID, Match: m.Match}
	}
	return out
}

func roleToProto(s raft.StateType) decreev1.Role {
	switch s {
	case raft.StateLeader:
		return decreev1.Role_ROLE_LEADER
	case raft.StateCandidate:
		return decreev1.Role_ROLE_CANDIDATE
	case raft.StatePreCandidate:
		return decreev1.Role_ROLE_PRE_CANDIDATE
	default:
		return decreev1.Role_ROLE_FOLLOWER
	}
}

func invalidArgument(format string, a ...any) error {
	return status.Error(codes.InvalidArgument, fmt.Sprintf(format, a...))
}

func failedPrecondition(format string, a ...any) error {
	return status.Error(codes.FailedPrecondition, fmt.Sprintf(format, a...))
}

func unavailable(format string, a ...any) error {
	return status.Error(codes.Unavailable, fmt.Sprintf(format, a...))
}
