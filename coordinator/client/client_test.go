package client

import (
	"context"
	"errors"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
)

var transfer = Txn{Branches: []Branch{
	{Participant: "127.0.0.1:7101", Payload: []byte("alice -10")},
	{Participant: "127.0.0.1:7102", Payload: []byte("bob +10")},
}}

const fixedID = "01890a5d-ac96-774b-bcce-b302099a8057"

func TestClientCommitSkipsRefusedEndpoint(t *testing.T) {
	b := startFake(t, func(f *fakeNode) { f.onCommit = committed })
	clock := &instantClock{}
	c := dialTest(t, clock, closedAddr(t), b.addr)

	res, err := c.Commit(testCtx(t), transfer)
	if err != nil || res.State != StateCommitted {
		t.Fatalf("Commit = %+v, %v; want committed", res, err)
	}
	waits := len(clock.delays())
	if waits == 0 {
		t.Error("no back-off after a refused connection")
	}
	// The node that worked stays preferred: no refused attempt, no wait.
	if _, err := c.Commit(testCtx(t), transfer); err != nil {
		t.Fatal(err)
	}
	if got := len(b.commitCalls()); got != 2 {
		t.Errorf("second endpoint got %d commits, want 2", got)
	}
	if got := len(clock.delays()); got != waits {
		t.Errorf("second commit waited %d more times, want 0", got-waits)
	}
}

func TestClientCommitFollowsLeaderHint(t *testing.T) {
	leader := startFake(t, func(f *fakeNode) { f.onCommit = committed })
	follower := startFake(t, func(f *fakeNode) {
		f.onCommit = func(ctx context.Context, _ int, _ *decreev1.CommitRequest) (*decreev1.CommitResponse, error) {
			return nil, unavailableWithHint(ctx, leader.addr)
		}
	})
	other := startFake(t, nil)
	clock := &instantClock{}
	c := dialTest(t, clock, follower.addr, other.addr) // the leader is not listed

	res, err := c.Commit(testCtx(t), transfer)
	if err != nil || res.State != StateCommitted {
		t.Fatalf("Commit = %+v, %v; want committed", res, err)
	}
	if n := len(other.commitCalls()); n != 0 {
		t.Errorf("unhinted node got %d commits", n)
	}
	if len(leader.commitCalls()) != 1 || len(follower.commitCalls()) != 1 {
		t.Errorf("leader got %d, follower %d commits; want 1 each", len(leader.commitCalls()), len(follower.commitCalls()))
	}
	if d := clock.delays(); len(d) != 0 {
		t.Errorf("waited %v before following a hint", d)
	}
}

// A follower that forwarded a call names the leader in a header; the
// client goes straight to the leader from then on.
func TestClientMovesToTheLeaderAFollowerNamed(t *testing.T) {
	leader := startFake(t, func(f *fakeNode) { f.onCommit = committed })
	follower := startFake(t, func(f *fakeNode) {
		f.onCommit = func(ctx context.Context, n int, req *decreev1.CommitRequest) (*decreev1.CommitResponse, error) {
			if err := grpc.SetHeader(ctx, metadata.Pairs(LeaderHintKey, leader.addr)); err != nil {
				return nil, err
			}
			return committed(ctx, n, req)
		}
	})
	c := dialTest(t, &instantClock{}, follower.addr, leader.addr)
	for range 3 {
		if res, err := c.Commit(testCtx(t), transfer); err != nil || res.State != StateCommitted {
			t.Fatalf("Commit = %+v, %v", res, err)
		}
	}
	if f, l := len(follower.commitCalls()), len(leader.commitCalls()); f != 1 || l != 2 {
		t.Fatalf("follower got %d commits, leader %d; want 1 and 2", f, l)
	}
}

