package main

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// startRefused runs node id with extra flags and expects it to exit with
// status 1 and the lost-state message; it kills the node if it serves.
func (c *procCluster) startRefused(id uint64, extra ...string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, c.bin, c.startArgs(id, extra...)...).CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || ctx.Err() != nil || exit.ExitCode() != 1 {
		c.t.Fatalf("node %d with an empty data dir %v: err %v, want exit status 1\n%s", id, extra, err, tail(string(out), 3000))
	}
	for _, want := range []string{"holds no raft state", "remove it from the cluster and add a new member"} {
		if !strings.Contains(string(out), want) {
			c.t.Fatalf("node %d refused without saying %q:\n%s", id, want, tail(string(out), 3000))
		}
	}
}

// leaderMatch is what the leader reports node id has acknowledged.
func (c *procCluster) leaderMatch(id uint64) uint64 {
	lead := c.agreedLeader()
	for _, m := range c.statuses()[lead].GetMembers() {
		if m.GetId() == id {
			return m.GetMatch()
		}
	}
	return 0
}

// TestBinaryWipedNodeRefuses: a follower whose data dir was wiped does not
// bootstrap a new group when restarted with the same flags, nor with
// --initial-cluster-state existing; it says how to replace it.
func TestBinaryWipedNodeRefuses(t *testing.T) {
	c := newProcCluster(t, 3)
	lead := c.waitLeader(20*time.Second, 0)
	victim := lead%3 + 1
	poll(t, 10*time.Second, "leader sees the victim acknowledge entries", func() bool { return c.leaderMatch(victim) > 3 })
	c.kill(victim)
	if err := os.RemoveAll(c.dirs[victim]); err != nil {
		t.Fatal(err)
	}
	c.startRefused(victim)
	c.startRefused(victim, "--initial-cluster-state", "existing")
}

// TestBinaryLateNodeBootstraps: a new cluster whose third node starts after
// the other two elected a leader and committed entries still forms.
func TestBinaryLateNodeBootstraps(t *testing.T) {
	c := newIdleProcCluster(t, 3)
	c.start(1)
	c.start(2)
	c.waitLeader(20*time.Second, 0)
	c.start(3)
	poll(t, 20*time.Second, "node 3 joins", func() bool {
		st := c.statuses()[3]
		return c.agreedLeader() != 0 && st.GetApplied() > 3
	})
}
