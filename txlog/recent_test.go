package txlog

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
)

// pebbleRecord reads id from Pebble, bypassing the cache of recent records.
func pebbleRecord(t *testing.T, s *Store, id string) *Record {
	t.Helper()
	val, found, err := s.get(stateKey(recordKey(id)))
	if err != nil {
		t.Fatalf("get %q: %v", id, err)
	}
	if !found {
		return nil
	}
	r, err := UnmarshalRecord(val)
	if err != nil {
		t.Fatalf("decode %q: %v", id, err)
	}
	return r
}

// checkGetRecord asserts that GetRecord answers every id as Pebble does,
// and returns how many it answered from the cache.
func checkGetRecord(t *testing.T, s *Store, ids []string) (cached int) {
	t.Helper()
	for _, id := range ids {
		want := pebbleRecord(t, s, id)
		if _, _, ok := s.recent.lookup(id); ok {
			cached++
		}
		got, found, err := s.GetRecord(id)
		if err != nil {
			t.Fatalf("get record %q: %v", id, err)
		}
		if found != (want != nil) || (found && !reflect.DeepEqual(got, want)) {
			t.Fatalf("GetRecord(%q) = %+v, %v; Pebble holds %+v", id, got, found, want)
		}
	}
	return cached
}

// TestGetRecordRecentMatchesPebble commits random batches of new,
// finishing, repeated and deleted records, with ids mostly rising and
// sometimes old or far ahead, past several rises of the cache's floor and
// its size bound, and checks after each that GetRecord answers as Pebble
// does, for ids it holds and ids it never saw; and that the cache answered
// most of them, or it would not be worth having.
func TestGetRecordRecentMatchesPebble(t *testing.T) {
	s := openMem(t)
	rng := rand.New(rand.NewPCG(1, 2))
	var ids []string
	live := map[string]*Record{}
	next := 1_000_000
	newID := func() string {
		switch rng.IntN(50) {
		case 0: // a client whose clock lags
			return fmt.Sprintf("id-%09d-late%d", max(0, next-rng.IntN(100_000)), rng.Int())
		case 1: // one whose clock runs far ahead
			return fmt.Sprintf("id-%09d-ahead%d", next+10_000_000+rng.IntN(1000), rng.Int())
		default:
			next += 1 + rng.IntN(3)
			return fmt.Sprintf("id-%09d", next)
		}
	}
	var applied uint64
	cached, probed := 0, 0
	for round := range 120 {
		b := s.NewStateBatch()
		for range 300 {
			switch op := rng.IntN(10); {
			case op < 5 || len(ids) == 0:
				r := &Record{ID: newID(), Outcome: OutcomeCommitted, Participants: []string{"p1", "p2"}, DecidedAt: int64(round)}
				b.PutRecord(r)
				ids, live[r.ID] = append(ids, r.ID), r
			case op < 8:
				id := ids[len(ids)-1-rng.IntN(min(len(ids), 500))]
				if r := live[id]; r != nil && !r.Finished {
					done := *r
					done.Finished, done.FinishedAt, done.Acked = true, int64(round), r.Participants
					b.PutRecord(&done)
					live[id] = &done
				}
			case op < 9:
				id := ids[rng.IntN(len(ids))]
				if r := live[id]; r != nil {
					b.DeleteRecord(r)
					delete(live, id)
				}
			default: // a record decided and finished in one batch
				r := &Record{ID: newID(), Outcome: OutcomeAborted, Participants: []string{"p1"}, Reason: "no"}
				b.PutRecord(r)
				done := *r
				done.Finished, done.FinishedAt, done.Acked = true, 7, r.Participants
				b.PutRecord(&done)
				ids, live[r.ID] = append(ids, r.ID), &done
			}
		}
		applied++
		if err := s.CommitState(b, applied); err != nil {
			t.Fatal(err)
		}
		probe := append([]string{newID(), newID(), "", "id-", "zzz"}, ids[max(0, len(ids)-400):]...)
		for range 100 {
			probe = append(probe, ids[rng.IntN(len(ids))])
		}
		cached += checkGetRecord(t, s, probe)
		probed += len(probe)
	}
	if s.recent.floor == "" || len(s.recent.recs) > recentMax {
		t.Fatalf("floor %q with %d cached records: the cache never rose or outgrew its bound", s.recent.floor, len(s.recent.recs))
	}
	t.Logf("the cache answered %d of %d lookups; floor %q, %d cached", cached, probed, s.recent.floor, len(s.recent.recs))
	if cached < probed/2 {
		t.Fatalf("the cache answered %d of %d lookups", cached, probed)
	}
}

