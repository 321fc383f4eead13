package coordinator_test

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/decree-tx/decree/coordinator"
)

func TestParsePeers(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    int
		wantErr string
	}{
		{in: "1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003", want: 3},
		{in: " 1=localhost:1 , 2=[::1]:2 ", want: 2},
		{in: "", wantErr: "no peers"},
		{in: "1=127.0.0.1:7001,1=127.0.0.1:7002", wantErr: "appears twice"},
		{in: "0=127.0.0.1:7001", wantErr: "positive integer"},
		{in: "x=127.0.0.1:7001", wantErr: "positive integer"},
		{in: "1:127.0.0.1:7001", wantErr: "want id=host:port"},
		{in: "1=127.0.0.1", wantErr: "missing port"},
		{in: "1=127.0.0.1:notaport", wantErr: "no valid port"},
		{in: "1=:7001", wantErr: "no host"},
	} {
		peers, err := coordinator.ParsePeers(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParsePeers(%q) error = %v, want it to mention %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil || len(peers) != tc.want {
			t.Errorf("ParsePeers(%q) = %v, %v; want %d peers", tc.in, peers, err, tc.want)
		}
	}
}

func TestValidatePeers(t *testing.T) {
	peers := map[uint64]string{1: "127.0.0.1:1", 2: "127.0.0.1:2"}
	if err := coordinator.ValidatePeers(1, peers); err != nil {
		t.Fatal(err)
	}
	if err := coordinator.ValidatePeers(3, peers); err == nil || !strings.Contains(err.Error(), "not among the peers") {
		t.Fatalf("missing id: %v", err)
	}
	dup := map[uint64]string{1: "127.0.0.1:1", 2: "127.0.0.1:1"}
	if err := coordinator.ValidatePeers(1, dup); err == nil || !strings.Contains(err.Error(), "share address") {
		t.Fatalf("shared address: %v", err)
	}
	// One node under two spellings: the same address written another way
	// (no lookup needed), or a name resolving to it.
	if err := coordinator.ValidatePeers(1, map[uint64]string{1: "[::ffff:127.0.0.1]:7001", 2: "127.0.0.1:7001"}); err == nil || !strings.Contains(err.Error(), "share address") {
		t.Errorf("an IPv4-mapped spelling of one address: %v, want it refused", err)
	}
	lookup := func(_ context.Context, host string) ([]netip.Addr, error) {
		if strings.EqualFold(host, "localhost") {
			return []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")}, nil
		}
		return nil, errors.New("no such host")
	}
	for _, spelled := range []map[uint64]string{
		{1: "127.0.0.1:7001", 2: "localhost:7001", 3: "127.0.0.1:7003"},
		{1: "127.0.0.1:7001", 2: "LOCALHOST:7001"},
		{1: "[::1]:7001", 2: "localhost:7001"},
	} {
		if err := coordinator.CheckPeerNames(t.Context(), 1, spelled, lookup); err == nil || !strings.Contains(err.Error(), "share address") {
			t.Errorf("%v: got %v, want the shared address refused", spelled, err)
		}
	}
	// Other ports, or a name that does not resolve, are other nodes.
	if err := coordinator.CheckPeerNames(t.Context(), 1, map[uint64]string{1: "localhost:7001", 2: "127.0.0.1:7002", 3: "no-such-host.invalid:7001"}, lookup); err != nil {
		t.Errorf("distinct peers refused: %v", err)
	}
}

