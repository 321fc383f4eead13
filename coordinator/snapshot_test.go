package coordinator

import (
	"fmt"
	"io"
	"runtime"
	"runtime/metrics"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/rs/zerolog"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
	"github.com/decree-tx/decree/txlog"
)

const snapTestCluster = 0x5a

// snapStore opens a store for node id in dir on fsys (nil: the disk).
func snapStore(t testing.TB, dir string, fsys vfs.FS, id uint64) *txlog.Store {
	t.Helper()
	s, err := txlog.Open(dir, txlog.Identity{ClusterID: snapTestCluster, NodeID: id}, txlog.Options{FS: fsys, StagingFileSize: 1 << 20})
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func snapRecord(i int) *txlog.Record {
	return &txlog.Record{ID: fmt.Sprintf("%020d", i), Outcome: txlog.OutcomeCommitted,
		Participants: []string{"127.0.0.1:8101", "127.0.0.1:8102"}, DecidedAt: int64(i), Finished: true, FinishedAt: int64(i) + 1}
}

func snapKV(i int) ([]byte, []byte) {
	r := snapRecord(i)
	return []byte("txn/" + r.ID), r.Marshal()
}

// seedState gives s a state of n records at index (through the same
// staging and install a received snapshot takes, which is fast) and
// returns the state's size in bytes.
func seedState(t testing.TB, s *txlog.Store, index uint64, n int) int {
	t.Helper()
	st, err := s.NewStager(index, index)
	if err != nil {
		t.Fatal(err)
	}
	size := 0
	for i := range n {
		k, v := snapKV(i)
		size += len(k) + len(v)
		if err := st.Add(k, v); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.Finish(); err != nil {
		t.Fatal(err)
	}
	if err := s.Save(&raftpb.HardState{Term: new(uint64(1)), Commit: new(index)}, nil, descSnapshot(index)); err != nil {
		t.Fatalf("install seeded state: %v", err)
	}
	return size
}

func descSnapshot(index uint64) *raftpb.Snapshot {
	return &raftpb.Snapshot{
		Metadata: &raftpb.SnapshotMetadata{Index: new(index), Term: new(uint64(1)),
			ConfState: &raftpb.ConfState{Voters: []uint64{1, 2, 3}}},
		Data: txlog.SnapshotDescriptor{ClusterID: snapTestCluster, Index: index}.Marshal(),
	}
}

func snapMsg(index uint64) *raftpb.Message {
	return &raftpb.Message{Type: raftpb.MsgSnap.Enum(), From: new(uint64(1)), To: new(uint64(2)),
		Term: new(uint64(1)), Snapshot: descSnapshot(index)}
}

// receiver is node 2 as far as receiving a snapshot goes.
func receiver(s *txlog.Store) *Node {
	return &Node{cfg: Config{ID: 2, ClusterID: snapTestCluster, Clock: WallClock{}}, store: s, log: zerolog.Nop()}
}

// install is the step of a receiver without a raft loop: what the loop's
// next Ready does with the snapshot.
func install(s *txlog.Store) func(*raftpb.Message) error {
	return func(m *raftpb.Message) error {
		idx := m.GetSnapshot().GetMetadata().GetIndex()
		return s.Save(&raftpb.HardState{Term: new(uint64(1)), Commit: new(idx)}, nil, m.GetSnapshot())
	}
}

// chanPipe is a snapshot stream between two goroutines with one chunk in
// flight, as gRPC's flow control would keep it.
type chanPipe struct {
	c      chan *decreev1.SnapshotChunk
	chunks atomic.Int64
}

func newChanPipe() *chanPipe { return &chanPipe{c: make(chan *decreev1.SnapshotChunk, 1)} }

func (p *chanPipe) Send(c *decreev1.SnapshotChunk) error {
	p.chunks.Add(1)
	p.c <- c
	return nil
}

func (p *chanPipe) Recv() (*decreev1.SnapshotChunk, error) {
	c, ok := <-p.c
	if !ok {
		return nil, io.EOF
	}
	return c, nil
}

// transfer streams src's state with the MsgSnap at index to dst.
func transfer(t testing.TB, src, dst *txlog.Store, index uint64, chunkBytes int) (transferStats, int64, error) {
	t.Helper()
	pipe := newChanPipe()
	var sendErr error
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(pipe.c)
		hdr := &decreev1.SnapshotHeader{ClusterId: snapTestCluster, From: 1, To: 2}
		_, sendErr = sendSnapshot(src, hdr, snapMsg(index), pipe, chunkBytes)
	})
	ts, err := receiver(dst).receiveSnapshot(pipe, 1, install(dst))
	for range pipe.c { // unblock a sender the receiver gave up on
	}
	wg.Wait()
	if err == nil && sendErr != nil {
		t.Fatalf("send snapshot: %v", sendErr)
	}
	return ts, pipe.chunks.Load(), err
}

