package partcall

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/decree-tx/decree/internal/clock"
	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
)

// stepClock is a clock.Clock whose time moves only when the test says, and whose
// tickers fire only when the test ticks them.
type stepClock struct {
	mu    sync.Mutex
	now   time.Time
	ticks []chan time.Time
}

func (c *stepClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *stepClock) NewTicker(time.Duration) (<-chan time.Time, func()) {
	ch := make(chan time.Time, 1)
	c.mu.Lock()
	c.ticks = append(c.ticks, ch)
	c.mu.Unlock()
	return ch, func() {}
}

// After never fires: the tests time nothing out but through tickers.
func (c *stepClock) After(time.Duration) <-chan time.Time { return nil }

// tickCh returns the newest ticker's channel: a test sees a tick consumed
// when it is empty again.
func (c *stepClock) tickCh() chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ticks[len(c.ticks)-1]
}

// advance moves time on by d and ticks every ticker.
func (c *stepClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	now, ticks := c.now, c.ticks
	c.mu.Unlock()
	for _, ch := range ticks {
		select {
		case ch <- now:
		default:
		}
	}
}

// scriptedParticipant serves Calls with a test-chosen behaviour per call.
type scriptedParticipant struct {
	decreev1.UnimplementedParticipantServer
	mu      sync.Mutex
	batches []int // sizes of the CallBatches received
	// answer decides a call's reply; nil means never answer it.
	answer func(*decreev1.Call) *decreev1.Reply
	// hangUp, when set, ends the stream after the first batch.
	hangUp bool
	// release, when set, makes the server wait before reading anything.
	release chan struct{}
	// streams counts the Calls streams opened.
	streams atomic.Int32
}

func (s *scriptedParticipant) Calls(stream decreev1.Participant_CallsServer) error {
	s.streams.Add(1)
	if s.release != nil {
		<-s.release
	}
	for {
		b, err := stream.Recv()
		if err != nil {
			return err
		}
		s.mu.Lock()
		s.batches = append(s.batches, len(b.GetCalls()))
		s.mu.Unlock()
		if s.hangUp {
			return status.Error(codes.Internal, "hung up by test")
		}
		var out decreev1.ReplyBatch
		for _, c := range b.GetCalls() {
			if r := s.answer(c); r != nil {
				out.Replies = append(out.Replies, r)
			}
		}
		if len(out.Replies) > 0 {
			if err := stream.Send(&out); err != nil {
				return err
			}
		}
	}
}

func voteYes(c *decreev1.Call) *decreev1.Reply {
	return &decreev1.Reply{Seq: c.GetSeq(), Kind: &decreev1.Reply_Prepare{Prepare: &decreev1.PrepareResponse{Vote: decreev1.Vote_VOTE_YES}}}
}

func serveScripted(t *testing.T, s *scriptedParticipant) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	decreev1.RegisterParticipantServer(srv, s)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

func newTestMux(t *testing.T, clock clock.Clock) *Mux {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var d net.Dialer
	conns := NewConns(func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) })
	m := New(ctx, conns, clock, 5*time.Second, zerolog.New(zerolog.NewTestWriter(t)))
	t.Cleanup(func() { cancel(); m.Wait(); conns.Close() })
	return m
}

type callResult struct {
	id  string
	r   *decreev1.Reply
	err error
}

func prepareN(m *Mux, addr string, n int, timeout time.Duration) chan callResult {
	out := make(chan callResult, n)
	for i := range n {
		id := fmt.Sprintf("txn-%d", i)
		m.Call(addr, prepareCall(id, addr, nil), timeout,
			func(r *decreev1.Reply, err error) { out <- callResult{id, r, err} })
	}
	return out
}

func collect(t *testing.T, ch chan callResult, n int) map[string]callResult {
	t.Helper()
	got := map[string]callResult{}
	deadline := time.After(10 * time.Second)
	for len(got) < n {
		select {
		case r := <-ch:
			if _, dup := got[r.id]; dup {
				t.Fatalf("call %s ended twice", r.id)
			}
			got[r.id] = r
		case <-deadline:
			t.Fatalf("%d of %d calls ended", len(got), n)
		}
	}
	return got
}