// The peer addresses ParsePeers, ValidatePeers and CheckPeerNames accept
// are txnspec.ValidateAddr's: each of its refusals reaches the operator
// named after the peer.
func TestPeerAddressesAreCheckedByTheOneValidator(t *testing.T) {
	lookup := func(context.Context, string) ([]netip.Addr, error) { return nil, errors.New("no such host") }
	for _, tc := range []struct{ addr, wantErr string }{
		{"127.0.0.1", "missing port"},
		{"127.0.0.1:", "no valid port"},
		{"127.0.0.1:notaport", "no valid port"},
		{"127.0.0.1:0", "no valid port"},
		{"127.0.0.1:65536", "no valid port"},
		{"127.0.0.1:-1", "no valid port"},
		{":7001", "no host"},
		{"[]:7001", "no host"},
		{"ho st:7001", "control character or space"},
		{"host\x00:7001", "control character or space"},
		{"host:7001\n", "control character or space"},
		{"h\x7f:7001", "control character or space"},
		{strings.Repeat("h", 254) + ":7001", "exceeds the limit"},
		{"[::1:7001", "missing ']'"},
		{"a:b:7001", "too many colons"},
	} {
		peers := map[uint64]string{1: "127.0.0.1:7000", 2: tc.addr}
		errs := map[string]error{
			"ValidatePeers":  coordinator.ValidatePeers(1, peers),
			"CheckPeerNames": coordinator.CheckPeerNames(t.Context(), 1, peers, lookup),
		}
		// ParsePeers trims spaces and splits on ',' and '=' first.
		if !strings.ContainsAny(tc.addr, ",=") && strings.TrimSpace(tc.addr) == tc.addr {
			_, errs["ParsePeers"] = coordinator.ParsePeers("1=127.0.0.1:7000,2=" + tc.addr)
		}
		for name, err := range errs {
			if err == nil || !strings.Contains(err.Error(), "peer 2: ") || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%s with peer 2 = %q: %v, want %q", name, tc.addr, err, tc.wantErr)
			}
		}
	}
	for _, ok := range []string{"localhost:1", "[::1]:65535", "node-2.example:7001", strings.Repeat("h", 253) + ":7001"} {
		if err := coordinator.ValidatePeers(1, map[uint64]string{1: "127.0.0.1:7000", 2: ok}); err != nil {
			t.Errorf("ValidatePeers with peer 2 = %q: %v", ok, err)
		}
	}
	// The port is compared as a number: one endpoint spelled twice.
	if err := coordinator.ValidatePeers(1, map[uint64]string{1: "Node:07001", 2: "node:7001"}); err == nil || !strings.Contains(err.Error(), "share address") {
		t.Errorf("node:07001 and node:7001: %v, want them refused as one endpoint", err)
	}
}

func TestClusterIDDependsOnNameAndMembers(t *testing.T) {
	a := map[uint64]string{1: "127.0.0.1:1", 2: "127.0.0.1:2"}
	b := map[uint64]string{2: "127.0.0.1:2", 1: "127.0.0.1:1"}
	c := map[uint64]string{1: "127.0.0.1:1", 2: "127.0.0.1:3"}
	if coordinator.ClusterID("x", a) != coordinator.ClusterID("x", b) {
		t.Fatal("cluster id depends on map order")
	}
	if coordinator.ClusterID("x", a) == coordinator.ClusterID("y", a) {
		t.Fatal("cluster id ignores the name")
	}
	if coordinator.ClusterID("x", a) == coordinator.ClusterID("x", c) {
		t.Fatal("cluster id ignores the members")
	}
}

