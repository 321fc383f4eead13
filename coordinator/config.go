package coordinator

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/decree-tx/decree/internal/opts"
	"github.com/decree-tx/decree/txnspec"
)

// Defaults of Config's fields; cmd/decree's flags default to them too.
const (
	DefaultRaftTickInterval = 100 * time.Millisecond
	DefaultElectionTicks    = 10
	DefaultHeartbeatTicks   = 1
	DefaultSnapshotEvery    = 10000
	DefaultCatchUpEntries   = 5000
	DefaultMaxBatch         = 512
)

// Config configures a Node. Zero values take the documented defaults.
type Config struct {
	// ID is this node's raft id; it must be a key of Peers.
	ID uint64
	// Peers maps every initial member's raft id to its host:port.
	Peers map[uint64]string
	// ClusterID identifies the cluster; see ClusterID.
	ClusterID uint64
	// JoinExisting says the cluster already exists (etcd's
	// --initial-cluster-state existing): a store without raft state is
	// then refused with ErrLostState instead of bootstrapping a new group
	// from Peers. A node that lost its disk and bootstrapped again would
	// start from an empty hard state and could vote twice in one term.
	JoinExisting bool

	// RaftTickInterval is the period of raft's logical clock, the unit of
	// ElectionTicks and HeartbeatTicks (default DefaultRaftTickInterval).
	// The 2PC core's timers tick on DriverConfig.CoreTickInterval.
	RaftTickInterval time.Duration
	// ElectionTicks is raft's election timeout in ticks (default 10);
	// followers wait a random time in [ElectionTicks, 2*ElectionTicks).
	ElectionTicks int
	// HeartbeatTicks is the leader's heartbeat period in ticks (default 1).
	HeartbeatTicks int

	// SnapshotEvery takes a snapshot once this many entries have been
	// applied since the last one (default 10000).
	SnapshotEvery uint64
	// CatchUpEntries is how many entries the log keeps below a snapshot so
	// a slightly lagging follower catches up without a snapshot (default 5000).
	CatchUpEntries uint64
	// SnapshotChunkBytes is how much state one chunk of a snapshot
	// transfer carries (default DefaultSnapshotChunkBytes).
	SnapshotChunkBytes int
	// MaxBatch caps the proposals packed into one raft entry (default 512).
	MaxBatch int

	// Clock is the time source (default WallClock).
	Clock Clock
	// Nonce distinguishes this incarnation's proposal ids from an earlier
	// one's (default: random).
	Nonce uint32
	// Dial opens peer connections (default: a net.Dialer).
	Dial func(ctx context.Context, addr string) (net.Conn, error)
	// Logger is the node's logger; it gets a "component" field per part.
	Logger zerolog.Logger

	// Driver configures the 2PC driver that runs on the node (the
	// leader's work) and its core. New gives it the node's Clock and Dial
	// where it sets none, and the node's Logger.
	Driver DriverConfig
}

// Validate reports the settings of c that cannot work, each naming its
// field: bad peers, a negative value (zero stands for the default), or
// heartbeats no more frequent than elections; and the Driver's. NewNode
// and New call it.
func (c *Config) Validate() error {
	if err := ValidatePeers(c.ID, c.Peers); err != nil {
		return err
	}
	if err := errors.Join(
		opts.NotNegative("RaftTickInterval", c.RaftTickInterval),
		opts.NotNegative("ElectionTicks", c.ElectionTicks),
		opts.NotNegative("HeartbeatTicks", c.HeartbeatTicks),
		opts.NotNegative("SnapshotChunkBytes", c.SnapshotChunkBytes),
		opts.NotNegative("MaxBatch", c.MaxBatch),
	); err != nil {
		return err
	}
	heartbeat := cmp.Or(c.HeartbeatTicks, DefaultHeartbeatTicks)
	election := cmp.Or(c.ElectionTicks, DefaultElectionTicks)
	if heartbeat >= election {
		return fmt.Errorf("HeartbeatTicks (%d) must be below ElectionTicks (%d)", heartbeat, election)
	}
	if err := c.Driver.Validate(); err != nil {
		return fmt.Errorf("driver: %w", err)
	}
	return nil
}

// EnsureDefaults returns c with its zero fields set to their defaults (the
// Default* constants), after Validate; the Driver's are set by NewDriver.
func (c *Config) EnsureDefaults() (Config, error) {
	cfg := *c
	if err := cfg.Validate(); err != nil {
		return cfg, err
	}
	if cfg.RaftTickInterval <= 0 {
		cfg.RaftTickInterval = DefaultRaftTickInterval
	}
	if cfg.ElectionTicks <= 0 {
		cfg.ElectionTicks = DefaultElectionTicks
	}
	if cfg.HeartbeatTicks <= 0 {
		cfg.HeartbeatTicks = DefaultHeartbeatTicks
	}
	if cfg.SnapshotEvery == 0 {
		cfg.SnapshotEvery = DefaultSnapshotEvery
	}
	if cfg.CatchUpEntries == 0 {
		cfg.CatchUpEntries = DefaultCatchUpEntries
	}
	if cfg.SnapshotChunkBytes <= 0 {
		cfg.SnapshotChunkBytes = DefaultSnapshotChunkBytes
	}
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = DefaultMaxBatch
	}
	if cfg.Clock == nil {
		cfg.Clock = WallClock{}
	}
	if cfg.Nonce == 0 {
		var b [4]byte
		if _, err := rand.Read(b[:]); err != nil {
			return cfg, fmt.Errorf("draw proposal nonce: %w", err)
		}
		cfg.Nonce = binary.BigEndian.Uint32(b[:]) | 1
	}
	if cfg.Dial == nil {
		var d net.Dialer
		cfg.Dial = func(ctx context.Context, addr string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", addr)
		}
	}
	return cfg, nil
}

