package txlog

// Pebble's memory outside the Go heap is bounded by two settings, both
// flags of `decree start`: the block cache, and the memtables (at most two
// of MemTableSize, one filling and one flushing).
const (
	// DefaultCacheSize is the Pebble block cache size when
	// Options.CacheSize is zero. Reads are point lookups of recent
	// records, mostly still in the memtable; 32 MiB holds the hot index
	// and filter blocks with room to spare.
	DefaultCacheSize int64 = 32 << 20
	// DefaultMemTableSize is the memtable size when Options.MemTableSize
	// is zero. Pebble's own default (4 MiB) flushes a node under load
	// every second or two, each flush a new L0 file to compact; 16 MiB
	// makes that a few times rarer, and the value of a raft entry deleted
	// by log compaction before its memtable flushes never reaches a
	// table; at most 32 MiB of memtables per store.
	DefaultMemTableSize uint64 = 16 << 20
)
