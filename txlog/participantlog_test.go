package txlog

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// openPLog opens a participant log in dir on fsys (nil for the real
// filesystem) and closes it when the test ends, unless the test did.
func openPLog(t testing.TB, dir string, fsys vfs.FS) *ParticipantLog {
	t.Helper()
	l, err := OpenParticipantLog(dir, Options{FS: fsys})
	if err != nil {
		t.Fatalf("open participant log %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil && !errors.Is(err, errLogClosed) {
			t.Errorf("close: %v", err)
		}
	})
	return l
}

func reopenPLog(t testing.TB, l *ParticipantLog, dir string, fsys vfs.FS) *ParticipantLog {
	t.Helper()
	if err := l.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	return openPLog(t, dir, fsys)
}

func mustCommitP(t testing.TB, l *ParticipantLog, b *PBatch) {
	t.Helper()
	if err := l.Commit(b); err != nil {
		t.Fatalf("commit: %v", err)
	}
}

func checkTxn(t testing.TB, l *ParticipantLog, want *PTxn) {
	t.Helper()
	got, found, err := l.GetTxn(want.ID)
	if err != nil || !found {
		t.Fatalf("get txn %q: found %v, err %v", want.ID, found, err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("txn %q = %+v, want %+v", want.ID, got, want)
	}
}

func checkUser(t testing.TB, l *ParticipantLog, key, want string, wantFound bool) {
	t.Helper()
	val, found, err := l.Get([]byte(key))
	if err != nil {
		t.Fatalf("get %q: %v", key, err)
	}
	if found != wantFound || string(val) != want {
		t.Fatalf("get %q = %q, %v; want %q, %v", key, val, found, want, wantFound)
	}
}

// userKV returns the user keys starting with prefix as "k=v" strings.
func userKV(t testing.TB, scan func([]byte, func(k, v []byte) bool) error, prefix string) []string {
	t.Helper()
	var kvs []string
	if err := scan([]byte(prefix), func(k, v []byte) bool {
		kvs = append(kvs, string(k)+"="+string(v))
		return true
	}); err != nil {
		t.Fatalf("scan %q: %v", prefix, err)
	}
	return kvs
}

func TestParticipantLogRoundTripAndReopen(t *testing.T) {
	dir := t.TempDir()
	l := openPLog(t, dir, nil)
	prepared := &PTxn{ID: "t1", State: PStatePrepared, Participants: []string{"a", "b"}, Term: 2, PreparedAt: 7}
	b := l.NewBatch()
	b.PutTxn(prepared)
	b.Set([]byte("acct/alice"), []byte("90"))
	b.Set([]byte("hold/t1"), []byte("alice:10"))
	mustCommitP(t, l, b)
	b = l.NewBatch()
	b.PutTxn(&PTxn{ID: "t0", State: PStateAborted, Reason: "tombstone"})
	b.PutTxn(&PTxn{ID: "gone", State: PStateAborted})
	mustCommitP(t, l, b)
	b = l.NewBatch()
	b.DeleteTxn("gone")
	b.Delete([]byte("hold/t1"))
	mustCommitP(t, l, b)

	l = reopenPLog(t, l, dir, nil)
	checkTxn(t, l, prepared)
	checkUser(t, l, "acct/alice", "90", true)
	checkUser(t, l, "hold/t1", "", false)
	var ids []string
	if err := l.ScanTxns(func(p *PTxn) bool { ids = append(ids, p.ID+":"+p.State.String()); return true }); err != nil {
		t.Fatal(err)
	}
	if want := []string{"t0:aborted", "t1:prepared"}; !reflect.DeepEqual(ids, want) {
		t.Fatalf("scan txns = %v, want %v", ids, want)
	}
	if _, found, err := l.GetTxn("gone"); found || err != nil {
		t.Fatalf("deleted txn: found %v, err %v", found, err)
	}
}

func TestParticipantLogUserKeysAreSeparateFromRecords(t *testing.T) {
	l := openPLog(t, "db", vfs.NewMem())
	b := l.NewBatch()
	b.Set([]byte("p/txn/x"), []byte("user value")) // looks like a record key
	b.PutTxn(&PTxn{ID: "x", State: PStateReadOnly})
	mustCommitP(t, l, b)
	checkUser(t, l, "p/txn/x", "user value", true)
	checkTxn(t, l, &PTxn{ID: "x", State: PStateReadOnly})
	if kvs := userKV(t, l.Scan, ""); !reflect.DeepEqual(kvs, []string{"p/txn/x=user value"}) {
		t.Fatalf("user keys = %v", kvs)
	}
}

func TestPBatchReadsItsOwnWrites(t *testing.T) {
	l := openPLog(t, "db", vfs.NewMem())
	b := l.NewBatch()
	b.Set([]byte("a/1"), []byte("old"))
	b.Set([]byte("a/2"), []byte("x"))
	mustCommitP(t, l, b)

	b = l.NewBatch()
	defer b.Discard()
	b.Set([]byte("a/1"), []byte("new"))
	b.Delete([]byte("a/2"))
	b.Set([]byte("a/3"), []byte("y"))
	b.Set([]byte("b/1"), []byte("z"))
	if val, found, err := b.Get([]byte("a/1")); err != nil || !found || string(val) != "new" {
		t.Fatalf("batch get a/1 = %q, %v, %v", val, found, err)
	}
	if _, found, _ := b.Get([]byte("a/2")); found {
		t.Fatal("batch sees a deleted key")
	}
	if kvs := userKV(t, b.Scan, "a/"); !reflect.DeepEqual(kvs, []string{"a/1=new", "a/3=y"}) {
		t.Fatalf("batch scan = %v", kvs)
	}
	if b.UserWrites() != 4 {
		t.Fatalf("user writes = %d, want 4", b.UserWrites())
	}
	// Nothing is visible outside the batch before Commit.
	checkUser(t, l, "a/1", "old", true)
	checkUser(t, l, "a/3", "", false)
}

func TestParticipantLogScanPrefixEndingInFF(t *testing.T) {
	l := openPLog(t, "db", vfs.NewMem())
	b := l.NewBatch()
	for _, k := range []string{"a\xff", "a\xff\x00", "a\xff\xff", "b"} {
		b.Set([]byte(k), []byte("v"))
	}
	mustCommitP(t, l, b)
	if kvs := userKV(t, l.Scan, "a\xff"); len(kvs) != 3 {
		t.Fatalf("scan a\\xff = %q, want 3 keys", kvs)
	}
	if kvs := userKV(t, l.Scan, ""); len(kvs) != 4 {
		t.Fatalf("scan all = %q, want 4 keys", kvs)
	}
}

func TestParticipantLogSnapshotIsConsistent(t *testing.T) {
	l := openPLog(t, "db", vfs.NewMem())
	b := l.NewBatch()
	b.Set([]byte("k"), []byte("1"))
	mustCommitP(t, l, b)
	snap, err := l.NewSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Close()
	b = l.NewBatch()
	b.Set([]byte("k"), []byte("2"))
	b.Set([]byte("k2"), []byte("x"))
	mustCommitP(t, l, b)
	if val, _, _ := snap.Get([]byte("k")); string(val) != "1" {
		t.Fatalf("snapshot get k = %q, want 1", val)
	}
	if kvs := userKV(t, snap.Scan, "k"); !reflect.DeepEqual(kvs, []string{"k=1"}) {
		t.Fatalf("snapshot scan = %v", kvs)
	}
}

func TestOpenParticipantLogLockedAndWrongDirectory(t *testing.T) {
	fs := vfs.NewMem()
	l := openPLog(t, "db", fs)
	if _, err := OpenParticipantLog("db", Options{FS: fs}); !errors.Is(err, ErrLocked) {
		t.Fatalf("second open: %v, want ErrLocked", err)
	}
	if _, err := Open("db", testID, Options{FS: fs}); !errors.Is(err, ErrLocked) {
		t.Fatalf("store open: %v, want ErrLocked", err)
	}
	b := l.NewBatch()
	_ = l.Close()
	if err := l.Commit(b); err == nil {
		t.Fatal("commit after close: no error")
	}

	s := openStore(t, "coord", fs)
	_ = s.Close()
	if _, err := OpenParticipantLog("coord", Options{FS: fs}); err == nil {
		t.Fatal("opened a coordinator directory as a participant log")
	}
}

func TestParticipantLogCommitRejectsForeignOrUsedBatch(t *testing.T) {
	fs := vfs.NewMem()
	l1, l2 := openPLog(t, "a", fs), openPLog(t, "b", fs)
	if err := l2.Commit(l1.NewBatch()); err == nil {
		t.Fatal("committed another log's batch")
	}
	b := l1.NewBatch()
	mustCommitP(t, l1, b)
	if err := l1.Commit(b); err == nil {
		t.Fatal("committed a batch twice")
	}
	if n := l1.SyncCount(); n != 2 { // the stamp and one commit
		t.Fatalf("sync count = %d, want 2", n)
	}
	u := l1.NewBatch()
	u.Set([]byte("k"), []byte("v"))
	if err := l1.CommitUnsynced(u); err != nil {
		t.Fatal(err)
	}
	if n := l1.SyncCount(); n != 2 {
		t.Fatalf("sync count after an unsynced commit = %d, want 2", n)
	}
}

// TestParticipantLogConcurrentCommits commits from many goroutines at once
// (run it with -race), checks that every commit is there and that they
// shared fsyncs.
func TestParticipantLogConcurrentCommits(t *testing.T) {
	fs := &walSyncCounter{FS: vfs.Default}
	dir := t.TempDir()
	l := openPLog(t, dir, fs)
	const writers, perWriter = 32, 20
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range perWriter {
				id := fmt.Sprintf("w%02d-%02d", w, i)
				b := l.NewBatch()
				b.PutTxn(&PTxn{ID: id, State: PStatePrepared, Participants: []string{"p"}})
				b.Set([]byte("k/"+id), []byte(id))
				if err := l.Commit(b); err != nil {
					t.Errorf("commit %s: %v", id, err)
				}
			}
		})
	}
	wg.Wait()
	commits := l.SyncCount() - 1
	fsyncs := fs.syncs.Load()
	t.Logf("%d synced commits took %d WAL fsyncs", commits, fsyncs)
	// Serialised commits would take one fsync each; grouped ones share.
	if fsyncs >= commits/2 {
		t.Errorf("%d concurrent synced commits took %d fsyncs: commits are not group-committed", commits, fsyncs)
	}
	l = reopenPLog(t, l, dir, nil)
	n := 0
	_ = l.ScanTxns(func(*PTxn) bool { n++; return true })
	if n != writers*perWriter || len(userKV(t, l.Scan, "k/")) != writers*perWriter {
		t.Fatalf("found %d records, want %d", n, writers*perWriter)
	}
}