// ValidatePeers checks that a peers map is usable and contains id, and
// that no two peers are one endpoint as written (IP literals compared in
// canonical form, names case-insensitively). It does no I/O: the
// simulation and tests call it on every start. CheckPeerNames also
// resolves names, which cmd does before starting a node.
func ValidatePeers(id uint64, peers map[uint64]string) error {
	return checkPeers(id, peers, func(host string, port uint16) []string { return []string{literalEndpoint(host, port)} })
}

// Resolver looks up a host name's addresses (net.DefaultResolver.LookupNetIP
// with network "ip").
type Resolver func(ctx context.Context, host string) ([]netip.Addr, error)

// CheckPeerNames is ValidatePeers with names resolved through lookup, so
// that 127.0.0.1:P and localhost:P are one node twice (such a cluster can
// never reach a quorum). A name that does not resolve is compared as
// written: a peer whose name is not in DNS yet must not stop the others.
func CheckPeerNames(ctx context.Context, id uint64, peers map[uint64]string, lookup Resolver) error {
	return checkPeers(id, peers, func(host string, port uint16) []string { return resolvedEndpoints(ctx, host, port, lookup) })
}

// checkPeers validates every peer's address with txnspec.ParseAddr, the
// one address parser, and compares the endpoints each one names.
func checkPeers(id uint64, peers map[uint64]string, endpoints func(host string, port uint16) []string) error {
	if len(peers) == 0 {
		return errors.New("no peers configured")
	}
	ids := make([]uint64, 0, len(peers))
	for pid := range peers {
		ids = append(ids, pid)
	}
	slices.Sort(ids)
	seen := make(map[string]uint64, len(peers))
	for _, pid := range ids {
		addr := peers[pid]
		if pid == 0 {
			return errors.New("peer id 0 is reserved")
		}
		host, port, err := txnspec.ParseAddr(addr)
		if err != nil {
			return fmt.Errorf("peer %d: %w", pid, err)
		}
		for _, ep := range endpoints(host, port) {
			if other, dup := seen[ep]; dup {
				return fmt.Errorf("peers %d (%s) and %d (%s) share address %s: one node cannot be two members",
					other, peers[other], pid, addr, ep)
			}
			seen[ep] = pid
		}
	}
	if _, ok := peers[id]; !ok {
		return fmt.Errorf("node id %d is not among the peers", id)
	}
	return nil
}

// literalEndpoint is an address in a canonical form: an IP literal as
// netip prints it, a name in lower case, the port as a number.
func literalEndpoint(host string, port uint16) string {
	if ip, err := netip.ParseAddr(host); err == nil {
		return ipEndpoint(ip, port)
	}
	return net.JoinHostPort(strings.ToLower(host), strconv.Itoa(int(port)))
}

func ipEndpoint(ip netip.Addr, port uint16) string {
	return netip.AddrPortFrom(ip.Unmap().WithZone(""), port).String()
}

// resolveTimeout bounds resolving one peer's name.
const resolveTimeout = 5 * time.Second

// resolvedEndpoints lists the ip:port endpoints an address names: its host
// resolved, or the address as written when it does not resolve.
func resolvedEndpoints(ctx context.Context, host string, port uint16, lookup Resolver) []string {
	if _, err := netip.ParseAddr(host); err == nil {
		return []string{literalEndpoint(host, port)}
	}
	ctx, cancel := context.WithTimeout(ctx, resolveTimeout)
	defer cancel()
	ips, err := lookup(ctx, host)
	if err != nil || len(ips) == 0 {
		return []string{literalEndpoint(host, port)}
	}
	out := make([]string, 0, len(ips))
	for _, ip := range ips {
		ep := ipEndpoint(ip, port)
		if !slices.Contains(out, ep) {
			out = append(out, ep)
		}
	}
	return out
}

// ParsePeers parses "1=host:port,2=host:port,...". Duplicate ids, bad ids and
// unparsable addresses are errors.
func ParsePeers(s string) (map[uint64]string, error) {
	peers := make(map[uint64]string)
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		idStr, addr, ok := strings.Cut(part, "=")
		if !ok {
			return nil, fmt.Errorf("peer %q: want id=host:port", part)
		}
		id, err := strconv.ParseUint(idStr, 10, 64)
		if err != nil || id == 0 {
			return nil, fmt.Errorf("peer %q: id must be a positive integer", part)
		}
		if _, dup := peers[id]; dup {
			return nil, fmt.Errorf("peer id %d appears twice", id)
		}
		if err := txnspec.ValidateAddr(addr); err != nil {
			return nil, fmt.Errorf("peer %d: %w", id, err)
		}
		peers[id] = addr
	}
	if len(peers) == 0 {
		return nil, errors.New("no peers given")
	}
	return peers, nil
}

// ClusterID derives a cluster's identity from its name and initial members,
// so a data dir or a peer from another cluster is recognised as foreign.
func ClusterID(name string, peers map[uint64]string) uint64 {
	ids := make([]uint64, 0, len(peers))
	for id := range peers {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	h := fnv.New64a()
	h.Write([]byte(name))
	for _, id := range ids {
		fmt.Fprintf(h, "\x00%d=%s", id, canonicalAddr(peers[id]))
	}
	if v := h.Sum64(); v != 0 {
		return v
	}
	return 1
}

func canonicalAddr(addr string) string {
	if ap, err := netip.ParseAddrPort(addr); err == nil {
		return ap.String()
	}
	return addr
}
