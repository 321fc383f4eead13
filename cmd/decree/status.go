package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
)

// statusRow is one line of `decree status`; the JSON keys are a contract.
type statusRow struct {
	ID       uint64 `json:"id"`
	Endpoint string `json:"endpoint"`
	Role     string `json:"role"`
	Term     uint64 `json:"term"`
	Leader   uint64 `json:"leader"`
	Commit   uint64 `json:"commit"`
	Applied  uint64 `json:"applied"`
	// RSSBytes and GoHeapBytes are the node process's resident memory and
	// live Go heap.
	RSSBytes    uint64 `json:"rss_bytes"`
	GoHeapBytes uint64 `json:"go_heap_bytes"`
	// Phase2Backlog counts the decided transactions whose decision has not
	// reached every participant (the leader's; 0 elsewhere), and
	// Phase2OldestAgeSeconds is how long the oldest has waited.
	Phase2Backlog          uint64     `json:"phase2_backlog"`
	Phase2OldestAgeSeconds float64    `json:"phase2_oldest_age_s"`
	Stats                  *nodeStats `json:"stats,omitempty"`
	Error                  string     `json:"error,omitempty"`
}

// nodeStats are a node's background-work counters (decreev1.NodeStats),
// with JSON keys of their own: a contract, like statusRow's.
type nodeStats struct {
	SnapshotsSent          uint64  `json:"snapshots_sent"`
	SnapshotBytesSent      uint64  `json:"snapshot_bytes_sent"`
	SnapshotSendSeconds    float64 `json:"snapshot_send_s"`
	SnapshotsReceived      uint64  `json:"snapshots_received"`
	SnapshotBytesReceived  uint64  `json:"snapshot_bytes_received"`
	SnapshotReceiveSeconds float64 `json:"snapshot_receive_s"`
	Collects               uint64  `json:"collects"`
	CollectedRecords       uint64  `json:"collected_records"`
	CollectSeconds         float64 `json:"collect_s"`
	CollectMaxSeconds      float64 `json:"collect_max_s"`
	LeaderChanges          uint64  `json:"leader_changes"`
}

func nodeStatsFromProto(p *decreev1.NodeStats) nodeStats {
	return nodeStats{
		SnapshotsSent: p.GetSnapshotsSent(), SnapshotBytesSent: p.GetSnapshotBytesSent(),
		SnapshotSendSeconds: p.GetSnapshotSendSeconds(),
		SnapshotsReceived:   p.GetSnapshotsReceived(), SnapshotBytesReceived: p.GetSnapshotBytesReceived(),
		SnapshotReceiveSeconds: p.GetSnapshotReceiveSeconds(),
		Collects:               p.GetCollects(), CollectedRecords: p.GetCollectedRecords(),
		CollectSeconds: p.GetCollectSeconds(), CollectMaxSeconds: p.GetCollectMaxSeconds(),
		LeaderChanges: p.GetLeaderChanges(),
	}
}

func runStatus(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	endpoints := fs.String("endpoints", "", "comma-separated host:port of the nodes")
	asJSON := fs.Bool("json", false, "print a JSON array instead of a table")
	timeout := fs.Duration("timeout", 2*time.Second, "per-endpoint timeout")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	eps, err := splitEndpoints(*endpoints)
	if err != nil {
		return err
	}
	rows := queryStatus(eps, *timeout)
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		err = enc.Encode(rows)
	} else {
		err = printStatusTable(stdout, rows)
	}
	if err != nil {
		return err
	}
	return noneAnswered(rows)
}

// noneAnswered fails the command when no endpoint answered: a script must
// not read that as a healthy cluster. Some answering is a (partial) status.
func noneAnswered(rows []statusRow) error {
	for _, r := range rows {
		if r.Error == "" {
			return nil
		}
	}
	return fmt.Errorf("none of the %d endpoints answered (first error: %s)", len(rows), rows[0].Error)
}

func splitEndpoints(s string) ([]string, error) {
	var eps []string
	for e := range strings.SplitSeq(s, ",") {
		if e = strings.TrimSpace(e); e != "" {
			eps = append(eps, e)
		}
	}
	if len(eps) == 0 {
		return nil, usagef("--endpoints is required")
	}
	return eps, nil
}

func queryStatus(eps []string, timeout time.Duration) []statusRow {
	rows := make([]statusRow, len(eps))
	var wg sync.WaitGroup
	for i, ep := range eps {
		wg.Go(func() { rows[i] = statusOf(ep, timeout) })
	}
	wg.Wait()
	return rows
}

func statusOf(ep string, timeout time.Duration) statusRow {
	row := statusRow{Endpoint: ep, Role: "unreachable"}
	conn, err := grpc.NewClient("passthrough:///"+ep, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		row.Error = err.Error()
		return row
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	st, err := decreev1.NewAdminClient(conn).Status(ctx, &decreev1.StatusRequest{}, grpc.WaitForReady(true))
	if err != nil {
		row.Error = err.Error()
		return row
	}
	row.ID, row.Role, row.Term = st.GetId(), roleName(st.GetRole()), st.GetTerm()
	row.Leader, row.Commit, row.Applied = st.GetLeader(), st.GetCommit(), st.GetApplied()
	row.RSSBytes, row.GoHeapBytes = st.GetRssBytes(), st.GetGoHeapBytes()
	row.Phase2Backlog, row.Phase2OldestAgeSeconds = st.GetPhase2Backlog(), st.GetPhase2OldestAgeSeconds()
	ns := nodeStatsFromProto(st.GetStats())
	row.Stats = &ns
	return row
}

func roleName(r decreev1.Role) string {
	switch r {
	case decreev1.Role_ROLE_LEADER:
		return "leader"
	case decreev1.Role_ROLE_CANDIDATE, decreev1.Role_ROLE_PRE_CANDIDATE:
		return "candidate"
	default:
		return "follower"
	}
}

func printStatusTable(w io.Writer, rows []statusRow) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tENDPOINT\tROLE\tTERM\tLEADER\tCOMMIT\tAPPLIED\tRSS\tPHASE2")
	for _, r := range rows {
		if r.Role == "unreachable" {
			fmt.Fprintf(tw, "-\t%s\tunreachable\t-\t-\t-\t-\t-\t-\n", r.Endpoint)
			continue
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%d\t%d\t%d\t%s\t%s\n", r.ID, r.Endpoint, r.Role, r.Term, r.Leader, r.Commit, r.Applied,
			mib(r.RSSBytes), phase2Cell(r))
	}
	return tw.Flush()
}

// phase2Cell shows the phase-2 backlog: how many wait, and the oldest.
func phase2Cell(r statusRow) string {
	if r.Phase2Backlog == 0 {
		return "0"
	}
	age := time.Duration(r.Phase2OldestAgeSeconds * float64(time.Second)).Round(time.Second)
	return fmt.Sprintf("%d (oldest %v)", r.Phase2Backlog, age)
}

// mib shows a byte count in MiB, to one decimal.
func mib(b uint64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
