package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
)

// Soak defaults: the targets of issue 11.
const (
	soakNodes            = 3
	soakDefaultDuration  = 30 * time.Minute
	soakDefaultDown      = 60 * time.Second
	soakDefaultMaxRSS    = 512 << 20
	soakCatchUpPoll      = 200 * time.Millisecond
	soakStopGrace        = 10 * time.Second
	soakMinKillRemainder = 5 * time.Second
)

// errTargetsMissed makes decree soak exit 1 after a complete report.
var errTargetsMissed = errors.New("targets missed (see the summary; --fail-on-miss=false to exit 0)")

type soakFlags struct {
	clients      int
	participants int
	payload      int
	duration     time.Duration
	kill         bool
	killAt       time.Duration
	down         time.Duration
	poll         time.Duration
	reportEvery  time.Duration
	txnTimeout   time.Duration
	maxRSS       byteSize
	nodeFlags    stringList
	bin          string
	jsonPath     string
	plotPath     string
	failOnMiss   bool
	keepDir      bool
	logLevel     string
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, " ") }
func (l *stringList) Set(s string) error { *l = append(*l, s); return nil }

func parseSoakFlags(args []string, stderr io.Writer) (soakFlags, error) {
	f := soakFlags{maxRSS: soakDefaultMaxRSS}
	fs := flag.NewFlagSet("soak", flag.ContinueOnError)
	fs.IntVar(&f.clients, "clients", 256, "concurrent clients, each committing one transaction at a time")
	fs.IntVar(&f.participants, "participants", 2, "null participants (in this process) per transaction")
	fs.IntVar(&f.payload, "payload", 128, "payload bytes per participant branch")
	fs.DurationVar(&f.duration, "duration", soakDefaultDuration, "how long the load runs")
	fs.BoolVar(&f.kill, "kill", true, "kill a follower with SIGKILL during the run and restart it")
	fs.DurationVar(&f.killAt, "kill-at", 0, "when to kill the follower (default: a third of --duration)")
	fs.DurationVar(&f.down, "down", 0, "how long the killed follower stays down (default: 60s, or a sixth of a shorter run)")
	fs.DurationVar(&f.poll, "poll", 5*time.Second, "how often to read every node's Admin Status")
	fs.DurationVar(&f.reportEvery, "report-every", time.Minute, "length of a row of the over-time table")
	fs.DurationVar(&f.txnTimeout, "txn-timeout", 30*time.Second, "deadline of one transaction; past it the transaction counts as an error")
	fs.Var(&f.maxRSS, "max-rss", "target: every node's resident memory stays below this (bytes, or KiB, MiB, GiB)")
	fs.Var(&f.nodeFlags, "node-flag", "extra flag for every `decree start`, e.g. --node-flag=--memtable-size=32MiB (repeatable)")
	fs.StringVar(&f.bin, "bin", "", "decree binary to run the nodes with (default: this one)")
	fs.StringVar(&f.jsonPath, "json", "", "write the full report as JSON to this file")
	fs.StringVar(&f.plotPath, "plot", "", "write tx/s, p99 and each node's RSS over time to this .png or .svg file")
	fs.BoolVar(&f.failOnMiss, "fail-on-miss", true, "exit 1 when a target is missed")
	fs.BoolVar(&f.keepDir, "keep-dir", false, "keep the temp dir (node data and logs) after the run")
	fs.StringVar(&f.logLevel, "log-level", "warn", "log level of this process (participants, client)")
	if err := parseFlags(fs, args, stderr); err != nil {
		return f, err
	}
	if f.killAt == 0 {
		f.killAt = f.duration / 3
	}
	if f.down == 0 {
		f.down = min(soakDefaultDown, max((f.duration/6).Round(time.Second), time.Second))
	}
	switch {
	case f.clients < 1 || f.clients > benchMaxClients:
		return f, usagef("--clients must be between 1 and %d, not %d", benchMaxClients, f.clients)
	case f.participants < 1 || f.participants > benchMaxParticipants:
		return f, usagef("--participants must be between 1 and %d, not %d", benchMaxParticipants, f.participants)
	case f.payload < 0 || f.payload > benchMaxPayload:
		return f, usagef("--payload must be between 0 and %d bytes, not %d", benchMaxPayload, f.payload)
	case f.duration < 10*time.Second:
		return f, usagef("--duration must be at least 10s, not %v", f.duration)
	case f.poll < 100*time.Millisecond || f.reportEvery < time.Second:
		return f, usagef("--poll must be at least 100ms and --report-every at least 1s")
	case f.txnTimeout <= 0:
		return f, usagef("--txn-timeout must be positive")
	case f.kill && (f.killAt < 0 || f.down < 0 || f.killAt+f.down+soakMinKillRemainder > f.duration):
		return f, usagef("--kill-at (%v) and --down (%v) must be positive and end %v before --duration (%v)",
			f.killAt, f.down, soakMinKillRemainder, f.duration)
	}
	if f.plotPath != "" {
		if ext := strings.ToLower(filepath.Ext(f.plotPath)); ext != ".png" && ext != ".svg" {
			return f, usagef("--plot file must end in .png or .svg, not %q", f.plotPath)
		}
	}
	return f, nil
}

