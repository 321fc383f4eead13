package main

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// healthOf asks addr's gRPC health service about the server ("") and the
// Coordinator service; it returns one status if both agree.
func healthOf(addr string) (healthpb.HealthCheckResponse_ServingStatus, error) {
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	var got []healthpb.HealthCheckResponse_ServingStatus
	for _, svc := range []string{"", "decree.v1.Coordinator"} {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		r, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
		cancel()
		if err != nil {
			return 0, err
		}
		got = append(got, r.GetStatus())
	}
	if got[0] != got[1] {
		return 0, fmt.Errorf("server %v, Coordinator %v", got[0], got[1])
	}
	return got[0], nil
}

// A real node alone of three (no leader, no quorum) is NOT_SERVING; once
// its peers are up and a leader is elected it is SERVING. decree status
// against only that one node works; against only dead ones it fails.
func TestBinaryHealthFollowsTheLeader(t *testing.T) {
	bin := decreeBinary(t)
	c := &procCluster{t: t, bin: bin, addrs: map[uint64]string{}, dirs: map[uint64]string{},
		procs: map[uint64]*exec.Cmd{}, logs: map[uint64]string{}}
	var parts []string
	for i, a := range freeAddrs(t, 3) {
		id := uint64(i + 1)
		c.addrs[id] = a
		c.dirs[id] = filepath.Join(t.TempDir(), fmt.Sprint(id))
		parts = append(parts, fmt.Sprintf("%d=%s", id, a))
	}
	c.peers = strings.Join(parts, ",")
	t.Cleanup(func() {
		for id := range c.procs {
			c.kill(id)
		}
	})
	c.start(1)
	poll(t, 10*time.Second, "node 1 alone answers NOT_SERVING", func() bool {
		st, err := healthOf(c.addrs[1])
		return err == nil && st == healthpb.HealthCheckResponse_NOT_SERVING
	})
	// It stays so: a few election timeouts later there is still no leader.
	for range 3 {
		if st, err := healthOf(c.addrs[1]); err != nil || st != healthpb.HealthCheckResponse_NOT_SERVING {
			t.Fatalf("node without a quorum: %v %v", st, err)
		}
	}
	c.start(2)
	c.start(3)
	c.waitLeader(20*time.Second, 0)
	poll(t, 10*time.Second, "every node SERVING", func() bool {
		for id := range c.procs {
			if st, err := healthOf(c.addrs[id]); err != nil || st != healthpb.HealthCheckResponse_SERVING {
				return false
			}
		}
		return true
	})

	if out, err := exec.Command(bin, "status", "--endpoints", c.addrs[1]).Output(); err != nil {
		t.Fatalf("status of a live node: %v\n%s", err, out)
	}
	dead := freeAddrs(t, 2)
	out, err := exec.Command(bin, "status", "--endpoints", strings.Join(dead, ","), "--timeout", "300ms").Output()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() == 0 {
		t.Fatalf("status of dead endpoints: %v, want a non-zero exit\n%s", err, out)
	}
	if strings.Count(string(out), "unreachable") != 2 {
		t.Fatalf("status of dead endpoints printed:\n%s", out)
	}
}