func countRecords(t testing.TB, s *txlog.Store) int {
	t.Helper()
	n := 0
	if err := s.ScanRecords(func(*txlog.Record) bool { n++; return true }); err != nil {
		t.Fatal(err)
	}
	return n
}

// heapPeak samples the Go heap until stop is closed and returns the
// highest value seen.
func heapPeak(stop <-chan struct{}) func() uint64 {
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	var peak atomic.Uint64
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			metrics.Read(sample)
			if v := sample[0].Value.Uint64(); v > peak.Load() {
				peak.Store(v)
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	return func() uint64 { <-done; return peak.Load() }
}

// TestSnapshotTransferBoundedMemory streams a state of two million records
// in small chunks between two real stores and checks that the Go heap
// never holds more than a small part of it.
func TestSnapshotTransferBoundedMemory(t *testing.T) {
	if testing.Short() || raceEnabled {
		t.Skip("builds a two-million-record state: make test runs it without -race")
	}
	const records, index, chunk = 2_000_000, 100, 64 << 10
	src := snapStore(t, t.TempDir(), nil, 1)
	size := seedState(t, src, index, records)
	dst := snapStore(t, t.TempDir(), nil, 2)
	seedState(t, dst, 10, 10)

	runtime.GC()
	stop := make(chan struct{})
	peak := heapPeak(stop)
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	ts, chunks, err := transfer(t, src, dst, index, chunk)
	close(stop)
	if err != nil {
		t.Fatalf("transfer: %v", err)
	}
	grew := int64(peak()) - int64(base.HeapAlloc)
	t.Logf("state %d MB in %d chunks; heap grew by at most %.1f MB during the transfer", size>>20, chunks, float64(grew)/(1<<20))
	if want := uint64(2*records + 1); ts.pairs != want { // records, their index entries, the index marker
		t.Fatalf("transferred %d pairs, want %d", ts.pairs, want)
	}
	if minChunks := int64(size / chunk); chunks < minChunks {
		t.Fatalf("%d chunks for %d bytes: not chunked at %d bytes", chunks, size, chunk)
	}
	if limit := int64(size / 8); grew > limit {
		t.Fatalf("heap grew by %d bytes during the transfer of a %d-byte state (limit %d)", grew, size, limit)
	}
	if got := countRecords(t, dst); got != records {
		t.Fatalf("receiver holds %d records, want %d", got, records)
	}
	for _, i := range []int{0, 1, records / 2, records - 1} {
		r, ok, err := dst.GetRecord(snapRecord(i).ID)
		if err != nil || !ok || r.DecidedAt != int64(i) {
			t.Fatalf("record %d after transfer: %+v %v %v", i, r, ok, err)
		}
	}
	if dst.Applied() != index {
		t.Fatalf("receiver applied = %d, want %d", dst.Applied(), index)
	}
}

// TestSnapshotTransferAppliedAhead streams a state that is ahead of the
// snapshot's index: the receiver takes the state's applied index.
func TestSnapshotTransferAppliedAhead(t *testing.T) {
	src := snapStore(t, "src", vfs.NewMem(), 1)
	seedState(t, src, 50, 20)
	b := src.NewStateBatch()
	b.PutRecord(snapRecord(999))
	if err := src.CommitState(b, 57); err != nil {
		t.Fatal(err)
	}
	dst := snapStore(t, "dst", vfs.NewMem(), 2)
	if _, _, err := transfer(t, src, dst, 50, 256); err != nil {
		t.Fatalf("transfer: %v", err)
	}
	if dst.Applied() != 57 || countRecords(t, dst) != 21 {
		t.Fatalf("receiver at applied %d with %d records, want 57 and 21", dst.Applied(), countRecords(t, dst))
	}
	if snap, _ := dst.Snapshot(); snap.GetMetadata().GetIndex() != 50 {
		t.Fatalf("receiver's snapshot at %d, want 50", snap.GetMetadata().GetIndex())
	}
}

// TestSnapshotTransferCrashes crashes the receiver (Pebble's crash clone:
// only synced data survives) at several points of a transfer, and checks
// that it reopens on its whole old state or its whole new one.
func TestSnapshotTransferCrashes(t *testing.T) {
	for _, point := range []string{"mid-stream", "staged", "installed"} {
		t.Run(point, func(t *testing.T) {
			src := snapStore(t, "src", vfs.NewMem(), 1)
			seedState(t, src, 80, 300)
			fs := vfs.NewCrashableMem()
			dst, err := txlog.Open("dst", txlog.Identity{ClusterID: snapTestCluster, NodeID: 2}, txlog.Options{FS: fs, StagingFileSize: 4 << 10})
			if err != nil {
				t.Fatal(err)
			}
			seedState(t, dst, 20, 7)
			var crashed *vfs.MemFS
			crash := func() { crashed = fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0}) }
			runCrashPoint(t, src, dst, point, crash)
			_ = dst.Close()

			re := snapStore(t, "dst", crashed, 2)
			old, new := re.Applied() == 20, re.Applied() == 80
			switch n := countRecords(t, re); {
			case old && n == 7 && point != "installed":
			case new && n == 300 && point == "installed":
			default:
				t.Fatalf("after a crash %s: applied %d with %d records; want the old state (20, 7) or the new (80, 300)", point, re.Applied(), n)
			}
			if list, _ := crashed.List("dst/staging"); len(list) > 0 {
				t.Fatalf("staging files survived the reopen: %v", list)
			}
		})
	}
}