func runSoak(args []string, stdout, stderr io.Writer) error {
	f, err := parseSoakFlags(args, stderr)
	if err != nil {
		return err
	}
	stderr = &lockedWriter{w: stderr} // as in bench: the logger and the progress share it
	lvl, err := zerolog.ParseLevel(strings.ToLower(f.logLevel))
	if err != nil {
		return usagef("--log-level: %v", err)
	}
	logger := zerolog.New(zerolog.ConsoleWriter{Out: stderr, TimeFormat: "15:04:05.000", NoColor: !isTerminal(stderr)}).
		Level(lvl).With().Timestamp().Logger()
	if f.bin == "" {
		if f.bin, err = os.Executable(); err != nil {
			return fmt.Errorf("find this binary: %w", err)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	procs := benchProcs(benchFlags{participants: f.participants}, os.Getenv("GOMAXPROCS") != "")
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(procs))

	rep, runErr := soak(ctx, f, logger, stderr)
	if rep == nil {
		return runErr
	}
	if ctx.Err() != nil {
		fmt.Fprintln(stderr, "interrupted: the report covers the run so far")
	}
	if err := printSoakReport(stdout, rep); err != nil {
		return err
	}
	if f.jsonPath != "" {
		if err := writeJSONFile(f.jsonPath, rep); err != nil {
			return err
		}
	}
	if f.plotPath != "" {
		if err := writeSoakPlot(f.plotPath, rep); err != nil {
			return err
		}
	}
	if runErr != nil {
		return runErr
	}
	if !rep.Pass && f.failOnMiss {
		return errTargetsMissed
	}
	return nil
}

// soak sets up the nodes and participants, runs the load and the follower
// kill, and stops everything it started before it returns the report.
func soak(ctx context.Context, f soakFlags, logger zerolog.Logger, stderr io.Writer) (_ *soakReport, err error) {
	dir, err := os.MkdirTemp("", "decree-soak-")
	if err != nil {
		return nil, fmt.Errorf("create temp dir: %w", err)
	}
	defer func() {
		if f.keepDir {
			fmt.Fprintf(stderr, "kept %s (node data and logs)\n", dir)
			return
		}
		err = errors.Join(err, os.RemoveAll(dir))
	}()
	cluster, err := startSoakCluster(f.bin, dir, soakNodes, f.nodeFlags)
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, cluster.stop(soakStopGrace)) }()
	fmt.Fprintf(stderr, "soak: nodes %s (pids %d %d %d), logs in %s\n", strings.Join(cluster.endpoints, ","),
		cluster.nodes[0].pid(), cluster.nodes[1].pid(), cluster.nodes[2].pid(), dir)
	env, err := setUpBench(ctx, benchFlags{endpoints: cluster.endpoints, participants: f.participants}, logger)
	if err != nil {
		return nil, fmt.Errorf("%w\nnode 1 log tail:\n%s", err, cluster.nodes[0].logTail(2000))
	}
	defer func() { err = errors.Join(err, env.close()) }()
	branches := benchBranches(env.parts.addrs, f.payload)
	if err := env.warmUp(ctx, branches, f.txnTimeout); err != nil {
		return nil, err
	}
	r := &soakRun{f: f, cluster: cluster, env: env, rec: newRecorder(), out: stderr}
	r.run(ctx, workload{clients: f.clients, txnTimeout: f.txnTimeout, branches: branches})
	return r.report(), nil
}

