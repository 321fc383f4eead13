package coordinator

import (
	"errors"
	"fmt"
	"runtime/debug"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/confchange"
	"go.etcd.io/raft/v3/raftpb"
	"go.etcd.io/raft/v3/tracker"
	"google.golang.org/protobuf/proto"

	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
	"github.com/decree-tx/decree/txlog"
)

// Raft trusts its peers: a message no correct peer could send (a commit
// index beyond the receiver's log, an unknown type, entries out of order, a
// snapshot whose configuration raft cannot restore) makes it panic. A peer
// with a bug, a process on the same network, or a corrupted frame must not
// crash a node, so every received message is checked here against what a
// correct peer running this code could send, and dropped otherwise. A
// dropped message costs nothing: raft retransmits what matters.

// Bounds on what a correct peer could send. Terms grow by one per election
// and indexes by one per entry, so these are never reached; they keep
// raft's index and term arithmetic (Index+len(Entries), Term+1) from
// overflowing.
const (
	maxSaneTerm  = 1 << 48
	maxSaneIndex = 1 << 62
	// maxConfIDs bounds the member ids a snapshot's configuration may list.
	maxConfIDs = 1024
	// maxReadCtx bounds the context of a read-index request (ours are 8 bytes).
	maxReadCtx = 64
	// rejectLogEvery is how often a dropped message from one sender is
	// logged; the others are only counted.
	rejectLogEvery = 5 * time.Second
)

var errStepStopped = errors.New("node is stopping")

// raftGuard is the loop's state for defending raft against bad input and
// for turning a bug into a clear stop instead of a crash.
type raftGuard struct {
	rejects rateLog[uint64] // per sender, every rejectLogEvery
	// fatal stops the loop before the next Ready: raft panicked on a
	// message and its state may be half-modified. Owned by the loop.
	fatal error
	// applying is the index of the committed entry being applied, to name
	// it if applying it panics. Owned by the loop.
	applying uint64
	// checked collects the proposal batches checkMessage decoded from the
	// message it checks; admit keeps them in decoded if it admits the
	// message. Owned by the loop.
	checked []checkedEntry
	// decoded holds the decoded batches of admitted entries until they
	// apply, so that applying them does not decode them again: the entry
	// pointer raft hands to apply is the one the message carried. An
	// entry raft drops instead is pruned once the applied index passes
	// it (see pruneDecoded). Owned by the loop.
	decoded map[*raftpb.Entry]*decreev1.ProposalBatch
}

// checkedEntry is a normal entry and its batch, decoded by checkEntry.
type checkedEntry struct {
	e *raftpb.Entry
	b *decreev1.ProposalBatch
}

// decodedPruneAt is the size of raftGuard.decoded past which apply drops
// the entries at or below the applied index (ones raft did not append);
// decodedMax the size past which it drops them all. Either only costs a
// second decode.
const (
	decodedPruneAt = 1024
	decodedMax     = 8192
)

// admit reports whether m may be stepped into raft. It runs on the loop:
// the checks read raft's term, leader and log.
func (n *Node) admit(m *raftpb.Message) bool {
	if n.guard.fatal != nil {
		return false
	}
	if err := n.checkMessage(m); err != nil {
		n.rejectMessage(m.GetFrom(), err)
		return false
	}
	if len(n.guard.checked) > 0 {
		if n.guard.decoded == nil {
			n.guard.decoded = make(map[*raftpb.Entry]*decreev1.ProposalBatch)
		}
		for _, c := range n.guard.checked {
			n.guard.decoded[c.e] = c.b
		}
		clear(n.guard.checked)
		n.guard.checked = n.guard.checked[:0]
	}
	return true
}

// decodedBatch returns the batch of a committed normal entry: the one
// decoded when the entry was admitted, or a fresh decode.
func (n *Node) decodedBatch(e *raftpb.Entry) (*decreev1.ProposalBatch, error) {
	if b, ok := n.guard.decoded[e]; ok {
		delete(n.guard.decoded, e)
		return b, nil
	}
	b := new(decreev1.ProposalBatch)
	if err := proto.Unmarshal(e.GetData(), b); err != nil {
		return nil, err
	}
	return b, nil
}

