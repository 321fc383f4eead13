package txlog

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// idAt returns a UUIDv7 whose timestamp is ms milliseconds since the epoch;
// seq tells apart ids of the same millisecond.
func idAt(ms int64, seq uint16) string {
	var raw [16]byte
	binary.BigEndian.PutUint64(raw[:8], uint64(ms)<<16)
	raw[6], raw[7] = 0x70, 0
	raw[8] = 0x80
	binary.BigEndian.PutUint16(raw[14:], seq)
	h := hex.EncodeToString(raw[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

func finished(id string, at int64) *Record {
	r := record(id, OutcomeCommitted)
	r.Finished, r.FinishedAt, r.Acked = true, at, r.Participants
	return r
}

func unfinishedIDs(t *testing.T, s *Store) []string {
	t.Helper()
	var ids []string
	if err := s.ScanUnfinished(func(r *Record) bool {
		if r.Finished {
			t.Errorf("unfinished index names finished record %s", r.ID)
		}
		ids = append(ids, r.ID)
		return true
	}); err != nil {
		t.Fatalf("scan unfinished: %v", err)
	}
	return ids
}

func finishedRefs(t *testing.T, s *Store, before int64) []FinishedRef {
	t.Helper()
	var refs []FinishedRef
	if err := s.ScanFinished(before, func(ref FinishedRef) bool {
		refs = append(refs, ref)
		return true
	}); err != nil {
		t.Fatalf("scan finished: %v", err)
	}
	return refs
}

func TestRecordIndexFollowsPutFinishAndDelete(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, nil)
	a, b, c := idAt(1000, 0), idAt(2000, 0), idAt(3000, 0)
	staged := record(c, OutcomeUnknown)
	commitRecords(t, s, 1, record(b, OutcomeCommitted), record(a, OutcomeAborted), staged)
	if got := unfinishedIDs(t, s); !slices.Equal(got, []string{a, b, c}) {
		t.Fatalf("unfinished = %q, want [a b c]", got)
	}
	if got := finishedRefs(t, s, math.MaxInt64); len(got) != 0 {
		t.Fatalf("finished index before any finish = %v", got)
	}

	// b finishes after a, but earlier in the index's time order.
	fa, fb := finished(a, int64(9*time.Second)), finished(b, int64(5*time.Second))
	commitRecords(t, s, 2, fa, fb)
	if got := unfinishedIDs(t, s); !slices.Equal(got, []string{c}) {
		t.Fatalf("unfinished after finishing a and b = %q, want [c]", got)
	}
	want := []FinishedRef{{ID: b, At: fb.FinishedAt}, {ID: a, At: fa.FinishedAt}}
	if got := finishedRefs(t, s, math.MaxInt64); !slices.Equal(got, want) {
		t.Fatalf("finished index = %v, want %v", got, want)
	}
	if got := finishedRefs(t, s, fa.FinishedAt); !slices.Equal(got, want[:1]) {
		t.Fatalf("finished index below %d = %v, want %v", fa.FinishedAt, got, want[:1])
	}

	batch := s.NewStateBatch()
	batch.DeleteFinished(want[0]) // b, as a collector sees it
	batch.DeleteRecord(staged)    // c, by its record
	if err := s.CommitState(batch, 3); err != nil {
		t.Fatalf("commit: %v", err)
	}
	s = reopen(t, s, dir, nil)
	if got := recordIDs(allRecords(t, s)); !slices.Equal(got, []string{a}) {
		t.Fatalf("records after deletes = %q, want [a]", got)
	}
	if got := unfinishedIDs(t, s); len(got) != 0 {
		t.Fatalf("unfinished after deletes = %q", got)
	}
	if got := finishedRefs(t, s, math.MaxInt64); !slices.Equal(got, want[1:]) {
		t.Fatalf("finished index after deletes = %v, want %v", got, want[1:])
	}
}

// An id minted by a client whose clock runs ahead, or one without a time,
// waits in the index behind the records that may already go.
func TestFinishedIndexOrdersByLaterOfFinishAndIDTime(t *testing.T) {
	s := openMem(t)
	ahead := finished(idAt(50_000, 0), int64(10*time.Second)) // id 50s, finished 10s
	early := finished(idAt(1_000, 0), int64(20*time.Second))
	negative := finished(idAt(0, 1), -5)
	odd := finished("not-a-uuid", 1)
	commitRecords(t, s, 1, ahead, early, negative, odd)
	want := []FinishedRef{
		{ID: negative.ID, At: 0}, // the id's time (0) is later than -5
		{ID: early.ID, At: early.FinishedAt},
		{ID: ahead.ID, At: int64(50 * time.Second)},
	}
	if got := finishedRefs(t, s, math.MaxInt64); !slices.Equal(got, want) {
		t.Fatalf("finished index = %v, want %v", got, want)
	}
	if got := finishedRefs(t, s, int64(50*time.Second)); !slices.Equal(got, want[:2]) {
		t.Fatalf("finished index below 50s = %v, want %v", got, want[:2])
	}
}

// A store written before the indexes existed: records and no index keys.
func TestOpenBuildsIndexOfStoreWrittenWithoutOne(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, nil)
	n := 2*indexBuildBatch + 7 // more than one build batch
	var wantUnf []string
	var wantFin []FinishedRef
	b := s.db.NewBatch()
	for i := range n {
		id := idAt(int64(1000+i), 0)
		r := record(id, OutcomeCommitted)
		if i%3 == 0 {
			wantUnf = append(wantUnf, id)
		} else {
			r = finished(id, int64(time.Hour)+int64(n-i)*int64(time.Second)) // after the id's time
			wantFin = append(wantFin, FinishedRef{ID: id, At: r.FinishedAt})
		}
		_ = b.Set(stateKey(recordKey(id)), r.Marshal(), nil)
	}
	// The old version wrote no marker; a crash part-way through an earlier
	// build left one index entry behind.
	_ = b.Delete(stateKey(indexVersionKey), nil)
	_ = b.Set(stateKey(unfKey(wantUnf[0])), nil, nil)
	if err := b.Commit(pebble.Sync); err != nil {
		t.Fatalf("write old-format records: %v", err)
	}
	if got := unfinishedIDs(t, s); len(got) != 1 {
		t.Fatalf("setup: unfinished index holds %d entries, want 1", len(got))
	}

	s = reopen(t, s, dir, nil)
	slices.SortFunc(wantFin, func(x, y FinishedRef) int { return int(x.At - y.At) })
	check := func() {
		t.Helper()
		if got := unfinishedIDs(t, s); !slices.Equal(got, wantUnf) {
			t.Fatalf("unfinished index has %d entries, want %d", len(got), len(wantUnf))
		}
		if got := finishedRefs(t, s, math.MaxInt64); !slices.Equal(got, wantFin) {
			t.Fatalf("finished index has %d entries, want %d in time order", len(got), len(wantFin))
		}
		if v, ok, err := s.GetState(indexVersionKey); err != nil || !ok || binary.BigEndian.Uint64(v) != indexVersion {
			t.Fatalf("index version marker = %x, %v, %v", v, ok, err)
		}
	}
	check()
	s = reopen(t, s, dir, nil) // the marker is there: nothing to build
	check()
}

func TestIndexKeysAreReserved(t *testing.T) {
	s := openMem(t)
	for _, key := range []string{"index-version", "fin/x", "open/x", "unf/x", "txn/x", "zz"} {
		func() {
			b := s.NewStateBatch()
			defer b.Discard()
			defer func() {
				if recover() == nil {
					t.Errorf("Set(%q) did not panic", key)
				}
			}()
			b.Set([]byte(key), nil)
		}()
	}
}

// A store written with index version 1 keeps its unfinished index under
// s/unf/, after the record table; Open moves it before.
func TestOpenMovesVersion1UnfinishedIndex(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, nil)
	n := indexBuildBatch + 3 // more than one batch
	var want []string
	b := s.db.NewBatch()
	for i := range n {
		id := idAt(int64(1000+i), 0)
		want = append(want, id)
		_ = b.Set(stateKey(recordKey(id)), record(id, OutcomeCommitted).Marshal(), nil)
		_ = b.Set(stateKey(append(slices.Clone(unfPrefixV1), id...)), nil, nil)
	}
	_ = b.DeleteRange(stateKey(unfPrefix), stateKey(prefixEnd(unfPrefix)), nil)
	_ = b.Set(stateKey(indexVersionKey), encodeUint64(1), nil)
	if err := b.Commit(pebble.Sync); err != nil {
		t.Fatalf("write a version 1 store: %v", err)
	}
	if got := unfinishedIDs(t, s); len(got) != 0 {
		t.Fatalf("setup: %d entries under the new prefix", len(got))
	}

	s = reopen(t, s, dir, nil)
	if got := unfinishedIDs(t, s); !slices.Equal(got, want) {
		t.Fatalf("unfinished index has %d entries, want %d", len(got), len(want))
	}
	v1 := stateKey(unfPrefixV1)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: v1, UpperBound: prefixEnd(v1)})
	if err != nil {
		t.Fatal(err)
	}
	if it.First() {
		t.Errorf("version 1 entry %q left behind", it.Key())
	}
	_ = it.Close()
	if v, ok, err := s.GetState(indexVersionKey); err != nil || !ok || binary.BigEndian.Uint64(v) != indexVersion {
		t.Fatalf("index version marker = %x, %v, %v", v, ok, err)
	}
}