// soakRun is one run's live state. The sampler, the poller and the kill
// schedule append to it under mu; report reads it after they ended.
type soakRun struct {
	f       soakFlags
	cluster *soakCluster
	env     *benchEnv
	rec     *recorder
	out     io.Writer
	t0      time.Time
	end     time.Time

	mu      sync.Mutex
	spans   []benchSpan
	polls   []soakPoll
	kill    *soakKill
	exits   []string // nodes that exited on their own
	elapsed time.Duration
}

// run drives the load for f.duration with the sampler, the poller and the
// kill schedule beside it; every loop ends with the load (or ctx).
func (r *soakRun) run(ctx context.Context, w workload) {
	r.t0 = time.Now()
	r.end = r.t0.Add(r.f.duration)
	r.rec.start(r.t0)
	r.rec.trackSpans()
	stopStarting, cancel := context.WithDeadline(ctx, r.end)
	defer cancel()
	done := make(chan struct{})
	var bg sync.WaitGroup
	bg.Go(func() { r.sample(done) })
	bg.Go(func() { r.pollLoop(ctx, done) })
	if r.f.kill {
		bg.Go(func() { r.killFollower(stopStarting) })
	}
	runClients(ctx, stopStarting, r.env.cl, w, r.rec)
	r.mu.Lock()
	r.elapsed = time.Since(r.t0)
	r.mu.Unlock()
	close(done)
	bg.Wait()
	r.rec.rotate(time.Now())
	r.closeSpan()
	r.poll(context.WithoutCancel(ctx))
}

// sample closes a second of the recorder every second and a row every
// f.reportEvery, and shows progress every 10 seconds.
func (r *soakRun) sample(done <-chan struct{}) {
	sec := time.NewTicker(time.Second)
	defer sec.Stop()
	lastSpan, lastLine := r.t0, r.t0
	for {
		select {
		case <-done:
			return
		case now := <-sec.C:
			s := r.rec.rotate(now)
			// The last row runs to the end of the load (run closes it),
			// not into a sliver of the final in-flight transactions.
			if now.Sub(lastSpan) >= r.f.reportEvery && r.end.Sub(now) > time.Second {
				r.closeSpan()
				lastSpan = now
			}
			if now.Sub(lastLine) >= 10*time.Second {
				lastLine = now
				committed, _, errs := r.rec.totals()
				fmt.Fprintf(r.out, "%6.0fs  %6.0f tx/s  p99 %7.2f ms  committed %d  errors %d%s\n",
					s.EndS, s.TxPerSec, s.P99Ms, committed, errs, r.memLine())
			}
		}
	}
}

func (r *soakRun) closeSpan() {
	s := r.rec.rotateSpan()
	if s.EndS <= s.StartS {
		return
	}
	r.mu.Lock()
	r.spans = append(r.spans, s)
	r.mu.Unlock()
}

// memLine is the last poll's RSS of each node, for the progress line.
func (r *soakRun) memLine() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.polls) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("  rss")
	for _, n := range r.polls[len(r.polls)-1].Nodes {
		if !n.Answered {
			fmt.Fprintf(&b, " n%d -", n.ID)
			continue
		}
		fmt.Fprintf(&b, " n%d %s", n.ID, mib(n.RSSBytes))
	}
	return b.String()
}

