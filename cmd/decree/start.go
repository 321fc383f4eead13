package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	"github.com/decree-tx/decree/coordinator"
	"github.com/decree-tx/decree/txlog"
	"github.com/decree-tx/decree/txnspec"
)

// Bounds of the Pebble memory flags: below 1 MiB Pebble thrashes; a
// memtable must stay under Pebble's 4 GiB limit.
const (
	maxCacheSize    = 64 << 30
	maxMemTableSize = 1 << 30
)

type startFlags struct {
	id            uint64
	listen        string
	peers         string
	dataDir       string
	clusterName   string
	metricsListen string
	tick          time.Duration
	electionTicks int
	snapshotEvery uint64
	prepTimeout   time.Duration
	retention     time.Duration
	maxBranches   int
	maxPayload    int
	maxInFlight   int
	maxHeldBytes  int64
	maxConns      int
	maxStreams    uint
	parallel      bool
	cacheSize     byteSize
	memtableSize  byteSize
	goMemLimit    byteSize
	clusterState  string
	logLevel      string
	logFormat     string
}

func runStart(args []string, _, stderr io.Writer) error {
	f := startFlags{cacheSize: byteSize(txlog.DefaultCacheSize), memtableSize: byteSize(txlog.DefaultMemTableSize),
		goMemLimit: defaultGoMemoryLimit}
	fs := flag.NewFlagSet("start", flag.ContinueOnError)
	fs.Uint64Var(&f.id, "id", 0, "this node's raft id (a key of --peers)")
	fs.StringVar(&f.listen, "listen", "", "host:port to serve on (default: this node's address in --peers)")
	fs.StringVar(&f.peers, "peers", "", "every member as id=host:port, comma-separated")
	fs.StringVar(&f.dataDir, "data-dir", "", "directory for this node's durable state")
	fs.StringVar(&f.clusterName, "cluster-name", "decree", "cluster name; with --peers it forms the cluster id")
	fs.DurationVar(&f.tick, "tick", coordinator.DefaultRaftTickInterval, "raft tick interval")
	fs.IntVar(&f.electionTicks, "election-ticks", coordinator.DefaultElectionTicks, "raft election timeout in ticks")
	fs.Uint64Var(&f.snapshotEvery, "snapshot-every", coordinator.DefaultSnapshotEvery, "snapshot after this many applied entries")
	fs.DurationVar(&f.prepTimeout, "prepare-timeout", coordinator.DefaultPrepareTimeout, "abort a transaction whose participants have not all voted within this")
	fs.DurationVar(&f.retention, "retention", coordinator.DefaultRetention, "keep finished transaction records this long for outcome queries")
	fs.IntVar(&f.maxBranches, "max-branches", txnspec.DefaultMaxParticipants, "most participants one transaction may have")
	fs.IntVar(&f.maxPayload, "max-payload", txnspec.DefaultMaxPayload, "largest branch payload in bytes")
	fs.IntVar(&f.maxInFlight, "max-in-flight", coordinator.DefaultMaxInFlight, "most transactions the leader votes on at once; more are refused (ResourceExhausted)")
	fs.Int64Var(&f.maxHeldBytes, "max-held-bytes", coordinator.DefaultMaxHeldBytes, "most payload bytes the leader holds for prepares; more are refused (ResourceExhausted)")
	fs.IntVar(&f.maxConns, "max-connections", 1024, "most open connections to this node; more are closed at once")
	fs.UintVar(&f.maxStreams, "max-streams", 1024, "most concurrent calls on one connection; more wait for a free one")
	fs.BoolVar(&f.parallel, "parallel-commit", false, "stage transactions in raft while they vote: COMMITTED after one consensus round")
	fs.Var(&f.cacheSize, "cache-size", "Pebble block cache in bytes (or KiB, MiB, GiB)")
	fs.Var(&f.memtableSize, "memtable-size", "Pebble memtable in bytes (or KiB, MiB, GiB); at most two are held")
	fs.Var(&f.goMemLimit, "go-memory-limit", "soft limit of the Go runtime's memory, in bytes (or KiB, MiB, GiB); 0 for none; GOMEMLIMIT wins")
	fs.StringVar(&f.metricsListen, "metrics-listen", "", "host:port for plain-HTTP operator endpoints (/debug/pprof); off when empty")
	fs.StringVar(&f.clusterState, "initial-cluster-state", clusterStateAuto,
		"new: bootstrap a new cluster on an empty data dir; existing: the cluster exists, refuse an empty data dir; "+
			"unset: bootstrap an empty data dir unless a peer's leader reports this node ran before")
	fs.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.StringVar(&f.logFormat, "log-format", "json", "log format: json or console")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	cfg, err := f.nodeConfig()
	if err != nil {
		return err
	}
	logger, err := newLogger(stderr, f.logLevel, f.logFormat)
	if err != nil {
		return err
	}
	cfg.Logger = logger
	return serve(cfg, f, logger)
}

