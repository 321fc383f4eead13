package coordinator

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/rs/zerolog"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/decree-tx/decree/internal/clock"
	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
	"github.com/decree-tx/decree/txlog"
)

// The raft input tests and the fuzz target run against a follower (node 2
// of {1, 2, 3}) restarted from a disk on which node 1 led it through an
// election and a few proposals. The disk is prepared once per process and
// cloned for every case, so a case costs one Pebble open on a memory file
// system.

const (
	fixLeader   = 1
	fixFollower = 2
	fixPeer     = 3
)

// followerDisk is the prepared follower's disk and what it holds.
type followerDisk struct {
	fs   *vfs.MemFS
	term uint64 // the leader's term
	last uint64 // the last (and committed) index
}

var (
	prepOnce sync.Once
	prepDisk followerDisk
	prepErr  error
)

func fixturePeers() map[uint64]string {
	return map[uint64]string{fixLeader: "n1:1", fixFollower: "n2:1", fixPeer: "n3:1"}
}

// captureTransport keeps what a node sends, for the test to deliver.
type captureTransport struct {
	mu   sync.Mutex
	msgs []*raftpb.Message
}

func (c *captureTransport) Send(ms []*raftpb.Message) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, m := range ms {
		c.msgs = append(c.msgs, proto.Clone(m).(*raftpb.Message))
	}
}

func (c *captureTransport) Close() {}

func (c *captureTransport) take() []*raftpb.Message {
	c.mu.Lock()
	defer c.mu.Unlock()
	ms := c.msgs
	c.msgs = nil
	return ms
}

// fixNode is a node driven by the test, without its loop goroutine.
type fixNode struct {
	node  *Node
	store *txlog.Store
	tr    *captureTransport
}

func openFixNode(fs vfs.FS, id uint64, log zerolog.Logger, clock Clock) (*fixNode, error) {
	store, err := txlog.Open("node", txlog.Identity{ClusterID: 1, NodeID: id}, txlog.Options{FS: fs, Logger: zerolog.Nop()})
	if err != nil {
		return nil, fmt.Errorf("open store %d: %w", id, err)
	}
	tr := &captureTransport{}
	cfg := Config{ID: id, Peers: fixturePeers(), ClusterID: 1, Nonce: 1, Logger: log, Clock: clock}
	node, err := newNode(cfg, store, tr)
	if err != nil {
		_ = store.Close()
		return nil, fmt.Errorf("start node %d: %w", id, err)
	}
	return &fixNode{node: node, store: store, tr: tr}, nil
}

func (f *fixNode) close() { _ = f.store.Close() }

// exchange handles the nodes' Readies and delivers their messages to each
// other (those to absent nodes are lost) until none move.
func exchange(nodes map[uint64]*fixNode) error {
	for range 100 {
		moved := false
		for id, n := range nodes {
			if err := n.node.handleReadies(); err != nil {
				return fmt.Errorf("node %d: %w", id, err)
			}
		}
		for _, n := range nodes {
			for _, m := range n.tr.take() {
				if to, ok := nodes[m.GetTo()]; ok {
					to.node.step(m)
					moved = true
				}
			}
		}
		if !moved {
			return nil
		}
	}
	return errors.New("raft exchange did not settle")
}

func testBatch(txn string) []byte {
	b, err := proto.Marshal(&decreev1.ProposalBatch{Proposals: []*decreev1.Proposal{{
		Id: 1, Proposer: fixLeader,
		Command: &decreev1.Command{Kind: &decreev1.Command_Decide{Decide: &decreev1.Decide{
			TxnId: txn, Outcome: decreev1.Outcome_OUTCOME_COMMITTED, Participants: []string{"a:1"}, DecidedAt: 1,
		}}},
	}}})
	if err != nil {
		panic(err)
	}
	return b
}