func TestClientCommitResolvesAfterMidwayFailure(t *testing.T) {
	for _, code := range []codes.Code{codes.Internal, codes.Unknown, codes.DeadlineExceeded, codes.Canceled, codes.Aborted} {
		t.Run(code.String(), func(t *testing.T) {
			var id string
			node := startFake(t, func(f *fakeNode) {
				f.onCommit = func(_ context.Context, _ int, req *decreev1.CommitRequest) (*decreev1.CommitResponse, error) {
					return nil, status.Error(code, "leader crashed mid-way")
				}
				f.onOutcome = func(_ context.Context, _ int, req *decreev1.OutcomeRequest) (*decreev1.OutcomeResponse, error) {
					return &decreev1.OutcomeResponse{TxnId: req.GetTxnId(), State: decreev1.TxnState_TXN_STATE_ABORTED, Reason: "127.0.0.1:7102 voted no"}, nil
				}
			})
			c := dialTest(t, &instantClock{}, node.addr)
			res, err := c.Commit(testCtx(t), transfer)
			if err != nil {
				t.Fatal(err)
			}
			id = node.commitCalls()[0].GetTxnId()
			want := Result{ID: id, State: StateAborted, Reason: "127.0.0.1:7102 voted no"}
			if res != want {
				t.Errorf("Commit = %+v, want %+v", res, want)
			}
			calls := node.outcomeCalls()
			if len(calls) != 1 || calls[0].GetTxnId() != id ||
				!slices.Equal(calls[0].GetParticipants(), []string{"127.0.0.1:7101", "127.0.0.1:7102"}) {
				t.Errorf("outcome calls %v, want one for %s with both participants", calls, id)
			}
			if n := len(node.commitCalls()); n != 1 {
				t.Errorf("%d commits sent, want 1 (resolve, not resend)", n)
			}
		})
	}
}

// A node that drops the connection mid-call looks Unavailable to gRPC; the
// client resends the idempotent Commit (same ID) to another node.
func TestClientCommitResendsWhenConnectionDrops(t *testing.T) {
	dropper := startFake(t, func(f *fakeNode) {
		f.onCommit = func(ctx context.Context, _ int, _ *decreev1.CommitRequest) (*decreev1.CommitResponse, error) {
			go f.srv.Stop()
			<-ctx.Done()
			return nil, ctx.Err()
		}
	})
	next := startFake(t, func(f *fakeNode) { f.onCommit = committed })
	c := dialTest(t, &instantClock{}, dropper.addr, next.addr)
	res, err := c.Commit(testCtx(t), transfer)
	if err != nil || res.State != StateCommitted {
		t.Fatalf("Commit = %+v, %v; want committed", res, err)
	}
	first, again := dropper.commitCalls(), next.commitCalls()
	if len(first) != 1 || len(again) != 1 || first[0].GetTxnId() != again[0].GetTxnId() {
		t.Errorf("commits %v then %v; want one each with the same id", first, again)
	}
}

func TestClientOutcomeRetriesUntilDecided(t *testing.T) {
	node := startFake(t, func(f *fakeNode) {
		f.onOutcome = func(_ context.Context, n int, req *decreev1.OutcomeRequest) (*decreev1.OutcomeResponse, error) {
			switch n {
			case 0:
				return nil, status.Error(codes.Unavailable, "no leader")
			case 1:
				return &decreev1.OutcomeResponse{TxnId: req.GetTxnId(), State: decreev1.TxnState_TXN_STATE_UNDECIDED}, nil
			default:
				return &decreev1.OutcomeResponse{TxnId: req.GetTxnId(), State: decreev1.TxnState_TXN_STATE_COMMITTED}, nil
			}
		}
	})
	c := dialTest(t, &instantClock{}, node.addr)
	res, err := c.Outcome(testCtx(t), fixedID, "127.0.0.1:7101")
	if want := (Result{ID: fixedID, State: StateCommitted}); err != nil || res != want {
		t.Fatalf("Outcome = %+v, %v; want %+v", res, err, want)
	}
	if n := len(node.outcomeCalls()); n != 3 {
		t.Errorf("%d outcome calls, want 3", n)
	}
}