// TestParticipantLogCrashKeepsSyncedAndAtomicBatches opens simulated crashes
// that keep all synced data and a random part of the rest, and checks that
// every synced batch is there and that no batch is there in part.
func TestParticipantLogCrashKeepsSyncedAndAtomicBatches(t *testing.T) {
	for seed := range uint64(12) {
		cfg := vfs.CrashCloneCfg{UnsyncedDataPercent: int(seed * 10 % 110), RNG: rand.New(rand.NewPCG(seed, 2))}
		fs := vfs.NewCrashableMem()
		l := openPLog(t, "db", fs)
		for i := range 4 {
			mustCommitP(t, l, crashBatch(l, i, 10))
		}
		for i := 4; i < 8; i++ { // unsynced, some larger than a WAL block
			if err := l.CommitUnsynced(crashBatch(l, i, 10<<(i%3*4))); err != nil {
				t.Fatal(err)
			}
		}
		crashed := fs.CrashClone(cfg)
		_ = l.Close()
		c := openPLog(t, "db", crashed)
		kept := checkCrashBatches(t, c, 8)
		if kept < 4 {
			t.Fatalf("seed %d: only %d batches survived, 4 were synced", seed, kept)
		}
	}
}

// crashBatch is batch i: a prepared record plus n bytes of user data under
// two keys.
func crashBatch(l *ParticipantLog, i, n int) *PBatch {
	b := l.NewBatch()
	id := fmt.Sprintf("t%d", i)
	b.PutTxn(&PTxn{ID: id, State: PStatePrepared, Participants: []string{"p"}, PreparedAt: int64(i)})
	b.Set([]byte("data/"+id), bytes.Repeat([]byte{'x'}, n))
	b.Set([]byte("hold/"+id), []byte(id))
	return b
}