// prepare elects node 1 with node 2's vote, commits a few proposals on both
// and keeps node 2's disk.
func prepare() (followerDisk, error) {
	fs1, fs2 := vfs.NewCrashableMem(), vfs.NewCrashableMem()
	nodes := map[uint64]*fixNode{}
	defer func() {
		for _, n := range nodes {
			n.close()
		}
	}()
	for id, fs := range map[uint64]vfs.FS{fixLeader: fs1, fixFollower: fs2} {
		n, err := openFixNode(fs, id, zerolog.Nop(), nil)
		if err != nil {
			return followerDisk{}, err
		}
		nodes[id] = n
	}
	lead := nodes[fixLeader].node
	if err := exchange(nodes); err != nil {
		return followerDisk{}, err
	}
	if err := lead.rn.Campaign(); err != nil {
		return followerDisk{}, err
	}
	if err := exchange(nodes); err != nil {
		return followerDisk{}, err
	}
	if st := lead.rn.BasicStatus(); st.RaftState != raft.StateLeader {
		return followerDisk{}, fmt.Errorf("node 1 is %s, want leader", st.RaftState)
	}
	for _, txn := range []string{"t1", "t2", "t3"} {
		if err := lead.rn.Propose(testBatch(txn)); err != nil {
			return followerDisk{}, err
		}
		if err := exchange(nodes); err != nil {
			return followerDisk{}, err
		}
	}
	fol := nodes[fixFollower].node
	st := fol.rn.BasicStatus()
	last := fol.lastIndex()
	if st.HardState.GetCommit() != last || fol.applied != last {
		return followerDisk{}, fmt.Errorf("follower commit %d applied %d, want both at its last index %d",
			st.HardState.GetCommit(), fol.applied, last)
	}
	return followerDisk{fs: fs2, term: st.HardState.GetTerm(), last: last}, nil
}

// follower is a case's follower: the prepared one, restarted from a clone
// of its disk, and the log it writes.
type follower struct {
	*fixNode
	disk followerDisk
	logs *bytes.Buffer
}

func newFollower(tb testing.TB, clk Clock) *follower {
	tb.Helper()
	prepOnce.Do(func() { prepDisk, prepErr = prepare() })
	if prepErr != nil {
		tb.Fatalf("prepare the follower's disk: %v", prepErr)
	}
	if clk == nil {
		clk = clock.NewFake(time.Unix(1000, 0))
	}
	logs := &bytes.Buffer{}
	fs := prepDisk.fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0})
	n, err := openFixNode(fs, fixFollower, zerolog.New(logs).Level(zerolog.WarnLevel), clk)
	if err != nil {
		tb.Fatal(err)
	}
	f := &follower{fixNode: n, disk: prepDisk, logs: logs}
	tb.Cleanup(f.close)
	return f
}

// deliver steps m as the loop does and handles the Ready that follows.
func (f *follower) deliver(m *raftpb.Message) error {
	f.node.step(m)
	return f.node.handleReadies()
}

// heartbeat is what the leader sends the follower when nothing happens.
func (f *follower) heartbeat() *raftpb.Message {
	return &raftpb.Message{
		Type: raftpb.MsgHeartbeat.Enum(), From: new(uint64(fixLeader)), To: new(uint64(fixFollower)),
		Term: new(f.disk.term), Commit: new(f.disk.last),
	}
}

// appendNext is the leader's next append: one decodable entry after the
// follower's log, committed.
func (f *follower) appendNext(typ raftpb.EntryType, data []byte) *raftpb.Message {
	next := f.disk.last + 1
	return &raftpb.Message{
		Type: raftpb.MsgApp.Enum(), From: new(uint64(fixLeader)), To: new(uint64(fixFollower)),
		Term: new(f.disk.term), LogTerm: new(f.disk.term), Index: new(f.disk.last), Commit: new(next),
		Entries: []*raftpb.Entry{{Term: new(f.disk.term), Index: new(next), Type: typ.Enum(), Data: data}},
	}
}

// stillFollows checks that the follower takes the leader's next append
// after whatever it was sent before: it is appended (or already covered by
// a snapshot), committed, applied and acknowledged.
func (f *follower) stillFollows(tb testing.TB) {
	tb.Helper()
	f.tr.take()
	if err := f.deliver(f.appendNext(raftpb.EntryNormal, testBatch("after"))); err != nil {
		tb.Fatalf("follower stopped on the leader's append: %v", err)
	}
	var acked bool
	for _, m := range f.tr.take() {
		if m.GetType() == raftpb.MsgAppResp && m.GetTo() == fixLeader && !m.GetReject() && m.GetIndex() >= f.disk.last+1 {
			acked = true
		}
	}
	if !acked {
		tb.Fatalf("follower did not acknowledge the leader's append at %d", f.disk.last+1)
	}
	if f.node.applied < f.disk.last+1 {
		tb.Fatalf("follower applied %d, want at least %d", f.node.applied, f.disk.last+1)
	}
}
