package txlog

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
)

// Applied returns the index of the last log entry whose effects are in the
// state keyspace.
func (s *Store) Applied() uint64 {
	return s.applied.Load()
}

// StateBatch collects state machine writes for CommitState. Keys are
// relative to the state keyspace. Writes become visible only once
// committed. A StateBatch is not safe for concurrent use.
type StateBatch struct {
	store *Store
	batch *pebble.Batch
	// recs lists the record writes, for the store's cache of recent
	// records (recent.go).
	recs []recentOp[Record]
	// key and val are scratch space for the record writes: the Pebble
	// batch copies what it is given.
	key, val []byte
}

// NewStateBatch returns an empty batch for CommitState.
func (s *Store) NewStateBatch() *StateBatch {
	return &StateBatch{store: s, batch: s.db.NewBatch()}
}

// Set writes key. It panics on the keys txlog maintains itself: "applied",
// which only CommitState writes, the record indexes and their marker, and
// on keys that sort at or after the record table ("txn/").
func (b *StateBatch) Set(key, value []byte) {
	checkWritable(key)
	_ = b.open().Set(stateKey(key), value, nil) // a non-indexed batch never fails to add
}

// Delete removes key. It panics on the keys Set refuses.
func (b *StateBatch) Delete(key []byte) {
	checkWritable(key)
	_ = b.open().Delete(stateKey(key), nil)
}

// PutRecord writes r under "txn/"+r.ID, with its index entry (see
// index.go). A record finishes at most once: putting a finished record again
// with another FinishedAt would leave its first index entry behind.
func (b *StateBatch) PutRecord(r *Record) {
	w := b.open()
	b.key = appendRecordKey(b.key[:0], r.ID)
	b.val = r.appendMarshal(b.val[:0])
	_ = w.Set(b.key, b.val, nil)
	b.key = putIndex(w, r, b.key)
	b.recs = append(b.recs, recentOp[Record]{id: r.ID, rec: r.clone()})
}

// DeleteRecord removes r, the record as stored, and its index entry.
func (b *StateBatch) DeleteRecord(r *Record) {
	if r.Finished {
		b.DeleteFinished(FinishedRef{ID: r.ID, At: finTime(r)})
		return
	}
	w := b.open()
	b.key = appendRecordKey(b.key[:0], r.ID)
	_ = w.Delete(b.key, nil)
	b.key = appendUnfKey(b.key[:0], r.ID)
	_ = w.Delete(b.key, nil)
	b.recs = append(b.recs, recentOp[Record]{id: r.ID})
}

// DeleteFinished removes the finished record ref names, as read from
// Store.ScanFinished, and its index entry, without reading the record.
func (b *StateBatch) DeleteFinished(ref FinishedRef) {
	w := b.open()
	b.key = appendRecordKey(b.key[:0], ref.ID)
	_ = w.Delete(b.key, nil)
	b.key = appendFinKey(b.key[:0], ref.At, ref.ID)
	_ = w.Delete(b.key, nil)
	b.recs = append(b.recs, recentOp[Record]{id: ref.ID})
}

// Discard releases a batch that will not be committed. It is a no-op on a
// batch already committed or discarded.
func (b *StateBatch) Discard() {
	// Pebble recycles closed batches, so closing one twice would corrupt
	// another user's batch.
	if b.batch != nil {
		_ = b.batch.Close()
		b.batch = nil
	}
}

func (b *StateBatch) open() *pebble.Batch {
	if b.batch == nil {
		panic("txlog: use of a committed or discarded StateBatch")
	}
	return b.batch
}

// checkWritable panics on a key txlog maintains itself, and on any key that
// sorts at or after the record table: the records must be the last table
// in the keyspace (see index.go).
func checkWritable(key []byte) {
	if string(key) == reservedStateKey || bytes.Equal(key, indexVersionKey) ||
		bytes.HasPrefix(key, finPrefix) || bytes.HasPrefix(key, unfPrefix) ||
		bytes.Compare(key, recordPrefix) >= 0 {
		panic(fmt.Sprintf("txlog: state key %q is reserved", key))
	}
}

// CommitState atomically writes b and sets the applied index to applied,
// which must be above Applied(): entries are never applied twice. b must not
// be used afterwards, whether or not CommitState succeeds.
//
// The commit is not synced. That is safe because the entries up to applied
// are already durable in the Raft log, so after a crash that loses this
// write the state machine replays them from the stored (older) applied
// index; and because the write is atomic, the state and the applied index
// never disagree. Pebble's write-ahead log is a prefix, so the next synced
// Save makes this write durable too.
func (s *Store) CommitState(b *StateBatch, applied uint64) error {
	defer b.Discard()
	if b.store != s || b.batch == nil {
		return errors.New("commit state: batch is used up or belongs to another store")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur := s.applied.Load(); applied <= cur {
		return fmt.Errorf("commit state: applied index %d not above current %d", applied, cur)
	}
	_ = b.batch.Set(appliedKey, encodeUint64(applied), nil)
	seq := s.recent.begin(b.recs)
	if err := b.batch.Commit(pebble.NoSync); err != nil {
		s.recent.end(b.recs, seq, false)
		return fmt.Errorf("commit state at %d: %w", applied, err)
	}
	s.recent.end(b.recs, seq, true)
	s.applied.Store(applied)
	return nil
}

// GetState reads a committed state key.
func (s *Store) GetState(key []byte) ([]byte, bool, error) {
	val, found, err := s.get(stateKey(key))
	if err != nil {
		return nil, false, fmt.Errorf("get state %q: %w", key, err)
	}
	return val, found, nil
}

// GetRecord reads a committed transaction record. A young id (the common
// case: a new transaction, or one finishing) is answered from memory (see
// recent.go).
func (s *Store) GetRecord(id string) (*Record, bool, error) {
	if r, found, ok := s.recent.lookup(id); ok {
		return r, found, nil
	}
	val, found, err := s.GetState(recordKey(id))
	if err != nil || !found {
		return nil, false, err
	}
	r, err := UnmarshalRecord(val)
	if err != nil {
		return nil, false, fmt.Errorf("get record %q: %w", id, err)
	}
	return r, true, nil
}

// ScanRecords calls fn for every committed record in key (id) order until fn
// returns false.
func (s *Store) ScanRecords(fn func(*Record) bool) error {
	lower := stateKey(recordPrefix)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: prefixEnd(lower)})
	if err != nil {
		return fmt.Errorf("scan records: %w", err)
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		r, err := UnmarshalRecord(it.Value())
		if err != nil {
			return fmt.Errorf("scan records: key %q: %w", it.Key(), err)
		}
		if !fn(r) {
			break
		}
	}
	if err := it.Error(); err != nil {
		return fmt.Errorf("scan records: %w", err)
	}
	return nil
}
