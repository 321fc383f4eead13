package bank

import (
	"maps"
	"strings"
	"testing"

	"github.com/decree-tx/decree/participant"
)

// memStore is a committed keyspace; memBatch is a batch over it that is
// applied only when the test says so, like the SDK's batch, which commits
// after the Resource returns.
type memStore map[string][]byte

type memBatch struct {
	store  memStore
	writes map[string][]byte // nil value: deleted
}

func (s memStore) batch() *memBatch { return &memBatch{store: s, writes: map[string][]byte{}} }

func (b *memBatch) Get(key []byte) ([]byte, bool, error) {
	if v, ok := b.writes[string(key)]; ok {
		return v, v != nil, nil
	}
	v, ok := b.store[string(key)]
	return v, ok, nil
}

func (b *memBatch) Set(key, value []byte) { b.writes[string(key)] = value }
func (b *memBatch) Delete(key []byte)     { b.writes[string(key)] = nil }

// apply commits the batch to its store.
func (b *memBatch) apply() {
	for k, v := range b.writes {
		if v == nil {
			delete(b.store, k)
		} else {
			b.store[k] = v
		}
	}
}

func newMemBank(t *testing.T, balances map[string]int64) (*Bank, memStore) {
	store := memStore{}
	for acct, v := range balances {
		store[string(acctKey(acct))] = encodeBalance(v)
	}
	return NewBank("mem", testLogger(t)), store
}

func memPrepare(t *testing.T, b *Bank, w participant.Writer, id string, onePhase bool, legs ...Leg) (participant.Vote, string) {
	t.Helper()
	txn := participant.Txn{ID: id, Payload: EncodeLegs(legs), Participants: []string{"mem"}, OnePhase: onePhase}
	vote, reason, err := b.Prepare(t.Context(), txn, w)
	if err != nil {
		t.Fatalf("prepare %s: %v", id, err)
	}
	return vote, reason
}

func wantMemVote(t *testing.T, vote participant.Vote, reason string, wantVote participant.Vote, wantReason string) {
	t.Helper()
	if vote != wantVote || reason != wantReason {
		t.Fatalf("vote %v %q, want %v %q", vote, reason, wantVote, wantReason)
	}
}

// A reservation holds from the moment Prepare returns YES, before its batch
// is on disk.
func TestReservationHoldsBeforeItsBatchCommits(t *testing.T) {
	b, store := newMemBank(t, map[string]int64{"x": 100, "y": 0})
	v, r := memPrepare(t, b, store.batch(), "t1", false, debit("x", 60))
	wantMemVote(t, v, r, participant.VoteYes, "")
	// t1's batch is not applied: the store shows x unlocked.
	v, r = memPrepare(t, b, store.batch(), "t2", false, debit("x", 60), credit("y", 60))
	wantMemVote(t, v, r, participant.VoteNo, ReasonAccountBusy)
}

// A released account stays busy until the release's batch is on disk, so
// the next Prepare reads the balance the release wrote.
func TestReleaseWaitsForItsBatch(t *testing.T) {
	for _, tc := range []struct {
		name string
		// run prepares and commits t1 and returns the batch holding the
		// commit, not applied yet.
		run func(t *testing.T, b *Bank, store memStore) *memBatch
	}{
		{"two-phase", func(t *testing.T, b *Bank, store memStore) *memBatch {
			w := store.batch()
			v, r := memPrepare(t, b, w, "t1", false, debit("x", 60))
			wantMemVote(t, v, r, participant.VoteYes, "")
			w.apply()
			w = store.batch()
			if err := b.Commit(t.Context(), "t1", w); err != nil {
				t.Fatalf("commit: %v", err)
			}
			return w
		}},
		{"one-phase", func(t *testing.T, b *Bank, store memStore) *memBatch {
			w := store.batch()
			v, r := memPrepare(t, b, w, "t1", true, debit("x", 60))
			wantMemVote(t, v, r, participant.VoteYes, "")
			if err := b.Commit(t.Context(), "t1", w); err != nil {
				t.Fatalf("commit: %v", err)
			}
			return w
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, store := newMemBank(t, map[string]int64{"x": 100, "y": 0})
			release := tc.run(t, b, store)
			v, r := memPrepare(t, b, store.batch(), "t2", false, debit("x", 60), credit("y", 60))
			wantMemVote(t, v, r, participant.VoteNo, ReasonAccountBusy)
			release.apply()
			// Now x is free and holds 40: t2 cannot take 60 of it.
			v, r = memPrepare(t, b, store.batch(), "t2", false, debit("x", 60), credit("y", 60))
			wantMemVote(t, v, r, participant.VoteNo, ReasonInsufficientFunds)
			v, r = memPrepare(t, b, store.batch(), "t3", false, debit("x", 40), credit("y", 40))
			wantMemVote(t, v, r, participant.VoteYes, "")
		})
	}
}

