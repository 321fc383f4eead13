package client

import (
	"errors"
	"testing"
)

func TestLeaderNeedsAgreement(t *testing.T) {
	down := errors.New("down")
	for name, tc := range map[string]struct {
		nodes []NodeStatus
		want  uint64
	}{
		"agreed":             {[]NodeStatus{{ID: 1, Role: RoleLeader, Leader: 1}, {ID: 2, Role: RoleFollower, Leader: 1}, {Err: down}}, 1},
		"no leader":          {[]NodeStatus{{ID: 1, Role: RoleFollower}, {ID: 2, Role: RoleCandidate}}, 0},
		"two leaders":        {[]NodeStatus{{ID: 1, Role: RoleLeader, Leader: 1}, {ID: 2, Role: RoleLeader, Leader: 2}}, 0},
		"follower disagrees": {[]NodeStatus{{ID: 1, Role: RoleLeader, Leader: 1}, {ID: 2, Role: RoleFollower, Leader: 3}}, 0},
	} {
		got, ok := Leader(tc.nodes)
		if (tc.want != 0) != ok || (ok && got.ID != tc.want) {
			t.Errorf("%s: Leader = %+v, %v; want %d", name, got, ok, tc.want)
		}
	}
	if RoleLeader.String() != "leader" || RoleUnreachable.String() != "unreachable" {
		t.Error("role names")
	}
}
