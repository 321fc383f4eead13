package coordinator

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
	"github.com/decree-tx/decree/txlog"

	"github.com/decree-tx/decree/internal/clock"
)

// badRaftInputs are messages that crashed or stopped a follower before
// raft input was checked (issue 12), built against the prepared follower.
func badRaftInputs(f *follower) map[string]*raftpb.Message {
	hb := f.heartbeat()
	hb.Commit = new(f.disk.last + 1_000_000)

	negative := f.heartbeat()
	negative.Type = raftpb.MessageType(-1).Enum()

	badConf := f.appendNext(raftpb.EntryConfChange, []byte{0xff, 0xff, 0xff})

	snap := &raftpb.Message{
		Type: raftpb.MsgSnap.Enum(), From: new(uint64(fixLeader)), To: new(uint64(fixFollower)), Term: new(f.disk.term),
		Snapshot: &raftpb.Snapshot{Data: txlog.SnapshotDescriptor{Index: f.disk.last + 10}.Marshal(), Metadata: &raftpb.SnapshotMetadata{
			Index: new(f.disk.last + 10), Term: new(f.disk.term),
			ConfState: &raftpb.ConfState{Voters: []uint64{1, 2, 3, 3}},
		}},
	}
	return map[string]*raftpb.Message{
		"heartbeat commit beyond log":      hb,
		"negative type":                    negative,
		"append of an undecodable entry":   badConf,
		"snapshot of a disagreeing config": snap,
	}
}

func TestBadRaftInputIsDroppedAndCounted(t *testing.T) {
	f := newFollower(t, nil)
	for name, m := range badRaftInputs(f) {
		t.Run(name, func(t *testing.T) {
			f := newFollower(t, nil)
			if err := f.deliver(m); err != nil {
				t.Fatalf("follower stopped: %v", err)
			}
			if got := f.node.Stats().RejectedMessages; got != 1 {
				t.Fatalf("RejectedMessages = %d, want 1", got)
			}
			if last := f.node.lastIndex(); last != f.disk.last {
				t.Fatalf("last index %d, want %d: the message changed the log", last, f.disk.last)
			}
			if !strings.Contains(f.logs.String(), `"from":1`) {
				t.Fatalf("no warning naming the sender: %q", f.logs.String())
			}
			f.stillFollows(t)
		})
	}
}

// Messages a correct peer could not send, each caught by one check.
func TestImpossibleRaftMessagesAreDropped(t *testing.T) {
	f := newFollower(t, nil)
	term, last := f.disk.term, f.disk.last
	cases := map[string]func(m *raftpb.Message){
		"unknown sender":          func(m *raftpb.Message) { m.From = new(uint64(9)) },
		"sent to another node":    func(m *raftpb.Message) { m.To = new(uint64(fixPeer)) },
		"from itself":             func(m *raftpb.Message) { m.From = new(uint64(fixFollower)) },
		"local type":              func(m *raftpb.Message) { m.Type = raftpb.MsgHup.Enum() },
		"storage type":            func(m *raftpb.Message) { m.Type = raftpb.MsgStorageAppendResp.Enum() },
		"unknown type":            func(m *raftpb.Message) { m.Type = raftpb.MessageType(99).Enum() },
		"leadership transfer":     func(m *raftpb.Message) { m.Type = raftpb.MsgTimeoutNow.Enum() },
		"term zero":               func(m *raftpb.Message) { m.Term = new(uint64(0)) },
		"absurd term":             func(m *raftpb.Message) { m.Term = new(uint64(1 << 60)) },
		"second leader in a term": func(m *raftpb.Message) { m.From = new(uint64(fixPeer)) },
		"gap before entries":      func(m *raftpb.Message) { m.Entries[0].Index = new(last + 2) },
		"entry term above message": func(m *raftpb.Message) {
			m.Entries[0].Term = new(term + 1)
		},
		"entry term below anchor": func(m *raftpb.Message) {
			m.Entries[0].Term = new(term - 1)
		},
		"undecodable normal entry": func(m *raftpb.Message) { m.Entries[0].Data = []byte{0xff} },
		"unknown entry type":       func(m *raftpb.Message) { m.Entries[0].Type = raftpb.EntryType(7).Enum() },
		"heartbeat with entries": func(m *raftpb.Message) {
			m.Type = raftpb.MsgHeartbeat.Enum()
			m.Commit = new(last)
		},
		"read response without context": func(m *raftpb.Message) {
			m.Type = raftpb.MsgReadIndexResp.Enum()
			m.Entries = nil
		},
		"carries a snapshot": func(m *raftpb.Message) { m.Snapshot = &raftpb.Snapshot{} },
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			f := newFollower(t, nil)
			if name == "second leader in a term" {
				// The follower learns that node 1 leads this term.
				if err := f.deliver(f.heartbeat()); err != nil {
					t.Fatal(err)
				}
			}
			m := f.appendNext(raftpb.EntryNormal, testBatch("x"))
			mutate(m)
			if err := f.deliver(m); err != nil {
				t.Fatalf("follower stopped: %v", err)
			}
			if got := f.node.Stats().RejectedMessages; got != 1 {
				t.Fatalf("RejectedMessages = %d, want 1", got)
			}
			if f.node.lastIndex() != last {
				t.Fatal("the message changed the log")
			}
			f.stillFollows(t)
		})
	}
}

