package coordinator_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/decree-tx/decree/coordinator"
	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
)

// callLog records the unary calls a test server receives.
type callLog struct {
	mu    sync.Mutex
	calls []seenCall
}

type seenCall struct {
	method    string
	forwarded bool // it carried the mark of a call a follower forwarded
	deadline  time.Time
}

func (l *callLog) record(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	deadline, _ := ctx.Deadline()
	l.mu.Lock()
	l.calls = append(l.calls, seenCall{method: info.FullMethod, forwarded: len(md.Get("decree-forwarded")) > 0, deadline: deadline})
	l.mu.Unlock()
	return handler(ctx, req)
}

func (l *callLog) of(method string) []seenCall {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []seenCall
	for _, c := range l.calls {
		if c.method == method {
			out = append(out, c)
		}
	}
	return out
}

// A follower forwards every Coordinator call to the leader through one
// path: the leader serves it marked as forwarded, under the caller's
// deadline, and the caller learns the leader's address from the header.
func TestFollowerForwardsEveryCallToTheLeader(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	lead := c.leader()
	follower := lead%3 + 1
	p := newFakeParticipant(t, decreev1.Vote_VOTE_YES)
	q := newFakeParticipant(t, decreev1.Vote_VOTE_YES)
	cc := coordClient(t, c.peers[follower])
	id := newTxnID(1)

	for _, tc := range []struct {
		method string
		call   func(ctx context.Context, opts ...grpc.CallOption) error
	}{
		{"Commit", func(ctx context.Context, opts ...grpc.CallOption) error {
			resp, err := cc.Commit(ctx, &decreev1.CommitRequest{TxnId: id, Branches: []*decreev1.Branch{
				{Participant: p.addr, Payload: []byte("a")}, {Participant: q.addr, Payload: []byte("b")}}}, opts...)
			if err == nil && resp.GetState() != decreev1.TxnState_TXN_STATE_COMMITTED {
				t.Errorf("forwarded Commit: %v, want committed", resp)
			}
			return err
		}},
		{"Outcome", func(ctx context.Context, opts ...grpc.CallOption) error {
			resp, err := cc.Outcome(ctx, &decreev1.OutcomeRequest{TxnId: id}, opts...)
			if err == nil && resp.GetState() != decreev1.TxnState_TXN_STATE_COMMITTED {
				t.Errorf("forwarded Outcome: %v, want committed", resp)
			}
			return err
		}},
		{"ListTransactions", func(ctx context.Context, opts ...grpc.CallOption) error {
			resp, err := cc.ListTransactions(ctx, &decreev1.ListTransactionsRequest{}, opts...)
			if err == nil && !slices.ContainsFunc(resp.GetTxns(), func(i *decreev1.TxnInfo) bool { return i.GetTxnId() == id }) {
				t.Errorf("forwarded ListTransactions: %v, want %s listed", resp, id)
			}
			return err
		}},
	} {
		method := "/decree.v1.Coordinator/" + tc.method
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		deadline, _ := ctx.Deadline()
		var header metadata.MD
		err := tc.call(ctx, grpc.Header(&header), grpc.WaitForReady(true))
		cancel()
		if err != nil {
			t.Fatalf("%s through follower %d: %v", tc.method, follower, err)
		}
		if got := header.Get(coordinator.LeaderHintKey); !slices.Equal(got, []string{c.peers[lead]}) {
			t.Errorf("%s: leader hint %q, want %q", tc.method, got, c.peers[lead])
		}
		if got := c.members[follower].calls.of(method); len(got) != 1 || got[0].forwarded {
			t.Errorf("%s: the follower saw %+v, want one unmarked call", tc.method, got)
		}
		got := c.members[lead].calls.of(method)
		if len(got) != 1 || !got[0].forwarded {
			t.Fatalf("%s: the leader saw %+v, want one forwarded call", tc.method, got)
		}
		// gRPC sends a deadline as a timeout: it arrives a little later
		// than it left, but within the hop's time of the caller's.
		if d := got[0].deadline; d.IsZero() || d.Sub(deadline).Abs() > time.Second {
			t.Errorf("%s: the leader served it with deadline %v, want the caller's %v", tc.method, d, deadline)
		}
	}
}
