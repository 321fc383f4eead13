package coordinator

// The hostile peer: in about half the seeds, the network between the
// coordinators carries, beside the correct raft traffic, batches and
// messages that README.md's table "What a node does with bad input" says a
// node refuses. Each is a mutated copy of a correct message in flight, sent
// on a stream of its own (a buggy peer, another process on the network, a
// corrupted frame), so refusing it and closing its stream leaves the
// correct streams alone. The receiving node's production code
// (raftService.receiveBatch, then Node.step and the checks of
// raftcheck.go) must refuse every one: a batch-level fault ends the stream
// with its gRPC code and hands nothing on; a message-level fault is dropped
// and counted in RejectedMessages, once, and raft never sees it.
//
// Only messages no correct member could send are forged. Raft trusts its
// members: a well-formed message a member could have sent (a plausible
// append, a vote) would be stepped by design, and forging one would break
// safety without showing a bug. Closed proto2 enums also bound what can
// arrive: an unknown entry or conf change type decodes as the default one,
// so those are not forged over the wire either.
//
// The hostile peer draws from a random stream of its own, and what it sends
// is refused without changing any state, so a seed runs the same schedule
// with or without it.

import (
	"fmt"
	"math/rand/v2"
	"slices"

	"github.com/rs/zerolog"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
	"github.com/decree-tx/decree/txlog"
)

// newHostileRand is the hostile peer's random stream: seeded from the
// run's seed, apart from the world's, so that drawing from it shifts no
// other fault.
func newHostileRand(seed uint64) *rand.Rand {
	return rand.New(rand.NewPCG(seed^0x686f7374696c65, 0x70656572))
}

// drawHostile draws the seed's hostile peer: the chance that a delivered
// raft batch is followed by a hostile one, 0 in half the seeds.
func (w *world) drawHostile() float64 {
	return []float64{0, 0, 0.03, 0.1}[w.hrng.IntN(4)]
}

// hostileShot is one hostile batch under construction, aimed at node to.
type hostileShot struct {
	w    *world
	r    *rand.Rand
	to   *simNode
	st   raft.BasicStatus // to's raft, as the checks will see it
	term uint64           // to's current term
	last uint64           // to's last stored index
	hdr  *decreev1.RaftBatch
	// raw, when set, is sent as the batch's messages instead of m.
	raw [][]byte
}

// hostileKind is one kind of input README.md says a node refuses.
type hostileKind struct {
	name string
	// code is the gRPC code that ends the hostile stream; codes.OK: the
	// message is dropped and counted, and the stream goes on.
	code codes.Code
	// forge mutates m, a copy of a correct message in flight, and h's
	// batch header, and says how; "" if the receiver's state does not
	// lend itself to this kind now.
	forge func(h *hostileShot, m *raftpb.Message) string
}