// runCrashPoint runs a transfer from src to dst and calls crash at point.
func runCrashPoint(t *testing.T, src, dst *txlog.Store, point string, crash func()) {
	r, err := src.OpenStateReader()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	st, err := dst.NewStager(80, r.Applied())
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		kvs, err := r.Next(512)
		if err != nil {
			t.Fatal(err)
		}
		if len(kvs) == 0 {
			break
		}
		for _, kv := range kvs {
			if err := st.Add(kv.Key, kv.Value); err != nil {
				t.Fatal(err)
			}
		}
		if i == 10 && point == "mid-stream" {
			crash()
			st.Abort()
			return
		}
	}
	if err := st.Finish(); err != nil {
		t.Fatal(err)
	}
	if point == "staged" {
		crash()
		return
	}
	if err := install(dst)(snapMsg(80)); err != nil {
		t.Fatal(err)
	}
	crash()
}

// TestSnapshotTransferRejectsBadStreams feeds broken streams to a receiver:
// each is refused with InvalidArgument or FailedPrecondition and the
// receiver keeps its state.
func TestSnapshotTransferRejectsBadStreams(t *testing.T) {
	src := snapStore(t, "src", vfs.NewMem(), 1)
	seedState(t, src, 30, 50)
	var good simChunks
	if _, err := sendSnapshot(src, &decreev1.SnapshotHeader{ClusterId: snapTestCluster, From: 1, To: 2}, snapMsg(30), &good, 300); err != nil {
		t.Fatal(err)
	}
	n := len(good.chunks)
	edit := func(f func(cs []*decreev1.SnapshotChunk) []*decreev1.SnapshotChunk) []*decreev1.SnapshotChunk {
		cs := make([]*decreev1.SnapshotChunk, n)
		for i, c := range good.chunks {
			cs[i] = proto.CloneOf(c)
		}
		return f(cs)
	}
	cases := map[string][]*decreev1.SnapshotChunk{
		"no header":       edit(func(cs []*decreev1.SnapshotChunk) []*decreev1.SnapshotChunk { return cs[1:] }),
		"no trailer":      edit(func(cs []*decreev1.SnapshotChunk) []*decreev1.SnapshotChunk { return cs[:n-1] }),
		"a chunk missing": edit(func(cs []*decreev1.SnapshotChunk) []*decreev1.SnapshotChunk { return append(cs[:2], cs[3:]...) }),
		"chunks swapped": edit(func(cs []*decreev1.SnapshotChunk) []*decreev1.SnapshotChunk {
			cs[1], cs[2] = cs[2], cs[1]
			return cs
		}),
		"bit flipped": edit(func(cs []*decreev1.SnapshotChunk) []*decreev1.SnapshotChunk {
			cs[2].Data[len(cs[2].Data)-1] ^= 1
			return cs
		}),
		"another cluster": edit(func(cs []*decreev1.SnapshotChunk) []*decreev1.SnapshotChunk {
			cs[0].Header.ClusterId++
			return cs
		}),
		"for another node": edit(func(cs []*decreev1.SnapshotChunk) []*decreev1.SnapshotChunk {
			cs[0].Header.To = 3
			return cs
		}),
		"not a MsgSnap": edit(func(cs []*decreev1.SnapshotChunk) []*decreev1.SnapshotChunk {
			cs[0].Header.Message, _ = proto.Marshal(&raftpb.Message{Type: raftpb.MsgApp.Enum(), From: new(uint64(1)), To: new(uint64(2))})
			return cs
		}),
		"state older than the snapshot": edit(func(cs []*decreev1.SnapshotChunk) []*decreev1.SnapshotChunk {
			cs[0].Header.Applied = 29
			return cs
		}),
	}
	if n < 4 {
		t.Fatalf("only %d chunks; the cases need at least 4", n)
	}
	dst := snapStore(t, "dst", vfs.NewMem(), 2)
	seedState(t, dst, 20, 7)
	for name, cs := range cases {
		stepped := false
		_, err := receiver(dst).receiveSnapshot(&simChunks{chunks: cs}, 1, func(*raftpb.Message) error { stepped = true; return nil })
		code := status.Code(err)
		if err == nil || stepped || (code != codes.InvalidArgument && code != codes.FailedPrecondition) {
			t.Errorf("%s: err %v (code %v), stepped %v; want refused before raft", name, err, code, stepped)
		}
		if strings.Contains(fmt.Sprint(err), fmt.Sprintf("%x", snapTestCluster)) && name == "another cluster" {
			t.Errorf("%s: the error tells the caller our cluster id: %v", name, err)
		}
	}
	if dst.Applied() != 20 || countRecords(t, dst) != 7 {
		t.Fatalf("receiver at applied %d with %d records after refusals, want 20 and 7", dst.Applied(), countRecords(t, dst))
	}
	if _, err := receiver(dst).receiveSnapshot(&simChunks{chunks: good.chunks}, 1, install(dst)); err != nil {
		t.Fatalf("the good stream after the bad ones: %v", err)
	}
	if dst.Applied() != 30 || countRecords(t, dst) != 50 {
		t.Fatalf("receiver at applied %d with %d records, want 30 and 50", dst.Applied(), countRecords(t, dst))
	}
}
