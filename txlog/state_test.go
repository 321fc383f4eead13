package txlog

import (
	"slices"
	"testing"
)

func TestCommitStateIsAtomicWithApplied(t *testing.T) {
	s := openMem(t)
	b := s.NewStateBatch()
	b.PutRecord(record("t1", OutcomeCommitted))
	b.Set([]byte("k"), []byte("v"))
	if _, found, _ := s.GetRecord("t1"); found {
		t.Fatal("record visible before commit")
	}
	if err := s.CommitState(b, 3); err != nil {
		t.Fatalf("commit state: %v", err)
	}
	if got := s.Applied(); got != 3 {
		t.Fatalf("applied = %d, want 3", got)
	}
	if _, found, _ := s.GetRecord("t1"); !found {
		t.Fatal("record missing after commit")
	}
	if v, found, _ := s.GetState([]byte("k")); !found || string(v) != "v" {
		t.Fatalf("k = %q, %v; want v", v, found)
	}
}

func TestCommitStateRefusesOldIndex(t *testing.T) {
	s := openMem(t)
	commitRecords(t, s, 5, record("t1", OutcomeCommitted))
	for _, applied := range []uint64{4, 5} {
		b := s.NewStateBatch()
		b.PutRecord(record("t2", OutcomeCommitted))
		if err := s.CommitState(b, applied); err == nil {
			t.Fatalf("commit state at %d after 5 succeeded", applied)
		}
	}
	if _, found, _ := s.GetRecord("t2"); found {
		t.Fatal("refused batch was written")
	}
	if got := s.Applied(); got != 5 {
		t.Fatalf("applied = %d, want 5", got)
	}
}

func TestStateBatchRejectsReservedKey(t *testing.T) {
	s := openMem(t)
	for name, write := range map[string]func(*StateBatch){
		"set":    func(b *StateBatch) { b.Set([]byte("applied"), []byte{1}) },
		"delete": func(b *StateBatch) { b.Delete([]byte("applied")) },
	} {
		t.Run(name, func(t *testing.T) {
			b := s.NewStateBatch()
			defer b.Discard()
			defer func() {
				if recover() == nil {
					t.Fatal("no panic on reserved key")
				}
			}()
			write(b)
		})
	}
}

func TestStateBatchIsSingleUse(t *testing.T) {
	s := openMem(t)
	b := s.NewStateBatch()
	b.Set([]byte("k"), []byte("v"))
	if err := s.CommitState(b, 1); err != nil {
		t.Fatalf("commit state: %v", err)
	}
	b.Discard() // no-op
	if err := s.CommitState(b, 2); err == nil {
		t.Fatal("second commit of the same batch succeeded")
	}
}

func TestRecordsRoundTripAndScanOrder(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, nil)
	recs := []*Record{
		record("c", OutcomeCommitted),
		{ID: "a", Outcome: OutcomeAborted, Participants: []string{"x", "y"}, Acked: []string{"y"},
			DecidedAt: 10, Finished: true, FinishedAt: 20},
		record("b", OutcomeUnknown),
		record("d", OutcomeCommitted),
	}
	commitRecords(t, s, 1, recs...)
	b := s.NewStateBatch()
	b.DeleteRecord(recs[3])
	if err := s.CommitState(b, 2); err != nil {
		t.Fatalf("commit state: %v", err)
	}
	check := func(s *Store) {
		t.Helper()
		got := allRecords(t, s)
		if ids := recordIDs(got); !slices.Equal(ids, []string{"a", "b", "c"}) {
			t.Fatalf("scan order = %q, want [a b c]", ids)
		}
		if !recordEqual(got[0], recs[1]) {
			t.Fatalf("record a = %+v, want %+v", got[0], recs[1])
		}
		r, found, err := s.GetRecord("c")
		if err != nil || !found || !recordEqual(r, recs[0]) {
			t.Fatalf("get c = %+v, %v, %v", r, found, err)
		}
		if s.Applied() != 2 {
			t.Fatalf("applied = %d, want 2", s.Applied())
		}
	}
	check(s)
	s = reopen(t, s, dir, nil)
	check(s)

	var first []string
	if err := s.ScanRecords(func(r *Record) bool {
		first = append(first, r.ID)
		return false
	}); err != nil || !slices.Equal(first, []string{"a"}) {
		t.Fatalf("stopped scan saw %q, %v", first, err)
	}
}

func recordEqual(a, b *Record) bool {
	return a.ID == b.ID && a.Outcome == b.Outcome &&
		slices.Equal(a.Participants, b.Participants) && slices.Equal(a.Acked, b.Acked) &&
		a.DecidedAt == b.DecidedAt && a.Finished == b.Finished && a.FinishedAt == b.FinishedAt
}