var hostileKinds = []hostileKind{
	{"other-cluster", codes.FailedPrecondition, func(h *hostileShot, m *raftpb.Message) string {
		h.hdr.ClusterId = pickU(h.r, 0, 2, 1+uint64(h.r.Uint32())|1<<32)
		return fmt.Sprintf("batch of cluster %d", h.hdr.ClusterId)
	}},
	{"other-node", codes.FailedPrecondition, func(h *hostileShot, m *raftpb.Message) string {
		h.hdr.To = pickU(h.r, append(h.members(h.to.id), 0, 4+uint64(h.r.IntN(100)))...)
		return fmt.Sprintf("batch for node %d", h.hdr.To)
	}},
	{"undecodable", codes.InvalidArgument, func(h *hostileShot, m *raftpb.Message) string {
		raw, _ := proto.Marshal(m)
		// A field number 0, a truncated varint, a length beyond the end.
		tail := [][]byte{{0x00}, {0xff}, {0x0a, 0x05, 0x01}, {0x40, 0x80}}[h.r.IntN(4)]
		h.raw = [][]byte{append(raw, tail...)}
		return fmt.Sprintf("%s followed by % x", m.GetType(), tail)
	}},
	{"wrong-to", codes.OK, func(h *hostileShot, m *raftpb.Message) string {
		m.To = new(pickU(h.r, append(h.members(h.to.id), 0, 4+uint64(h.r.IntN(100)))...))
		return fmt.Sprintf("%s for node %d", m.GetType(), m.GetTo())
	}},
	{"non-member", codes.OK, func(h *hostileShot, m *raftpb.Message) string {
		from := pickU(h.r, 0, 4, 5+uint64(h.r.IntN(1<<20)), h.to.id)
		m.From, h.hdr.From = new(from), from
		return fmt.Sprintf("%s from %d on its own stream", m.GetType(), from)
	}},
	{"other-sender", codes.OK, func(h *hostileShot, m *raftpb.Message) string {
		m.From = new(pickU(h.r, h.members(h.hdr.From)...))
		return fmt.Sprintf("%s from %d on node %d's stream", m.GetType(), m.GetFrom(), h.hdr.From)
	}},
	{"local-type", codes.OK, func(h *hostileShot, m *raftpb.Message) string {
		local := []raftpb.MessageType{raftpb.MsgHup, raftpb.MsgBeat, raftpb.MsgUnreachable, raftpb.MsgSnapStatus,
			raftpb.MsgCheckQuorum, raftpb.MsgTransferLeader, raftpb.MsgTimeoutNow, raftpb.MsgStorageAppend,
			raftpb.MsgStorageAppendResp, raftpb.MsgStorageApply, raftpb.MsgStorageApplyResp, raftpb.MsgForgetLeader,
			raftpb.MessageType(99), raftpb.MessageType(-1)}
		was := m.GetType()
		m.Type = local[h.r.IntN(len(local))].Enum()
		return fmt.Sprintf("%s turned into type %d", was, int32(m.GetType()))
	}},
	{"bad-term", codes.OK, func(h *hostileShot, m *raftpb.Message) string {
		h.peerType(m)
		switch h.r.IntN(3) {
		case 0:
			m.Term = new(uint64(0))
			return fmt.Sprintf("%s of term 0", m.GetType())
		case 1:
			m.Term = new(uint64(maxSaneTerm + 1 + h.r.IntN(1<<20)))
			return fmt.Sprintf("%s of term %d", m.GetType(), m.GetTerm())
		default:
			m.LogTerm = new(m.GetTerm() + 1 + uint64(h.r.IntN(10)))
			return fmt.Sprintf("%s of term %d with log term %d", m.GetType(), m.GetTerm(), m.GetLogTerm())
		}
	}},
	{"bad-index", codes.OK, func(h *hostileShot, m *raftpb.Message) string {
		huge := uint64(maxSaneIndex + 1 + h.r.IntN(1<<20))
		switch h.r.IntN(4) {
		case 0:
			m.Index = new(huge)
		case 1:
			m.Commit = new(huge)
		case 2:
			m.RejectHint = new(huge)
		default:
			// An append whose entries would run past the largest index.
			h.append(m, false)
			m.Index = new(uint64(maxSaneIndex))
			h.renumber(m)
		}
		return fmt.Sprintf("%s index %d commit %d hint %d", m.GetType(), m.GetIndex(), m.GetCommit(), m.GetRejectHint())
	}},
	{"second-leader", codes.OK, func(h *hostileShot, m *raftpb.Message) string {
		// Only one node leads a term: a leader's message in the
		// receiver's term from another member is impossible.
		if h.st.Lead == raft.None {
			return ""
		}
		others := slices.DeleteFunc(h.members(h.to.id), func(id uint64) bool { return id == h.st.Lead })
		if len(others) == 0 {
			return ""
		}
		from := pickU(h.r, others...)
		*m = raftpb.Message{Type: pickT(h.r, raftpb.MsgHeartbeat, raftpb.MsgApp, raftpb.MsgReadIndexResp).Enum(),
			To: new(h.to.id), From: new(from), Term: new(h.term), Commit: new(min(m.GetCommit(), h.last)), Context: m.GetContext()}
		if m.GetType() == raftpb.MsgReadIndexResp {
			m.Entries = []*raftpb.Entry{{Data: []byte("readctx!")}}
		}
		h.hdr.From = from
		return fmt.Sprintf("%s from %d in term %d, led by %d", m.GetType(), from, h.term, h.st.Lead)
	}},
	{"commit-beyond-log", codes.OK, func(h *hostileShot, m *raftpb.Message) string {
		// A leader sends at most what we acknowledged, which we hold.
		*m = raftpb.Message{Type: raftpb.MsgHeartbeat.Enum(), To: m.To, From: m.From,
			Term: new(max(m.GetTerm(), h.term, 1)), Commit: new(h.last + 1 + uint64(h.r.IntN(1000))), Context: m.GetContext()}
		return fmt.Sprintf("heartbeat of term %d committing %d beyond our last index %d", m.GetTerm(), m.GetCommit(), h.last)
	}},
	{"bad-append", codes.OK, func(h *hostileShot, m *raftpb.Message) string {
		h.append(m, true)
		es := m.Entries
		j := h.r.IntN(len(es))
		switch h.r.IntN(5) {
		case 0:
			es[j].Index = new(es[j].GetIndex() + 1 + uint64(h.r.IntN(5)))
			return fmt.Sprintf("append after %d with a gap before entry %d", m.GetIndex(), es[j].GetIndex())
		case 1:
			es[j].Index = new(es[j].GetIndex() - 1)
			return fmt.Sprintf("append after %d repeating index %d", m.GetIndex(), es[j].GetIndex())
		case 2:
			if len(es) < 2 {
				es = append(es, proto.CloneOf(es[0]))
				m.Entries = es
			}
			es[0].Index, es[1].Index = new(m.GetIndex()+2), new(m.GetIndex()+1)
			return fmt.Sprintf("append after %d with entries swapped", m.GetIndex())
		case 3:
			es[j].Term = new(m.GetTerm() + 1 + uint64(h.r.IntN(5)))
			return fmt.Sprintf("term %d append with an entry of term %d", m.GetTerm(), es[j].GetTerm())
		default:
			m.LogTerm = m.Term
			es[0].Term = new(m.GetTerm() - 1)
			return fmt.Sprintf("append after term %d starting with an entry of term %d", m.GetLogTerm(), es[0].GetTerm())
		}
	}},
	{"undecodable-entry", codes.OK, func(h *hostileShot, m *raftpb.Message) string {
		garbage := []byte{0xff}
		if h.r.IntN(2) == 0 {
			garbage = []byte{0x00}
		}
		if h.r.IntN(3) == 0 {
			// A forwarded proposal the state machine could not apply.
			*m = raftpb.Message{Type: raftpb.MsgProp.Enum(), To: m.To, From: m.From, Term: new(uint64(0)),
				Entries: []*raftpb.Entry{{Type: raftpb.EntryNormal.Enum(), Data: append(testBatchData(h.r), garbage...)}}}
			return "proposal of an undecodable batch"
		}
		h.append(m, true)
		e := m.Entries[h.r.IntN(len(m.Entries))]
		e.Type = pickT(h.r, raftpb.EntryNormal, raftpb.EntryConfChange, raftpb.EntryConfChangeV2).Enum()
		e.Data = append(e.Data, garbage...)
		return fmt.Sprintf("append with an undecodable %s at %d", e.GetType(), e.GetIndex())
	}},
	{"bad-forward", codes.OK, func(h *hostileShot, m *raftpb.Message) string {
		// What a follower forwards to its leader: proposals of normal
		// entries and read requests with one context, both of term 0.
		*m = raftpb.Message{To: m.To, From: m.From, Term: new(uint64(0))}
		switch h.r.IntN(6) {
		case 0:
			m.Type, m.Term = raftpb.MsgProp.Enum(), new(max(h.term, 1))
			m.Entries = []*raftpb.Entry{{Data: testBatchData(h.r)}}
			return fmt.Sprintf("proposal of term %d", m.GetTerm())
		case 1:
			m.Type = raftpb.MsgProp.Enum()
			return "proposal without entries"
		case 2:
			cc, _ := proto.Marshal(&raftpb.ConfChange{Type: raftpb.ConfChangeAddNode.Enum(), NodeId: new(uint64(4))})
			m.Type = raftpb.MsgProp.Enum()
			m.Entries = []*raftpb.Entry{{Type: raftpb.EntryConfChange.Enum(), Data: cc}}
			return "proposal of a configuration change"
		case 3:
			m.Type, m.Term = raftpb.MsgReadIndex.Enum(), new(max(h.term, 1))
			m.Entries = []*raftpb.Entry{{Data: []byte("readctx!")}}
			return fmt.Sprintf("read request of term %d", m.GetTerm())
		case 4:
			m.Type = pickT(h.r, raftpb.MsgReadIndex, raftpb.MsgReadIndexResp).Enum()
			if m.GetType() == raftpb.MsgReadIndexResp {
				m.Term = new(max(h.term, 1))
			}
			for range 2 * h.r.IntN(2) {
				m.Entries = append(m.Entries, &raftpb.Entry{Data: []byte("readctx!")})
			}
			return fmt.Sprintf("%s with %d contexts", m.GetType(), len(m.Entries))
		default:
			m.Type = raftpb.MsgReadIndex.Enum()
			m.Entries = []*raftpb.Entry{{Data: make([]byte, maxReadCtx+1+h.r.IntN(100))}}
			return fmt.Sprintf("read request with a %d-byte context", len(m.Entries[0].Data))
		}
	}},
	{"snap-on-stream", codes.OK, func(h *hostileShot, m *raftpb.Message) string {
		// Well formed, but without its state: snapshots travel on the
		// Snapshot stream.
		h.snap(m)
		return fmt.Sprintf("snapshot at %d on the message stream", m.GetSnapshot().GetMetadata().GetIndex())
	}},
	{"bad-snapshot", codes.OK, func(h *hostileShot, m *raftpb.Message) string {
		h.snap(m)
		md := m.Snapshot.Metadata
		switch h.r.IntN(10) {
		case 0:
			m.Snapshot = nil
			return "snapshot message without a snapshot"
		case 1:
			md.Index = new(uint64(0))
		case 2:
			md.Index = new(uint64(maxSaneIndex + 1))
		case 3:
			md.Term = new(m.GetTerm() + 1)
		case 4:
			md.ConfState = nil
		case 5:
			md.ConfState.Voters = nil
		case 6:
			md.ConfState.Voters = append(md.ConfState.Voters, md.ConfState.Voters[h.r.IntN(3)])
		case 7:
			md.ConfState.Learners = []uint64{md.ConfState.Voters[h.r.IntN(3)]}
		case 8:
			for i := range maxConfIDs {
				md.ConfState.Learners = append(md.ConfState.Learners, 10+uint64(i))
			}
		default:
			if h.r.IntN(2) == 0 {
				m.Snapshot.Data = append(m.Snapshot.Data, 0x01)
			} else {
				m.Snapshot.Data = txlog.SnapshotDescriptor{ClusterID: 1, Index: md.GetIndex() + 1}.Marshal()
			}
			return fmt.Sprintf("snapshot at %d with data % x", md.GetIndex(), m.Snapshot.Data)
		}
		return fmt.Sprintf("snapshot of term %d at %d (term %d) of %v", m.GetTerm(), md.GetIndex(), md.GetTerm(), md.GetConfState())
	}},
	{"bad-shape", codes.OK, func(h *hostileShot, m *raftpb.Message) string {
		switch h.r.IntN(3) {
		case 0:
			m.Responses = []*raftpb.Message{proto.CloneOf(m)}
			return fmt.Sprintf("%s carrying storage responses", m.GetType())
		case 1:
			m.Snapshot = &raftpb.Snapshot{}
			return fmt.Sprintf("%s carrying a snapshot", m.GetType())
		default:
			h.peerType(m)
			m.Type = pickT(h.r, raftpb.MsgHeartbeat, raftpb.MsgHeartbeatResp, raftpb.MsgAppResp,
				raftpb.MsgVote, raftpb.MsgVoteResp, raftpb.MsgPreVote, raftpb.MsgPreVoteResp).Enum()
			m.Entries = []*raftpb.Entry{{Index: new(m.GetIndex() + 1), Term: m.Term, Data: testBatchData(h.r)}}
			m.Snapshot = nil
			return fmt.Sprintf("%s carrying an entry", m.GetType())
		}
	}},
	{"bad-app-resp", codes.OK, func(h *hostileShot, m *raftpb.Message) string {
		*m = raftpb.Message{Type: raftpb.MsgAppResp.Enum(), To: m.To, From: m.From, Term: new(max(m.GetTerm(), h.term, 1)),
			Index: new(min(m.GetIndex(), h.last))}
		if h.st.RaftState == raft.StateLeader && h.r.IntN(2) == 0 {
			// We send only entries we hold.
			m.Index = new(h.last + 1 + uint64(h.r.IntN(1000)))
			return fmt.Sprintf("acknowledgement of %d beyond our last index %d", m.GetIndex(), h.last)
		}
		m.Reject, m.RejectHint = new(true), new(m.GetIndex()+1+uint64(h.r.IntN(1000)))
		return fmt.Sprintf("rejection of %d hinting %d", m.GetIndex(), m.GetRejectHint())
	}},
}

