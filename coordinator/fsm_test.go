package coordinator

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/rs/zerolog"

	"github.com/decree-tx/decree/coordinator/internal/twopc"
	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
	"github.com/decree-tx/decree/txlog"
)

// fsmStore is a state machine over a real in-memory store, applying one
// batch of commands at a time as the raft loop does.
type fsmStore struct {
	t       testing.TB
	store   *txlog.Store
	index   uint64
	horizon int64
	stats   nodeStats
	reader  stateReader // the store unless a test counts its reads
}

func newFSMStore(t testing.TB) *fsmStore {
	store, err := txlog.Open("fsm", txlog.Identity{ClusterID: 1, NodeID: 1}, txlog.Options{FS: vfs.NewMem(), Logger: zerolog.Nop()})
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() { store.Close() })
	return &fsmStore{t: t, store: store, reader: store}
}

// apply applies cmds in one batch and returns their results.
func (f *fsmStore) apply(cmds ...*decreev1.Command) []Result {
	f.t.Helper()
	ap := newApplier(f.reader, f.store.NewStateBatch(), f.horizon)
	ap.stats = &f.stats
	var out []Result
	for _, c := range cmds {
		f.index++
		res, err := ap.apply(c, f.index)
		if err != nil {
			f.t.Fatalf("apply %v: %v", c, err)
		}
		out = append(out, res)
	}
	if err := f.store.CommitState(ap.batch, f.index); err != nil {
		f.t.Fatalf("commit: %v", err)
	}
	if ap.horizon != nil {
		f.horizon = *ap.horizon
	}
	return out
}

func (f *fsmStore) ids() []string {
	f.t.Helper()
	var ids []string
	if err := f.store.ScanRecords(func(r *txlog.Record) bool { ids = append(ids, r.ID); return true }); err != nil {
		f.t.Fatalf("scan: %v", err)
	}
	return ids
}

