package chaos

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/decree-tx/decree/coordinator/client"
)

var (
	flagChaos    = flag.Bool("chaos", false, "run the chaos test (or set DECREE_CHAOS=1); it is skipped otherwise and in -short mode")
	flagDuration = flag.Duration("duration", 60*time.Second, "how long the workload and the nemeses run")
	flagNemeses  = flag.String("nemeses", "process", "process, net (partitions and proxy), all, none, or a comma-separated list of kinds")
	flagSeed     = flag.Uint64("seed", 0, "seed of the fault schedule and the workload (0: pick one and print it)")
	flagWorkers  = flag.Int("workers", 8, "concurrent transfer workers")
	flagAccounts = flag.Int("accounts", 50, "accounts per bank")
	flagOut      = flag.String("out", "", "directory for the report, the history and the logs (default: a new one under $TMPDIR)")
	flagKeep     = flag.Bool("keep", false, "keep the data dirs after a passing run")
	flagBinDir   = flag.String("bin-dir", "", "use the decree and bank binaries in this directory instead of building them")
	flagParallel = flag.Bool("parallel-commit", false, "run the coordinators with --parallel-commit")
)

const (
	initialBalance = 1000
	callTimeout    = 5 * time.Second
	quietWindow    = 30 * time.Second // undecided or reserved longer than this after the last heal is a violation
	warmup         = 2 * time.Second
)

