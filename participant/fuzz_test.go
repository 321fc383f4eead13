package participant_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sync"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/decree-tx/decree/participant"
	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
	"github.com/decree-tx/decree/txlog"
)

// fuzzResource votes YES, or NO on a payload starting with 'n'; its
// outcomes write nothing.
type fuzzResource struct{}

func (fuzzResource) Prepare(_ context.Context, txn participant.Txn, _ participant.Writer) (participant.Vote, string, error) {
	if bytes.HasPrefix(txn.Payload, []byte("n")) {
		return participant.VoteNo, "no", nil
	}
	return participant.VoteYes, "", nil
}
func (fuzzResource) Commit(context.Context, string, participant.Writer) error { return nil }
func (fuzzResource) Abort(context.Context, string, participant.Writer) error  { return nil }

// fuzzModel is what the calls answered so far said about each id.
type fuzzModel struct {
	yes       map[string]*decreev1.PrepareRequest // voted YES (or COMMITTED) with this request
	committed map[string]bool
	aborted   map[string]bool
	// unknown holds ids a Calls batch touched: its calls run
	// concurrently, so their order, and the model's view, is unknown.
	unknown map[string]bool
}

// FuzzParticipantRPC feeds arbitrary Prepare, Commit, Abort and Resolve
// requests to a real participant through its service methods, and (kind
// with both high bits set) Calls batches through ServeCalls. Each op is
// [kind, length, body...]: kind's low two bits pick the call, bit 2
// replaces the decoded id by one of four valid ids (bits 4-5) so that
// calls meet, bit 3 gives a Prepare a valid participant list. It checks
// that no call panics, every error is a gRPC status other than Unknown,
// and the answers agree with each other: no Commit of an id never voted
// YES, no Abort after a Commit or Commit after an Abort, Resolve agrees
// with the decision, a YES again for a different payload is refused.
func FuzzParticipantRPC(f *testing.F) {
	for _, seed := range fuzzSeeds() {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		log, err := txlog.OpenParticipantLog("p", txlog.Options{FS: vfs.NewMem()})
		if err != nil {
			t.Fatal(err)
		}
		defer log.Close()
		// Start is not called: no outcome query is ever sent to the coordinator.
		p := newParticipant(t, fuzzResource{}, participant.Options{Log: log, Coordinators: []string{"127.0.0.1:1"}})
		srv := p.Server()
		m := &fuzzModel{yes: map[string]*decreev1.PrepareRequest{}, committed: map[string]bool{}, aborted: map[string]bool{}, unknown: map[string]bool{}}
		for len(data) >= 2 {
			kind, n := data[0], int(data[1])
			data = data[2:]
			n = min(n, len(data))
			body := data[:n]
			data = data[n:]
			if kind&0xc0 == 0xc0 {
				fuzzCalls(t, srv, m, body)
				continue
			}
			fuzzCall(t, srv, m, kind, body)
		}
	})
}

var fuzzIDs = []string{tid("a"), tid("b"), tid("c"), tid("d")}

func fuzzCall(t *testing.T, srv decreev1.ParticipantServer, m *fuzzModel, kind byte, body []byte) {
	ctx := context.Background()
	fix := func(id string) string {
		if kind&4 != 0 {
			return fuzzIDs[kind>>4&3]
		}
		return id
	}
	switch kind & 3 {
	case 0:
		req := &decreev1.PrepareRequest{}
		if proto.Unmarshal(body, req) != nil {
			return
		}
		req.TxnId = fix(req.TxnId)
		if kind&8 != 0 {
			req.Participants = []string{"self:1", "other:1"}
		}
		resp, err := srv.Prepare(ctx, req)
		checkStatus(t, "prepare", err)
		if err == nil {
			m.prepared(t, req, resp.GetVote())
		}
	case 1, 2:
		req := &decreev1.DecisionRequest{}
		if proto.Unmarshal(body, req) != nil {
			return
		}
		req.TxnId = fix(req.TxnId)
		if kind&3 == 1 {
			_, err := srv.Commit(ctx, req)
			checkStatus(t, "commit", err)
			m.decided(t, req.TxnId, err, true)
		} else {
			_, err := srv.Abort(ctx, req)
			checkStatus(t, "abort", err)
			m.decided(t, req.TxnId, err, false)
		}
	case 3:
		req := &decreev1.ResolveRequest{}
		if proto.Unmarshal(body, req) != nil {
			return
		}
		req.TxnId = fix(req.TxnId)
		resp, err := srv.Resolve(ctx, req)
		checkStatus(t, "resolve", err)
		if err == nil {
			m.resolved(t, req.TxnId, resp.GetState())
		}
	}
}