// Calls queued while the stream is busy go out together, and each gets
// its own reply.
func TestCallMuxCoalescesCalls(t *testing.T) {
	release := make(chan struct{})
	p := &scriptedParticipant{answer: voteYes, release: release}
	addr := serveScripted(t, p)
	m := newTestMux(t, clock.Wall{})
	const n = 200
	ch := prepareN(m, addr, n, 5*time.Second)
	close(release)
	for id, r := range collect(t, ch, n) {
		if r.err != nil || r.r.GetPrepare().GetVote() != decreev1.Vote_VOTE_YES {
			t.Fatalf("%s: reply %v, err %v", id, r.r, r.err)
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.batches) >= n {
		t.Fatalf("%d calls took %d batches: nothing was coalesced", n, len(p.batches))
	}
}

// Calls without a reply end with DeadlineExceeded once their deadline has
// passed, and a reply of another kind is an error.
func TestCallMuxDeadlineAndWrongReply(t *testing.T) {
	p := &scriptedParticipant{answer: func(c *decreev1.Call) *decreev1.Reply {
		if c.GetPrepare().GetTxnId() == "txn-0" {
			return &decreev1.Reply{Seq: c.GetSeq(), Kind: &decreev1.Reply_Decision{Decision: &decreev1.DecisionResponse{}}}
		}
		return nil
	}}
	addr := serveScripted(t, p)
	clock := &stepClock{now: time.Unix(1000, 0)}
	m := newTestMux(t, clock)
	ch := prepareN(m, addr, 2, time.Second)
	first := <-ch
	if first.id != "txn-0" || status.Code(first.err) != codes.Internal {
		t.Fatalf("first end %+v, want txn-0 failing Internal", first)
	}
	select {
	case r := <-ch:
		t.Fatalf("%s ended before its deadline: %v", r.id, r.err)
	default:
	}
	waitFor(t, 10*time.Second, "call in flight", func() bool { return inFlight(m, addr) == 1 })
	clock.advance(2 * time.Second)
	if r := collect(t, ch, 1)["txn-1"]; status.Code(r.err) != codes.DeadlineExceeded {
		t.Fatalf("txn-1 ended with %v, want DeadlineExceeded", r.err)
	}
}

// Opening a Calls stream is bounded by openTimeout on the injected clock: a
// participant address that accepts connections but never answers fails
// the calls once the clock passes the timeout, long before their deadline.
func TestCallMuxOpenTimeoutOnInjectedClock(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var held []net.Conn
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c) // never read nor written: no HTTP/2 preface
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		lis.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range held {
			c.Close()
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	var d net.Dialer
	conns := NewConns(func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) })
	clk := clock.NewFake(time.Unix(1000, 0))
	// A wall-clock timeout this long would outlast the test's wait below.
	m := New(ctx, conns, clk, time.Minute, zerolog.New(zerolog.NewTestWriter(t)))
	t.Cleanup(func() { cancel(); m.Wait(); conns.Close() })

	ch := prepareN(m, lis.Addr().String(), 1, time.Hour)
	waitFor(t, 10*time.Second, "the stream opening", func() bool { return clk.Waiters() == 1 })
	select {
	case r := <-ch:
		t.Fatalf("call ended before the open timeout: %v", r.err)
	default:
	}
	clk.Advance(time.Minute)
	if r := collect(t, ch, 1)["txn-0"]; status.Code(r.err) != codes.Unavailable {
		t.Fatalf("call ended with %v, want Unavailable", r.err)
	}
}

// When the stream dies, every call in flight on it ends with Unavailable,
// and later calls open a new stream.
func TestCallMuxStreamDeath(t *testing.T) {
	p := &scriptedParticipant{answer: voteYes, hangUp: true}
	addr := serveScripted(t, p)
	m := newTestMux(t, clock.Wall{})
	for id, r := range collect(t, prepareN(m, addr, 10, 5*time.Second), 10) {
		if status.Code(r.err) != codes.Unavailable {
			t.Fatalf("%s ended with %v, want Unavailable", id, r.err)
		}
	}
	p.mu.Lock()
	p.hangUp = false
	p.mu.Unlock()
	for id, r := range collect(t, prepareN(m, addr, 10, 5*time.Second), 10) {
		if r.err != nil {
			t.Fatalf("%s after reconnecting: %v", id, r.err)
		}
	}
}

// A participant that cannot be reached fails the calls at once.
func TestCallMuxUnreachable(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	m := newTestMux(t, clock.Wall{})
	for id, r := range collect(t, prepareN(m, addr, 3, 5*time.Second), 3) {
		if status.Code(r.err) != codes.Unavailable {
			t.Fatalf("%s ended with %v, want Unavailable", id, r.err)
		}
	}
}

