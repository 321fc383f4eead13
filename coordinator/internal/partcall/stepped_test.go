package partcall

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/decree-tx/decree/internal/clock"
	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
)

// prepareCall, decisionCall and resolveCall build the calls the tests send
// (the Driver builds them from the core's actions).
func prepareCall(id, addr string, payload []byte) *decreev1.Call {
	return &decreev1.Call{Kind: &decreev1.Call_Prepare{Prepare: &decreev1.PrepareRequest{
		TxnId: id, Payload: payload, Participants: []string{addr}}}}
}

func decisionCall(id string, commit bool) *decreev1.Call {
	req := &decreev1.DecisionRequest{TxnId: id}
	if commit {
		return &decreev1.Call{Kind: &decreev1.Call_Commit{Commit: req}}
	}
	return &decreev1.Call{Kind: &decreev1.Call_Abort{Abort: req}}
}

func resolveCall(id string, term uint64) *decreev1.Call {
	return &decreev1.Call{Kind: &decreev1.Call_Resolve{Resolve: &decreev1.ResolveRequest{TxnId: id, Term: term}}}
}

// stepTransport is an in-memory Transport for a stepped mux: the test
// (or the simulation) sees every stream opened and decides what each
// returns. It is used from the mux's owner only.
type stepTransport struct {
	opened map[string][]*stepStream // per address, in the order opened
	// openErr fails the next openings of an address.
	openErr map[string]error
	// unaryOf serves an address's unary calls; none: unary fails.
	unaryOf  map[string]UnaryParticipant
	released []string
	// onSend, if set, sees every batch sent, after it is recorded.
	onSend func(s *stepStream, b *decreev1.CallBatch)
}

func newStepTransport() *stepTransport {
	return &stepTransport{opened: map[string][]*stepStream{}, openErr: map[string]error{}, unaryOf: map[string]UnaryParticipant{}}
}

func (t *stepTransport) OpenCalls(_ context.Context, addr string) (Stream, error) {
	if err := t.openErr[addr]; err != nil {
		return nil, err
	}
	s := &stepStream{tr: t, addr: addr}
	t.opened[addr] = append(t.opened[addr], s)
	return s, nil
}

func (t *stepTransport) Unary(addr string) (UnaryParticipant, error) {
	if u := t.unaryOf[addr]; u != nil {
		return u, nil
	}
	return nil, errors.New("step: no unary service")
}

func (t *stepTransport) Release(addr string) { t.released = append(t.released, addr) }

// last is addr's newest stream.
func (t *stepTransport) last(addr string) *stepStream {
	ss := t.opened[addr]
	if len(ss) == 0 {
		return nil
	}
	return ss[len(ss)-1]
}

// stepStream is a stepped Stream: Send records the batch, Recv returns
// the reply batches pushed, in order, then the error it failed with, if
// any, else ErrNoReply.
type stepStream struct {
	tr        *stepTransport
	addr      string
	sent      []*decreev1.CallBatch
	replies   []*decreev1.ReplyBatch
	err       error
	sendErr   error // Send fails with it
	cancelled bool
}

func (s *stepStream) Send(b *decreev1.CallBatch) error {
	if s.cancelled {
		return status.Error(codes.Canceled, "step: stream cancelled")
	}
	if s.sendErr != nil {
		return s.sendErr
	}
	if s.err != nil {
		return io.EOF
	}
	s.sent = append(s.sent, b)
	if s.tr.onSend != nil {
		s.tr.onSend(s, b)
	}
	return nil
}

func (s *stepStream) Recv() (*decreev1.ReplyBatch, error) {
	switch {
	case s.cancelled:
		return nil, status.Error(codes.Canceled, "step: stream cancelled")
	case len(s.replies) > 0:
		b := s.replies[0]
		s.replies = s.replies[1:]
		return b, nil
	case s.err != nil:
		return nil, s.err
	}
	return nil, ErrNoReply
}

func (s *stepStream) Cancel() { s.cancelled = true }

