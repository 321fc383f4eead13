package main

import (
	"bytes"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func TestRateWindow(t *testing.T) {
	for d, want := range map[time.Duration]time.Duration{
		30 * time.Minute: 5 * time.Minute,
		2 * time.Hour:    5 * time.Minute,
		10 * time.Minute: 100 * time.Second,
		60 * time.Second: 10 * time.Second,
		20 * time.Second: 3 * time.Second,
		3 * time.Second:  time.Second,
	} {
		if got := rateWindow(d); got != want {
			t.Errorf("rateWindow(%v) = %v, want %v", d, got, want)
		}
	}
}

// seconds builds a per-second series of the given tx counts and p99s, one
// second each.
func seconds(tx []int64, p99 []float64) []benchSecond {
	out := make([]benchSecond, len(tx))
	for i := range tx {
		out[i] = benchSecond{EndS: float64(i + 1), Tx: tx[i], TxPerSec: float64(tx[i])}
		if p99 != nil {
			out[i].P99Ms = p99[i]
		}
	}
	return out
}

func TestWindowRate(t *testing.T) {
	secs := seconds([]int64{100, 200, 300, 400, 500, 600}, nil)
	for _, c := range []struct {
		from, to float64
		rate     float64
		n        int
	}{
		{0, 2, 150, 2},
		{4, 6, 550, 2},
		{0, 6, 350, 6},
		{0.5, 2, 200, 1}, // the first second starts before the window
		{7, 9, 0, 0},
	} {
		rate, n := windowRate(secs, c.from, c.to)
		if rate != c.rate || n != c.n {
			t.Errorf("windowRate(%v, %v) = %v over %d s, want %v over %d", c.from, c.to, rate, n, c.rate, c.n)
		}
	}
	// A last, shorter second counts for its length.
	secs = append(secs, benchSecond{EndS: 6.5, Tx: 100})
	if rate, n := windowRate(secs, 5, 6.5); rate != 700/1.5 || n != 2 {
		t.Errorf("with a half second at the end: %v over %d s, want %v over 2", rate, n, 700/1.5)
	}
}

func TestMaxP99Outside(t *testing.T) {
	secs := seconds([]int64{1, 1, 1, 1, 1, 1, 0, 1}, []float64{10, 2000, 3000, 20, 4000, 30, 9000, 15})
	// Seconds (1,2] and (2,3] overlap [1.5, 2.5]; (4,5] overlaps [4.9, 6]
	// and so does (5,6]; (6,7] had no transaction.
	got, n := maxP99Outside(secs, []interval{{1.5, 2.5}, {4.9, 6}})
	if got != 20 || n != 3 {
		t.Fatalf("maxP99Outside = %v over %d s, want 20 over 3", got, n)
	}
	if got, n := maxP99Outside(secs, nil); got != 4000 || n != 7 {
		t.Fatalf("nothing excluded: %v over %d s, want 4000 over 7", got, n)
	}
	k := &soakKill{KilledAtS: 100, RestartedS: 160}
	want := []interval{{100, 190}, {160, 190}}
	if got := excludedIntervals(k); len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("excludedIntervals = %v, want %v", got, want)
	}
	if got := excludedIntervals(nil); got != nil {
		t.Fatalf("no kill: %v", got)
	}
}

// node is a poll reading of a node that answered.
func node(id uint64, inc int, role string, term, leader, changes uint64) soakNodePoll {
	return soakNodePoll{ID: id, Incarnation: inc, Answered: true, Role: role, Term: term, Leader: leader,
		Stats: nodeStats{LeaderChanges: changes}}
}