func TestClientCommitFinalErrorsReturnAtOnce(t *testing.T) {
	for _, code := range []codes.Code{codes.InvalidArgument, codes.FailedPrecondition, codes.NotFound} {
		t.Run(code.String(), func(t *testing.T) {
			node := startFake(t, func(f *fakeNode) {
				f.onCommit = func(context.Context, int, *decreev1.CommitRequest) (*decreev1.CommitResponse, error) {
					return nil, status.Error(code, "unknown participant")
				}
			})
			other := startFake(t, func(f *fakeNode) { f.onCommit = committed })
			c := dialTest(t, &instantClock{}, node.addr, other.addr)
			res, err := c.Commit(testCtx(t), transfer)
			if status.Code(err) != code {
				t.Fatalf("Commit error %v, want code %v", err, code)
			}
			if st, ok := status.FromError(err); !ok || st.Code() != code {
				t.Errorf("status.FromError = %v, %v", st, ok)
			}
			if res.ID == "" || errors.Is(err, ErrOutcomeUnknown) {
				t.Errorf("Commit = %+v, %v; want the ID and no ErrOutcomeUnknown", res, err)
			}
			if len(node.commitCalls()) != 1 || len(node.outcomeCalls()) != 0 || len(other.commitCalls()) != 0 {
				t.Error("a final error was retried or resolved")
			}
		})
	}
}

func TestClientCommitDeadlineWhileUnavailable(t *testing.T) {
	node := startFake(t, nil) // always Unavailable
	c := dialTest(t, stoppedClock{}, node.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	res, err := c.Commit(ctx, transfer)
	if !errors.Is(err, ErrOutcomeUnknown) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Commit error %v, want ErrOutcomeUnknown and DeadlineExceeded", err)
	}
	if res.ID == "" || res.State != StateUnknown {
		t.Errorf("Commit = %+v, want the ID and state unknown", res)
	}
}

func TestClientCommitDeadlineMidCall(t *testing.T) {
	node := startFake(t, func(f *fakeNode) {
		f.onCommit = func(ctx context.Context, _ int, _ *decreev1.CommitRequest) (*decreev1.CommitResponse, error) {
			<-ctx.Done() // voting never ends
			return nil, ctx.Err()
		}
	})
	c := dialTest(t, &instantClock{}, node.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	res, err := c.Commit(ctx, Txn{ID: fixedID, Branches: transfer.Branches})
	if !errors.Is(err, ErrOutcomeUnknown) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Commit error %v, want ErrOutcomeUnknown and DeadlineExceeded", err)
	}
	if res.ID != fixedID {
		t.Errorf("Result ID %q, want %q", res.ID, fixedID)
	}
}

func TestClientCommitCanceledWhileResolving(t *testing.T) {
	ctx, cancel := context.WithCancel(testCtx(t))
	node := startFake(t, func(f *fakeNode) {
		f.onCommit = func(context.Context, int, *decreev1.CommitRequest) (*decreev1.CommitResponse, error) {
			return nil, status.Error(codes.Internal, "boom")
		}
		f.onOutcome = func(_ context.Context, n int, _ *decreev1.OutcomeRequest) (*decreev1.OutcomeResponse, error) {
			if n == 2 {
				cancel()
			}
			return nil, status.Error(codes.Unavailable, "no leader")
		}
	})
	c := dialTest(t, &instantClock{}, node.addr)
	res, err := c.Commit(ctx, transfer)
	if !errors.Is(err, ErrOutcomeUnknown) || !errors.Is(err, context.Canceled) || res.ID == "" {
		t.Fatalf("Commit = %+v, %v; want ID, ErrOutcomeUnknown and Canceled", res, err)
	}
}

func TestClientCommitMintsOneUUIDv7(t *testing.T) {
	node := startFake(t, func(f *fakeNode) {
		f.onCommit = func(ctx context.Context, n int, req *decreev1.CommitRequest) (*decreev1.CommitResponse, error) {
			if n < 2 {
				return nil, status.Error(codes.Unavailable, "electing")
			}
			return committed(ctx, n, req)
		}
	})
	c := dialTest(t, &instantClock{}, node.addr)
	res, err := c.Commit(testCtx(t), transfer)
	if err != nil {
		t.Fatal(err)
	}
	u, err := uuid.Parse(res.ID)
	if err != nil || u.Version() != 7 || u.String() != res.ID {
		t.Fatalf("minted id %q is not a canonical UUIDv7 (%v)", res.ID, err)
	}
	calls := node.commitCalls()
	if len(calls) != 3 {
		t.Fatalf("%d commits, want 3", len(calls))
	}
	for _, req := range calls {
		if req.GetTxnId() != res.ID {
			t.Errorf("retry sent id %q, want %q", req.GetTxnId(), res.ID)
		}
	}
}

