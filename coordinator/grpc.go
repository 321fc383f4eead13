package coordinator

import (
	"context"
	"fmt"
	"net"
	"time"

	"go.etcd.io/raft/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
)

// maxMessageBytes bounds gRPC messages; a raft snapshot of the (GC-bounded)
// transaction table travels as one message.
const maxMessageBytes = 256 << 20

// ServerOptions are the gRPC server options a coordinator node needs: large
// enough messages for snapshots, and keepalive pings allowed so peers
// notice a dead or paused node.
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.MaxRecvMsgSize(maxMessageBytes),
		grpc.MaxSendMsgSize(maxMessageBytes),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 10 * time.Second, Timeout: 5 * time.Second}),
	}
}

func peerDialOptions(dial func(context.Context, string) (net.Conn, error)) []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(dial),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(maxMessageBytes), grpc.MaxCallRecvMsgSize(maxMessageBytes)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 10 * time.Second, Timeout: 5 * time.Second, PermitWithoutStream: true}),
	}
}

// Register adds the node's gRPC services (peer raft stream and admin) to s.
func (n *Node) Register(s *grpc.Server) {
	decreev1.RegisterRaftServer(s, &RaftService{node: n, log: n.log.With().Str("component", "raftservice").Logger()})
	decreev1.RegisterAdminServer(s, &adminService{node: n})
}

type adminService struct {
	decreev1.UnimplementedAdminServer
	node *Node
}

func (a *adminService) Status(context.Context, *decreev1.StatusRequest) (*decreev1.StatusResponse, error) {
	st := a.node.Status()
	return &decreev1.StatusResponse{
		Id:          st.ID,
		Role:        roleToProto(st.Role),
		Term:        st.Term,
		Leader:      st.Leader,
		Commit:      st.Commit,
		Applied:     st.Applied,
		ClusterId:   a.node.cfg.ClusterID,
		Fsyncs:      a.node.SyncCount(),
		Readies:     a.node.ReadyCount(),
		Peers:       a.node.cfg.Peers,
		CpuSeconds:  processCPUSeconds(),
		RssBytes:    processRSSBytes(),
		GoHeapBytes: goHeapBytes(),
		Stats:       nodeStatsToProto(a.node.Stats()),
	}, nil
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