// fuzzCalls serves one CallBatch on a Calls stream and checks that every
// call is answered once, with a reply of its kind or a gRPC status.
func fuzzCalls(t *testing.T, srv decreev1.ParticipantServer, m *fuzzModel, body []byte) {
	batch := &decreev1.CallBatch{}
	if proto.Unmarshal(body, batch) != nil {
		return
	}
	seqs := map[uint64]int{}
	for _, c := range batch.GetCalls() {
		seqs[c.GetSeq()]++
		for _, id := range []string{c.GetPrepare().GetTxnId(), c.GetCommit().GetTxnId(),
			c.GetAbort().GetTxnId(), c.GetResolve().GetTxnId()} {
			m.unknown[id] = true
		}
	}
	st := &fakeCallsStream{ctx: context.Background(), in: []*decreev1.CallBatch{batch}}
	if err := participant.ServeCalls(st, srv); err != nil {
		checkStatus(t, "calls", err)
	}
	for _, r := range st.replies {
		if seqs[r.GetSeq()] == 0 {
			t.Fatalf("reply for seq %d, which no call carried (or more replies than calls)", r.GetSeq())
		}
		seqs[r.GetSeq()]--
		if e := r.GetError(); e != nil && (codes.Code(e.GetCode()) == codes.OK || codes.Code(e.GetCode()) == codes.Unknown) {
			t.Fatalf("call %d failed with code %v: %s", r.GetSeq(), codes.Code(e.GetCode()), e.GetMessage())
		}
	}
	for seq, n := range seqs {
		if n != 0 {
			t.Fatalf("%d calls with seq %d got no reply", n, seq)
		}
	}
}

// fakeCallsStream is a Calls stream that delivers its batches, then EOF,
// and keeps the replies sent.
type fakeCallsStream struct {
	grpc.ServerStream
	ctx     context.Context
	in      []*decreev1.CallBatch
	mu      sync.Mutex
	replies []*decreev1.Reply
}

func (s *fakeCallsStream) Context() context.Context { return s.ctx }

func (s *fakeCallsStream) Recv() (*decreev1.CallBatch, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.in) == 0 {
		return nil, io.EOF
	}
	b := s.in[0]
	s.in = s.in[1:]
	return b, nil
}

func (s *fakeCallsStream) Send(b *decreev1.ReplyBatch) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.replies = append(s.replies, b.GetReplies()...)
	return nil
}

func checkStatus(t *testing.T, call string, err error) {
	if err == nil {
		return
	}
	st, ok := status.FromError(err)
	if !ok || st.Code() == codes.Unknown || st.Code() == codes.OK {
		t.Fatalf("%s answered an error that is not a gRPC status: %v", call, err)
	}
}

func (m *fuzzModel) prepared(t *testing.T, req *decreev1.PrepareRequest, vote decreev1.Vote) {
	id := req.GetTxnId()
	if m.unknown[id] {
		return
	}
	switch vote {
	case decreev1.Vote_VOTE_YES, decreev1.Vote_VOTE_COMMITTED:
		if m.aborted[id] {
			t.Fatalf("prepare %s voted %v after it was aborted", id, vote)
		}
		if first, ok := m.yes[id]; ok && !bytes.Equal(first.GetPayload(), req.GetPayload()) {
			t.Fatalf("prepare %s voted %v for payload %q after YES for %q", id, vote, req.GetPayload(), first.GetPayload())
		}
		if _, ok := m.yes[id]; !ok {
			m.yes[id] = req
		}
		if vote == decreev1.Vote_VOTE_COMMITTED {
			m.committed[id] = true
		}
	case decreev1.Vote_VOTE_NO:
		if m.committed[id] {
			t.Fatalf("prepare %s voted NO after it committed", id)
		}
	default:
		t.Fatalf("prepare %s answered vote %v", id, vote)
	}
}