// injectHostile may follow the correct batch b, just delivered to node to,
// with a hostile batch forged from one of its messages, and checks that to
// refuses it. It runs on to, as the delivery did.
func (w *world) injectHostile(to *simNode, b *decreev1.RaftBatch) {
	if !w.faultsOn || w.plan.hostile == 0 || len(b.GetMessages()) == 0 || w.hrng.Float64() >= w.plan.hostile {
		return
	}
	r := w.hrng
	orig := &raftpb.Message{}
	if err := proto.Unmarshal(b.GetMessages()[r.IntN(len(b.GetMessages()))], orig); err != nil {
		w.violate("hostile peer: a correct message does not decode: %v", err)
		return
	}
	st := to.node.rn.BasicStatus()
	h := &hostileShot{w: w, r: r, to: to, st: st, term: st.HardState.GetTerm(), last: to.node.lastIndex()}
	first := r.IntN(len(hostileKinds))
	for i := range hostileKinds {
		k := hostileKinds[(first+i)%len(hostileKinds)]
		h.hdr = &decreev1.RaftBatch{ClusterId: b.GetClusterId(), From: b.GetFrom(), To: b.GetTo()}
		h.raw = nil
		m := proto.CloneOf(orig)
		what := k.forge(h, m)
		if what == "" {
			continue
		}
		if h.raw == nil {
			raw, err := proto.Marshal(m)
			if err != nil {
				w.violate("hostile peer: marshal %s: %v", k.name, err)
				return
			}
			h.raw = [][]byte{raw}
		}
		h.hdr.Messages = h.raw
		w.shootHostile(to, k, h.hdr, what)
		return
	}
}