// Settings that cannot work are refused with an error naming the fields;
// zero values take the defaults and pass.
func TestConfigsRefuseInvertedAndNegativeSettings(t *testing.T) {
	peers := map[uint64]string{1: "127.0.0.1:7001"}
	for _, tc := range []struct {
		name    string
		err     error
		wantErr string // "" for valid
	}{
		{"node defaults", (&coordinator.Config{ID: 1, Peers: peers}).Validate(), ""},
		{"node tick", (&coordinator.Config{ID: 1, Peers: peers, RaftTickInterval: -time.Millisecond}).Validate(), "RaftTickInterval is -1ms: it must not be negative"},
		{"node batch", (&coordinator.Config{ID: 1, Peers: peers, MaxBatch: -1}).Validate(), "MaxBatch is -1"},
		{"node chunk", (&coordinator.Config{ID: 1, Peers: peers, SnapshotChunkBytes: -1}).Validate(), "SnapshotChunkBytes is -1"},
		{"heartbeat vs election", (&coordinator.Config{ID: 1, Peers: peers, HeartbeatTicks: 10}).Validate(), "HeartbeatTicks (10) must be below ElectionTicks (10)"},
		{"heartbeat vs election set", (&coordinator.Config{ID: 1, Peers: peers, HeartbeatTicks: 3, ElectionTicks: 2}).Validate(), "HeartbeatTicks (3) must be below ElectionTicks (2)"},
		{"node peers", (&coordinator.Config{ID: 2, Peers: peers}).Validate(), "not among the peers"},

		{"core defaults", coordinator.CoreConfig{}.Validate(), ""},
		{"core retry equal", coordinator.CoreConfig{RetryMin: time.Second, RetryMax: time.Second}.Validate(), ""},
		{"core retry inverted", coordinator.CoreConfig{RetryMin: 2 * time.Second, RetryMax: time.Second}.Validate(), "RetryMin (2s) exceeds RetryMax (1s)"},
		{"core retry past the default max", coordinator.CoreConfig{RetryMin: time.Minute}.Validate(), "RetryMin (1m0s) exceeds RetryMax (5s, the default)"},
		{"core retry below the default min", coordinator.CoreConfig{RetryMax: time.Millisecond}.Validate(), "RetryMin (50ms, the default) exceeds RetryMax (1ms)"},
		{"core negative", coordinator.CoreConfig{PrepareTimeout: -1, MaxInFlight: -5}.Validate(), "PrepareTimeout is -1ns"},
		{"core negative, all named", coordinator.CoreConfig{PrepareTimeout: -1, MaxInFlight: -5}.Validate(), "MaxInFlight is -5"},
		{"core held bytes", coordinator.CoreConfig{MaxHeldBytes: -1}.Validate(), "MaxHeldBytes is -1"},

		{"driver defaults", coordinator.DriverConfig{}.Validate(), ""},
		{"driver tick", coordinator.DriverConfig{CoreTickInterval: -1}.Validate(), "CoreTickInterval is -1ns"},
		{"driver timeout", coordinator.DriverConfig{CallTimeout: -time.Second}.Validate(), "CallTimeout is -1s"},
		{"driver limits", coordinator.DriverConfig{MaxBranches: -1, MaxPayload: -1, MaxList: -1}.Validate(), "MaxList is -1"},
		{"driver core", coordinator.DriverConfig{Core: coordinator.CoreConfig{RetryMin: time.Hour, RetryMax: time.Minute}}.Validate(), "core: RetryMin (1h0m0s) exceeds RetryMax (1m0s)"},
	} {
		if tc.wantErr == "" && tc.err != nil || tc.wantErr != "" && (tc.err == nil || !strings.Contains(tc.err.Error(), tc.wantErr)) {
			t.Errorf("%s: %v, want %q", tc.name, tc.err, tc.wantErr)
		}
	}
}

// The constructors refuse an invalid config before they start anything.
func TestConstructorsReturnTheValidationError(t *testing.T) {
	if _, err := coordinator.NewDriver(nil, coordinator.DriverConfig{Core: coordinator.CoreConfig{RetryMin: time.Hour}}); err == nil ||
		!strings.Contains(err.Error(), "RetryMin (1h0m0s) exceeds RetryMax") {
		t.Errorf("NewDriver: %v, want the RetryMin error", err)
	}
	cfg := coordinator.Config{ID: 1, Peers: map[uint64]string{1: "127.0.0.1:7001"}, ElectionTicks: -1}
	if _, err := coordinator.NewNode(cfg, nil, nil); err == nil || !strings.Contains(err.Error(), "ElectionTicks is -1") {
		t.Errorf("NewNode: %v, want the ElectionTicks error", err)
	}
}

// New validates the whole nested Config, the Driver's part included,
// before it starts anything.
func TestNewValidatesTheDriverConfig(t *testing.T) {
	cfg := coordinator.Config{ID: 1, Peers: map[uint64]string{1: "127.0.0.1:7001"},
		Driver: coordinator.DriverConfig{MaxList: -1, Core: coordinator.CoreConfig{RetryMin: time.Hour, RetryMax: time.Minute}}}
	_, err := coordinator.New(cfg, nil)
	if err == nil || !strings.Contains(err.Error(), "driver: MaxList is -1") {
		t.Fatalf("New: %v, want the driver's MaxList error", err)
	}
	cfg.Driver.MaxList = 0
	if _, err := coordinator.New(cfg, nil); err == nil || !strings.Contains(err.Error(), "RetryMin (1h0m0s) exceeds RetryMax") {
		t.Fatalf("New: %v, want the core's RetryMin error", err)
	}
}