// pruneDecoded drops decoded batches of entries raft did not append (a
// retransmitted append, a dropped proposal), which will never apply.
func (n *Node) pruneDecoded() {
	if len(n.guard.decoded) <= decodedPruneAt {
		return
	}
	for e := range n.guard.decoded {
		if e.GetIndex() <= n.applied {
			delete(n.guard.decoded, e)
		}
	}
	if len(n.guard.decoded) > decodedMax {
		clear(n.guard.decoded)
	}
}

// admitFromStream checks that a message received on a peer's stream
// claims to come from that peer: a node sends only its own messages.
func (n *Node) admitFromStream(sender uint64, m *raftpb.Message) bool {
	if m.GetFrom() != sender {
		n.rejectMessage(sender, fmt.Errorf("message from %d on node %d's stream", m.GetFrom(), sender))
		return false
	}
	return true
}

// recoverStep turns a panic of raft on a message into the node's stop
// error. Validation above is meant to be complete; this is the last resort
// for input it did not anticipate. The message is not simply dropped and
// the node kept running: raft panics in the middle of changing its state
// (a term bumped, entries half appended, a configuration half switched), so
// the state left behind may break its invariants, and persisting or acting
// on it could break safety (etcd crashes the process instead). Stopping
// keeps what is on disk, which raft had not yet been asked to change, and
// says why; the node can be restarted.
func (n *Node) recoverStep(m *raftpb.Message) {
	r := recover()
	if r == nil {
		return
	}
	n.guard.fatal = fmt.Errorf("raft panicked on %s from %d (term %d, index %d, commit %d): %v",
		m.GetType(), m.GetFrom(), m.GetTerm(), m.GetIndex(), m.GetCommit(), r)
	n.stats.rejectedMessages.Add(1)
	n.log.Error().Err(n.guard.fatal).Str("stack", string(debug.Stack())).Msg("stopping node: raft panicked on a peer message")
}

// checkFatal is the stop error left by recoverStep, if any.
func (n *Node) checkFatal() error { return n.guard.fatal }

// safeApply applies committed entries and turns a panic anywhere on the
// apply path (a state machine bug, raft refusing a configuration change)
// into an error naming the entry, which stops the node: the same entry
// would fail the same way on every replica and every restart, so an
// explanation is what an operator needs, not a crash loop.
func (n *Node) safeApply(ents []*raftpb.Entry) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("apply committed entry %d: panic: %v", n.guard.applying, r)
			n.log.Error().Err(err).Str("stack", string(debug.Stack())).Msg("applying a committed entry panicked")
		}
	}()
	return n.apply(ents)
}

// rejectMessage counts a dropped message and logs it, at most once per
// sender every rejectLogEvery.
func (n *Node) rejectMessage(sender uint64, err error) {
	n.stats.rejectedMessages.Add(1)
	if _, ok := n.cfg.Peers[sender]; !ok {
		sender = 0 // unknown ids share one entry, so forged ids cannot grow the map
	}
	if suppressed, ok := n.guard.rejects.allow(sender, n.cfg.Clock.Now(), rejectLogEvery); ok {
		n.log.Warn().Err(err).Uint64("from", sender).Uint64("also_dropped", suppressed).
			Msg("dropping raft message no correct peer would send")
	}
}

// checkMessage returns why no correct peer could have sent m to this node
// now, or nil. It leaves the batches it decoded in n.guard.checked.
func (n *Node) checkMessage(m *raftpb.Message) error {
	clear(n.guard.checked)
	n.guard.checked = n.guard.checked[:0]
	if m.GetTo() != n.cfg.ID {
		return fmt.Errorf("message for node %d", m.GetTo())
	}
	if from := m.GetFrom(); from == n.cfg.ID || !n.isMember(from) {
		return fmt.Errorf("sender %d is not a member", from)
	}
	if err := checkShape(m, &n.guard.checked); err != nil {
		return fmt.Errorf("%s: %w", m.GetType(), err)
	}
	st := n.rn.BasicStatus()
	if m.GetTerm() != 0 && m.GetTerm() < st.HardState.GetTerm() {
		// Raft drops a message of an older term after looking only at its
		// type and sender (it may answer it), so its content cannot hurt.
		return nil
	}
	if err := n.checkAgainstState(m, st); err != nil {
		return fmt.Errorf("%s: %w", m.GetType(), err)
	}
	return nil
}

