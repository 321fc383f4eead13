package txlog

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/cockroachdb/pebble/v2"

	"github.com/decree-tx/decree/txnspec"
)

// The record table has two secondary indexes in the state keyspace, so that
// they travel with snapshots and change in the same batch as the records:
//
//	s/fin/<t><id>   a finished record; t is 8 bytes, see finTime
//	s/open/<id>     a record that is not finished (decided, or staged)
//
// Both values are empty. Garbage collection reads the finished index from
// its start and a new leader reads the unfinished one, so neither needs to
// scan the record table. s/index-version marks a keyspace whose indexes are
// complete (see ensureIndex).
//
// Both indexes sort before the record table, which is the last thing in the
// keyspace (checkWritable keeps it so). Ids are UUIDv7, so a new id sorts
// after every record in the tables on disk, beyond the largest key of each:
// Pebble answers the lookup of a new id, which the Commit handler and the
// apply of Staged and Decide make for every transaction, without reading a
// block of those tables. Version 1 kept the unfinished index after the
// records (s/unf/): then every such lookup read the index and data blocks of
// the table holding the boundary, rewritten by each compaction and so rarely
// in the cache: 11% of the CPU of a 256-client bench, and a share that grew
// with the tables in a soak.
var (
	finPrefix       = []byte("fin/")
	unfPrefix       = []byte("open/")
	unfPrefixV1     = []byte("unf/")
	indexVersionKey = []byte("index-version")
)

// indexVersion is the value of indexVersionKey once the indexes are built.
// Version 1 had the unfinished index under unfPrefixV1.
const indexVersion = 2

// indexBuildBatch bounds the records indexed per batch when building the
// indexes of a store written before they existed.
const indexBuildBatch = 10_000

// FinishedRef names an entry of the finished index: a finished record and
// its index time (see finTime).
type FinishedRef struct {
	ID string
	At int64
}

// finTime is when a finished record may be collected: its finish time, or
// the time in its id if that is later (a client whose clock runs ahead
// mints ids from the future, and a record is collected only once its id is
// below the retention horizon). Ids without a time sort last: they are never
// collected. Ordering the index by this time makes every collectable record
// a prefix of it, so a record that must wait cannot hold up the ones behind.
func finTime(r *Record) int64 {
	t, err := txnspec.ParseID(r.ID)
	if err != nil {
		return math.MaxInt64
	}
	return max(r.FinishedAt, t.UnixNano())
}

// finKey returns the state-relative key of a finished-index entry. The
// time's sign bit is flipped so that big-endian byte order is int64 order.
func finKey(at int64, id string) []byte {
	k := make([]byte, 0, len(finPrefix)+8+len(id))
	k = append(k, finPrefix...)
	k = binary.BigEndian.AppendUint64(k, uint64(at)^(1<<63))
	return append(k, id...)
}

func parseFinKey(k []byte) (FinishedRef, error) {
	if len(k) < len(finPrefix)+8 {
		return FinishedRef{}, fmt.Errorf("finished index key %q is too short", k)
	}
	k = k[len(finPrefix):]
	return FinishedRef{At: int64(binary.BigEndian.Uint64(k) ^ (1 << 63)), ID: string(k[8:])}, nil
}

func unfKey(id string) []byte {
	return append(append(make([]byte, 0, len(unfPrefix)+len(id)), unfPrefix...), id...)
}

// appendUnfKey appends the database key of id's unfinished-index entry to
// dst; appendFinKey that of a finished-index entry.
func appendUnfKey(dst []byte, id string) []byte {
	return append(append(append(dst, statePrefix...), unfPrefix...), id...)
}

func appendFinKey(dst []byte, at int64, id string) []byte {
	dst = append(append(dst, statePrefix...), finPrefix...)
	return append(binary.BigEndian.AppendUint64(dst, uint64(at)^(1<<63)), id...)
}

// putIndex writes r's index entry into b, building keys in buf, which it
// returns for reuse (b copies what it is given). A finished record leaves
// the unfinished index; a record is never unfinished again once finished,
// and finishes once, so there is no stale finished entry to remove.
func putIndex(b pebble.Writer, r *Record, buf []byte) []byte {
	if r.Finished {
		buf = appendFinKey(buf[:0], finTime(r), r.ID)
		_ = b.Set(buf, nil, nil)
		buf = appendUnfKey(buf[:0], r.ID)
		_ = b.Delete(buf, nil)
		return buf
	}
	buf = appendUnfKey(buf[:0], r.ID)
	_ = b.Set(buf, nil, nil)
	return buf
}

// ScanFinished calls fn for the finished-index entries whose time is below
// before, in time order, until fn returns false. It reads nothing else: its
// cost is the number of entries fn sees.
func (s *Store) ScanFinished(before int64, fn func(FinishedRef) bool) error {
	lower := stateKey(finPrefix)
	upper := stateKey(finKey(before, ""))
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return fmt.Errorf("scan finished index: %w", err)
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		ref, err := parseFinKey(it.Key()[len(statePrefix):])
		if err != nil {
			return fmt.Errorf("scan finished index: %w", err)
		}
		if !fn(ref) {
			break
		}
	}
	if err := it.Error(); err != nil {
		return fmt.Errorf("scan finished index: %w", err)
	}
	return nil
}