// push makes r available to Recv, as one batch.
func (s *stepStream) push(r ...*decreev1.Reply) {
	s.replies = append(s.replies, &decreev1.ReplyBatch{Replies: r})
}

// fail makes Recv fail with err once the replies pushed are read.
func (s *stepStream) fail(err error) { s.err = err }

// calls is every call sent on s, in order.
func (s *stepStream) calls() []*decreev1.Call {
	var cs []*decreev1.Call
	for _, b := range s.sent {
		cs = append(cs, b.GetCalls()...)
	}
	return cs
}

// batchSizes is the number of calls in each batch sent on s.
func (s *stepStream) batchSizes() []int {
	var n []int
	for _, b := range s.sent {
		n = append(n, len(b.GetCalls()))
	}
	return n
}

// stepHarness is a stepped mux on a fake clock and a stepTransport, and the
// ends of the calls made through it: a call ending twice fails the test.
type stepHarness struct {
	t      *testing.T
	clk    *clock.Fake
	tr     *stepTransport
	m      *Mux
	cancel context.CancelFunc
	ends   map[string]callResult
	order  []string // ids, in the order they ended
}

func newStepHarness(t *testing.T) *stepHarness {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	h := &stepHarness{t: t, clk: clock.NewFake(time.Unix(1000, 0)), tr: newStepTransport(), cancel: cancel, ends: map[string]callResult{}}
	h.m = NewStepped(ctx, h.tr, h.clk, zerolog.New(zerolog.NewTestWriter(t)))
	t.Cleanup(func() {
		if n := h.m.running.Load(); n != 0 {
			t.Errorf("a stepped mux ran %d goroutines", n)
		}
	})
	return h
}

func (h *stepHarness) call(addr, id string, c *decreev1.Call, timeout time.Duration) {
	h.m.Call(addr, c, timeout, func(r *decreev1.Reply, err error) {
		if _, dup := h.ends[id]; dup {
			h.t.Errorf("call %s ended twice (now with %v, %v)", id, r, err)
		}
		h.ends[id] = callResult{id, r, err}
		h.order = append(h.order, id)
	})
}

func (h *stepHarness) prepare(addr, id string, payload int, timeout time.Duration) {
	h.call(addr, id, prepareCall(id, addr, make([]byte, payload)), timeout)
}

// advance moves the clock on and ticks the mux.
func (h *stepHarness) advance(d time.Duration) {
	h.clk.Advance(d)
	h.m.Tick(h.clk.Now())
}

// pending fails the test unless none of ids has ended.
func (h *stepHarness) pending(ids ...string) {
	h.t.Helper()
	for _, id := range ids {
		if r, ok := h.ends[id]; ok {
			h.t.Fatalf("%s ended early: %v, %v", id, r.r, r.err)
		}
	}
}

// ended returns how id ended, failing the test if it has not.
func (h *stepHarness) ended(id string) callResult {
	h.t.Helper()
	r, ok := h.ends[id]
	if !ok {
		h.t.Fatalf("%s has not ended", id)
	}
	return r
}

func (h *stepHarness) wantCode(id string, code codes.Code) {
	h.t.Helper()
	if r := h.ended(id); status.Code(r.err) != code {
		h.t.Fatalf("%s ended with %v, want %v", id, r.err, code)
	}
}

func txnOf(c *decreev1.Call) string {
	switch k := c.GetKind().(type) {
	case *decreev1.Call_Prepare:
		return k.Prepare.GetTxnId()
	case *decreev1.Call_Commit:
		return k.Commit.GetTxnId()
	case *decreev1.Call_Abort:
		return k.Abort.GetTxnId()
	case *decreev1.Call_Resolve:
		return k.Resolve.GetTxnId()
	}
	return ""
}