func (m *fuzzModel) decided(t *testing.T, id string, err error, commit bool) {
	if err != nil || m.unknown[id] {
		return
	}
	if commit {
		if _, ok := m.yes[id]; !ok {
			t.Fatalf("commit of %s, never voted YES, succeeded", id)
		}
		if m.aborted[id] {
			t.Fatalf("commit of %s succeeded after its abort", id)
		}
		m.committed[id] = true
		return
	}
	if m.committed[id] {
		t.Fatalf("abort of %s succeeded after its commit", id)
	}
	m.aborted[id] = true
}

func (m *fuzzModel) resolved(t *testing.T, id string, st decreev1.ParticipantState) {
	switch {
	case m.unknown[id]:
	case m.committed[id] && st != decreev1.ParticipantState_PARTICIPANT_STATE_COMMITTED,
		m.aborted[id] && st != decreev1.ParticipantState_PARTICIPANT_STATE_ABORTED:
		t.Fatalf("resolve %s answered %v, want the decided outcome (committed %v)", id, st, m.committed[id])
	case st == decreev1.ParticipantState_PARTICIPANT_STATE_ABORTED:
		m.aborted[id] = true
	case st == decreev1.ParticipantState_PARTICIPANT_STATE_COMMITTED:
		if _, ok := m.yes[id]; !ok {
			t.Fatalf("resolve %s answered COMMITTED, never voted YES", id)
		}
	}
}

// fuzzSeeds are call sequences that reach each path: prepare then commit,
// prepare then abort, a commit of an unprepared id, a resolve that aborts,
// two prepares with different payloads, a one-phase prepare.
func fuzzSeeds() [][]byte {
	op := func(kind byte, msg proto.Message) []byte {
		b, err := proto.Marshal(msg)
		if err != nil || len(b) > 255 {
			panic(fmt.Sprint("seed: ", err))
		}
		return append([]byte{kind, byte(len(b))}, b...)
	}
	const a, b = 4 | 8, 4 | 8 | 16 // valid id a or b, valid participants
	seq := func(ops ...[]byte) []byte { return bytes.Join(ops, nil) }
	prep := func(kind byte, payload string, onePhase bool) []byte {
		return op(kind, &decreev1.PrepareRequest{Payload: []byte(payload), Term: 1, OnePhase: onePhase})
	}
	dec := &decreev1.DecisionRequest{Term: 1}
	return [][]byte{
		seq(prep(a, "x", false), op(a|1, dec), op(a|3, &decreev1.ResolveRequest{Term: 1})),
		seq(prep(a, "x", false), op(a|2, dec), op(a|1, dec)),
		seq(op(b|1, dec), op(b|3, &decreev1.ResolveRequest{Term: 1}), prep(b, "x", false)),
		seq(prep(a, "x", false), prep(a, "y", false), prep(b, "no", false)),
		seq(prep(b, "x", true), op(b|2, dec)),
		seq(op(0, &decreev1.PrepareRequest{TxnId: "not-a-uuid\x00", Participants: make([]string, 100)})),
		seq(op(0xc0, &decreev1.CallBatch{Calls: []*decreev1.Call{
			{Seq: 1, Kind: &decreev1.Call_Prepare{Prepare: &decreev1.PrepareRequest{TxnId: fuzzIDs[2],
				Payload: []byte("x"), Participants: []string{"self:1", "other:1"}, Term: 1}}},
			{Seq: 2, Kind: &decreev1.Call_Commit{Commit: &decreev1.DecisionRequest{TxnId: fuzzIDs[3], Term: 1}}},
			{Seq: 2, Kind: &decreev1.Call_Resolve{Resolve: &decreev1.ResolveRequest{TxnId: "x"}}},
			{Seq: 3},
		}}), op(4|32|1, dec)),
	}
}
