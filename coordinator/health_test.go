package coordinator_test

import (
	"context"
	"sync"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

type fakeHealth struct {
	mu sync.Mutex
	st map[string]healthpb.HealthCheckResponse_ServingStatus
}

func (f *fakeHealth) SetServingStatus(svc string, st healthpb.HealthCheckResponse_ServingStatus) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.st[svc] = st
}

// is reports whether both the server and the Coordinator service are st.
func (f *fakeHealth) is(st healthpb.HealthCheckResponse_ServingStatus) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.st[""] == st && f.st["decree.v1.Coordinator"] == st
}

// A node reports NOT_SERVING while it knows no leader (its peers are down,
// so there is no quorum), and SERVING once it has one again.
func TestHealthFollowsLeaderAndQuorum(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	lead := c.leader()
	watched := lead%3 + 1 // a follower
	h := &fakeHealth{st: map[string]healthpb.HealthCheckResponse_ServingStatus{}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	drv := c.members[watched].driver
	go func() { defer close(done); drv.ReportHealth(ctx, h, 10*time.Millisecond) }()
	defer func() { cancel(); <-done }()
	waitFor(t, 5*time.Second, "serving with a leader", func() bool { return h.is(healthpb.HealthCheckResponse_SERVING) })

	var others []uint64
	for id := range c.members {
		if id != watched {
			others = append(others, id)
		}
	}
	for _, id := range others {
		c.stop(id)
	}
	waitFor(t, 10*time.Second, "not serving without a quorum", func() bool { return h.is(healthpb.HealthCheckResponse_NOT_SERVING) })
	if ok, why := drv.Serving(); ok || why == "" {
		t.Fatalf("Serving() = %v %q without a quorum", ok, why)
	}
	c.restart(others[0])
	waitFor(t, 10*time.Second, "serving again", func() bool { return h.is(healthpb.HealthCheckResponse_SERVING) })
}
