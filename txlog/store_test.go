package txlog

import (
	"errors"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

func TestOpenChecksIdentity(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, testID, Options{})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	for name, id := range map[string]Identity{
		"node":    {ClusterID: testID.ClusterID, NodeID: testID.NodeID + 1},
		"cluster": {ClusterID: testID.ClusterID + 1, NodeID: testID.NodeID},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Open(dir, id, Options{})
			if !errors.Is(err, ErrIdentityMismatch) {
				t.Fatalf("open with another %s id: %v, want ErrIdentityMismatch", name, err)
			}
			t.Log(err)
		})
	}
	// The failed opens released the directory.
	openStore(t, dir, nil)
}

func TestOpenLockedDir(t *testing.T) {
	for name, fsys := range map[string]vfs.FS{"disk": nil, "mem": vfs.NewMem()} {
		t.Run(name, func(t *testing.T) {
			dir := "db"
			if fsys == nil {
				dir = t.TempDir()
			}
			s := openStore(t, dir, fsys)
			_, err := Open(dir, testID, Options{FS: fsys})
			if !errors.Is(err, ErrLocked) {
				t.Fatalf("second open: %v, want ErrLocked", err)
			}
			if !strings.Contains(err.Error(), dir) {
				t.Fatalf("error %q does not name the directory", err)
			}
			t.Log(err)
			// Closing releases the lock.
			if err := s.Close(); err != nil {
				t.Fatalf("close: %v", err)
			}
			openStore(t, dir, fsys)
		})
	}
}

func TestCloseTwice(t *testing.T) {
	s, err := Open("db", testID, Options{FS: vfs.NewMem()})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if err := s.Close(); err == nil {
		t.Fatal("second close succeeded")
	}
}