func (r *soakRun) pollLoop(ctx context.Context, done <-chan struct{}) {
	t := time.NewTicker(r.f.poll)
	defer t.Stop()
	r.poll(ctx)
	for {
		select {
		case <-done:
			return
		case <-ctx.Done():
			return
		case <-t.C:
			r.poll(ctx)
		}
	}
}

// poll reads every node's status, and notes a node that exited though it
// was not killed.
func (r *soakRun) poll(ctx context.Context) {
	sts := r.env.admin.statuses(ctx, 2*time.Second)
	p := soakPoll{TS: time.Since(r.t0).Seconds()}
	procs := make([]procState, len(r.cluster.nodes))
	for i, st := range sts {
		n := r.cluster.nodes[i]
		procs[i] = n.state()
		np := soakNodePoll{ID: n.id, Incarnation: procs[i].restarts, PID: procs[i].pid}
		if st != nil {
			np.Answered = true
			np.Role, np.Term, np.Leader = roleName(st.GetRole()), st.GetTerm(), st.GetLeader()
			np.Commit, np.Applied = st.GetCommit(), st.GetApplied()
			np.RSSBytes, np.GoHeapBytes = st.GetRssBytes(), st.GetGoHeapBytes()
			np.Stats = nodeStatsFromProto(st.GetStats())
		}
		p.Nodes = append(p.Nodes, np)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.polls = append(r.polls, p)
	for i, n := range r.cluster.nodes {
		if procs[i].exitErr != nil && !r.exitNoted(n.id) {
			r.exits = append(r.exits, fmt.Sprintf("node %d exited at %.1f s: %v; log tail:\n%s", n.id, p.TS, procs[i].exitErr, n.logTail(1500)))
			fmt.Fprintln(r.out, r.exits[len(r.exits)-1])
		}
	}
}

func (r *soakRun) exitNoted(id uint64) bool {
	prefix := fmt.Sprintf("node %d ", id)
	for _, e := range r.exits {
		if strings.HasPrefix(e, prefix) {
			return true
		}
	}
	return false
}

// soakKill is what happened to the killed follower.
type soakKill struct {
	Node        uint64  `json:"node"`
	PID         int     `json:"pid"`
	KilledAtS   float64 `json:"killed_at_s"`
	RestartedS  float64 `json:"restarted_at_s,omitempty"`
	NewPID      int     `json:"new_pid,omitempty"`
	TargetIndex uint64  `json:"leader_commit_at_restart,omitempty"`
	CaughtUp    bool    `json:"caught_up"`
	CaughtUpAtS float64 `json:"caught_up_at_s,omitempty"`
	CatchUpS    float64 `json:"catch_up_s,omitempty"`
	Error       string  `json:"error,omitempty"`
}

// killFollower waits for f.killAt, kills a follower, restarts it f.down
// later and measures its catch-up, all within the run (stop).
func (r *soakRun) killFollower(stop context.Context) {
	k := &soakKill{}
	defer func() {
		r.mu.Lock()
		r.kill = k
		r.mu.Unlock()
		if k.Error != "" {
			fmt.Fprintf(r.out, "kill: %s\n", k.Error)
		}
	}()
	if !sleepUntil(stop, r.t0.Add(r.f.killAt)) {
		k.Error = "the run ended before the kill"
		return
	}
	leader, victim := r.pickFollower(stop)
	if victim == nil {
		k.Error = "no agreed leader with a follower to kill"
		return
	}
	k.Node, k.PID = victim.id, victim.pid()
	if err := r.cluster.kill(victim); err != nil {
		k.Error = err.Error()
		return
	}
	k.KilledAtS = time.Since(r.t0).Seconds()
	fmt.Fprintf(r.out, "%6.0fs  killed follower %d (pid %d, SIGKILL); leader is %d\n", k.KilledAtS, k.Node, k.PID, leader)
	if !sleepUntil(stop, time.Now().Add(r.f.down)) {
		k.Error = "the run ended while the follower was down"
		return
	}
	// The target is the leader's commit index just before the restart.
	target, ok := r.leaderCommit(stop)
	if !ok {
		k.Error = "no leader answered before the restart"
	}
	if err := r.cluster.restart(victim); err != nil {
		k.Error = err.Error()
		return
	}
	restarted := time.Now()
	k.RestartedS, k.NewPID, k.TargetIndex = restarted.Sub(r.t0).Seconds(), victim.pid(), target
	fmt.Fprintf(r.out, "%6.0fs  restarted node %d (pid %d); catching up to index %d\n", k.RestartedS, k.Node, k.NewPID, target)
	if !ok {
		return
	}
	if at, ok := r.waitApplied(stop, victim, target); ok {
		k.CaughtUp, k.CaughtUpAtS, k.CatchUpS = true, at.Sub(r.t0).Seconds(), at.Sub(restarted).Seconds()
		fmt.Fprintf(r.out, "%6.0fs  node %d caught up in %.1f s\n", k.CaughtUpAtS, k.Node, k.CatchUpS)
	} else {
		k.Error = fmt.Sprintf("node %d had not applied index %d by the end of the run", k.Node, target)
	}
}

// sleepUntil waits until t, or returns false when ctx ends first.
func sleepUntil(ctx context.Context, t time.Time) bool {
	timer := time.NewTimer(time.Until(t))
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// pickFollower asks the nodes until they agree on a leader (within 30 s)
// and returns it and the highest-numbered follower.
func (r *soakRun) pickFollower(ctx context.Context) (uint64, *soakProc) {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		sts := r.env.admin.statuses(ctx, time.Second)
		if lead := agreedLeader(sts); lead != 0 {
			for i := len(r.cluster.nodes) - 1; i >= 0; i-- {
				if n := r.cluster.nodes[i]; n.id != lead && n.pid() != 0 && n.state().exitErr == nil {
					return lead, n
				}
			}
			return lead, nil
		}
		sleepUntil(ctx, time.Now().Add(100*time.Millisecond))
	}
	return 0, nil
}

// agreedLeader is the leader every answering node names, if the nodes that
// answer are a majority and that leader says it leads; else 0.
func agreedLeader(sts []*decreev1.StatusResponse) uint64 {
	var lead uint64
	answered := 0
	for _, st := range sts {
		if st == nil {
			continue
		}
		answered++
		if st.GetLeader() == 0 || (lead != 0 && st.GetLeader() != lead) {
			return 0
		}
		lead = st.GetLeader()
	}
	if answered <= len(sts)/2 {
		return 0
	}
	for _, st := range sts {
		if st != nil && st.GetId() == lead && st.GetRole() == decreev1.Role_ROLE_LEADER {
			return lead
		}
	}
	return 0
}

// leaderCommit is the commit index of the node that says it leads.
func (r *soakRun) leaderCommit(ctx context.Context) (uint64, bool) {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		for _, st := range r.env.admin.statuses(ctx, time.Second) {
			if st != nil && st.GetRole() == decreev1.Role_ROLE_LEADER {
				return st.GetCommit(), true
			}
		}
		sleepUntil(ctx, time.Now().Add(100*time.Millisecond))
	}
	return 0, false
}

// waitApplied polls n until it has applied index, and returns when; false
// when ctx (the run) ends first.
func (r *soakRun) waitApplied(ctx context.Context, n *soakProc, index uint64) (time.Time, bool) {
	i := int(n.id - 1)
	for ctx.Err() == nil {
		sts := r.env.admin.statuses(ctx, time.Second)
		if st := sts[i]; st != nil && st.GetApplied() >= index {
			return time.Now(), true
		}
		sleepUntil(ctx, time.Now().Add(soakCatchUpPoll))
	}
	return time.Time{}, false
}
