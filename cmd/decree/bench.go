package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"runtime/trace"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/decree-tx/decree/coordinator/client"
)

// Bounds of the bench flags.
const (
	benchMaxClients      = 10000
	benchMaxParticipants = 64      // the coordinator's default --max-branches
	benchMaxPayload      = 1 << 20 // the coordinator's default --max-payload
	// benchCountTimeLimit bounds a --count run given no --duration.
	benchCountTimeLimit = 10 * time.Minute
)

type benchFlags struct {
	endpoints    []string
	embedded     bool
	parallel     bool
	clients      int
	participants int
	duration     time.Duration
	count        int64
	payload      int
	abortRatio   float64
	txnTimeout   time.Duration
	jsonPath     string
	plotPath     string
	cpuProfile   string
	traceFile    string
	logLevel     string
}

func runBench(args []string, stdout, stderr io.Writer) error {
	f, err := parseBenchFlags(args, stderr)
	if err != nil {
		return err
	}
	// The logger (from every node, participant and client goroutine) and
	// the progress line share stderr: one write at a time.
	stderr = &lockedWriter{w: stderr}
	lvl, err := zerolog.ParseLevel(strings.ToLower(f.logLevel))
	if err != nil {
		return usagef("--log-level: %v", err)
	}
	logger := zerolog.New(zerolog.ConsoleWriter{Out: stderr, TimeFormat: "15:04:05.000", NoColor: !isTerminal(stderr)}).
		Level(lvl).With().Timestamp().Logger()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	procs := benchProcs(f, os.Getenv("GOMAXPROCS") != "")
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(procs))
	env, err := setUpBench(ctx, f, logger)
	if err != nil {
		return err
	}
	res, runErr := env.run(ctx, f, stderr)
	if res != nil {
		res.GoMaxProcs = procs
	}
	if runErr == nil && ctx.Err() != nil {
		fmt.Fprintln(stderr, "interrupted: the results cover the run so far; transactions cut short count as errors")
	}
	if err := env.close(); err != nil && runErr == nil {
		runErr = err
	}
	if runErr != nil {
		return runErr
	}
	if err := printBenchTable(stdout, res); err != nil {
		return err
	}
	if f.jsonPath != "" {
		if err := writeJSONFile(f.jsonPath, res); err != nil {
			return err
		}
	}
	if f.plotPath != "" {
		if err := writeBenchPlot(f.plotPath, res); err != nil {
			return err
		}
	}
	return nil
}

// benchProcs is the GOMAXPROCS for the bench process: the CPUs plus one per
// store the process hosts (each null participant's log and, embedded, each
// node's), unless the user set GOMAXPROCS. A store's WAL syncer keeps its
// P while blocked in fdatasync, so with five stores syncing in a 2-CPU
// process the other goroutines were left with too few Ps and the CPUs
// idled: raising it from 2 to 6 took the embedded 256-client run from
// about 2,300 to 6,400 tx/s. A real deployment runs one store per
// process and does not need this.
func benchProcs(f benchFlags, userSet bool) int {
	if userSet {
		return runtime.GOMAXPROCS(0)
	}
	stores := f.participants
	if f.embedded {
		stores += 3
	}
	return runtime.NumCPU() + stores
}