// Nothing goes out before pump; then the calls queued go in batches of at
// most maxCallBatchBytes (a larger call alone), numbered in order, each
// with the time it has left; replies end the calls they name by sequence
// number, in any order, and a reply for no call in flight is dropped.
func TestSteppedMuxBatchesAndMatchesReplies(t *testing.T) {
	h := newStepHarness(t)
	const addr = "p1:1"
	big := maxCallBatchBytes * 2 / 5 // two fit in a batch, three do not
	for i := range 5 {
		h.prepare(addr, fmt.Sprintf("t%d", i), big, 10*time.Second)
	}
	h.prepare(addr, "huge", maxCallBatchBytes+1, 10*time.Second)
	h.prepare(addr, "small", 0, 3*time.Second)
	if len(h.tr.opened[addr]) != 0 {
		t.Fatal("a stream opened before pump")
	}
	h.clk.Advance(time.Second)
	h.m.Pump()
	s := h.tr.last(addr)
	if got, want := s.batchSizes(), []int{2, 2, 1, 1, 1}; !slices.Equal(got, want) {
		t.Fatalf("batches %v, want %v", got, want)
	}
	calls := s.calls()
	for i, c := range calls {
		if c.GetSeq() != uint64(i+1) {
			t.Fatalf("call %d (%s) has seq %d", i, txnOf(c), c.GetSeq())
		}
	}
	if got := calls[6].GetTimeoutMicros(); got != (2 * time.Second).Microseconds() {
		t.Fatalf("the last call carries %d µs, want the 2 s it has left", got)
	}
	h.pending("t0", "t1", "t2", "t3", "t4", "huge", "small")

	// Replies in reverse order, one for a call never sent, one twice, one
	// of the wrong kind and one carrying the participant's error.
	var rs []*decreev1.Reply
	for _, c := range slices.Backward(calls[:5]) {
		rs = append(rs, voteYes(c))
	}
	rs = append(rs, &decreev1.Reply{Seq: 99}, voteYes(calls[0]))
	s.push(rs...)
	s.push(&decreev1.Reply{Seq: calls[5].GetSeq(), Kind: &decreev1.Reply_Decision{Decision: &decreev1.DecisionResponse{}}},
		&decreev1.Reply{Seq: calls[6].GetSeq(), Kind: &decreev1.Reply_Error{Error: &decreev1.CallError{Code: uint32(codes.FailedPrecondition), Message: "stale term"}}})
	h.m.Pump()
	for i := range 5 {
		id := fmt.Sprintf("t%d", i)
		if r := h.ended(id); r.err != nil || r.r.GetPrepare().GetVote() != decreev1.Vote_VOTE_YES || txnOf(calls[r.r.GetSeq()-1]) != id {
			t.Fatalf("%s: reply %v, err %v", id, r.r, r.err)
		}
	}
	if want := []string{"t4", "t3", "t2", "t1", "t0", "huge", "small"}; !slices.Equal(h.order, want) {
		t.Fatalf("ended in order %v, want %v", h.order, want)
	}
	h.wantCode("huge", codes.Internal)
	h.wantCode("small", codes.FailedPrecondition)
	if inFlight(h.m, addr) != 0 || len(h.tr.opened[addr]) != 1 {
		t.Fatalf("%d in flight, %d streams; want 0, 1", inFlight(h.m, addr), len(h.tr.opened[addr]))
	}
}

// A call's deadline ends it whether it is still queued or in flight. A call
// in flight past its deadline means the participant is stuck: the stream
// is reset, ending the other calls on it, and the next call opens a new
// one; a late reply on the old stream is dropped.
func TestSteppedMuxDeadlines(t *testing.T) {
	h := newStepHarness(t)
	const addr = "p1:1"
	// A call still queued at its deadline (tick expires before it pumps)
	// never goes out.
	h.prepare("p2:1", "queued", 0, time.Second)
	h.advance(time.Second)
	h.wantCode("queued", codes.DeadlineExceeded)
	if len(h.tr.opened["p2:1"]) != 0 {
		t.Fatal("an expired queued call opened a stream")
	}

	// "stuck" and "patient" are in flight on the same stream; "stuck"
	// passes its deadline.
	h.prepare(addr, "stuck", 0, time.Second)
	h.prepare(addr, "patient", 0, time.Hour)
	h.m.Pump()
	old := h.tr.last(addr)
	if n := len(old.calls()); n != 2 {
		t.Fatalf("%d calls sent, want 2", n)
	}
	h.advance(999 * time.Millisecond)
	h.pending("stuck", "patient")
	h.advance(time.Millisecond)
	h.wantCode("stuck", codes.DeadlineExceeded)
	h.wantCode("patient", codes.Unavailable)
	if !old.cancelled {
		t.Fatal("the stream with a stuck call was not reset")
	}
	old.push(voteYes(old.calls()[1])) // too late: dropped
	h.prepare(addr, "next", 0, time.Hour)
	h.m.Pump()
	if n := len(h.tr.opened[addr]); n != 2 {
		t.Fatalf("%d streams opened, want a second after the reset", n)
	}
	s := h.tr.last(addr)
	s.push(voteYes(s.calls()[0]))
	h.m.Pump()
	if r := h.ended("next"); r.err != nil {
		t.Fatalf("next: %v", r.err)
	}
}

