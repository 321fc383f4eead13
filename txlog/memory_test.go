package txlog

import (
	"fmt"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2"
)

// TestMemTableSizeApplied writes the same 4 MiB into a store with small
// memtables and one with large ones: only the small ones fill up and flush.
func TestMemTableSizeApplied(t *testing.T) {
	flushes := func(memtable uint64) int64 {
		s, err := Open(t.TempDir(), testID, Options{MemTableSize: memtable})
		if err != nil {
			t.Fatalf("open with a %d-byte memtable: %v", memtable, err)
		}
		defer s.Close()
		// Creating a store may flush (an empty memtable) once.
		before := s.db.Metrics().Flush.Count
		val := make([]byte, 4<<10)
		for i := range 1024 {
			if err := s.db.Set(fmt.Appendf(nil, "test/%06d", i), val, pebble.NoSync); err != nil {
				t.Fatal(err)
			}
		}
		return s.db.Metrics().Flush.Count - before
	}
	if n := flushes(256 << 10); n == 0 {
		t.Fatal("no flush after 4 MiB written into 256 KiB memtables")
	}
	if n := flushes(64 << 20); n != 0 {
		t.Fatalf("%d flushes after 4 MiB written into a 64 MiB memtable", n)
	}
}

func TestMemTableSizeValidated(t *testing.T) {
	_, err := Open(t.TempDir(), testID, Options{MemTableSize: 8 << 30})
	if err == nil || !strings.Contains(err.Error(), "MemTableSize") {
		t.Fatalf("open with an 8 GiB memtable: %v, want Pebble's MemTableSize error", err)
	}
}