func TestLeaderChanges(t *testing.T) {
	steady := []soakPoll{
		{TS: 1, Nodes: []soakNodePoll{node(1, 0, "leader", 2, 1, 1), node(2, 0, "follower", 2, 1, 1), node(3, 0, "follower", 2, 1, 1)}},
		// Node 3 is down, then back as a new process that has not heard
		// from the leader, then has (its counter starts over at 1).
		{TS: 2, Nodes: []soakNodePoll{node(1, 0, "leader", 2, 1, 1), node(2, 0, "follower", 2, 1, 1), {ID: 3}}},
		{TS: 3, Nodes: []soakNodePoll{node(1, 0, "leader", 2, 1, 1), node(2, 0, "follower", 2, 1, 1), node(3, 1, "follower", 2, 0, 0)}},
		{TS: 4, Nodes: []soakNodePoll{node(1, 0, "leader", 2, 1, 1), node(2, 0, "follower", 2, 1, 1), node(3, 1, "follower", 2, 1, 1)}},
	}
	if seen, counted := leaderChanges(steady); seen != 0 || counted != 0 {
		t.Fatalf("steady leader: seen %d, counted %d; want 0, 0", seen, counted)
	}
	// Node 1 is re-elected in a new term (seen), and node 2 counted a
	// change to none and back that no poll caught.
	changed := append(steady,
		soakPoll{TS: 5, Nodes: []soakNodePoll{node(1, 0, "candidate", 3, 0, 2), node(2, 0, "follower", 3, 0, 2), node(3, 1, "follower", 3, 0, 2)}},
		soakPoll{TS: 6, Nodes: []soakNodePoll{node(1, 0, "leader", 3, 1, 3), node(2, 0, "follower", 3, 1, 5), node(3, 1, "follower", 3, 1, 3)}},
	)
	if seen, counted := leaderChanges(changed); seen != 1 || counted != 2+4+2 {
		t.Fatalf("re-election: seen %d, counted %d; want 1, 8", seen, counted)
	}
	moved := append(steady,
		soakPoll{TS: 5, Nodes: []soakNodePoll{node(1, 0, "follower", 3, 2, 1), node(2, 0, "leader", 3, 2, 1), node(3, 1, "follower", 3, 2, 1)}},
	)
	if seen, _ := leaderChanges(moved); seen != 1 {
		t.Fatalf("leadership moved to node 2: seen %d, want 1", seen)
	}
}

func TestNodeSummaries(t *testing.T) {
	rss := func(n soakNodePoll, rss, heap uint64, st nodeStats) soakNodePoll {
		n.RSSBytes, n.GoHeapBytes, n.Stats = rss, heap, st
		return n
	}
	polls := []soakPoll{
		{TS: 1, Nodes: []soakNodePoll{rss(node(1, 0, "leader", 2, 1, 0), 100, 10, nodeStats{SnapshotsSent: 1, CollectMaxSeconds: 0.5})}},
		{TS: 2, Nodes: []soakNodePoll{rss(node(1, 0, "leader", 2, 1, 0), 300, 5, nodeStats{SnapshotsSent: 2, CollectMaxSeconds: 0.5})}},
		{TS: 3, Nodes: []soakNodePoll{{ID: 1, Incarnation: 1}}},
		{TS: 4, Nodes: []soakNodePoll{rss(node(1, 1, "follower", 2, 1, 0), 200, 20, nodeStats{SnapshotsReceived: 1, CollectMaxSeconds: 0.25})}},
	}
	got := nodeSummaries(polls, []string{"a"})
	want := soakNodeSummary{ID: 1, Endpoint: "a", Restarts: 1, MaxRSSBytes: 300, MaxGoHeapBytes: 20,
		Stats: nodeStats{SnapshotsSent: 2, SnapshotsReceived: 1, CollectMaxSeconds: 0.5}}
	if len(got) != 1 || got[0] != want {
		t.Fatalf("nodeSummaries = %+v, want %+v", got, want)
	}
}