// idAt mints a UUIDv7 carrying time t; seq tells apart ids of one
// millisecond, and orders them.
func idAt(t time.Time, seq uint32) string {
	var raw [16]byte
	binary.BigEndian.PutUint64(raw[:8], uint64(t.UnixMilli())<<16)
	raw[6], raw[7], raw[8] = 0x70, 0, 0x80
	binary.BigEndian.PutUint32(raw[12:], seq)
	h := hex.EncodeToString(raw[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

func finishedCmd(at time.Time, ids ...string) *decreev1.Command {
	return &decreev1.Command{Kind: &decreev1.Command_Finished{Finished: &decreev1.Finished{TxnIds: ids, FinishedAt: at.UnixNano()}}}
}

func collectCmd(before time.Time) *decreev1.Command {
	return &decreev1.Command{Kind: &decreev1.Command_Collect{Collect: &decreev1.Collect{Before: before.UnixNano()}}}
}

func commitCmd(id string) *decreev1.Command {
	return decideCommand(id, decreev1.Outcome_OUTCOME_COMMITTED, []string{"p1", "p2"}, "", 1)
}

var epoch = time.Unix(1_700_000_000, 0)

func TestCollectDeletesExactlyTheExpiredRecords(t *testing.T) {
	f := newFSMStore(t)
	before := epoch.Add(time.Hour)
	expired := idAt(epoch, 1)
	recent := idAt(epoch, 2)                  // finished at the horizon: kept
	ahead := idAt(before.Add(time.Second), 3) // its client's clock runs ahead: kept
	unfinished := idAt(epoch, 4)
	staged := idAt(epoch, 5)
	f.apply(commitCmd(expired), commitCmd(recent), commitCmd(ahead), commitCmd(unfinished),
		stagedCommand(staged, []string{"p1", "p2"}))
	f.apply(finishedCmd(epoch.Add(time.Minute), expired, ahead), finishedCmd(before, recent))

	res := f.apply(collectCmd(before))[0]
	if res.Err != nil || res.More {
		t.Fatalf("collect = %+v", res)
	}
	if got, want := f.ids(), []string{recent, unfinished, staged, ahead}; !slices.Equal(got, want) {
		t.Fatalf("records after collect = %q, want %q", got, want)
	}
	if f.horizon != before.UnixNano() {
		t.Fatalf("horizon = %d, want %d", f.horizon, before.UnixNano())
	}
	if s := f.stats.snapshot(); s.Collects != 1 || s.CollectedRecords != 1 || s.CollectTime <= 0 || s.CollectMaxTime != s.CollectTime {
		t.Fatalf("stats after one collect = %+v", s)
	}

	// Across the collect: the collected id is FORGOTTEN, never decided
	// again; the kept ones answer their recorded outcome.
	res = f.apply(decideCommand(expired, decreev1.Outcome_OUTCOME_ABORTED, nil, "presumed", 2))[0]
	if !errors.Is(res.Err, twopc.ErrForgotten) {
		t.Fatalf("decide on a collected id = %+v, want ErrForgotten", res)
	}
	for _, id := range []string{recent, ahead, unfinished} {
		res = f.apply(decideCommand(id, decreev1.Outcome_OUTCOME_ABORTED, nil, "presumed", 2))[0]
		if res.Err != nil || res.Outcome != decreev1.Outcome_OUTCOME_COMMITTED {
			t.Fatalf("decide on kept %s = %+v, want its COMMITTED", id, res)
		}
	}
	if got := f.ids(); len(got) != 4 {
		t.Fatalf("records after the queries = %q", got)
	}
}

func TestCollectIsBoundedPerCommandAndSaysMore(t *testing.T) {
	f := newFSMStore(t)
	n := collectLimit + 5
	ids := make([]string, n)
	for i := range ids {
		ids[i] = idAt(epoch, uint32(i))
	}
	for chunk := range slices.Chunk(ids, 1000) {
		cmds := make([]*decreev1.Command, 0, len(chunk)+1)
		for _, id := range chunk {
			cmds = append(cmds, commitCmd(id))
		}
		f.apply(append(cmds, finishedCmd(epoch.Add(time.Second), chunk...))...)
	}
	live := idAt(epoch.Add(time.Hour), 0)
	f.apply(commitCmd(live), finishedCmd(epoch.Add(time.Hour), live))

	before := epoch.Add(time.Minute)
	if res := f.apply(collectCmd(before))[0]; !res.More {
		t.Fatalf("first collect = %+v, want More", res)
	}
	if got := len(f.ids()); got != n+1-collectLimit {
		t.Fatalf("%d records after the first collect, want %d", got, n+1-collectLimit)
	}
	// The next Collect goes on where it stopped, even at the same horizon.
	if res := f.apply(collectCmd(before))[0]; res.More {
		t.Fatalf("second collect = %+v, want no more", res)
	}
	if got := f.ids(); !slices.Equal(got, []string{live}) {
		t.Fatalf("records after the second collect = %q, want only the live one", got)
	}
	if s := f.stats.snapshot(); s.Collects != 2 || s.CollectedRecords != uint64(n) {
		t.Fatalf("stats = %+v, want 2 collects of %d records", s, n)
	}
}

// A record finished earlier in the same apply batch is not yet in the
// index the collect reads; it is collected all the same, and a later
// command of the batch does not see it.
func TestCollectSeesRecordsFinishedEarlierInTheBatch(t *testing.T) {
	f := newFSMStore(t)
	old, fresh := idAt(epoch, 1), idAt(epoch, 2)
	f.apply(commitCmd(old), commitCmd(fresh), finishedCmd(epoch, old))
	before := epoch.Add(time.Hour)
	res := f.apply(finishedCmd(epoch.Add(time.Minute), fresh), collectCmd(before), collectCmd(before),
		decideCommand(fresh, decreev1.Outcome_OUTCOME_ABORTED, nil, "", 2))
	if !errors.Is(res[3].Err, twopc.ErrForgotten) {
		t.Fatalf("decide after the collect in the same batch = %+v, want ErrForgotten", res[3])
	}
	if got := f.ids(); len(got) != 0 {
		t.Fatalf("records left = %q", got)
	}
	var refs []txlog.FinishedRef
	if err := f.store.ScanFinished(before.Add(time.Hour).UnixNano(), func(r txlog.FinishedRef) bool {
		refs = append(refs, r)
		return true
	}); err != nil || len(refs) != 0 {
		t.Fatalf("finished index left = %v, %v", refs, err)
	}
}

// countingReader counts the finished-index entries a collect visits.
type countingReader struct {
	*txlog.Store
	visited int
}

func (c *countingReader) ScanFinished(before int64, fn func(txlog.FinishedRef) bool) error {
	return c.Store.ScanFinished(before, func(r txlog.FinishedRef) bool {
		c.visited++
		return fn(r)
	})
}

// Collect's work follows the expired records, not the table: with many
// unexpired records it visits only the expired ones.
func TestCollectVisitsOnlyExpiredEntries(t *testing.T) {
	f := newFSMStore(t)
	const expired, unexpired = 100, 20_000
	fillForCollect(t, f, expired, unexpired)
	cr := &countingReader{Store: f.store}
	ap := newApplier(cr, f.store.NewStateBatch(), f.horizon)
	if _, err := ap.apply(collectCmd(epoch.Add(time.Hour)), f.index+1); err != nil {
		t.Fatal(err)
	}
	ap.batch.Discard()
	if cr.visited != expired {
		t.Fatalf("collect visited %d index entries, want %d", cr.visited, expired)
	}
}

// fillForCollect writes expired records finished at epoch, and unexpired
// ones finished two hours later.
func fillForCollect(t testing.TB, f *fsmStore, expired, unexpired int) {
	put := func(at time.Time, n, seq0 int) {
		ids := make([]string, n)
		for i := range ids {
			ids[i] = idAt(at, uint32(seq0+i))
		}
		for chunk := range slices.Chunk(ids, 2000) {
			cmds := make([]*decreev1.Command, 0, len(chunk)+1)
			for _, id := range chunk {
				cmds = append(cmds, commitCmd(id))
			}
			for _, res := range f.apply(append(cmds, finishedCmd(at, chunk...))...) {
				if res.Err != nil {
					t.Fatalf("fill: %v", res.Err)
				}
			}
		}
	}
	put(epoch, expired, 0)
	put(epoch.Add(2*time.Hour), unexpired, expired)
}

// BenchmarkCollect measures one Collect of 100 expired records next to a
// growing number of unexpired ones: the index entries it visits (entries/op)
// stay at 100, and its time should not grow with the table beyond Pebble's
// own per-level cost.
func BenchmarkCollect(b *testing.B) {
	for _, unexpired := range []int{20_000, 200_000} {
		b.Run(fmt.Sprintf("unexpired=%d", unexpired), func(b *testing.B) {
			f := newFSMStore(b)
			fillForCollect(b, f, 0, unexpired)
			before := epoch.Add(time.Hour)
			cr := &countingReader{Store: f.store}
			b.ResetTimer()
			for range b.N {
				b.StopTimer()
				f.horizon, f.reader = 0, f.store // lets this round's expired records be decided
				fillForCollect(b, f, 100, 0)
				f.reader = cr
				b.StartTimer()
				f.apply(collectCmd(before))
			}
			b.ReportMetric(float64(cr.visited)/float64(b.N), "entries/op")
		})
	}
}
