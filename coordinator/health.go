package coordinator

import (
	"context"
	"time"

	"go.etcd.io/raft/v3"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
)

// HealthSetter is the part of a gRPC health server that ReportHealth needs.
type HealthSetter interface {
	SetServingStatus(service string, status healthpb.HealthCheckResponse_ServingStatus)
}

// healthServices are the names a node reports health for: the server as a
// whole, and the Coordinator service.
var healthServices = []string{"", decreev1.Coordinator_ServiceDesc.ServiceName}

// Serving says whether the node can serve clients now, and if not, why:
// it needs a leader it knows (a follower forwards to it). A node without
// one (an election, a lost quorum: with CheckQuorum a leader cut off from
// the majority steps down, and a follower cut off from its leader
// campaigns) cannot decide anything.
func (d *Driver) Serving() (bool, string) {
	select {
	case <-d.rlog.Done():
		return false, "the node has stopped"
	case <-d.stopc:
		return false, "the coordinator is stopping"
	default:
	}
	st := d.rlog.Status()
	switch {
	case st.Role == raft.StateCandidate || st.Role == raft.StatePreCandidate:
		return false, "an election is in progress"
	case st.Leader == 0:
		return false, "no leader is known"
	}
	if _, ok := d.rlog.PeerAddr(st.Leader); !ok {
		return false, "the leader is not a known peer"
	}
	return true, ""
}

// ReportHealth keeps h's statuses for the node and the Coordinator service
// current, checking every interval, until ctx ends. Changes are logged.
func (d *Driver) ReportHealth(ctx context.Context, h HealthSetter, every time.Duration) {
	tick, stop := d.cfg.Clock.NewTicker(every)
	defer stop()
	r := healthReport{why: "not checked yet"}
	for {
		r = d.reportHealth(h, r)
		select {
		case <-tick:
		case <-ctx.Done():
			return
		}
	}
}

// healthReport is what was last reported: serving or not, and why.
type healthReport struct {
	done    bool // anything was reported
	serving bool
	why     string
}

// reportHealth checks whether the node can serve and, if that changed
// since last (or nothing was reported yet), sets h's statuses and logs the
// change. It returns what is now reported.
func (d *Driver) reportHealth(h HealthSetter, last healthReport) healthReport {
	ok, why := d.Serving()
	if last.done && ok == last.serving {
		return last
	}
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if ok {
		st = healthpb.HealthCheckResponse_SERVING
	}
	for _, svc := range healthServices {
		h.SetServingStatus(svc, st)
	}
	d.log.Info().Bool("serving", ok).Str("reason", why).Str("was", last.why).Msg("health changed")
	return healthReport{done: true, serving: ok, why: why}
}