// When a stream dies every call in flight on it ends with Unavailable,
// whatever was queued goes on a new stream, and a stream that cannot be
// opened fails the queued calls.
func TestSteppedMuxStreamDeathAndOpenFailure(t *testing.T) {
	h := newStepHarness(t)
	const addr = "p1:1"
	h.prepare(addr, "a", 0, time.Hour)
	h.prepare(addr, "b", 0, time.Hour)
	h.m.Pump()
	s := h.tr.last(addr)
	s.push(voteYes(s.calls()[0]))
	s.fail(status.Error(codes.Internal, "step: hung up"))
	h.prepare(addr, "c", 0, time.Hour)
	h.m.Pump()
	if r := h.ended("a"); r.err != nil {
		t.Fatalf("a, answered before the stream died: %v", r.err)
	}
	h.wantCode("b", codes.Unavailable)
	h.pending("c")
	if got := h.tr.opened[addr]; len(got) != 2 || len(got[1].calls()) != 1 || txnOf(got[1].calls()[0]) != "c" {
		t.Fatalf("c did not go on a new stream: %d streams", len(got))
	}
	// A send failing resets the stream, which ends its calls.
	h.tr.last(addr).sendErr = io.EOF
	h.prepare(addr, "d", 0, time.Hour)
	h.m.Pump()
	h.wantCode("c", codes.Unavailable)
	h.wantCode("d", codes.Unavailable)

	h.tr.openErr[addr] = errors.New("step: refused")
	h.prepare(addr, "e", 0, time.Hour)
	h.prepare(addr, "f", 0, time.Hour)
	h.m.Pump()
	h.wantCode("e", codes.Unavailable)
	h.wantCode("f", codes.Unavailable)
	if !strings.Contains(h.ended("f").err.Error(), "refused") {
		t.Fatalf("f: %v", h.ended("f").err)
	}
}

// unaryServer answers the four unary calls, recording them.
type unaryServer struct {
	decreev1.UnimplementedParticipantServer
	got []string
}

func (u *unaryServer) Prepare(_ context.Context, r *decreev1.PrepareRequest) (*decreev1.PrepareResponse, error) {
	u.got = append(u.got, "prepare "+r.GetTxnId())
	if r.GetTxnId() == "refused" {
		return nil, status.Error(codes.FailedPrecondition, "step: refused")
	}
	return &decreev1.PrepareResponse{Vote: decreev1.Vote_VOTE_YES}, nil
}

func (u *unaryServer) Commit(_ context.Context, r *decreev1.DecisionRequest) (*decreev1.DecisionResponse, error) {
	u.got = append(u.got, "commit "+r.GetTxnId())
	return &decreev1.DecisionResponse{}, nil
}

func (u *unaryServer) Abort(_ context.Context, r *decreev1.DecisionRequest) (*decreev1.DecisionResponse, error) {
	u.got = append(u.got, "abort "+r.GetTxnId())
	return &decreev1.DecisionResponse{}, nil
}

func (u *unaryServer) Resolve(_ context.Context, r *decreev1.ResolveRequest) (*decreev1.ResolveResponse, error) {
	u.got = append(u.got, "resolve "+r.GetTxnId())
	return &decreev1.ResolveResponse{State: decreev1.ParticipantState_PARTICIPANT_STATE_PREPARED}, nil
}