func (n *Node) isMember(id uint64) bool {
	if _, ok := n.cfg.Peers[id]; ok {
		return true
	}
	cs := n.confState
	for _, ids := range [][]uint64{cs.GetVoters(), cs.GetLearners(), cs.GetVotersOutgoing(), cs.GetLearnersNext()} {
		for _, v := range ids {
			if v == id {
				return true
			}
		}
	}
	return false
}

// checkShape checks what a message must look like whatever the receiver's
// state: a type peers send, the fields that type carries and sane numbers.
// It appends the batches it decodes to checked.
func checkShape(m *raftpb.Message, checked *[]checkedEntry) error {
	if err := checkTerm(m); err != nil {
		return err
	}
	for _, v := range []uint64{m.GetIndex(), m.GetLogTerm(), m.GetCommit(), m.GetRejectHint()} {
		if v > maxSaneIndex {
			return fmt.Errorf("index or term %d out of range", v)
		}
	}
	if m.GetLogTerm() > m.GetTerm() {
		return fmt.Errorf("log term %d above message term %d", m.GetLogTerm(), m.GetTerm())
	}
	if len(m.GetResponses()) > 0 {
		return errors.New("carries local storage responses")
	}
	if m.GetSnapshot() != nil && m.GetType() != raftpb.MsgSnap {
		return errors.New("carries a snapshot")
	}
	switch m.GetType() {
	case raftpb.MsgApp:
		return checkAppend(m, checked)
	case raftpb.MsgProp:
		return checkProposal(m, checked)
	case raftpb.MsgReadIndex, raftpb.MsgReadIndexResp:
		// Raft reads the request context from the one entry.
		if len(m.GetEntries()) != 1 || len(m.GetEntries()[0].GetData()) > maxReadCtx {
			return fmt.Errorf("%d entries, want one read context", len(m.GetEntries()))
		}
		return nil
	case raftpb.MsgSnap:
		return checkSnapshot(m)
	}
	if len(m.GetEntries()) > 0 {
		return fmt.Errorf("carries %d entries", len(m.GetEntries()))
	}
	return nil
}

// checkTerm checks the type and the term together: raft treats a message of
// term 0 as local (exempt from the term rules), which peers send only for a
// forwarded proposal or read.
func checkTerm(m *raftpb.Message) error {
	switch m.GetType() {
	case raftpb.MsgProp, raftpb.MsgReadIndex:
		if m.GetTerm() != 0 {
			return fmt.Errorf("term %d on a forwarded request", m.GetTerm())
		}
		return nil
	case raftpb.MsgApp, raftpb.MsgAppResp, raftpb.MsgHeartbeat, raftpb.MsgHeartbeatResp,
		raftpb.MsgSnap, raftpb.MsgReadIndexResp,
		raftpb.MsgVote, raftpb.MsgVoteResp, raftpb.MsgPreVote, raftpb.MsgPreVoteResp:
		if m.GetTerm() == 0 || m.GetTerm() > maxSaneTerm {
			return fmt.Errorf("term %d out of range", m.GetTerm())
		}
		return nil
	default:
		// Local types (ticks, storage acknowledgements...), unknown ones,
		// and leadership transfer, which no node of this version starts.
		return fmt.Errorf("type %d is not sent between peers", int32(m.GetType()))
	}
}