// A leader gets responses and forwarded requests: those that could not
// come from a correct follower are dropped too.
func TestImpossibleMessagesToALeaderAreDropped(t *testing.T) {
	f := newFollower(t, nil)
	if err := f.node.handleReadies(); err != nil { // raft campaigns only once the log is applied
		t.Fatal(err)
	}
	if err := f.node.rn.Campaign(); err != nil {
		t.Fatal(err)
	}
	if err := f.node.handleReadies(); err != nil {
		t.Fatal(err)
	}
	// Node 3 grants the pre-vote and the vote.
	for range 4 {
		for _, m := range f.tr.take() {
			resp := map[raftpb.MessageType]raftpb.MessageType{raftpb.MsgPreVote: raftpb.MsgPreVoteResp, raftpb.MsgVote: raftpb.MsgVoteResp}
			if r, ok := resp[m.GetType()]; ok && m.GetTo() == fixPeer {
				if err := f.deliver(&raftpb.Message{Type: r.Enum(), From: new(uint64(fixPeer)), To: new(uint64(fixFollower)), Term: m.Term}); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	st := f.node.rn.BasicStatus()
	if st.RaftState != raft.StateLeader {
		t.Fatalf("node 2 did not become leader: %s", st.RaftState)
	}
	term := st.HardState.GetTerm()
	last := f.node.lastIndex()
	bad := map[string]*raftpb.Message{
		"ack beyond our log": {Type: raftpb.MsgAppResp.Enum(), Index: new(last + 1000)},
		"hint above index":   {Type: raftpb.MsgAppResp.Enum(), Index: new(last), Reject: new(true), RejectHint: new(last + 1)},
		"empty proposal":     {Type: raftpb.MsgProp.Enum(), Term: new(uint64(0))},
		"conf change proposal": {Type: raftpb.MsgProp.Enum(), Term: new(uint64(0)),
			Entries: []*raftpb.Entry{{Type: raftpb.EntryConfChangeV2.Enum()}}},
		"read without context": {Type: raftpb.MsgReadIndex.Enum(), Term: new(uint64(0))},
	}
	for name, m := range bad {
		t.Run(name, func(t *testing.T) {
			before := f.node.Stats().RejectedMessages
			m.From, m.To = new(uint64(fixPeer)), new(uint64(fixFollower))
			if m.Term == nil {
				m.Term = new(term)
			}
			if err := f.deliver(m); err != nil {
				t.Fatalf("leader stopped: %v", err)
			}
			if got := f.node.Stats().RejectedMessages - before; got != 1 {
				t.Fatalf("%d messages rejected, want 1", got)
			}
		})
	}
}

func TestRaftMessageFromAnotherSenderOnAStreamIsDropped(t *testing.T) {
	f := newFollower(t, nil)
	m := f.heartbeat()
	if f.node.admitFromStream(fixPeer, m) {
		t.Fatal("a message from node 1 was admitted on node 3's stream")
	}
	if !f.node.admitFromStream(fixLeader, m) {
		t.Fatal("a message from node 1 was refused on node 1's stream")
	}
	if got := f.node.Stats().RejectedMessages; got != 1 {
		t.Fatalf("RejectedMessages = %d, want 1", got)
	}
}

func TestRejectedRaftMessagesAreLoggedAtMostEveryFewSeconds(t *testing.T) {
	clk := clock.NewFake(time.Unix(1000, 0))
	f := newFollower(t, clk)
	bad := f.heartbeat()
	bad.Commit = new(f.disk.last + 5)
	for range 3 {
		if err := f.deliver(bad); err != nil {
			t.Fatal(err)
		}
	}
	if n := strings.Count(f.logs.String(), "\n"); n != 1 {
		t.Fatalf("%d warnings for 3 rejections within a second, want 1:\n%s", n, f.logs.String())
	}
	clk.Advance(rejectLogEvery)
	if err := f.deliver(bad); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(f.logs.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[1], `"also_dropped":2`) {
		t.Fatalf("after %v, want a second warning counting the 2 unlogged: %q", rejectLogEvery, lines)
	}
	if got := f.node.Stats().RejectedMessages; got != 4 {
		t.Fatalf("RejectedMessages = %d, want 4", got)
	}
}

// A committed entry whose application panics (here a configuration change
// raft refuses: leaving a joint configuration that is not joint) stops the
// node with an error naming the entry, not the process.
func TestPanicApplyingAnEntryStopsTheNodeNamingIt(t *testing.T) {
	f := newFollower(t, nil)
	leave, err := proto.Marshal(&raftpb.ConfChangeV2{})
	if err != nil {
		t.Fatal(err)
	}
	m := f.appendNext(raftpb.EntryConfChangeV2, leave)
	f.node.step(m)
	err = f.node.handleReadies()
	if want := "apply committed entry " + itoa(f.disk.last+1) + ": panic"; err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("handleReadies = %v, want an error naming entry %d", err, f.disk.last+1)
	}
}

// The same through the node's own loop: it stops, and Err says why.
func TestPanicApplyingAnEntryStopsTheRunningNode(t *testing.T) {
	f := newFollower(t, nil)
	go f.node.run()
	leave, _ := proto.Marshal(&raftpb.ConfChangeV2{})
	if err := f.node.Step(context.Background(), f.appendNext(raftpb.EntryConfChangeV2, leave)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-f.node.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("node still running after a panic applying an entry")
	}
	want := "apply committed entry " + itoa(f.disk.last+1) + ": panic"
	if err := f.node.Stop(); err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("Stop = %v, want %q", err, want)
	}
	if !errors.Is(f.node.stoppedErr(), ErrStopped) {
		t.Fatal("stopped error does not wrap ErrStopped")
	}
}

// If raft panics on a message the checks let through, the node stops with
// an error naming the message instead of crashing the process, and does
// not step anything else into raft's possibly broken state.
func TestRaftPanicOnAMessageStopsTheNode(t *testing.T) {
	f := newFollower(t, nil)
	m := f.heartbeat()
	func() {
		defer f.node.recoverStep(m)
		panic("raft bug")
	}()
	if f.node.admit(f.heartbeat()) {
		t.Fatal("a message was admitted after raft panicked")
	}
	err := f.node.handleReadies()
	if err == nil || !strings.Contains(err.Error(), "raft panicked on MsgHeartbeat from 1") || !strings.Contains(err.Error(), "raft bug") {
		t.Fatalf("handleReadies = %v, want the panic and the message named", err)
	}
}

func itoa(v uint64) string { return strconv.FormatUint(v, 10) }

// TestAdmittedEntriesApplyWithoutASecondDecode checks that apply uses the
// batch decoded when the append was admitted: the entry is decoded once.
func TestAdmittedEntriesApplyWithoutASecondDecode(t *testing.T) {
	f := newFollower(t, nil)
	m := f.appendNext(raftpb.EntryNormal, testBatch("sent"))
	f.node.step(m)
	e := m.GetEntries()[0]
	if _, ok := f.node.guard.decoded[e]; !ok {
		t.Fatal("the admitted entry's batch was not kept for apply")
	}
	// Swap in another batch: if apply decoded the entry again, it would
	// apply "sent".
	var other decreev1.ProposalBatch
	if err := proto.Unmarshal(testBatch("kept"), &other); err != nil {
		t.Fatal(err)
	}
	f.node.guard.decoded[e] = &other
	if err := f.node.handleReadies(); err != nil {
		t.Fatal(err)
	}
	if f.node.applied != f.disk.last+1 {
		t.Fatalf("applied %d, want %d", f.node.applied, f.disk.last+1)
	}
	if _, found, _ := f.store.GetRecord("kept"); !found {
		t.Fatal("apply did not use the batch decoded at admission")
	}
	if len(f.node.guard.decoded) != 0 {
		t.Fatalf("%d decoded batches left after apply", len(f.node.guard.decoded))
	}
}

// TestDecodedBatchesOfEntriesThatNeverApplyArePruned checks that batches
// of entries raft did not append (at or below the applied index, or
// never given one) do not accumulate.
func TestDecodedBatchesOfEntriesThatNeverApplyArePruned(t *testing.T) {
	f := newFollower(t, nil)
	// A retransmitted append of entries the follower already has: admitted,
	// and ignored by raft.
	for range decodedPruneAt + 1 {
		m := f.appendNext(raftpb.EntryNormal, testBatch("dup"))
		m.Index, m.Entries[0].Index = new(f.disk.last-1), new(f.disk.last)
		f.node.step(m)
	}
	ahead := &raftpb.Entry{Index: new(f.disk.last + 5)}
	f.node.guard.decoded[ahead] = &decreev1.ProposalBatch{}
	if got := len(f.node.guard.decoded); got != decodedPruneAt+2 {
		t.Fatalf("%d decoded batches, want %d", got, decodedPruneAt+2)
	}
	f.stillFollows(t)
	if _, ok := f.node.guard.decoded[ahead]; !ok || len(f.node.guard.decoded) != 1 {
		t.Fatalf("after apply %d decoded batches are left (ahead kept: %v), want only the one above the applied index", len(f.node.guard.decoded), ok)
	}
}
