package client

import (
	"context"
	"sync"

	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
)

// Role is a coordinator node's raft role as its Admin service reports it.
type Role int

// Roles. RoleUnreachable: the node did not answer.
const (
	RoleUnreachable Role = iota
	RoleFollower
	RoleCandidate
	RoleLeader
)

func (r Role) String() string {
	switch r {
	case RoleFollower:
		return "follower"
	case RoleCandidate:
		return "candidate"
	case RoleLeader:
		return "leader"
	default:
		return "unreachable"
	}
}

// NodeStatus is one node's view of the coordinator cluster.
type NodeStatus struct {
	Endpoint string
	ID       uint64
	Role     Role
	Term     uint64
	Leader   uint64 // the leader's id as this node knows it; 0 if none
	Commit   uint64
	Applied  uint64
	Err      error // why the node is unreachable
}

// Status asks every endpoint for its status, in parallel, each bounded by
// ctx. It never fails as a whole: unreachable nodes say so in their row.
func (c *Client) Status(ctx context.Context) []NodeStatus {
	out := make([]NodeStatus, len(c.endpoints))
	var wg sync.WaitGroup
	for i, ep := range c.endpoints {
		wg.Go(func() { out[i] = c.statusOf(ctx, ep) })
	}
	wg.Wait()
	return out
}

func (c *Client) statusOf(ctx context.Context, ep string) NodeStatus {
	ns := NodeStatus{Endpoint: ep}
	cc, err := c.conn(ep)
	if err != nil {
		ns.Err = err
		return ns
	}
	st, err := decreev1.NewAdminClient(cc).Status(ctx, &decreev1.StatusRequest{})
	if err != nil {
		ns.Err = err
		return ns
	}
	ns.ID, ns.Term, ns.Leader = st.GetId(), st.GetTerm(), st.GetLeader()
	ns.Commit, ns.Applied = st.GetCommit(), st.GetApplied()
	switch st.GetRole() {
	case decreev1.Role_ROLE_LEADER:
		ns.Role = RoleLeader
	case decreev1.Role_ROLE_CANDIDATE, decreev1.Role_ROLE_PRE_CANDIDATE:
		ns.Role = RoleCandidate
	default:
		ns.Role = RoleFollower
	}
	return ns
}

// Leader returns the status of the node every reachable node agrees leads,
// and false when there is no agreed leader.
func Leader(nodes []NodeStatus) (NodeStatus, bool) {
	var lead NodeStatus
	found := false
	for _, n := range nodes {
		if n.Err != nil {
			continue
		}
		if n.Role == RoleLeader {
			if found {
				return NodeStatus{}, false
			}
			lead, found = n, true
		}
	}
	if !found {
		return NodeStatus{}, false
	}
	for _, n := range nodes {
		if n.Err == nil && n.Leader != lead.ID {
			return NodeStatus{}, false
		}
	}
	return lead, true
}