// checkAppend checks that a MsgApp's entries continue its anchor (Index,
// LogTerm) contiguously with terms that never decrease and never exceed
// the leader's, as a leader's log does, and that the state machine can
// decode every entry.
func checkAppend(m *raftpb.Message, checked *[]checkedEntry) error {
	next, term := m.GetIndex()+1, m.GetLogTerm()
	for _, e := range m.GetEntries() {
		if e.GetIndex() != next {
			return fmt.Errorf("entry %d where %d continues the log", e.GetIndex(), next)
		}
		if e.GetTerm() < term || e.GetTerm() > m.GetTerm() {
			return fmt.Errorf("entry %d of term %d after term %d in a term %d append", e.GetIndex(), e.GetTerm(), term, m.GetTerm())
		}
		if err := checkEntry(e, checked); err != nil {
			return fmt.Errorf("entry %d: %w", e.GetIndex(), err)
		}
		next, term = next+1, e.GetTerm()
	}
	if next > maxSaneIndex {
		return fmt.Errorf("index %d out of range", next)
	}
	return nil
}

// checkProposal checks a proposal a follower forwarded to this leader. No
// node of this version proposes configuration changes, so only normal
// entries are accepted. Raft panics on a proposal without entries.
func checkProposal(m *raftpb.Message, checked *[]checkedEntry) error {
	if len(m.GetEntries()) == 0 {
		return errors.New("no entries")
	}
	for i, e := range m.GetEntries() {
		if e.GetType() != raftpb.EntryNormal {
			return fmt.Errorf("entry %d is a %s", i, e.GetType())
		}
		if err := checkEntry(e, checked); err != nil {
			return fmt.Errorf("entry %d: %w", i, err)
		}
	}
	return nil
}

// checkEntry checks that the state machine can decode an entry: an entry
// that commits must apply on every replica, and one that cannot be decoded
// stops every node that applies it, on every restart. The batch of a
// normal entry is appended to checked, for apply.
func checkEntry(e *raftpb.Entry, checked *[]checkedEntry) error {
	switch e.GetType() {
	case raftpb.EntryNormal:
		b := new(decreev1.ProposalBatch)
		if err := proto.Unmarshal(e.GetData(), b); err != nil {
			return fmt.Errorf("undecodable proposal batch: %w", err)
		}
		if len(e.GetData()) > 0 {
			*checked = append(*checked, checkedEntry{e: e, b: b})
		}
	case raftpb.EntryConfChange:
		var cc raftpb.ConfChange
		if err := proto.Unmarshal(e.GetData(), &cc); err != nil {
			return fmt.Errorf("undecodable conf change: %w", err)
		}
		return checkChangeType(cc.GetType())
	case raftpb.EntryConfChangeV2:
		var cc raftpb.ConfChangeV2
		if err := proto.Unmarshal(e.GetData(), &cc); err != nil {
			return fmt.Errorf("undecodable conf change: %w", err)
		}
		if t := cc.GetTransition(); t < raftpb.ConfChangeTransitionAuto || t > raftpb.ConfChangeTransitionJointExplicit {
			return fmt.Errorf("unknown conf change transition %d", int32(t))
		}
		for _, c := range cc.GetChanges() {
			if err := checkChangeType(c.GetType()); err != nil {
				return err
			}
		}
	default:
		return fmt.Errorf("unknown entry type %d", int32(e.GetType()))
	}
	return nil
}

func checkChangeType(t raftpb.ConfChangeType) error {
	if t < raftpb.ConfChangeAddNode || t > raftpb.ConfChangeAddLearnerNode {
		return fmt.Errorf("unknown conf change type %d", int32(t))
	}
	return nil
}

