package client

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
)

// fakeNode is a scripted Coordinator server on 127.0.0.1. Each handler gets
// the 0-based number of the call to that method.
type fakeNode struct {
	decreev1.UnimplementedCoordinatorServer
	addr string
	srv  *grpc.Server

	onCommit  func(ctx context.Context, n int, req *decreev1.CommitRequest) (*decreev1.CommitResponse, error)
	onOutcome func(ctx context.Context, n int, req *decreev1.OutcomeRequest) (*decreev1.OutcomeResponse, error)
	onList    func(ctx context.Context, n int, req *decreev1.ListTransactionsRequest) (*decreev1.ListTransactionsResponse, error)

	mu       sync.Mutex
	commits  []*decreev1.CommitRequest
	outcomes []*decreev1.OutcomeRequest
	lists    []*decreev1.ListTransactionsRequest
}

func startFake(t *testing.T, setup func(*fakeNode)) *fakeNode {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeNode{addr: lis.Addr().String(), srv: grpc.NewServer()}
	if setup != nil {
		setup(f)
	}
	decreev1.RegisterCoordinatorServer(f.srv, f)
	go f.srv.Serve(lis)
	t.Cleanup(f.srv.Stop)
	return f
}

// closedAddr returns an address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	return addr
}

func (f *fakeNode) Commit(ctx context.Context, req *decreev1.CommitRequest) (*decreev1.CommitResponse, error) {
	f.mu.Lock()
	n := len(f.commits)
	f.commits = append(f.commits, req)
	f.mu.Unlock()
	if f.onCommit == nil {
		return nil, status.Error(codes.Unavailable, "no leader")
	}
	return f.onCommit(ctx, n, req)
}

func (f *fakeNode) Outcome(ctx context.Context, req *decreev1.OutcomeRequest) (*decreev1.OutcomeResponse, error) {
	f.mu.Lock()
	n := len(f.outcomes)
	f.outcomes = append(f.outcomes, req)
	f.mu.Unlock()
	if f.onOutcome == nil {
		return nil, status.Error(codes.Unavailable, "no leader")
	}
	return f.onOutcome(ctx, n, req)
}

func (f *fakeNode) ListTransactions(ctx context.Context, req *decreev1.ListTransactionsRequest) (*decreev1.ListTransactionsResponse, error) {
	f.mu.Lock()
	n := len(f.lists)
	f.lists = append(f.lists, req)
	f.mu.Unlock()
	if f.onList == nil {
		return nil, status.Error(codes.Unavailable, "no leader")
	}
	return f.onList(ctx, n, req)
}

func (f *fakeNode) commitCalls() []*decreev1.CommitRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*decreev1.CommitRequest(nil), f.commits...)
}

func (f *fakeNode) listCalls() []*decreev1.ListTransactionsRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*decreev1.ListTransactionsRequest(nil), f.lists...)
}

func (f *fakeNode) outcomeCalls() []*decreev1.OutcomeRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*decreev1.OutcomeRequest(nil), f.outcomes...)
}

// unavailableWithHint answers Unavailable naming leader in the trailer.
func unavailableWithHint(ctx context.Context, leader string) error {
	if err := grpc.SetTrailer(ctx, metadata.Pairs(LeaderHintKey, leader)); err != nil {
		return err
	}
	return status.Error(codes.Unavailable, "not the leader")
}

func committed(_ context.Context, _ int, req *decreev1.CommitRequest) (*decreev1.CommitResponse, error) {
	return &decreev1.CommitResponse{TxnId: req.GetTxnId(), State: decreev1.TxnState_TXN_STATE_COMMITTED}, nil
}

// instantClock fires every wait at once and records the delays asked for.
type instantClock struct {
	mu    sync.Mutex
	waits []time.Duration
}

func (c *instantClock) Now() time.Time { return time.Unix(1_700_000_000, 0) }

func (c *instantClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	c.waits = append(c.waits, d)
	c.mu.Unlock()
	ch := make(chan time.Time, 1)
	ch <- c.Now()
	return ch
}

// NewTicker is never called: the client only waits.
func (c *instantClock) NewTicker(time.Duration) (<-chan time.Time, func()) {
	panic("the client does not tick")
}

func (c *instantClock) delays() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Duration(nil), c.waits...)
}

// stoppedClock never fires: only the context ends a wait.
type stoppedClock struct{}

func (stoppedClock) Now() time.Time                       { return time.Unix(1_700_000_000, 0) }
func (stoppedClock) After(time.Duration) <-chan time.Time { return nil }
func (stoppedClock) NewTicker(time.Duration) (<-chan time.Time, func()) {
	panic("the client does not tick")
}

// dialTest connects a client with a deterministic clock and jitter.
func dialTest(t *testing.T, clock Clock, endpoints ...string) *Client {
	t.Helper()
	c, err := Dial(endpoints, Options{Clock: clock, Rand: func() float64 { return 0.5 }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}