// An aborted reservation is released the same way.
func TestAbortReleaseWaitsForItsBatch(t *testing.T) {
	b, store := newMemBank(t, map[string]int64{"x": 100})
	w := store.batch()
	v, r := memPrepare(t, b, w, "t1", false, debit("x", 100))
	wantMemVote(t, v, r, participant.VoteYes, "")
	w.apply()
	w = store.batch()
	if err := b.Abort(t.Context(), "t1", w); err != nil {
		t.Fatalf("abort: %v", err)
	}
	v, r = memPrepare(t, b, store.batch(), "t2", false, debit("x", 100))
	wantMemVote(t, v, r, participant.VoteNo, ReasonAccountBusy)
	w.apply()
	v, r = memPrepare(t, b, store.batch(), "t2", false, debit("x", 100))
	wantMemVote(t, v, r, participant.VoteYes, "")
}

func TestAbortWithNothingPendingDoesNothing(t *testing.T) {
	b, store := newMemBank(t, map[string]int64{"x": 100})
	w := store.batch()
	if err := b.Abort(t.Context(), "ghost", w); err != nil {
		t.Fatalf("abort: %v", err)
	}
	if len(w.writes) != 0 {
		t.Fatalf("abort of nothing wrote %v", w.writes)
	}
}

func TestCommitWithNothingPendingFails(t *testing.T) {
	b, store := newMemBank(t, map[string]int64{"x": 100})
	if err := b.Commit(t.Context(), "ghost", store.batch()); err == nil {
		t.Fatal("commit of a transaction never prepared succeeded")
	}
}

// A Prepare repeated after its first batch was lost (an SDK storage error)
// does not find its own reservation busy.
func TestRepeatedPrepareOwnsItsReservation(t *testing.T) {
	b, store := newMemBank(t, map[string]int64{"x": 100})
	v, r := memPrepare(t, b, store.batch(), "t1", false, debit("x", 10))
	wantMemVote(t, v, r, participant.VoteYes, "")
	v, r = memPrepare(t, b, store.batch(), "t1", false, debit("x", 10))
	wantMemVote(t, v, r, participant.VoteYes, "")
}

// A lock on disk makes an account busy even if the table has no entry for
// it (defence in depth: the table is rebuilt from these locks at start).
func TestDurableLockIsBusy(t *testing.T) {
	b, store := newMemBank(t, map[string]int64{"x": 100})
	store[string(lockKey("x"))] = []byte("t0")
	v, r := memPrepare(t, b, store.batch(), "t1", false, debit("x", 1))
	wantMemVote(t, v, r, participant.VoteNo, ReasonAccountBusy)
}

func TestRestoreRebuildsTheTable(t *testing.T) {
	b, store := newMemBank(t, map[string]int64{"x": 100, "y": 5})
	store[string(lockKey("x"))] = []byte("t0")
	scan := func(prefix []byte, fn func(key, value []byte) bool) error {
		for k, v := range store {
			if strings.HasPrefix(k, string(prefix)) && !fn([]byte(k), v) {
				break
			}
		}
		return nil
	}
	if err := b.restore(scan); err != nil {
		t.Fatalf("restore: %v", err)
	}
	want := reservations{"x": {txn: "t0"}}
	if !maps.Equal(b.reserved, want) {
		t.Fatalf("table %v, want %v", b.reserved, want)
	}
}