// shootHostile hands the hostile batch to to's production receiver and
// checks that it refuses it as README.md says.
func (w *world) shootHostile(to *simNode, k hostileKind, b *decreev1.RaftBatch, what string) {
	w.faults["hostile-"+k.name]++
	w.tracef("hostile %s to n%d: %s", k.name, to.id, what)
	n := to.node
	before, admitted := n.stats.rejectedMessages.Load(), false
	svc := &raftService{node: n, log: zerolog.Nop()}
	handed, err := svc.receiveBatch(b, func(m *raftpb.Message) error {
		// A snapshot message is refused by Node.step whatever it holds;
		// anything else must fail the checks, or raft would step it. A
		// malformed snapshot must fail them too: on the Snapshot stream,
		// they are all that stands between it and raft.
		if cerr := n.checkMessage(m); cerr == nil && (m.GetType() != raftpb.MsgSnap || k.name == "bad-snapshot") {
			w.violate("n%d admits a hostile %s (%s): the checks pass it", to.id, k.name, what)
			admitted = true
			return nil
		}
		n.step(m)
		return nil
	})
	rejected := n.stats.rejectedMessages.Load() - before
	switch {
	case admitted:
	case n.checkFatal() != nil:
		w.violate("n%d stopped on a hostile %s (%s): %v", to.id, k.name, what, n.checkFatal())
	case k.code != codes.OK && (status.Code(err) != k.code || handed != 0 || rejected != 0):
		w.violate("n%d took a hostile %s (%s): %d handed on, %d rejected, error %v; want %s closing the stream",
			to.id, k.name, what, handed, rejected, err, k.code)
	case k.code == codes.OK && (err != nil || rejected != uint64(len(b.GetMessages()))):
		w.violate("n%d took a hostile %s (%s): %d of %d rejected, error %v", to.id, k.name, what, rejected, len(b.GetMessages()), err)
	}
}