// A participant that does not serve Calls (the stream fails Unimplemented)
// gets the calls that were in flight again, and every later one, through
// its unary methods; the link never opens another stream.
func TestSteppedMuxUnaryFallback(t *testing.T) {
	h := newStepHarness(t)
	const addr = "p1:1"
	u := &unaryServer{}
	h.tr.unaryOf[addr] = u
	h.prepare(addr, "p", 0, time.Hour)
	h.call(addr, "c", decisionCall("c", true), time.Hour)
	h.m.Pump()
	h.tr.last(addr).fail(status.Error(codes.Unimplemented, "unknown method Calls"))
	h.m.Pump()
	h.call(addr, "a", decisionCall("a", false), time.Hour)
	h.call(addr, "r", resolveCall("r", 1), time.Hour)
	h.prepare(addr, "refused", 0, time.Hour)
	h.m.Pump()
	if want := []string{"prepare p", "commit c", "abort a", "resolve r", "prepare refused"}; !slices.Equal(u.got, want) {
		t.Fatalf("unary calls %q, want %q", u.got, want)
	}
	if r := h.ended("p"); r.err != nil || r.r.GetPrepare().GetVote() != decreev1.Vote_VOTE_YES {
		t.Fatalf("p: %v, %v", r.r, r.err)
	}
	for _, id := range []string{"c", "a"} {
		if r := h.ended(id); r.err != nil || r.r.GetDecision() == nil {
			t.Fatalf("%s: %v, %v", id, r.r, r.err)
		}
	}
	if r := h.ended("r"); r.err != nil || r.r.GetResolve().GetState() != decreev1.ParticipantState_PARTICIPANT_STATE_PREPARED {
		t.Fatalf("r: %v, %v", r.r, r.err)
	}
	h.wantCode("refused", codes.FailedPrecondition)
	if n := len(h.tr.opened[addr]); n != 1 {
		t.Fatalf("%d streams opened, want only the first", n)
	}
	// Without a unary service to reach, the call fails.
	delete(h.tr.unaryOf, addr)
	h.prepare(addr, "unreached", 0, time.Hour)
	h.m.Pump()
	if r := h.ended("unreached"); r.err == nil {
		t.Fatal("unreached succeeded")
	}
	// A call of no known kind fails.
	h.tr.unaryOf[addr] = u
	h.call(addr, "odd", &decreev1.Call{}, time.Hour)
	h.m.Pump()
	if r := h.ended("odd"); r.err == nil {
		t.Fatal("a call of no kind succeeded")
	}
}

// A link with nothing to do for the idle time closes its stream and
// releases its address; one with a call in flight stays however long the
// call takes; the next call opens a new link.
func TestSteppedMuxRetiresIdleLinks(t *testing.T) {
	h := newStepHarness(t)
	h.m.idle = time.Minute
	const addr = "p1:1"
	h.prepare(addr, "t1", 0, time.Hour)
	h.m.Pump()
	s := h.tr.last(addr)
	s.push(voteYes(s.calls()[0]))
	h.m.Pump()
	h.advance(59 * time.Second)
	if h.m.linkCount() != 1 || s.cancelled {
		t.Fatal("the link closed before its idle time")
	}
	h.advance(time.Second)
	if h.m.linkCount() != 0 || !s.cancelled || !slices.Equal(h.tr.released, []string{addr}) {
		t.Fatalf("idle link: %d links, stream cancelled %v, released %q", h.m.linkCount(), s.cancelled, h.tr.released)
	}

	h.prepare(addr, "t2", 0, time.Hour)
	h.m.Pump()
	if n := len(h.tr.opened[addr]); n != 2 || h.m.linkCount() != 1 {
		t.Fatalf("%d streams, %d links; want t2 on a new link and stream", n, h.m.linkCount())
	}
	h.advance(2 * time.Minute)
	if h.m.linkCount() != 1 || inFlight(h.m, addr) != 1 {
		t.Fatal("a link with a call in flight closed")
	}
	h.pending("t2")
}