func parseBenchFlags(args []string, stderr io.Writer) (benchFlags, error) {
	var f benchFlags
	var endpoints, plotFormat string
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.StringVar(&endpoints, "endpoints", "", "comma-separated host:port of a running cluster's nodes")
	fs.BoolVar(&f.embedded, "embedded", false, "start a local 3-node cluster in this process and benchmark it")
	fs.BoolVar(&f.parallel, "parallel-commit", false, "with --embedded: run the cluster with parallel commit (one consensus round)")
	fs.IntVar(&f.clients, "clients", 16, "concurrent clients, each committing one transaction at a time")
	fs.IntVar(&f.participants, "participants", 2, "participants (null participant servers in this process) per transaction")
	fs.DurationVar(&f.duration, "duration", 10*time.Second, "how long to run; with --count, a time limit (10m unless given)")
	fs.Int64Var(&f.count, "count", 0, "stop after this many transactions (0: run for --duration)")
	fs.IntVar(&f.payload, "payload", 128, "payload bytes per participant branch")
	fs.Float64Var(&f.abortRatio, "abort-ratio", 0, "share of transactions whose participants vote NO, 0..1")
	fs.DurationVar(&f.txnTimeout, "txn-timeout", 30*time.Second, "deadline of one transaction; past it the transaction counts as an error")
	fs.StringVar(&f.jsonPath, "json", "", "also write the results as JSON to this file")
	fs.StringVar(&f.plotPath, "plot", "", "write latency-over-time and latency-histogram charts to this .png or .svg file")
	fs.StringVar(&f.cpuProfile, "cpuprofile", "", "write a CPU profile of the load phase (this process) to this file")
	fs.StringVar(&f.traceFile, "trace", "", "write a Go execution trace of the load phase (this process) to this file")
	fs.StringVar(&f.logLevel, "log-level", "warn", "log level of the embedded cluster and participants")
	if err := parseFlags(fs, args, stderr); err != nil {
		return f, err
	}
	set := map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { set[fl.Name] = true })

	switch {
	case f.embedded && endpoints != "":
		return f, usagef("--endpoints and --embedded exclude each other")
	case !f.embedded && endpoints == "":
		return f, usagef("--endpoints or --embedded is required")
	case endpoints != "":
		eps, err := splitEndpoints(endpoints)
		if err != nil {
			return f, err
		}
		f.endpoints = eps
	}
	switch {
	case f.clients < 1 || f.clients > benchMaxClients:
		return f, usagef("--clients must be between 1 and %d, not %d", benchMaxClients, f.clients)
	case f.participants < 1 || f.participants > benchMaxParticipants:
		return f, usagef("--participants must be between 1 and %d, not %d", benchMaxParticipants, f.participants)
	case f.payload < 0 || f.payload > benchMaxPayload:
		return f, usagef("--payload must be between 0 and %d bytes, not %d", benchMaxPayload, f.payload)
	case !(f.abortRatio >= 0 && f.abortRatio <= 1): // also refuses NaN
		return f, usagef("--abort-ratio must be between 0 and 1, not %v", f.abortRatio)
	case f.count < 0:
		return f, usagef("--count must not be negative")
	case f.duration < 0:
		return f, usagef("--duration must not be negative")
	case f.txnTimeout <= 0:
		return f, usagef("--txn-timeout must be positive")
	}
	if f.count > 0 && (!set["duration"] || f.duration == 0) {
		f.duration = benchCountTimeLimit
	}
	if f.count == 0 && f.duration == 0 {
		return f, usagef("--duration or --count must be positive")
	}
	if f.plotPath != "" {
		plotFormat = strings.ToLower(strings.TrimPrefix(filepath.Ext(f.plotPath), "."))
		if plotFormat != "png" && plotFormat != "svg" {
			return f, usagef("--plot file must end in .png or .svg, not %q", f.plotPath)
		}
	}
	return f, nil
}

// benchEnv is what a run needs: the cluster (embedded or not), the null
// participants and a client. Everything it starts, close stops.
type benchEnv struct {
	log       zerolog.Logger
	dir       string
	cluster   *embeddedCluster // nil with --endpoints
	endpoints []string
	parts     *nullParticipants
	admin     *adminConns
	cl        *client.Client
}

func setUpBench(ctx context.Context, f benchFlags, logger zerolog.Logger) (_ *benchEnv, err error) {
	dir, err := os.MkdirTemp("", "decree-bench-")
	if err != nil {
		return nil, fmt.Errorf("create temp dir: %w", err)
	}
	env := &benchEnv{log: logger, dir: dir, endpoints: f.endpoints}
	defer func() {
		if err != nil {
			env.close()
		}
	}()
	if f.embedded {
		env.cluster, err = startEmbeddedCluster(filepath.Join(dir, "coordinators"), f.parallel, logger)
		if err != nil {
			return nil, err
		}
		env.endpoints = env.cluster.endpoints
	}
	env.parts, err = startNullParticipants(ctx, filepath.Join(dir, "participants"), f.participants,
		env.endpoints, f.abortRatio, logger)
	if err != nil {
		return nil, err
	}
	if env.admin, err = dialAdmin(env.endpoints); err != nil {
		return nil, err
	}
	env.cl, err = client.Dial(env.endpoints, client.Options{Logger: logger})
	if err != nil {
		return nil, fmt.Errorf("dial coordinators: %w", err)
	}
	if err := env.waitLeader(ctx, 15*time.Second); err != nil {
		return nil, err
	}
	return env, nil
}

func (e *benchEnv) waitLeader(ctx context.Context, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		_, ok := client.Leader(e.cl.Status(sctx))
		cancel()
		if ok {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no agreed coordinator leader among %s after %v", strings.Join(e.endpoints, ","), d)
		}
		select {
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
		}
	}
}

func (e *benchEnv) close() error {
	var errs []error
	if e.cl != nil {
		e.cl.Close()
	}
	if e.admin != nil {
		e.admin.close()
	}
	if e.cluster != nil {
		errs = append(errs, e.cluster.stop())
	}
	if e.parts != nil {
		errs = append(errs, e.parts.stop())
	}
	errs = append(errs, os.RemoveAll(e.dir))
	return errors.Join(errs...)
}

// counters is what is measured before and after the load.
type counters struct {
	nodes     []nodeCounters
	partSyncs uint64
	selfCPU   float64
}

type nodeCounters struct {
	endpoint string
	ok       bool // the node answered
	id       uint64
	fsyncs   uint64
	cpu      float64
}

func (c counters) coordFsyncs() (n uint64) {
	for _, nc := range c.nodes {
		n += nc.fsyncs
	}
	return n
}

// counters reads them; it measures even after an interrupt, so an
// interrupted run still reports.
func (e *benchEnv) counters(ctx context.Context) counters {
	nodes := e.admin.read(context.WithoutCancel(ctx))
	return counters{nodes: nodes, partSyncs: e.parts.syncs(), selfCPU: selfCPUSeconds()}
}

