package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/decree-tx/decree/coordinator/client"
	"github.com/decree-tx/decree/internal/testpoll"

	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
)

var failoverRounds = flag.Int("failover-rounds", 2, "leader kills in TestBinaryFailover (use >= 10 to measure)")

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// TestMain removes the binary built for the multi-process tests.
func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

// decreeBinary builds the real binary once per test run.
func decreeBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "decree-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "decree")
		cmd := exec.Command("go", "build", "-o", binPath, ".")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// procCluster runs real decree processes on loopback.
type procCluster struct {
	t     *testing.T
	bin   string
	peers string
	addrs map[uint64]string
	dirs  map[uint64]string
	procs map[uint64]*exec.Cmd
	logs  map[uint64]string
}

func freeAddrs(t *testing.T, n int) []string {
	t.Helper()
	var out []string
	var ls []net.Listener
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		out = append(out, l.Addr().String())
	}
	for _, l := range ls {
		l.Close()
	}
	return out
}

func newProcCluster(t *testing.T, size int) *procCluster {
	c := newIdleProcCluster(t, size)
	for id := range c.addrs {
		c.start(id)
	}
	return c
}

// newIdleProcCluster prepares a cluster's addresses and dirs and starts no
// node.
func newIdleProcCluster(t *testing.T, size int) *procCluster {
	c := &procCluster{t: t, bin: decreeBinary(t), addrs: map[uint64]string{}, dirs: map[uint64]string{},
		procs: map[uint64]*exec.Cmd{}, logs: map[uint64]string{}}
	var parts []string
	for i, a := range freeAddrs(t, size) {
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
		if t.Failed() {
			for id, path := range c.logs {
				b, _ := os.ReadFile(path)
				t.Logf("node %d log tail:\n%s", id, tail(string(b), 3000))
			}
		}
	})
	return c
}

func (c *procCluster) start(id uint64) {
	c.t.Helper()
	cmd := exec.Command(c.bin, c.startArgs(id)...)
	// Each node logs to a file that outlives its restarts.
	path := c.dirs[id] + ".log"
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		c.t.Fatal(err)
	}
	defer f.Close()
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	c.procs[id], c.logs[id] = cmd, path
}

func (c *procCluster) startArgs(id uint64, extra ...string) []string {
	return append([]string{"start", "--id", fmt.Sprint(id), "--listen", c.addrs[id], "--peers", c.peers,
		"--data-dir", c.dirs[id], "--log-level", "info"}, extra...)
}

// kill sends SIGKILL to a process this test started, by its PID.
func (c *procCluster) kill(id uint64) {
	cmd, ok := c.procs[id]
	if !ok {
		return
	}
	delete(c.procs, id)
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()
}

func (c *procCluster) endpoints() string {
	var eps []string
	for id := uint64(1); id <= uint64(len(c.addrs)); id++ {
		eps = append(eps, c.addrs[id])
	}
	return strings.Join(eps, ",")
}

// statuses asks every running node for its status over gRPC.
func (c *procCluster) statuses() map[uint64]*decreev1.StatusResponse {
	out := map[uint64]*decreev1.StatusResponse{}
	for id := range c.procs {
		conn, err := grpc.NewClient("passthrough:///"+c.addrs[id], grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		st, err := decreev1.NewAdminClient(conn).Status(ctx, &decreev1.StatusRequest{})
		cancel()
		conn.Close()
		if err == nil {
			out[id] = st
		}
	}
	return out
}

// agreedLeader returns the leader every running node names, or 0.
func (c *procCluster) agreedLeader() uint64 {
	sts := c.statuses()
	if len(sts) != len(c.procs) {
		return 0
	}
	var lead uint64
	for _, st := range sts {
		if st.GetLeader() == 0 || (lead != 0 && st.GetLeader() != lead) {
			return 0
		}
		lead = st.GetLeader()
	}
	if sts[lead].GetRole() != decreev1.Role_ROLE_LEADER {
		return 0
	}
	return lead
}

func (c *procCluster) waitLeader(d time.Duration, not uint64) uint64 {
	c.t.Helper()
	var lead uint64
	poll(c.t, d, "an agreed leader", func() bool {
		lead = c.agreedLeader()
		return lead != 0 && lead != not
	})
	return lead
}

func poll(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	testpoll.UntilEvery(t, d, 10*time.Millisecond, what, cond) // each poll asks every process
}

// TestBinaryFailover runs three real decree processes, kills the leader with
// SIGKILL, expects a new leader, restarts the killed node and expects it to
// rejoin with the same applied index as the others. It logs each failover.
func TestBinaryFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	c := newProcCluster(t, 3)
	lead := c.waitLeader(20*time.Second, 0)
	checkStatusCommand(t, c, lead)
	checkTxnCommands(t, c, lead)

	var took []time.Duration
	for round := range *failoverRounds {
		killed := lead
		c.kill(killed)
		start := time.Now()
		lead = c.waitLeader(10*time.Second, killed)
		took = append(took, time.Since(start))
		t.Logf("round %d: killed leader %d, node %d leads after %v", round, killed, lead, took[len(took)-1])
		c.start(killed)
		waitSameApplied(t, c)
	}
	slices.Sort(took)
	t.Logf("failover over %d kills: median %v, max %v", len(took), took[len(took)/2], took[len(took)-1])
	if took[len(took)-1] > 3*time.Second {
		t.Errorf("slowest failover took %v, want under 3s", took[len(took)-1])
	}
}