// Cancelling a stepped mux's context ends, at the next pump, the calls
// queued (ErrStopped) and those in flight (their streams die); later calls
// end at once.
func TestSteppedMuxStop(t *testing.T) {
	h := newStepHarness(t)
	h.prepare("p1:1", "sent", 0, time.Hour)
	h.m.Pump()
	h.prepare("p1:1", "queued", 0, time.Hour)
	h.cancel()
	h.m.Pump()
	if r := h.ended("queued"); !errors.Is(r.err, ErrStopped) {
		t.Fatalf("queued: %v, want ErrStopped", r.err)
	}
	h.wantCode("sent", codes.Unavailable)
	h.prepare("p1:1", "late", 0, time.Hour)
	if r := h.ended("late"); !errors.Is(r.err, ErrStopped) {
		t.Fatalf("late: %v, want ErrStopped", r.err)
	}
}

// stepWorkload drives a stepped mux with a random workload from seed:
// calls to three participants, replies in any order, lost replies, stream
// deaths, refused openings and time passing. It returns the trace of the
// calls' ends, and checks that every call ended exactly once.
func stepWorkload(t *testing.T, seed uint64) string {
	h := newStepHarness(t)
	rng := rand.New(rand.NewPCG(seed, 0))
	addrs := []string{"a:1", "b:1", "c:1"}
	h.tr.unaryOf["c:1"] = &unaryServer{}
	// inbox holds the replies each stream's participant has yet to send.
	inbox := map[*stepStream][]*decreev1.Reply{}
	h.tr.onSend = func(s *stepStream, b *decreev1.CallBatch) {
		for _, c := range b.GetCalls() {
			if rng.IntN(10) > 0 { // one in ten is never answered
				inbox[s] = append(inbox[s], voteYes(c))
			}
		}
	}
	var trace strings.Builder
	n := 0
	for range 400 {
		switch addr := addrs[rng.IntN(len(addrs))]; rng.IntN(8) {
		case 0, 1, 2:
			for range rng.IntN(4) + 1 {
				n++
				h.prepare(addr, fmt.Sprintf("t%d", n), rng.IntN(64), time.Duration(rng.IntN(3000)+1)*time.Millisecond)
			}
		case 3, 4:
			if s := h.tr.last(addr); s != nil && len(inbox[s]) > 0 {
				rs := inbox[s]
				rng.Shuffle(len(rs), func(i, j int) { rs[i], rs[j] = rs[j], rs[i] })
				k := rng.IntN(len(rs)) + 1
				s.push(rs[:k]...)
				inbox[s] = rs[k:]
			}
		case 5:
			if s := h.tr.last(addr); s != nil && rng.IntN(4) == 0 {
				code := codes.Unavailable
				if addr == "c:1" {
					code = codes.Unimplemented
				}
				s.fail(status.Error(code, "step: died"))
			}
		case 6:
			if rng.IntN(5) == 0 {
				h.tr.openErr[addr] = errors.New("step: refused")
			} else {
				delete(h.tr.openErr, addr)
			}
		case 7:
			h.advance(time.Duration(rng.IntN(500)) * time.Millisecond)
		}
		h.m.Pump()
		fmt.Fprintf(&trace, "%v;", h.order)
	}
	h.advance(time.Hour)
	if len(h.ends) != n {
		t.Fatalf("seed %d: %d of %d calls ended", seed, len(h.ends), n)
	}
	fmt.Fprintf(&trace, "%v", h.order)
	for _, id := range h.order {
		fmt.Fprintf(&trace, " %s:%v", id, status.Code(h.ends[id].err))
	}
	return trace.String()
}

// The stepped mux is deterministic: the same inputs end the same calls,
// the same way, in the same order; and every call ends exactly once.
func TestSteppedMuxDeterministic(t *testing.T) {
	for seed := range uint64(20) {
		if a, b := stepWorkload(t, seed), stepWorkload(t, seed); a != b {
			t.Fatalf("seed %d: two runs differ", seed)
		}
	}
}