func (f *startFlags) nodeConfig() (coordinator.Config, error) {
	if f.id == 0 {
		return coordinator.Config{}, usagef("--id is required and must be positive")
	}
	if f.dataDir == "" {
		return coordinator.Config{}, usagef("--data-dir is required")
	}
	if f.peers == "" {
		return coordinator.Config{}, usagef("--peers is required")
	}
	peers, err := coordinator.ParsePeers(f.peers)
	if err != nil {
		return coordinator.Config{}, usagef("--peers: %v", err)
	}
	if err := coordinator.CheckPeerNames(context.Background(), f.id, peers, lookupIP); err != nil {
		return coordinator.Config{}, usagef("--peers: %v", err)
	}
	if f.listen == "" {
		f.listen = peers[f.id]
	}
	if _, _, err := net.SplitHostPort(f.listen); err != nil {
		return coordinator.Config{}, usagef("--listen: %v", err)
	}
	if f.tick <= 0 || f.electionTicks < 2 {
		return coordinator.Config{}, usagef("--tick must be positive and --election-ticks at least 2")
	}
	if f.prepTimeout <= 0 || f.retention <= 0 || f.maxBranches <= 0 || f.maxPayload <= 0 {
		return coordinator.Config{}, usagef("--prepare-timeout, --retention, --max-branches and --max-payload must be positive")
	}
	if f.maxInFlight <= 0 || f.maxHeldBytes <= 0 || f.maxConns <= 0 || f.maxStreams == 0 || f.maxStreams > math.MaxUint32 {
		return coordinator.Config{}, usagef("--max-in-flight, --max-held-bytes, --max-connections and --max-streams must be positive")
	}
	// Peers connect too: leave them room next to the clients.
	if f.maxConns < 2*len(peers) {
		return coordinator.Config{}, usagef("--max-connections must be at least %d (twice the peers)", 2*len(peers))
	}
	if f.cacheSize < 1<<20 || f.cacheSize > maxCacheSize {
		return coordinator.Config{}, usagef("--cache-size must be between 1MiB and %v, not %v", byteSize(maxCacheSize), f.cacheSize)
	}
	if f.memtableSize < 1<<20 || f.memtableSize > maxMemTableSize {
		return coordinator.Config{}, usagef("--memtable-size must be between 1MiB and %v, not %v", byteSize(maxMemTableSize), f.memtableSize)
	}
	switch f.clusterState {
	case clusterStateAuto, clusterStateNew, clusterStateExisting:
	default:
		return coordinator.Config{}, usagef("--initial-cluster-state must be new or existing, not %q", f.clusterState)
	}
	if f.goMemLimit != 0 && f.goMemLimit < minGoMemoryLimit {
		return coordinator.Config{}, usagef("--go-memory-limit must be 0 (none) or at least %v, not %v", byteSize(minGoMemoryLimit), f.goMemLimit)
	}
	return coordinator.Config{
		ID:               f.id,
		Peers:            peers,
		ClusterID:        coordinator.ClusterID(f.clusterName, peers),
		RaftTickInterval: f.tick,
		ElectionTicks:    f.electionTicks,
		SnapshotEvery:    f.snapshotEvery,
		JoinExisting:     f.clusterState == clusterStateExisting,
		Driver: coordinator.DriverConfig{
			Core: coordinator.CoreConfig{PrepareTimeout: f.prepTimeout, Retention: f.retention, ParallelCommit: f.parallel,
				MaxInFlight: f.maxInFlight, MaxHeldBytes: f.maxHeldBytes},
			MaxBranches: f.maxBranches,
			MaxPayload:  f.maxPayload,
		},
	}, nil
}