func waitSameApplied(t *testing.T, c *procCluster) {
	t.Helper()
	poll(t, 15*time.Second, "every node at the same applied index", func() bool {
		sts := c.statuses()
		if len(sts) != len(c.addrs) {
			return false
		}
		var applied uint64
		for _, st := range sts {
			if applied != 0 && st.GetApplied() != applied {
				return false
			}
			applied = st.GetApplied()
		}
		return applied > 0
	})
}

// checkStatusCommand runs `decree status --json` and the table form.
func checkStatusCommand(t *testing.T, c *procCluster, lead uint64) {
	t.Helper()
	out, err := exec.Command(c.bin, "status", "--endpoints", c.endpoints(), "--json").Output()
	if err != nil {
		t.Fatalf("decree status --json: %v", err)
	}
	var rows []map[string]any
	if err := json.Unmarshal(out, &rows); err != nil {
		t.Fatalf("status output is not JSON: %v\n%s", err, out)
	}
	if len(rows) != 3 {
		t.Fatalf("%d rows, want 3", len(rows))
	}
	leaders := 0
	for _, r := range rows {
		for _, k := range []string{"id", "endpoint", "role", "term", "leader", "commit", "applied", "rss_bytes", "go_heap_bytes", "stats"} {
			if _, ok := r[k]; !ok {
				t.Fatalf("row %v lacks key %q", r, k)
			}
		}
		if r["rss_bytes"].(float64) < 1<<20 || r["go_heap_bytes"].(float64) <= 0 {
			t.Fatalf("row %v: implausible memory figures", r)
		}
		if _, ok := r["stats"].(map[string]any)["leader_changes"]; !ok {
			t.Fatalf("row %v: stats lack leader_changes", r)
		}
		if r["role"] == "leader" {
			leaders++
			if uint64(r["id"].(float64)) != lead {
				t.Fatalf("status names %v leader, want %d", r["id"], lead)
			}
		}
	}
	if leaders != 1 {
		t.Fatalf("%d leaders in %s", leaders, out)
	}
	table, err := exec.Command(c.bin, "status", "--endpoints", c.endpoints()+",127.0.0.1:1", "--timeout", "300ms").Output()
	if err != nil {
		t.Fatalf("decree status: %v", err)
	}
	if !bytes.Contains(table, []byte("leader")) || !bytes.Contains(table, []byte("unreachable")) {
		t.Fatalf("table lacks a leader or the unreachable row:\n%s", table)
	}
}

// checkTxnCommands asks a real cluster, through the CLI, for the outcome of
// an id it never saw (presumed abort, made durable), then lists it; and
// checks the client library's view of the cluster.
func checkTxnCommands(t *testing.T, c *procCluster, lead uint64) {
	t.Helper()
	id, err := uuid.NewV7()
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(c.bin, "txn", "outcome", "--endpoints", c.endpoints(), id.String()).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "name its participants") {
		t.Fatalf("decree txn outcome of an unknown id without participants: %v\n%s", err, out)
	}
	out, err = exec.Command(c.bin, "txn", "outcome", "--endpoints", c.endpoints(),
		"--participants", "127.0.0.1:1,127.0.0.1:2", id.String()).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "aborted") {
		t.Fatalf("decree txn outcome: %v\n%s", err, out)
	}
	out, err = exec.Command(c.bin, "txn", "list", "--endpoints", c.endpoints(), "--state", "aborted").CombinedOutput()
	if err != nil || !strings.Contains(string(out), id.String()) {
		t.Fatalf("decree txn list does not show %s: %v\n%s", id, err, out)
	}
	cl, err := client.Dial(strings.Split(c.endpoints(), ","), client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if l, ok := client.Leader(cl.Status(ctx)); !ok || l.ID != lead {
		t.Fatalf("client.Status names leader %+v (%v), want %d", l, ok, lead)
	}
}