// members are the cluster's ids but the excluded one.
func (h *hostileShot) members(except uint64) []uint64 {
	var ids []uint64
	for _, n := range h.w.nodes {
		if n.id != except {
			ids = append(ids, n.id)
		}
	}
	return ids
}

// peerType makes m a type that peers send with a term (a forwarded
// request has none).
func (h *hostileShot) peerType(m *raftpb.Message) {
	if t := m.GetType(); t == raftpb.MsgProp || t == raftpb.MsgReadIndex {
		*m = raftpb.Message{Type: raftpb.MsgHeartbeat.Enum(), To: m.To, From: m.From, Term: new(max(h.term, 1))}
	}
}

// append makes m an append, keeping its entries if it is one with
// entries, with contiguous, decodable entries of sane terms.
func (h *hostileShot) append(m *raftpb.Message, renumber bool) {
	if m.GetType() != raftpb.MsgApp || len(m.GetEntries()) == 0 {
		*m = raftpb.Message{Type: raftpb.MsgApp.Enum(), To: m.To, From: m.From, Term: new(max(m.GetTerm(), h.term, 1)),
			Index: new(min(m.GetIndex(), h.last)), LogTerm: new(min(m.GetLogTerm(), m.GetTerm())), Commit: new(min(m.GetCommit(), h.last))}
		for range 1 + h.r.IntN(3) {
			m.Entries = append(m.Entries, &raftpb.Entry{Data: testBatchData(h.r)})
		}
	}
	m.LogTerm = new(min(m.GetLogTerm(), m.GetTerm()))
	if renumber {
		h.renumber(m)
	}
}