func TestClientCommitOddAnswers(t *testing.T) {
	for _, tc := range []struct {
		name  string
		state decreev1.TxnState
		want  State
		err   error
	}{
		{"undecided is resolved", decreev1.TxnState_TXN_STATE_UNDECIDED, StateCommitted, nil},
		{"forgotten is unknown", decreev1.TxnState_TXN_STATE_FORGOTTEN, StateForgotten, ErrOutcomeUnknown},
	} {
		t.Run(tc.name, func(t *testing.T) {
			node := startFake(t, func(f *fakeNode) {
				f.onCommit = func(_ context.Context, _ int, req *decreev1.CommitRequest) (*decreev1.CommitResponse, error) {
					return &decreev1.CommitResponse{TxnId: req.GetTxnId(), State: tc.state}, nil
				}
				f.onOutcome = func(_ context.Context, _ int, req *decreev1.OutcomeRequest) (*decreev1.OutcomeResponse, error) {
					return &decreev1.OutcomeResponse{TxnId: req.GetTxnId(), State: decreev1.TxnState_TXN_STATE_COMMITTED}, nil
				}
			})
			c := dialTest(t, &instantClock{}, node.addr)
			res, err := c.Commit(testCtx(t), transfer)
			if res.State != tc.want || !errors.Is(err, tc.err) || (tc.err == nil && err != nil) {
				t.Errorf("Commit = %+v, %v; want %v, %v", res, err, tc.want, tc.err)
			}
		})
	}
}

func TestClientValidation(t *testing.T) {
	node := startFake(t, func(f *fakeNode) { f.onCommit = committed })
	c := dialTest(t, &instantClock{}, node.addr)
	b := transfer.Branches
	for name, txn := range map[string]Txn{
		"no branches":           {},
		"empty participant":     {Branches: []Branch{b[0], {Payload: []byte("x")}}},
		"duplicate participant": {Branches: []Branch{b[0], b[1], b[0]}},
		"participant not addr":  {Branches: []Branch{{Participant: "bank-a"}}},
		"id not a uuid":         {ID: "tx-1", Branches: b},
		"id not v7":             {ID: uuid.NewString(), Branches: b},
		"id not canonical":      {ID: "{" + fixedID + "}", Branches: b},
	} {
		if _, err := c.Commit(testCtx(t), txn); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Commit error %v, want ErrInvalid", name, err)
		}
	}
	if _, err := c.Outcome(testCtx(t), "tx-1"); !errors.Is(err, ErrInvalid) {
		t.Errorf("Outcome of a bad id: %v, want ErrInvalid", err)
	}
	if _, err := c.List(testCtx(t), FilterAll, -1); !errors.Is(err, ErrInvalid) {
		t.Errorf("List with a negative limit: %v, want ErrInvalid", err)
	}
	if _, err := c.List(testCtx(t), Filter(42), 0); !errors.Is(err, ErrInvalid) {
		t.Errorf("List with a bad filter: %v, want ErrInvalid", err)
	}
	if n := len(node.commitCalls()); n != 0 {
		t.Errorf("%d invalid commits reached the server", n)
	}
}

func TestClientDialValidation(t *testing.T) {
	for name, tc := range map[string]struct {
		eps  []string
		opts Options
	}{
		"no endpoints":    {nil, Options{}},
		"missing port":    {[]string{"127.0.0.1"}, Options{}},
		"bad port":        {[]string{"127.0.0.1:http"}, Options{}},
		"missing host":    {[]string{":7001"}, Options{}},
		"duplicate":       {[]string{"127.0.0.1:7001", "127.0.0.1:7001"}, Options{}},
		"min above max":   {[]string{"127.0.0.1:7001"}, Options{RetryMin: time.Second, RetryMax: time.Millisecond}},
		"negativeretry":   {[]string{"127.0.0.1:7001"}, Options{RetryMin: -1}},
		"empty endpoint":  {[]string{""}, Options{}},
		"scheme not addr": {[]string{"dns:///a:1"}, Options{}},
	} {
		if c, err := Dial(tc.eps, tc.opts); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Dial error %v, want ErrInvalid", name, err)
			if c != nil {
				c.Close()
			}
		}
	}
}

func TestClientClosed(t *testing.T) {
	c := dialTest(t, &instantClock{}, closedAddr(t))
	c.Close()
	_, err := c.Commit(testCtx(t), transfer)
	if !errors.Is(err, ErrClosed) {
		t.Fatalf("Commit on a closed client: %v, want ErrClosed", err)
	}
}