func TestSoakRows(t *testing.T) {
	mem := func(ts float64, rss uint64) soakPoll {
		return soakPoll{TS: ts, Nodes: []soakNodePoll{{ID: 1, Answered: true, RSSBytes: rss, GoHeapBytes: rss / 2}}}
	}
	polls := []soakPoll{mem(0, 10), mem(5, 50), mem(9, 30), mem(15, 70)}
	spans := []benchSpan{{StartS: 0, EndS: 10}, {StartS: 10, EndS: 12}, {StartS: 12, EndS: 20}}
	k := &soakKill{Node: 2, KilledAtS: 11, RestartedS: 19, CaughtUpAtS: 19.5}
	rows := soakRows(spans, polls, k)
	for i, want := range []struct {
		rss    uint64
		events string
	}{{50, ""}, {30, "n2 killed"}, {70, "n2 restarted,n2 caught up"}} {
		r := rows[i]
		if len(r.Nodes) != 1 || r.Nodes[0].RSSBytes != want.rss || r.Nodes[0].GoHeapBytes != want.rss/2 {
			t.Errorf("row %d: nodes %+v, want RSS %d", i, r.Nodes, want.rss)
		}
		if got := strings.Join(r.Events, ","); got != want.events {
			t.Errorf("row %d: events %q, want %q", i, got, want.events)
		}
	}
}

// passingReport is a run that meets every target.
func passingReport() (*soakReport, soakFlags) {
	f := soakFlags{duration: 60 * time.Second, kill: true, maxRSS: 512 << 20}
	tx := make([]int64, 60)
	p99 := make([]float64, 60)
	for i := range tx {
		tx[i], p99[i] = 1000, 50
	}
	rep := &soakReport{
		Nodes:   []soakNodeSummary{{ID: 1, MaxRSSBytes: 200 << 20}, {ID: 2, MaxRSSBytes: 300 << 20}},
		Seconds: seconds(tx, p99),
		Kill:    &soakKill{Node: 2, KilledAtS: 20, RestartedS: 25, CaughtUp: true, CaughtUpAtS: 30, CatchUpS: 5},
	}
	return rep, f
}

func TestJudge(t *testing.T) {
	rep, f := passingReport()
	judge(rep, f)
	if !rep.Pass {
		t.Fatalf("a passing run fails: %+v", rep.Targets)
	}
	if rep.RateWindowS != 10 || rep.FirstRate != 1000 || rep.LastRate != 1000 {
		t.Fatalf("windows %v s, rates %v, %v; want 10 s, 1000, 1000", rep.RateWindowS, rep.FirstRate, rep.LastRate)
	}
	// Seconds 20-55 are excluded (kill + 90 s reaches past the end).
	if rep.JudgedSeconds != 20 {
		t.Fatalf("judged %d seconds, want 20", rep.JudgedSeconds)
	}
	for name, c := range map[string]struct {
		target string
		change func(*soakReport)
	}{
		"rss":       {"max RSS", func(r *soakReport) { r.Nodes[1].MaxRSSBytes = 512 << 20 }},
		"no rss":    {"max RSS", func(r *soakReport) { r.Nodes[0].MaxRSSBytes = 0 }},
		"slowdown":  {"tx/s of the last", func(r *soakReport) { slow(r.Seconds[50:], 890) }},
		"p99":       {"per-second p99", func(r *soakReport) { r.Seconds[5].P99Ms = 1001 }},
		"leader":    {"no leader change", func(r *soakReport) { r.LeaderChangesCounted = 1 }},
		"leader 2":  {"no leader change", func(r *soakReport) { r.LeaderChangesSeen = 1 }},
		"catch-up":  {"catches up", func(r *soakReport) { r.Kill.CatchUpS = 30.5 }},
		"no catch":  {"catches up", func(r *soakReport) { r.Kill.CaughtUp = false }},
		"node exit": {"exited unexpectedly", func(r *soakReport) { r.NodeExits = []string{"node 1 exited"} }},
	} {
		t.Run(name, func(t *testing.T) {
			rep, f := passingReport()
			c.change(rep)
			judge(rep, f)
			if rep.Pass {
				t.Fatal("the run passes")
			}
			for _, tg := range rep.Targets {
				if tg.Pass == strings.Contains(tg.Name, c.target) {
					t.Errorf("target %q: pass %v (%s)", tg.Name, tg.Pass, tg.Value)
				}
			}
		})
	}
	// 90% of the first window's rate is still enough; a p99 inside the
	// excluded seconds does not count.
	rep, f = passingReport()
	slow(rep.Seconds[50:], 900)
	rep.Seconds[30].P99Ms = 5000
	judge(rep, f)
	if !rep.Pass {
		t.Fatalf("fails: %+v", rep.Targets)
	}
}