// ScanUnfinished calls fn for every record that is not finished, in id
// order, until fn returns false. It reads the unfinished index and the
// records it names from one consistent view of the state.
func (s *Store) ScanUnfinished(fn func(*Record) bool) error {
	snap := s.db.NewSnapshot()
	defer snap.Close()
	lower := stateKey(unfPrefix)
	it, err := snap.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: prefixEnd(lower)})
	if err != nil {
		return fmt.Errorf("scan unfinished index: %w", err)
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		id := string(it.Key()[len(lower):])
		r, err := readRecord(snap, id)
		if err != nil {
			return fmt.Errorf("scan unfinished index: %w", err)
		}
		if !fn(r) {
			break
		}
	}
	if err := it.Error(); err != nil {
		return fmt.Errorf("scan unfinished index: %w", err)
	}
	return nil
}

// readRecord reads a record the index names; a missing one is corruption.
func readRecord(r pebble.Reader, id string) (*Record, error) {
	val, closer, err := r.Get(stateKey(recordKey(id)))
	if err != nil {
		return nil, fmt.Errorf("record %q named by the index: %w", id, err)
	}
	defer closer.Close()
	rec, err := UnmarshalRecord(val)
	if err != nil {
		return nil, fmt.Errorf("record %q: %w", id, err)
	}
	return rec, nil
}

// ensureIndex brings the indexes of the state keyspace to indexVersion:
// it builds them for a keyspace written before they existed, or moves the
// unfinished index of version 1 to its new prefix. A state installed from a
// snapshot of an older leader needs the same, so the stager calls it too.
func (s *Store) ensureIndex() error {
	v, found, err := s.get(stateKey(indexVersionKey))
	if err != nil {
		return fmt.Errorf("read index version: %w", err)
	}
	switch {
	case !found:
		return s.buildIndex()
	case len(v) != 8:
		return fmt.Errorf("index version: %d bytes, want 8", len(v))
	case binary.BigEndian.Uint64(v) == 1:
		return s.moveUnfinishedIndex()
	case binary.BigEndian.Uint64(v) == indexVersion:
		return nil
	default:
		return fmt.Errorf("index version %d: this build reads up to %d (written by a newer decree?)",
			binary.BigEndian.Uint64(v), indexVersion)
	}
}

// buildIndex builds the indexes from the records, in batches of
// indexBuildBatch records, then writes the version marker. It depends on
// the records alone, so every replica builds the same keys; a crash
// part-way leaves no marker, and the next Open builds again over the same
// keys. The batches need no sync: Pebble's write-ahead log is a prefix, so
// the marker is never durable ahead of the index it vouches for, and a lost
// marker only means building again.
func (s *Store) buildIndex() error {
	lower := stateKey(recordPrefix)
	n, err := s.rewriteIndex(lower, func(b *pebble.Batch, key, value []byte) error {
		r, err := UnmarshalRecord(value)
		if err != nil {
			return fmt.Errorf("key %q: %w", key, err)
		}
		putIndex(b, r, nil)
		return nil
	})
	if err != nil {
		return fmt.Errorf("build record index: %w", err)
	}
	if n > 0 {
		s.log.Info().Int("records", n).Msg("built the record index of a store written without one")
	}
	return nil
}

// moveUnfinishedIndex moves a version 1 unfinished index to unfPrefix. It
// reads only that index (the unfinished records, few), and is safe to
// repeat after a crash, as buildIndex is.
func (s *Store) moveUnfinishedIndex() error {
	lower := stateKey(unfPrefixV1)
	n, err := s.rewriteIndex(lower, func(b *pebble.Batch, key, _ []byte) error {
		return b.Set(stateKey(unfKey(string(key[len(lower):]))), nil, nil)
	})
	if err != nil {
		return fmt.Errorf("move unfinished index: %w", err)
	}
	s.log.Info().Int("entries", n).Msg("moved the unfinished index before the record table (index version 2)")
	return nil
}

// rewriteIndex calls fn for every key under prefix, committing fn's writes
// every indexBuildBatch keys; the last batch deletes any version 1
// unfinished index and writes the version marker. It returns the number of
// keys it read.
func (s *Store) rewriteIndex(prefix []byte, fn func(b *pebble.Batch, key, value []byte) error) (int, error) {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
	if err != nil {
		return 0, err
	}
	defer it.Close()
	b := s.db.NewBatch()
	n := 0
	for it.First(); it.Valid(); it.Next() {
		if err := fn(b, it.Key(), it.Value()); err != nil {
			_ = b.Close()
			return n, err
		}
		if n++; n%indexBuildBatch == 0 {
			if err := commitIndexBatch(b); err != nil {
				return n, err
			}
			b = s.db.NewBatch()
		}
	}
	if err := it.Error(); err != nil {
		_ = b.Close()
		return n, err
	}
	v1 := stateKey(unfPrefixV1)
	_ = b.DeleteRange(v1, prefixEnd(v1), nil)
	_ = b.Set(stateKey(indexVersionKey), encodeUint64(indexVersion), nil)
	return n, commitIndexBatch(b)
}

func commitIndexBatch(b *pebble.Batch) error {
	defer b.Close()
	return b.Commit(pebble.NoSync)
}