// renumber makes m's entries continue its anchor in its term.
func (h *hostileShot) renumber(m *raftpb.Message) {
	for i, e := range m.Entries {
		e.Index, e.Term = new(m.GetIndex()+1+uint64(i)), m.Term
	}
}

// snap makes m a well-formed snapshot message.
func (h *hostileShot) snap(m *raftpb.Message) {
	term := max(m.GetTerm(), h.term, 1)
	idx := max(1, h.last-min(h.last, uint64(h.r.IntN(20)))) + uint64(h.r.IntN(20))
	voters := h.members(0)
	*m = raftpb.Message{Type: raftpb.MsgSnap.Enum(), To: m.To, From: m.From, Term: new(term),
		Snapshot: &raftpb.Snapshot{Data: txlog.SnapshotDescriptor{ClusterID: 1, Index: idx}.Marshal(),
			Metadata: &raftpb.SnapshotMetadata{Index: new(idx), Term: new(1 + uint64(h.r.IntN(int(term)))),
				ConfState: &raftpb.ConfState{Voters: voters}}}}
}

// testBatchData is a decodable proposal batch.
func testBatchData(r *rand.Rand) []byte {
	b, _ := proto.Marshal(&decreev1.ProposalBatch{})
	if r.IntN(2) == 0 {
		return b
	}
	return testBatch(fmt.Sprintf("hostile-%d", r.IntN(1000)))
}

func pickU(r *rand.Rand, vs ...uint64) uint64 { return vs[r.IntN(len(vs))] }

func pickT[T any](r *rand.Rand, vs ...T) T { return vs[r.IntN(len(vs))] }