func TestClientList(t *testing.T) {
	node := startFake(t, func(f *fakeNode) {
		f.onList = func(_ context.Context, n int, req *decreev1.ListTransactionsRequest) (*decreev1.ListTransactionsResponse, error) {
			if n == 0 {
				return nil, status.Error(codes.Internal, "hiccup") // reads retry any mid-way failure
			}
			return &decreev1.ListTransactionsResponse{Txns: []*decreev1.TxnInfo{
				{TxnId: fixedID, State: decreev1.TxnState_TXN_STATE_ABORTED, Participants: []string{"a:1", "b:2"},
					Acked: []string{"a:1"}, DecidedAt: 1_700_000_000_000_000_005, Reason: "b:2 voted no"},
				{TxnId: "u", State: decreev1.TxnState_TXN_STATE_UNDECIDED},
			}}, nil
		}
	})
	c := dialTest(t, &instantClock{}, node.addr)
	txns, err := c.List(testCtx(t), FilterUnfinished, 7)
	if err != nil {
		t.Fatal(err)
	}
	if len(txns) != 2 || txns[0].State != StateAborted || txns[0].Reason != "b:2 voted no" ||
		!txns[0].DecidedAt.Equal(time.Unix(1_700_000_000, 5)) || !slices.Equal(txns[0].Acked, []string{"a:1"}) ||
		txns[1].State != StateUndecided || !txns[1].DecidedAt.IsZero() {
		t.Errorf("List = %+v", txns)
	}
	lists := node.listCalls()
	req := lists[len(lists)-1]
	if req.GetFilter() != decreev1.TxnFilter_TXN_FILTER_UNFINISHED || req.GetLimit() != 7 {
		t.Errorf("request %v, want filter unfinished, limit 7", req)
	}
}

// The client's retries follow its options: RetryMin doubling to RetryMax,
// jittered by Rand.
func TestClientBackoff(t *testing.T) {
	c, err := Dial([]string{"127.0.0.1:1"}, Options{RetryMin: 20 * time.Millisecond, RetryMax: 100 * time.Millisecond,
		Rand: func() float64 { return 0.5 }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	b := c.newBackoff()
	var got []time.Duration
	for range 5 {
		got = append(got, b.Next())
	}
	want := []time.Duration{15, 30, 60, 75, 75}
	for i := range want {
		want[i] *= time.Millisecond
	}
	if !slices.Equal(got, want) {
		t.Errorf("delays %v, want %v", got, want)
	}
}

func TestClientStateAndFilterNames(t *testing.T) {
	for s, want := range map[State]string{StateUnknown: "unknown", StateUndecided: "undecided", StateCommitted: "committed",
		StateAborted: "aborted", StateForgotten: "forgotten"} {
		if s.String() != want {
			t.Errorf("State(%d) = %q, want %q", int(s), s, want)
		}
	}
	for _, name := range []string{"all", "undecided", "committed", "aborted", "unfinished"} {
		f, err := ParseFilter(name)
		if err != nil || f.String() != name {
			t.Errorf("ParseFilter(%q) = %v, %v", name, f, err)
		}
	}
	if _, err := ParseFilter("done"); !errors.Is(err, ErrInvalid) {
		t.Errorf("ParseFilter(done) error %v, want ErrInvalid", err)
	}
}

func TestClientUsesInjectedDialer(t *testing.T) {
	node := startFake(t, func(f *fakeNode) { f.onCommit = committed })
	var mu sync.Mutex
	var dialed []string
	dial := func(ctx context.Context, addr string) (net.Conn, error) {
		mu.Lock()
		dialed = append(dialed, addr)
		mu.Unlock()
		return (&net.Dialer{}).DialContext(ctx, "tcp", node.addr) // every name leads to node
	}
	c, err := Dial([]string{"coordinator-1:7001"}, Options{Dial: dial, Clock: &instantClock{}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if res, err := c.Commit(testCtx(t), transfer); err != nil || res.State != StateCommitted {
		t.Fatalf("Commit = %+v, %v", res, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(dialed, []string{"coordinator-1:7001"}) {
		t.Errorf("dialed %v", dialed)
	}
}