// TestGetRecordRecentReturnsCopies checks that neither the caller of
// PutRecord nor the caller of GetRecord can change the cached record.
func TestGetRecordRecentReturnsCopies(t *testing.T) {
	s := openMem(t)
	r := record("b", OutcomeCommitted)
	commitRecords(t, s, 1, r)
	r.Participants[0], r.Reason = "changed", "changed"
	got, found, err := s.GetRecord("b")
	if err != nil || !found {
		t.Fatalf("get record: %v, %v", found, err)
	}
	if !reflect.DeepEqual(got, record("b", OutcomeCommitted)) {
		t.Fatalf("record = %+v after its writer changed it", got)
	}
	got.Participants[1] = "changed"
	if again, _, _ := s.GetRecord("b"); !reflect.DeepEqual(again, record("b", OutcomeCommitted)) {
		t.Fatalf("record = %+v after a reader changed it", again)
	}
	if _, _, ok := s.recent.lookup("b"); !ok {
		t.Fatal("a record committed above the floor is not cached")
	}
}

// TestGetRecordRecentAfterReopenAndInstall checks that the cache starts
// from the stored state: at open, and when a snapshot replaces the state
// with records above the ids it held.
func TestGetRecordRecentAfterReopenAndInstall(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, nil)
	mustSave(t, s, hardState(1, 1, 3), entryRange(1, 1, 4), nil)
	commitRecords(t, s, 3, record("m", OutcomeCommitted))
	s = reopen(t, s, dir, nil)
	if n := checkGetRecord(t, s, []string{"a", "m", "n"}); n != 3 {
		t.Fatalf("after reopen the cache answered %d of 3 lookups", n)
	}
	commitRecords(t, s, 4, record("p", OutcomeAborted))
	checkGetRecord(t, s, []string{"m", "p", "q", "x"})

	snap := testSnapshot(20, 3, 1, 2)
	stageState(t, s, 20, 20, []KV{
		{Key: []byte("txn/q"), Value: record("q", OutcomeCommitted).Marshal()},
		{Key: []byte("txn/x"), Value: record("x", OutcomeAborted).Marshal()},
	})
	mustSave(t, s, hardState(3, 2, 20), nil, snap)
	if n := checkGetRecord(t, s, []string{"m", "p", "q", "x", "y"}); n != 5 {
		t.Fatalf("after the install the cache answered %d of 5 lookups", n)
	}
	if r, found, _ := s.GetRecord("x"); !found || r.Outcome != OutcomeAborted {
		t.Fatalf("record x = %+v, %v after the install", r, found)
	}
}

func TestNthString(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for n := 1; n < 200; n++ {
		ss := make([]string, n)
		for i := range ss {
			ss[i] = fmt.Sprint(rng.IntN(n/2 + 1)) // with repeats
		}
		sorted := slices.Clone(ss)
		slices.Sort(sorted)
		k := rng.IntN(n)
		if got := nthString(ss, k); got != sorted[k] {
			t.Fatalf("nthString(%q, %d) = %q, want %q", sorted, k, got, sorted[k])
		}
	}
}