func slow(secs []benchSecond, tx int64) {
	for i := range secs {
		secs[i].Tx, secs[i].TxPerSec = tx, float64(tx)
	}
}

func TestSoakBadFlags(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--clients", "0"}, "--clients must be"},
		{[]string{"--duration", "5s"}, "--duration must be at least"},
		{[]string{"--duration", "60s", "--kill-at", "50s", "--down", "10s"}, "must be positive and end"},
		{[]string{"--duration", "60s", "--down", "-1s"}, "must be positive and end"},
		{[]string{"--duration", "60s", "--down", "56s"}, "must be positive and end"},
		{[]string{"--plot", "x.jpg"}, "--plot file must end"},
		{[]string{"--max-rss", "lots"}, "not a size in bytes"},
		{[]string{"--poll", "1ms"}, "--poll must be"},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(append([]string{"soak"}, c.args...), &stdout, &stderr); code != 2 {
			t.Errorf("soak %v: exit %d, want 2", c.args, code)
		}
		if !strings.Contains(stderr.String(), c.want) {
			t.Errorf("soak %v: stderr %q lacks %q", c.args, stderr.String(), c.want)
		}
	}
	// Without the kill, its flags are not checked against the duration.
	f, err := parseSoakFlags([]string{"--duration", "20s", "--kill=false", "--down", "1h"}, &bytes.Buffer{})
	if err != nil || f.kill {
		t.Fatalf("--kill=false: %+v, %v", f, err)
	}
	if f, _ := parseSoakFlags(nil, &bytes.Buffer{}); f.killAt != 10*time.Minute || f.clients != 256 || f.down != time.Minute {
		t.Fatalf("defaults: kill at %v, %d clients, down %v", f.killAt, f.clients, f.down)
	}
	// A shorter run keeps the follower down for a sixth of it.
	if f, err := parseSoakFlags([]string{"--duration", "60s"}, &bytes.Buffer{}); err != nil || f.killAt != 20*time.Second || f.down != 10*time.Second {
		t.Fatalf("60s run: kill at %v, down %v (%v); want 20s, 10s", f.killAt, f.down, err)
	}
}

// TestSoakClusterNoticesExit runs "nodes" that exit at once: the cluster
// reports them as exited on their own, and stop names them.
func TestSoakClusterNoticesExit(t *testing.T) {
	bin, err := exec.LookPath("false")
	if err != nil {
		t.Skip("no false(1)")
	}
	c, err := startSoakCluster(bin, t.TempDir(), 3, nil)
	if err != nil {
		t.Fatal(err)
	}
	n := c.node(2)
	poll(t, 10*time.Second, "node 2's exit", func() bool { return n.state().exitErr != nil })
	if st := n.state(); st.pid == 0 || st.restarts != 0 {
		t.Fatalf("state %+v, want the exited process's pid and no restart", st)
	}
	// A killed node is down, not exited on its own.
	if err := c.kill(c.node(1)); err != nil {
		t.Fatal(err)
	}
	if st := c.node(1).state(); st.pid != 0 || st.exitErr != nil {
		t.Fatalf("killed node: %+v", st)
	}
	err = c.stop(time.Second)
	if err == nil || !strings.Contains(err.Error(), "node 2 exited") || strings.Contains(err.Error(), "node 1") {
		t.Fatalf("stop: %v, want nodes 2 and 3 named as exited", err)
	}
}