// defaultGoMemoryLimit is the Go runtime's soft memory limit for a node.
// decree collects garbage at GOGC=400 (see main.go) to save CPU; the limit
// makes the collector work harder instead of letting the heap reach five
// times its live size when the live heap grows (a follower catching up
// holds many entries at once), so that a node's memory stays bounded by
// configuration. The static build keeps Pebble's memtables and block
// cache on the Go heap too: cache + two memtables (64 MiB by default) are
// inside this limit.
const defaultGoMemoryLimit = 384 << 20

// minGoMemoryLimit keeps a limit from starving the node: below it the
// collector would run continuously.
const minGoMemoryLimit = 64 << 20

// serve opens the store and the port, runs the node until SIGTERM/SIGINT or
// a fatal node error, then shuts down in reverse order.
func serve(cfg coordinator.Config, f startFlags, logger zerolog.Logger) error {
	log := logger.With().Str("component", "main").Uint64("node", cfg.ID).Logger()
	if os.Getenv("GOMEMLIMIT") == "" && f.goMemLimit > 0 {
		debug.SetMemoryLimit(int64(f.goMemLimit))
	}
	if err := os.MkdirAll(f.dataDir, 0o755); err != nil {
		return fmt.Errorf("create data dir: %w", err)
	}
	store, err := txlog.Open(f.dataDir, txlog.Identity{ClusterID: cfg.ClusterID, NodeID: cfg.ID},
		txlog.Options{Logger: logger.With().Str("component", "txlog").Logger(),
			CacheSize: int64(f.cacheSize), MemTableSize: uint64(f.memtableSize)})
	if err != nil {
		return err
	}
	defer store.Close()
	if err := checkBootstrap(cfg, f, store); err != nil {
		return err
	}
	tcp, err := net.Listen("tcp", f.listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", f.listen, err)
	}
	lis := newLimitListener(tcp, f.maxConns, logger.With().Str("component", "listener").Logger())
	if f.metricsListen != "" {
		stopHTTP, err := serveMetricsHTTP(f.metricsListen, logger.With().Str("component", "http").Logger())
		if err != nil {
			lis.Close()
			return err
		}
		defer stopHTTP()
	}
	coord, err := coordinator.New(cfg, store)
	if err != nil {
		lis.Close()
		return err
	}
	node, drv := coord.Node, coord.Driver
	srv := grpc.NewServer(coordinator.ServerOptions(coordinator.ServerLimits{
		MaxBranches: f.maxBranches, MaxPayload: f.maxPayload, MaxStreams: uint32(f.maxStreams)})...)
	coord.Register(srv)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	reflection.Register(srv)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// Health says SERVING only while the node knows a leader.
	healthDone := make(chan struct{})
	go func() { defer close(healthDone); drv.ReportHealth(ctx, hs, f.tick) }()
	go func() {
		if err := srv.Serve(lis); err != nil {
			log.Error().Err(err).Msg("grpc server stopped")
		}
	}()
	log.Info().Str("listen", lis.Addr().String()).Str("data_dir", f.dataDir).
		Str("cluster_id", fmt.Sprintf("%x", cfg.ClusterID)).Msg("coordinator node serving")

	select {
	case <-ctx.Done():
		log.Info().Msg("shutting down")
	case <-node.Done():
	}
	stop()
	<-healthDone
	hs.Shutdown()
	stopServer(srv, 5*time.Second)
	if err := coord.Stop(); err != nil {
		return fmt.Errorf("node failed: %w", err)
	}
	log.Info().Msg("stopped cleanly")
	return nil
}

// checkBootstrap refuses, with no --initial-cluster-state, to bootstrap
// an empty store of a node that a peer's leader knows ran before.
func checkBootstrap(cfg coordinator.Config, f startFlags, store *txlog.Store) error {
	if f.clusterState != clusterStateAuto {
		return nil
	}
	fresh, err := coordinator.Fresh(store)
	if err != nil || !fresh {
		return err
	}
	return checkNeverJoined(context.Background(), cfg)
}

// stopServer drains in-flight calls, but never waits longer than d: peer
// streams are long-lived and would hold GracefulStop forever.
func stopServer(srv *grpc.Server, d time.Duration) {
	done := make(chan struct{})
	go func() { srv.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
		srv.Stop()
	}
}

// lookupIP resolves a peer's host name for the check that no two peers are
// one node.
func lookupIP(ctx context.Context, host string) ([]netip.Addr, error) {
	return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
}