func TestOpenRefusesNewerIndexVersion(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, nil)
	if err := s.db.Set(stateKey(indexVersionKey), encodeUint64(indexVersion+1), pebble.Sync); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if s, err := Open(dir, testID, Options{}); err == nil {
		_ = s.Close()
		t.Fatal("Open accepted an index version from a newer build")
	} else if !strings.Contains(err.Error(), "newer") {
		t.Fatalf("Open: %v, want an error naming a newer version", err)
	}
}

// The records are the last table of the keyspace: every other key a store
// writes sorts before any record, so a new id is beyond every table on
// disk (see index.go).
func TestRecordTableSortsLast(t *testing.T) {
	s := openMem(t)
	first := stateKey(recordKey(""))
	b := s.NewStateBatch()
	b.Set([]byte("horizon"), []byte("x"))
	r := record(idAt(1, 0), OutcomeCommitted)
	b.PutRecord(r)
	b.PutRecord(finished(idAt(2, 0), int64(time.Hour)))
	if err := s.CommitState(b, 1); err != nil {
		t.Fatal(err)
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: statePrefix, UpperBound: stateEnd})
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	records := 0
	for it.First(); it.Valid(); it.Next() {
		if bytes.Compare(it.Key(), first) >= 0 {
			if !bytes.HasPrefix(it.Key(), first) {
				t.Errorf("key %q sorts after the record table", it.Key())
			}
			records++
		}
	}
	if records != 2 {
		t.Fatalf("%d records, want 2", records)
	}
}