// TestGetRecordRecentAfterReopenOfALargeState checks that a reopened
// store caches its newest records and answers new ids from memory, even
// when a few records have ids that sort above every UUID.
func TestGetRecordRecentAfterReopenOfALargeState(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, nil)
	b := s.NewStateBatch()
	var ids []string
	for i := range 3 * recentLoad {
		id := fmt.Sprintf("0198d0c0-%04d", i)
		b.PutRecord(record(id, OutcomeCommitted))
		ids = append(ids, id)
	}
	b.PutRecord(record("zzz-own-scheme", OutcomeAborted))
	if err := s.CommitState(b, 1); err != nil {
		t.Fatal(err)
	}
	s = reopen(t, s, dir, nil)
	probe := []string{"0198d0c0-9999", "0198d0c1", "zzz-own-scheme", "zzz", ids[0], ids[len(ids)-1], ids[len(ids)-recentLoad+1]}
	if n := checkGetRecord(t, s, probe); n != len(probe)-1 {
		t.Fatalf("after reopen the cache answered %d of %d lookups, want all but the oldest id", n, len(probe))
	}
}

// TestGetTxnRecentMatchesPebble commits records of a participant log from
// several goroutines at once, often the same ids (whose commits reach
// Pebble in an order the cache cannot see), past several rises of the
// floor, then checks that GetTxn answers every id as Pebble does, after
// the writes and after a reopen.
func TestGetTxnRecentMatchesPebble(t *testing.T) {
	dir := t.TempDir()
	l, err := OpenParticipantLog(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	const writers, perWriter = 4, 6000
	var next atomic.Int64
	next.Store(1_000_000)
	ids := make([][]string, writers)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for i := range perWriter {
				b := l.NewBatch()
				var id string
				switch n := next.Load(); {
				case rng.IntN(3) == 0: // an id another writer may be writing
					id = fmt.Sprintf("p-%09d", n-int64(rng.IntN(4)))
				default:
					id = fmt.Sprintf("p-%09d", next.Add(1))
				}
				ids[w] = append(ids[w], id)
				if rng.IntN(10) == 0 {
					b.DeleteTxn(id)
				} else {
					b.PutTxn(&PTxn{ID: id, State: PStatePrepared, Participants: []string{"a", "b"}, Term: uint64(w*perWriter + i)})
				}
				if err := l.CommitUnsynced(b); err != nil {
					t.Error(err)
					return
				}
				if _, _, err := l.GetTxn(id); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	check := func(l *ParticipantLog) (cached int) {
		for _, ws := range ids {
			for _, id := range append(ws, "p-", "p-999999999", "q") {
				want, wantFound, err := getTxn(l.db, id)
				if err != nil {
					t.Fatal(err)
				}
				if _, _, ok := l.recent.lookup(id); ok {
					cached++
				}
				got, found, err := l.GetTxn(id)
				if err != nil || found != wantFound || (found && !reflect.DeepEqual(got, want)) {
					t.Fatalf("GetTxn(%q) = %+v, %v, %v; Pebble holds %+v, %v", id, got, found, err, want, wantFound)
				}
			}
		}
		return cached
	}
	if n := check(l); n < writers*perWriter/10 {
		t.Fatalf("the cache answered %d lookups", n)
	}
	if l.recent.floor == "" {
		t.Fatal("the floor never rose")
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if l, err = OpenParticipantLog(dir, Options{}); err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	check(l)
}

func TestRecordCloneSharesNothing(t *testing.T) {
	for _, r := range []*Record{
		{ID: "a"},
		{ID: "b", Participants: []string{}, Acked: []string{}},
		{ID: "c", Participants: []string{"p1", "p2"}},
		{ID: "d", Participants: []string{"p1", "p2"}, Acked: []string{"p2"}},
		{ID: "e", Acked: []string{"p2"}},
	} {
		c := r.clone()
		if !reflect.DeepEqual(c, r) {
			t.Fatalf("clone of %+v = %+v", r, c)
		}
		if len(c.Participants) > 0 {
			c.Participants = append(c.Participants, "more") // must not run into Acked
			c.Participants[0] = "changed"
		}
		if len(c.Acked) > 0 && c.Acked[0] != r.Acked[0] {
			t.Fatalf("appending to the clone's participants changed its acked: %q", c.Acked)
		}
		if len(r.Participants) > 0 && r.Participants[0] == "changed" {
			t.Fatal("the clone shares the original's participants")
		}
	}
}