// TestChaos runs the whole system under a seeded schedule of faults, then
// checks the books, the participants' and coordinators' records and the
// history. See the package documentation for how to run it.
func TestChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("chaos test: skipped in -short mode")
	}
	if !*flagChaos && os.Getenv("DECREE_CHAOS") == "" {
		t.Skip("chaos test: runs only with -chaos or DECREE_CHAOS=1 (make chaos-short, make chaos)")
	}
	seed := *flagSeed
	if seed == 0 {
		seed = rand.Uint64() >> 12 // short enough to type
	}
	kinds, err := parseNemeses(*flagNemeses)
	if err != nil {
		t.Fatal(err)
	}
	out := *flagOut
	if out == "" {
		out, err = os.MkdirTemp("", fmt.Sprintf("decree-chaos-%d-", seed))
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{"logs", "data", "bin"} {
		if err := os.MkdirAll(filepath.Join(out, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	log := zerolog.New(zerolog.NewConsoleWriter(func(w *zerolog.ConsoleWriter) {
		w.Out = zerolog.NewTestWriter(t)
		w.TimeFormat = "15:04:05.000"
		w.NoColor = true
	})).With().Timestamp().Logger()
	replay := fmt.Sprintf("go test ./test/chaos -run TestChaos -v -timeout 20m -args -chaos -duration %v -nemeses %s -seed %d",
		*flagDuration, strings.Join(kinds, ","), seed)
	zerolog.TimeFieldFormat = time.RFC3339Nano
	log.Info().Uint64("seed", seed).Str("dir", out).Strs("nemeses", kinds).Stringer("duration", *flagDuration).Msg("chaos run")
	t.Logf("seed %d — replay with: %s", seed, replay)

	skipped := map[string]string{}
	if why := firewallUsable(); why != "" {
		for _, k := range partitionKinds {
			if slices.Contains(kinds, k) {
				skipped[k] = why
			}
		}
		kinds = slices.DeleteFunc(kinds, func(k string) bool { return skipped[k] != "" })
		if len(skipped) > 0 {
			t.Logf("SKIPPING the partition nemeses: %s", why)
		}
	}
	needFirewall := slices.ContainsFunc(kinds, func(k string) bool { return slices.Contains(partitionKinds, k) })
	var proxied uint64
	if slices.ContainsFunc(kinds, func(k string) bool { return slices.Contains(proxyKinds, k) }) {
		proxied = 1 + rand.New(rand.NewPCG(seed, 3)).Uint64N(clusterSize)
	}

	ctx, cancelAll := context.WithTimeout(context.Background(), *flagDuration+8*time.Minute)
	defer cancelAll()

	bins := binaries{decree: filepath.Join(*flagBinDir, "decree"), bank: filepath.Join(*flagBinDir, "bank")}
	if *flagBinDir == "" {
		log.Info().Msg("building decree and bank (CGO_ENABLED=0)")
		if bins, err = buildBinaries(ctx, t.TempDir()); err != nil {
			t.Fatal(err)
		}
	}

	// Teardown, on every way out: t.Cleanup covers failures and panics;
	// a signal handler covers ^C and kill. The processes also die with
	// the test (Pdeathsig) and a later run sweeps a dead run's chain.
	var fw *firewall
	var c *cluster
	var teardownOnce sync.Once
	teardown := func() {
		teardownOnce.Do(func() {
			if fw != nil { // first: nothing below may keep the rules in place
				if err := fw.close(); err != nil {
					log.Error().Err(err).Msg("removing the iptables chain")
				}
			}
			if c != nil {
				c.close()
			}
		})
	}
	t.Cleanup(teardown)
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, syscall.SIGINT, syscall.SIGTERM)
	defer func() { signal.Stop(sigc); close(sigc) }()
	go func() {
		if s, ok := <-sigc; ok {
			fmt.Fprintf(os.Stderr, "chaos: %v: tearing down the cluster and the firewall\n", s)
			teardown()
			os.Exit(2)
		}
	}()
	if needFirewall {
		if fw, err = newFirewall(log); err != nil {
			t.Fatalf("firewall: %v", err)
		}
	}
	var gidBase uint32
	if os.Geteuid() == 0 {
		gidBase = 40000 + uint32(os.Getpid()%1000)*10
	}
	c, err = newCluster(ctx, clusterConfig{dir: out, bins: bins, accounts: *flagAccounts, initial: initialBalance,
		gidBase: gidBase, proxiedNode: proxied, log: log})
	if err != nil {
		t.Fatalf("start the cluster: %v", err)
	}
	lead, _ := c.leader(ctx, time.Second)
	log.Info().Str("peers", c.peersFlag).Strs("banks", c.bankAddrs).Str("leader", lead.name).Msg("cluster up")

	r := runChaos(ctx, t, c, fw, log, runConfig{seed: seed, kinds: kinds, out: out})
	r.Skipped, r.Replay, r.Dir = skipped, replay, out

	var sb strings.Builder
	r.summary(&sb)
	fmt.Fprint(os.Stdout, "\n"+sb.String())
	if err := os.WriteFile(filepath.Join(out, "summary.txt"), []byte(sb.String()), 0o644); err != nil {
		t.Error(err)
	}
	if err := writeJSON(filepath.Join(out, "report.json"), r); err != nil {
		t.Error(err)
	}
	if r.Violations > 0 || len(r.Problems) > 0 {
		t.Fatalf("chaos run failed: %d violations, %d problems (seed %d; see %s)", r.Violations, len(r.Problems), seed, out)
	}
	if !*flagKeep {
		_ = os.RemoveAll(filepath.Join(out, "data"))
	}
}

type runConfig struct {
	seed  uint64
	kinds []string
	out   string
}

// runChaos runs the workload and the nemesis, lets the system settle,
// stops it, and checks what it left.
func runChaos(ctx context.Context, t *testing.T, c *cluster, fw *firewall, log zerolog.Logger, rc runConfig) *report {
	r := &report{Seed: rc.seed, Duration: flagDuration.String(), Nemeses: rc.kinds, Workers: *flagWorkers,
		Banks: len(c.banks), Accounts: *flagAccounts, Initial: initialBalance, FaultCount: map[string]int{}}
	problem := func(format string, args ...any) {
		r.Problems = append(r.Problems, fmt.Sprintf(format, args...))
		log.Error().Msgf(format, args...)
	}
	cl, err := client.Dial(c.endpoints, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()

	t0 := time.Now()
	end := t0.Add(*flagDuration)
	h := newHistory(t0)
	w := newWorkload(workloadConfig{banks: c.bankAddrs, accounts: *flagAccounts, maxAmount: 50, workers: *flagWorkers,
		readers: 1, readEvery: 20 * time.Millisecond, callTimeout: callTimeout, seed: rc.seed}, cl, h)
	n := &nemesis{c: c, w: w, h: h, fw: fw, log: log,
		plan: planSchedule(rc.seed, rc.kinds, *flagDuration-warmup-2*time.Second)}
	r.Schedule = n.plan
	for i, f := range n.plan {
		log.Info().Int("step", i).Str("kind", f.Kind).Stringer("hold", f.Hold.Round(time.Millisecond)).
			Stringer("gap", f.Gap.Round(time.Millisecond)).Msg("planned fault")
	}

	runCtx, stopRun := context.WithDeadline(ctx, end)
	defer stopRun()
	var wg sync.WaitGroup
	wg.Go(func() { w.run(runCtx) })
	wg.Go(func() { n.run(runCtx, warmup, end) })
	wg.Go(func() { progress(runCtx, log, h, w) })
	wg.Wait()

	// Everything healed: the 30 s budget to settle starts now.
	if err := n.healAll(ctx); err != nil {
		problem("final heal: %v", err)
	}
	lastHeal := time.Now()
	for _, f := range n.faults {
		if f.HealErr != "" {
			problem("heal of %s %v: %s", f.Kind, f.Targets, f.HealErr)
		}
		if f.Skipped != "" {
			problem("nemesis %s did not fire: %s", f.Kind, f.Skipped)
			continue
		}
		r.FaultCount[f.Kind]++
	}
	for _, k := range rc.kinds {
		if r.FaultCount[k] == 0 {
			problem("nemesis %s never fired: the run is too short for its schedule", k)
		}
	}
	log.Info().Int("faults", len(n.faults)).Msg("workload done, every fault healed; resolving unknown outcomes")

	ops, ts, order := h.snapshot()
	w.resolveUnknown(ops, ts, 20*time.Second)
	r.Quiet = awaitQuiet(ctx, c, lastHeal, lastHeal.Add(quietWindow))
	log.Info().Bool("quiet", r.Quiet.Quiet).Stringer("after", r.Quiet.After.Round(time.Millisecond)).Msg("settled")
	ops, ts, order = h.snapshot()
	if err := writeHistory(filepath.Join(rc.out, "history.jsonl"), ops, ts, order); err != nil {
		problem("write history: %v", err)
	}

	in := checkInput{Ops: ops, Transfers: ts, Accounts: *flagAccounts, Initial: initialBalance, Quiet: r.Quiet}
	if in.Banks, err = readBalances(ctx, c); err != nil {
		problem("read balances: %v", err)
	}
	if r.Converged, err = awaitConverged(ctx, c, 20*time.Second); err != nil {
		problem("coordinators did not converge on one applied index: %v (%s)", err, r.Converged)
	}
	for _, u := range c.stopAll(c.all(), 10*time.Second) {
		problem("did not stop cleanly: %s", u)
	}
	if in.Banks != nil {
		if err := readParticipantLogs(c, in.Banks); err != nil {
			problem("%v", err)
		}
	}
	if in.Nodes, err = readCoordinatorStores(c); err != nil {
		problem("%v", err)
	}
	in.Crashes = c.crashes()
	if in.Banks == nil {
		in.Banks = map[string]*bankFinal{}
	}
	r.Verdict = check(in)
	r.Violations = r.Verdict.violations()

	r.LongestUndecided = recoveryTimes(n.faults, ops, in.Banks, t0.UnixNano())
	caughtOutcomes(n.faults, ops)
	r.Faults = n.faults
	r.Transfers = countTransfers(ops, ts)
	r.Transfers.HarnessErrors = w.harnessErrors.Load()
	if r.Transfers.HarnessErrors > 0 {
		problem("%d calls failed for a reason other than an unknown outcome (last: %v)", r.Transfers.HarnessErrors, w.lastErr.Load())
	}
	if r.Transfers.Committed == 0 {
		problem("no transfer committed")
	}
	return r
}

// progress logs the workload's counts every 10 s.
func progress(ctx context.Context, log zerolog.Logger, h *history, w *workload) {
	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
	for range 100_000 {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		h.mu.Lock()
		counts := map[string]int{}
		for _, o := range h.ops {
			counts[o.Kind+" "+o.Result]++
		}
		h.mu.Unlock()
		log.Info().Int("committed", counts["commit committed"]).Int("aborted", counts["commit aborted"]).
			Int("unknown", counts["commit unknown"]).Int("reads", counts["outcome committed"]+counts["outcome aborted"]+counts["outcome unknown"]).
			Int("in_flight", w.inFlight()).Msg("progress")
	}
}