// quiesce waits until phase 2 and the Finished records of the load have
// reached the disks (no fsync anywhere for a while; at most d, or until
// an interrupt), and returns the counters then.
func (e *benchEnv) quiesce(ctx context.Context, d time.Duration) counters {
	const calm = 250 * time.Millisecond
	deadline := time.Now().Add(d)
	last := e.counters(ctx)
	since := time.Now()
	for time.Since(since) < calm && time.Now().Before(deadline) {
		select {
		case <-time.After(25 * time.Millisecond):
		case <-ctx.Done():
			return last
		}
		c := e.counters(ctx)
		if c.coordFsyncs() != last.coordFsyncs() || c.partSyncs != last.partSyncs {
			since = time.Now()
		}
		last = c
	}
	return last
}

// run warms up, drives the load and measures.
func (e *benchEnv) run(ctx context.Context, f benchFlags, stderr io.Writer) (*benchResult, error) {
	branches := benchBranches(e.parts.addrs, f.payload)
	if err := e.warmUp(ctx, branches, f.txnTimeout); err != nil {
		return nil, err
	}
	before := e.quiesce(ctx, 5*time.Second)

	for _, r := range []struct {
		path, what string
		start      func(io.Writer) error
		stop       func()
	}{
		{f.cpuProfile, "cpu profile", pprof.StartCPUProfile, pprof.StopCPUProfile},
		{f.traceFile, "trace", trace.Start, trace.Stop},
	} {
		stop, err := record(r.path, r.what, r.start, r.stop)
		if err != nil {
			return nil, err
		}
		defer stop()
	}

	rec := newRecorder()
	elapsed := e.load(ctx, f, branches, rec, stderr)
	after := e.quiesce(ctx, 10*time.Second)
	return summarize(f, e.endpoints, e.cluster != nil, rec, elapsed, before, after), nil
}

// record starts a recording of the load phase (a CPU profile, a trace)
// into path, unless path is empty, and returns what ends it.
func record(path, what string, start func(io.Writer) error, stop func()) (func(), error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", what, err)
	}
	if err := start(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", what, err)
	}
	return func() { stop(); f.Close() }, nil
}

// load runs f.clients workers until f.count transactions have been
// started or f.duration has passed, and returns the wall time it took.
func (e *benchEnv) load(ctx context.Context, f benchFlags, branches []client.Branch, rec *recorder, stderr io.Writer) time.Duration {
	start := time.Now()
	rec.start(start)
	stopStarting, cancel := context.WithDeadline(ctx, start.Add(f.duration))
	defer cancel()
	prog := newProgress(stderr, f, start)
	progDone := make(chan struct{})
	var progWG sync.WaitGroup
	progWG.Go(func() { prog.loop(rec, progDone) })

	runClients(ctx, stopStarting, e.cl, workload{clients: f.clients, count: f.count, txnTimeout: f.txnTimeout, branches: branches}, rec)
	elapsed := time.Since(start)
	close(progDone)
	progWG.Wait()
	rec.finish(time.Now())
	prog.finish(rec, elapsed)
	return elapsed
}

// workload is what the clients of a run do: each commits one transaction
// of branches at a time.
type workload struct {
	clients    int
	count      int64 // stop after this many transactions; 0: no limit
	txnTimeout time.Duration
	branches   []client.Branch
}

// runClients runs w.clients workers until stopStarting ends (or w.count
// transactions were started), recording each transaction in rec. The end
// of stopStarting stops new transactions, not running ones; only ctx (an
// interrupt) cuts those short, and each lasts at most w.txnTimeout.
func runClients(ctx, stopStarting context.Context, cl *client.Client, w workload, rec *recorder) {
	var issued atomic.Int64
	var wg sync.WaitGroup
	for range w.clients {
		wg.Go(func() {
			for stopStarting.Err() == nil {
				if w.count > 0 && issued.Add(1) > w.count {
					return
				}
				tctx, cancel := context.WithTimeout(ctx, w.txnTimeout)
				t0 := time.Now()
				res, err := cl.Commit(tctx, client.Txn{Branches: w.branches})
				lat := time.Since(t0)
				cancel()
				rec.record(res.State, lat, err)
			}
		})
	}
	wg.Wait()
}

// benchBranches are the branches of every transaction: one per null
// participant, each with the same random payload.
func benchBranches(addrs []string, payloadBytes int) []client.Branch {
	payload := make([]byte, payloadBytes)
	rand.Read(payload)
	branches := make([]client.Branch, len(addrs))
	for i, a := range addrs {
		branches[i] = client.Branch{Participant: a, Payload: payload}
	}
	return branches
}

// warmUp commits one transaction: connections are set up and the path
// works.
func (e *benchEnv) warmUp(ctx context.Context, branches []client.Branch, timeout time.Duration) error {
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if _, err := e.cl.Commit(wctx, client.Txn{Branches: branches}); err != nil {
		return fmt.Errorf("warm-up transaction: %w", err)
	}
	return nil
}

func selfCPUSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

func writeJSONFile(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode results: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write results: %w", err)
	}
	return nil
}

// lockedWriter serialises writes to w, which the caller may not have made
// safe for concurrent use (a test's bytes.Buffer).
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