// checkCrashBatches checks that the first n crash batches survived as a
// prefix, each whole or not at all, and returns how many survived.
func checkCrashBatches(t *testing.T, l *ParticipantLog, n int) int {
	t.Helper()
	kept := 0
	for i := range n {
		id := fmt.Sprintf("t%d", i)
		_, rec, _ := l.GetTxn(id)
		_, data, _ := l.Get([]byte("data/" + id))
		_, hold, _ := l.Get([]byte("hold/" + id))
		if rec != data || rec != hold {
			t.Fatalf("batch %d survived in part: record %v, data %v, hold %v", i, rec, data, hold)
		}
		if rec && kept != i {
			t.Fatalf("batch %d survived but batch %d did not", i, kept)
		}
		if rec {
			kept++
		}
	}
	return kept
}

func TestParticipantLogIdentity(t *testing.T) {
	dir := t.TempDir()
	l := openPLog(t, dir, nil)
	id := l.ID()
	if len(id) != 36 || id[14] != '4' {
		t.Fatalf("id %q is not a version 4 UUID", id)
	}
	if other := openPLog(t, t.TempDir(), nil).ID(); other == id {
		t.Fatalf("two logs share the id %s", id)
	}
	l = reopenPLog(t, l, dir, nil)
	if got := l.ID(); got != id {
		t.Fatalf("id after reopen %q, want %q", got, id)
	}
	// A log written before identities existed gets one when opened, and
	// keeps it.
	if err := l.db.Delete(participantIDKey, nil); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, identityFile)); err != nil {
		t.Fatal(err)
	}
	l = reopenPLog(t, l, dir, nil)
	fresh := l.ID()
	if fresh == "" || fresh == id {
		t.Fatalf("id of a log without one: %q (was %q)", fresh, id)
	}
	if l = reopenPLog(t, l, dir, nil); l.ID() != fresh {
		t.Fatalf("id after reopen %q, want %q", l.ID(), fresh)
	}
}
