package coordinator

import (
	"errors"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/rs/zerolog"

	"github.com/decree-tx/decree/txlog"
)

// TestJoinExistingRefusesEmptyStore: told that its cluster exists, a node
// whose store holds no raft state refuses to bootstrap; a fresh store is
// reported as such.
func TestJoinExistingRefusesEmptyStore(t *testing.T) {
	store, err := txlog.Open("n1", txlog.Identity{ClusterID: 1, NodeID: 1}, txlog.Options{FS: vfs.NewMem(), Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	if fresh, err := Fresh(store); err != nil || !fresh {
		t.Fatalf("Fresh on a new store = %v, %v; want true", fresh, err)
	}
	cfg := Config{ID: 1, Peers: map[uint64]string{1: "127.0.0.1:1", 2: "127.0.0.1:2", 3: "127.0.0.1:3"},
		ClusterID: 1, JoinExisting: true, Logger: zerolog.Nop()}
	if _, err := newNode(cfg, store, nil); !errors.Is(err, ErrLostState) {
		t.Fatalf("newNode(JoinExisting) on an empty store: %v, want ErrLostState", err)
	}
}