func inFlight(m *Mux, addr string) int {
	m.mu.Lock()
	l := m.links[addr]
	m.mu.Unlock()
	if l == nil {
		return 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cur == nil {
		return 0
	}
	return len(l.cur.inflight)
}

// A link without a call for the idle time closes its stream, ends its
// goroutines and releases its connection; a later call opens it again. A
// link with a call in flight stays open however long the call takes.
func TestCallMuxClosesIdleLinks(t *testing.T) {
	p := &scriptedParticipant{answer: voteYes}
	addr := serveScripted(t, p)
	clock := &stepClock{now: time.Unix(1000, 0)}
	m := newTestMux(t, clock)
	m.idle = time.Minute
	call := func(id string) {
		t.Helper()
		r, err := m.callSync(context.Background(), addr, prepareCall(id, addr, nil), time.Hour)
		if err != nil || r.GetPrepare().GetVote() != decreev1.Vote_VOTE_YES {
			t.Fatalf("call %s: reply %v, err %v", id, r, err)
		}
	}
	// swept waits until the link's sweeper has handled every tick so far:
	// a tick sent after the last one was taken is taken only once that
	// one is done.
	swept := func() {
		t.Helper()
		for range 2 {
			waitFor(t, 5*time.Second, "a sweep", func() bool { return len(clock.tickCh()) == 0 })
			clock.advance(0)
		}
	}
	call("t1")
	if m.linkCount() != 1 || muxConns(m).Size() != 1 || m.running.Load() != 3 {
		t.Fatalf("after a call: %d links, %d conns, %d goroutines; want 1, 1, 3 (sender, sweeper, receiver)",
			m.linkCount(), muxConns(m).Size(), m.running.Load())
	}
	clock.advance(59 * time.Second)
	swept()
	if m.linkCount() != 1 {
		t.Fatal("the link closed before its idle time")
	}
	clock.advance(time.Second)
	waitFor(t, 5*time.Second, "the idle link released", func() bool {
		return m.linkCount() == 0 && muxConns(m).Size() == 0 && m.running.Load() == 0
	})
	call("t2")
	if got := p.streams.Load(); got != 2 || m.linkCount() != 1 {
		t.Fatalf("%d streams opened, %d links; want the second call on a new stream", got, m.linkCount())
	}

	// A call the participant never answers keeps the link busy.
	p.mu.Lock()
	p.answer = func(*decreev1.Call) *decreev1.Reply { return nil }
	p.mu.Unlock()
	done := make(chan error, 1)
	m.Call(addr, prepareCall("t3", addr, nil), time.Hour,
		func(_ *decreev1.Reply, err error) { done <- err })
	waitFor(t, 5*time.Second, "call in flight", func() bool { return inFlight(m, addr) == 1 })
	clock.advance(2 * time.Minute)
	swept()
	if m.linkCount() != 1 || inFlight(m, addr) != 1 {
		t.Fatal("a link with a call in flight closed")
	}
}

// muxConns is the Conns under a production mux.
func muxConns(m *Mux) *Conns { return m.tr.(*grpcCalls).conns }

// Over gRPC, a participant without the Calls stream (Unimplemented) gets
// the calls through its unary methods, each of its kind.
func TestCallMuxUnaryFallback(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	var mu sync.Mutex
	u := &unaryServer{}
	decreev1.RegisterParticipantServer(srv, lockedUnary{u: u, mu: &mu})
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	addr := lis.Addr().String()
	m := newTestMux(t, clock.Wall{})
	calls := []*decreev1.Call{
		prepareCall("p", addr, nil),
		decisionCall("c", true),
		decisionCall("a", false),
		resolveCall("r", 1),
	}
	for _, c := range calls {
		r, err := m.callSync(context.Background(), addr, c, 5*time.Second)
		if err != nil || replyError(c, r) != nil {
			t.Fatalf("%s: reply %v, err %v", txnOf(c), r, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if want := []string{"prepare p", "commit c", "abort a", "resolve r"}; !slices.Equal(u.got, want) {
		t.Fatalf("unary calls %q, want %q", u.got, want)
	}
}

// lockedUnary serves a unaryServer's methods under a lock (gRPC serves each
// call on its own goroutine).
type lockedUnary struct {
	decreev1.UnimplementedParticipantServer
	u  *unaryServer
	mu *sync.Mutex
}

func (l lockedUnary) Prepare(ctx context.Context, r *decreev1.PrepareRequest) (*decreev1.PrepareResponse, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.u.Prepare(ctx, r)
}

func (l lockedUnary) Commit(ctx context.Context, r *decreev1.DecisionRequest) (*decreev1.DecisionResponse, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.u.Commit(ctx, r)
}

func (l lockedUnary) Abort(ctx context.Context, r *decreev1.DecisionRequest) (*decreev1.DecisionResponse, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.u.Abort(ctx, r)
}

func (l lockedUnary) Resolve(ctx context.Context, r *decreev1.ResolveRequest) (*decreev1.ResolveResponse, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.u.Resolve(ctx, r)
}