// checkSnapshot checks a MsgSnap's metadata: raft restores the snapshot's
// configuration and panics if it cannot, or if the result differs from
// what the snapshot lists (duplicates, a voter also a learner...). The same
// restore is run here on a scratch tracker.
func checkSnapshot(m *raftpb.Message) error {
	md := m.GetSnapshot().GetMetadata()
	if md == nil {
		return errors.New("no snapshot metadata")
	}
	if md.GetIndex() == 0 || md.GetIndex() > maxSaneIndex {
		return fmt.Errorf("snapshot index %d out of range", md.GetIndex())
	}
	if md.GetTerm() == 0 || md.GetTerm() > m.GetTerm() {
		return fmt.Errorf("snapshot term %d out of range for a term %d message", md.GetTerm(), m.GetTerm())
	}
	if err := checkConfState(md.GetConfState(), md.GetIndex()); err != nil {
		return err
	}
	return checkSnapshotData(m.GetSnapshot().GetData(), md.GetIndex())
}

func checkConfState(cs *raftpb.ConfState, index uint64) error {
	if cs == nil {
		return errors.New("snapshot without configuration")
	}
	if n := len(cs.GetVoters()) + len(cs.GetLearners()) + len(cs.GetVotersOutgoing()) + len(cs.GetLearnersNext()); n > maxConfIDs {
		return fmt.Errorf("configuration lists %d ids", n)
	}
	if len(cs.GetVoters()) == 0 {
		return errors.New("configuration without voters")
	}
	trk := tracker.MakeProgressTracker(1, 0)
	cfg, prs, err := confchange.Restore(confchange.Changer{Tracker: trk, LastIndex: index}, cs)
	if err != nil {
		return fmt.Errorf("configuration cannot be restored: %w", err)
	}
	trk.Config, trk.Progress = cfg, prs
	if err := cs.Equivalent(trk.ConfState()); err != nil {
		return fmt.Errorf("configuration does not restore as listed: %w", err)
	}
	return nil
}

// checkSnapshotData checks that a snapshot's data is a descriptor of the
// snapshot at index (the state itself is streamed beside it and checked as
// it arrives; see snapshot.go).
func checkSnapshotData(data []byte, index uint64) error {
	desc, err := txlog.UnmarshalSnapshotDescriptor(data)
	if err != nil {
		return fmt.Errorf("snapshot data: %w", err)
	}
	if desc.Index != index {
		return fmt.Errorf("snapshot descriptor names index %d, not %d", desc.Index, index)
	}
	return nil
}

// checkAgainstState checks a message of the current or a newer term against
// what this node knows: one leader per term, and a leader's indexes bounded
// by what it sent us or what we hold.
func (n *Node) checkAgainstState(m *raftpb.Message, st raft.BasicStatus) error {
	switch m.GetType() {
	case raftpb.MsgApp, raftpb.MsgHeartbeat, raftpb.MsgSnap, raftpb.MsgReadIndexResp:
		// Only a leader sends these, and a term has at most one.
		if m.GetTerm() == st.HardState.GetTerm() && st.Lead != raft.None && st.Lead != m.GetFrom() {
			return fmt.Errorf("sender %d is not the leader %d of term %d", m.GetFrom(), st.Lead, m.GetTerm())
		}
	}
	switch m.GetType() {
	case raftpb.MsgHeartbeat:
		// A leader sends min(its commit, what we acknowledged), and we
		// acknowledge only what we persisted.
		if last := n.lastIndex(); m.GetCommit() > last {
			return fmt.Errorf("commit %d beyond our last index %d", m.GetCommit(), last)
		}
	case raftpb.MsgAppResp:
		// A follower acknowledges or rejects what we sent it, and we send
		// only entries we persisted before handling the next message. A
		// follower that is not leading ignores responses.
		if last := n.lastIndex(); st.RaftState == raft.StateLeader && m.GetIndex() > last {
			return fmt.Errorf("index %d beyond our last index %d", m.GetIndex(), last)
		}
		if m.GetReject() && m.GetRejectHint() > m.GetIndex() {
			return fmt.Errorf("reject hint %d above rejected index %d", m.GetRejectHint(), m.GetIndex())
		}
	}
	return nil
}

// lastIndex is the last index of the stored log. The loop persists every
// Ready before it steps the next message, so this covers everything this
// node acknowledged or sent.
func (n *Node) lastIndex() uint64 {
	last, err := n.store.LastIndex()
	if err != nil {
		return 0
	}
	return last
}
