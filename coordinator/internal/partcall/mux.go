package partcall

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/decree-tx/decree/internal/clock"
	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
)

// maxCallBatchBytes bounds the calls put in one CallBatch (a single larger
// call still goes alone), well under a participant's default 4 MiB limit on
// received messages.
const maxCallBatchBytes = 1 << 20

// linkIdleTimeout is how long a participant's link stays open without a
// call. An address that is gone for good would otherwise keep its stream,
// two goroutines and a connection forever; the next call re-opens it.
const linkIdleTimeout = 2 * time.Minute

// Done receives the end of one call: the participant's reply, or why
// there is none. It must not block for long: it holds up the replies
// behind it. It runs without any lock of the mux held, so it may make
// another call.
type Done func(*decreev1.Reply, error)

// Transport is the mux's edge to the participants. Production uses
// gRPC over the Conns (grpcCalls, calls_grpc.go); the simulation and
// the unit tests use in-memory fakes.
type Transport interface {
	// OpenCalls opens addr's Calls stream. The stream ends at the latest
	// when ctx does.
	OpenCalls(ctx context.Context, addr string) (Stream, error)
	// Unary returns the unary methods of addr, for a participant that
	// does not serve Calls.
	Unary(addr string) (UnaryParticipant, error)
	// Release drops what the transport holds for addr (its connection):
	// addr's link retired for idleness.
	Release(addr string)
}

// Stream is one open Calls stream.
//
// In production Send may block (flow control) and Recv blocks until a
// reply batch arrives or the stream fails. A stepped stream must do
// neither: Send hands the batch on, and Recv returns ErrNoReply when no
// reply batch is waiting.
//
// After cancel, Recv must soon return an error other than ErrNoReply (a
// stepped stream: at once), so that the calls still in flight end.
type Stream interface {
	Send(*decreev1.CallBatch) error
	Recv() (*decreev1.ReplyBatch, error)
	Cancel()
}

// SetIdleTimeout sets how long a link may go without a call before it
// closes (default two minutes). Call it before the first call; the
// simulation shortens it so that links close and reopen within a run.
func (m *Mux) SetIdleTimeout(d time.Duration) { m.idle = d }

// ErrStopped ends the calls of a mux that has stopped.
var ErrStopped = errors.New("participant calls stopped")

// unavailable is an Unavailable status: the participant could not be
// reached, or its stream broke.
func unavailable(format string, a ...any) error {
	return status.Error(codes.Unavailable, fmt.Sprintf(format, a...))
}

// ErrNoReply is what a stepped Stream's Recv returns when no reply
// batch is waiting: the stream is alive, there is nothing yet.
var ErrNoReply = errors.New("no reply batch waiting")

// UnaryParticipant is the participant's four unary methods, as
// decreev1.ParticipantServer declares them (so a server can serve as one
// directly in the simulation).
type UnaryParticipant interface {
	Prepare(context.Context, *decreev1.PrepareRequest) (*decreev1.PrepareResponse, error)
	Commit(context.Context, *decreev1.DecisionRequest) (*decreev1.DecisionResponse, error)
	Abort(context.Context, *decreev1.DecisionRequest) (*decreev1.DecisionResponse, error)
	Resolve(context.Context, *decreev1.ResolveRequest) (*decreev1.ResolveResponse, error)
}

// Mux carries the leader's calls to participants. Each participant has
// one long-lived Calls stream: every call queued while the previous batch
// was being sent goes out in the next CallBatch, and the participant
// coalesces its replies the same way, so under load many prepares, commits
// and aborts share one message, one write and one wake-up at each end. A
// participant that does not serve Calls (Unimplemented) gets the unary
// methods instead.
//
// Every call ends exactly once, through its Done: with the reply, with
// the participant's error for it, or with an error of its own (the stream
// broke, the deadline passed, the mux stopped). A reply arriving after the
// call ended is dropped.
//
// A mux runs in one of two modes, with the same link logic (enqueue, take,
// open, send, handle, died, expire, retireIfIdle, stop):
//
//   - Production (New): goroutines drive each link: a sender (run),
//     a deadline sweeper (sweep), a receiver per stream (receive) and one
//     per unary call. Any goroutine may call; done runs on a goroutine of
//     the mux. These wrappers live in calls_grpc.go.
//   - Stepped (NewStepped), for the deterministic simulation: no
//     goroutine at all. One goroutine owns the mux: it alone calls call,
//     pump and tick, and every done runs on it, from within those. Nothing
//     is sent until pump; no deadline passes until tick. Links are visited
//     in address order and calls ended together in sequence order, so a
//     run is a function of the owner's inputs.
type Mux struct {
	ctx   context.Context
	tr    Transport
	clock clock.Clock
	log   zerolog.Logger
	// stepped: the owner drives the mux with pump and tick; see Mux.
	stepped bool
	// sweep is how often a production link checks its deadlines.
	sweep time.Duration
	// idle is how long a link may go without a call before it closes.
	idle time.Duration

	mu    sync.Mutex
	links map[string]*callLink
	wg    sync.WaitGroup
	// running counts the mux's goroutines (links' senders, sweepers,
	// receivers and unary calls), for tests and leak checks.
	running atomic.Int64
}

func newMux(ctx context.Context, tr Transport, clock clock.Clock, stepped bool, log zerolog.Logger) *Mux {
	return &Mux{
		ctx: ctx, tr: tr, clock: clock, log: log, stepped: stepped,
		sweep: 50 * time.Millisecond, idle: linkIdleTimeout,
		links: make(map[string]*callLink),
	}
}

// NewStepped returns a mux driven by its owner, over tr; see
// Mux, pump and tick. Cancelling ctx stops it: the next pump ends every
// call.
func NewStepped(ctx context.Context, tr Transport, clock clock.Clock, log zerolog.Logger) *Mux {
	return newMux(ctx, tr, clock, true, log)
}

// call sends c to the participant at addr; done gets its end, at the latest
// timeout after now (a stepped mux: at the first tick at or past that
// time). Once the mux has stopped, done runs at once, on the caller's
// goroutine, with ErrStopped.
func (m *Mux) Call(addr string, c *decreev1.Call, timeout time.Duration, done Done) {
	pc := &pendingCall{call: c, size: callSize(c), deadline: m.clock.Now().Add(timeout), done: done}
	m.submit(addr, pc)
}

// submit queues pc on addr's link, opening a new link if the one found
// closed for idleness meanwhile.
func (m *Mux) submit(addr string, pc *pendingCall) {
	for {
		l, err := m.link(addr)
		if err != nil {
			pc.done(nil, err)
			return
		}
		if l.enqueue(pc) {
			return
		}
	}
}

// linkCount is the number of open links.
func (m *Mux) linkCount() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.links)
}

func (m *Mux) link(addr string) (*callLink, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ctx.Err() != nil {
		return nil, ErrStopped
	}
	l, ok := m.links[addr]
	if !ok {
		l = &callLink{mux: m, addr: addr, wake: make(chan struct{}, 1), closed: make(chan struct{}),
			lastUse: m.clock.Now(), log: m.log.With().Str("participant", addr).Logger()}
		m.links[addr] = l
		if !m.stepped {
			m.spawn(l.run)
		}
	}
	return l, nil
}

// sortedLinks returns the open links in address order.
func (m *Mux) sortedLinks() []*callLink {
	m.mu.Lock()
	ls := make([]*callLink, 0, len(m.links))
	for _, l := range m.links {
		ls = append(ls, l)
	}
	m.mu.Unlock()
	slices.SortFunc(ls, func(a, b *callLink) int { return cmp.Compare(a.addr, b.addr) })
	return ls
}

// pump does for a stepped mux what the production goroutines do: for each
// link, it ends calls with the replies its streams hold, and those of any
// stream that died; opens a stream if calls are queued and none is open;
// and sends the queued calls in batches (or makes them unary calls).
// It repeats while calls remain queued, as the dones it runs may queue
// more. Once the mux's context is cancelled, it ends every call instead.
//
// The owner calls pump after anything that may have queued a call (call)
// or given a stream something to return (a reply batch, its death).
func (m *Mux) Pump() {
	if m.ctx.Err() != nil {
		m.shutdown()
		return
	}
	for {
		queued := false
		for _, l := range m.sortedLinks() {
			// Draining first finds a stream that died before calls are
			// sent on it; draining again ends at once the calls of a
			// stream whose Send failed.
			l.drain()
			l.flush()
			l.drain()
			l.mu.Lock()
			queued = queued || len(l.queue) > 0
			l.mu.Unlock()
		}
		if !queued {
			return
		}
	}
}

// tick does for a stepped mux what the production sweepers do: it ends
// the calls whose deadline is not after now, resets a stream with a call
// stuck on it, and closes the links idle for the idle time. Then it pumps.
// The owner calls it as its time passes, e.g. on each of its ticks.
func (m *Mux) Tick(now time.Time) {
	for _, l := range m.sortedLinks() {
		l.expire(now)
		l.retireIfIdle(now)
	}
	m.Pump()
}

// shutdown ends every call of a stepped mux whose context is cancelled:
// those queued with ErrStopped, those in flight as their streams die.
func (m *Mux) shutdown() {
	for _, l := range m.sortedLinks() {
		l.stop()
		l.mu.Lock()
		streams := slices.Clone(l.streams)
		l.mu.Unlock()
		for _, cs := range streams {
			l.died(cs, m.ctx.Err())
		}
	}
}

type pendingCall struct {
	call     *decreev1.Call
	size     int
	deadline time.Time
	done     Done
}

// callSize estimates the encoded size of c: its payload and names dominate.
func callSize(c *decreev1.Call) int {
	n := 64
	if p := c.GetPrepare(); p != nil {
		n += len(p.GetPayload())
		for _, s := range p.GetParticipants() {
			n += len(s) + 2
		}
	}
	return n
}

// callLink is the queue and streams of one participant. In production one
// goroutine (run) opens the stream and sends, and one per stream receives;
// in a stepped mux, pump does both.
type callLink struct {
	mux  *Mux
	addr string
	log  zerolog.Logger
	wake chan struct{}
	// closed is closed when the link retires for idleness: its goroutines
	// end, and calls go to a new link.
	closed chan struct{}

	mu    sync.Mutex
	queue []*pendingCall
	cur   *callStream // the stream new calls go on; nil: none open
	// streams are the streams not yet dead, cur and any reset ones whose
	// calls in flight are still to end, in the order they opened.
	streams []*callStream
	unary   bool // the participant does not serve Calls
	nextSeq uint64
	lastUse time.Time // the last call queued
	unaryN  int       // unary calls in flight
	retired bool
}

// callStream is one open Calls stream and the calls sent on it awaiting a
// reply. inflight is guarded by the link's mu and is nil once the stream
// has died (its calls ended).
type callStream struct {
	stream   Stream
	inflight map[uint64]*pendingCall
}

func (cs *callStream) cancel() { cs.stream.Cancel() }

// enqueue queues pc for the sender, or reports false if the link retired.
// Once the mux has stopped it ends pc at once: stop, which drains the
// queue for the last time, runs after the context is cancelled and under
// the same lock.
func (l *callLink) enqueue(pc *pendingCall) bool {
	l.mu.Lock()
	if l.retired {
		l.mu.Unlock()
		return false
	}
	if l.mux.ctx.Err() != nil {
		l.mu.Unlock()
		pc.done(nil, ErrStopped)
		return true
	}
	l.queue = append(l.queue, pc)
	l.lastUse = l.mux.clock.Now()
	l.mu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
	return true
}

// retireIfIdle closes a link that has had nothing to do for the idle
// time: its streams, its goroutines and its connection. It leaves the
// mux's map first, under both locks, so a new call either finds it still
// open or opens a new one.
func (l *callLink) retireIfIdle(now time.Time) bool {
	m := l.mux
	m.mu.Lock()
	l.mu.Lock()
	idle := len(l.queue) == 0 && l.unaryN == 0 && now.Sub(l.lastUse) >= m.idle
	for _, cs := range l.streams {
		idle = idle && len(cs.inflight) == 0
	}
	var streams []*callStream
	if idle {
		l.retired, streams, l.streams, l.cur = true, l.streams, nil, nil
		if m.links[l.addr] == l {
			delete(m.links, l.addr)
		}
	}
	l.mu.Unlock()
	m.mu.Unlock()
	if !idle {
		return false
	}
	l.log.Debug().Dur("idle", now.Sub(l.lastUse)).Msg("closing an idle participant link")
	for _, cs := range streams {
		cs.cancel() // its receiver ends, with no call to end
	}
	close(l.closed)
	m.tr.Release(l.addr)
	return true
}

// flush sends everything queued, opening a stream first if none is open.
func (l *callLink) flush() {
	for {
		batch, cs, unary := l.take()
		switch {
		case len(batch) == 0:
			return
		case unary:
			for _, pc := range batch {
				l.callUnary(pc)
			}
		case cs == nil:
			l.open()
		default:
			l.send(cs, batch)
		}
	}
}

// take removes the next batch from the queue. With a live stream, it
// numbers the calls and registers them as in flight on it before they are
// sent, so that a stream dying mid-send ends them.
func (l *callLink) take() ([]*pendingCall, *callStream, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n, size := 0, 0
	for n < len(l.queue) && (n == 0 || size+l.queue[n].size <= maxCallBatchBytes) {
		size += l.queue[n].size
		n++
	}
	if n == 0 {
		return nil, nil, l.unary
	}
	if l.cur == nil && !l.unary {
		return l.queue, nil, false // open first; the queue stays
	}
	batch := l.queue[:n:n]
	l.queue = l.queue[n:]
	if len(l.queue) == 0 {
		l.queue = nil
	}
	if l.unary {
		return batch, nil, true
	}
	now := l.mux.clock.Now()
	for _, pc := range batch {
		l.nextSeq++
		pc.call.Seq = l.nextSeq
		pc.call.TimeoutMicros = max(pc.deadline.Sub(now).Microseconds(), 1)
		l.cur.inflight[pc.call.Seq] = pc
	}
	return batch, l.cur, false
}

// open starts a stream. If that fails, the queued calls end with the
// error: the core retries them on its own schedule.
func (l *callLink) open() {
	s, err := l.mux.tr.OpenCalls(l.mux.ctx, l.addr)
	if err == nil {
		cs := &callStream{stream: s, inflight: make(map[uint64]*pendingCall)}
		l.mu.Lock()
		l.cur = cs
		l.streams = append(l.streams, cs)
		l.mu.Unlock()
		if !l.mux.stepped {
			l.mux.spawn(func() { l.receive(cs) })
		}
		return
	}
	l.log.Debug().Err(err).Msg("cannot open calls stream")
	l.mu.Lock()
	failed := l.queue
	l.queue = nil
	l.mu.Unlock()
	endAll(failed, unavailable("participant %s: %v", l.addr, err))
}

// send writes one batch. A failed send is left to the stream's receiver,
// which sees the stream's status and ends the calls in flight, these
// included.
func (l *callLink) send(cs *callStream, batch []*pendingCall) {
	calls := make([]*decreev1.Call, len(batch))
	for i, pc := range batch {
		calls[i] = pc.call
	}
	if err := cs.stream.Send(&decreev1.CallBatch{Calls: calls}); err != nil {
		l.log.Debug().Err(err).Msg("calls stream send failed")
		cs.cancel()
	}
}

// drain is a stepped mux's receiver: it ends calls with the reply batches
// waiting on each of the link's streams, and the calls of the streams that
// died.
func (l *callLink) drain() {
	l.mu.Lock()
	streams := slices.Clone(l.streams)
	l.mu.Unlock()
	for _, cs := range streams {
		for {
			b, err := cs.stream.Recv()
			if errors.Is(err, ErrNoReply) {
				break
			}
			if err != nil {
				l.died(cs, err)
				break
			}
			l.handle(cs, b)
		}
	}
}

// handle ends the calls of cs that b answers.
func (l *callLink) handle(cs *callStream, b *decreev1.ReplyBatch) {
	for _, r := range b.GetReplies() {
		l.mu.Lock()
		pc := cs.inflight[r.GetSeq()]
		delete(cs.inflight, r.GetSeq())
		l.mu.Unlock()
		if pc != nil {
			pc.done(r, replyError(pc.call, r))
		}
	}
}

// died ends the calls in flight on a stream that failed with err; if the
// participant turned out not to serve Calls, they are queued again, for
// the unary methods.
func (l *callLink) died(cs *callStream, err error) {
	cs.cancel()
	unimplemented := status.Code(err) == codes.Unimplemented
	l.mu.Lock()
	orphans := bySeq(cs.inflight)
	cs.inflight = nil
	if l.cur == cs {
		l.cur = nil
	}
	if i := slices.Index(l.streams, cs); i >= 0 {
		l.streams = slices.Delete(l.streams, i, i+1)
	}
	if unimplemented {
		l.unary = true
	}
	l.mu.Unlock()
	if unimplemented {
		l.log.Info().Msg("participant does not serve the calls stream; using unary calls")
		for _, pc := range orphans {
			l.mux.submit(l.addr, pc)
		}
		return
	}
	if l.mux.ctx.Err() == nil {
		l.log.Debug().Err(err).Int("in_flight", len(orphans)).Msg("calls stream ended")
	}
	err = unavailable("participant %s: calls stream ended: %v", l.addr, err)
	for _, pc := range orphans {
		pc.done(nil, err)
	}
}

// bySeq returns the calls of inflight in the order they were sent, so that
// calls ending together end in an order that does not depend on the map.
func bySeq(inflight map[uint64]*pendingCall) []*pendingCall {
	calls := make([]*pendingCall, 0, len(inflight))
	for _, pc := range inflight {
		calls = append(calls, pc)
	}
	slices.SortFunc(calls, cmpSeq)
	return calls
}

func cmpSeq(a, b *pendingCall) int { return cmp.Compare(a.call.GetSeq(), b.call.GetSeq()) }

// expire ends the calls whose deadline has passed, queued or in flight.
func (l *callLink) expire(now time.Time) {
	var late []*pendingCall
	l.mu.Lock()
	kept := l.queue[:0]
	for _, pc := range l.queue {
		if now.Before(pc.deadline) {
			kept = append(kept, pc)
		} else {
			late = append(late, pc)
		}
	}
	clear(l.queue[len(kept):])
	l.queue = kept
	var stuck *callStream
	if l.cur != nil {
		var sent []*pendingCall
		for seq, pc := range l.cur.inflight {
			if !now.Before(pc.deadline) {
				delete(l.cur.inflight, seq)
				sent = append(sent, pc)
				stuck = l.cur
			}
		}
		slices.SortFunc(sent, cmpSeq)
		late = append(late, sent...)
	}
	if stuck != nil {
		l.cur = nil // new calls go to a new stream; the receiver ends the rest
	}
	l.mu.Unlock()
	if stuck != nil {
		// A call sent on it got no answer in its whole deadline: the
		// participant is stuck or not reading. Cancelling frees a blocked
		// Send; the receiver ends the rest and the next call reconnects.
		l.log.Warn().Msg("participant call timed out on the calls stream; resetting the stream")
		stuck.cancel()
	}
	endAll(late, status.Error(codes.DeadlineExceeded, "participant call timed out"))
}

// stop ends everything queued; the calls in flight end as their streams
// fail with the mux's context.
func (l *callLink) stop() {
	l.mu.Lock()
	queued := l.queue
	l.queue = nil
	l.mu.Unlock()
	endAll(queued, ErrStopped)
}

func endAll(calls []*pendingCall, err error) {
	for _, pc := range calls {
		pc.done(nil, err)
	}
}

// callUnary makes one call with the unary method of its kind: in
// production on a goroutine of its own, bounded by the call's deadline; in
// a stepped mux at once, as the transport answers without waiting.
func (l *callLink) callUnary(pc *pendingCall) {
	l.mu.Lock()
	l.unaryN++
	l.mu.Unlock()
	if l.mux.stepped {
		r, err := l.invokeUnary(l.mux.ctx, pc.call)
		l.unaryDone(pc, r, err)
		return
	}
	l.mux.spawn(func() {
		ctx, cancel := context.WithTimeout(l.mux.ctx, pc.deadline.Sub(l.mux.clock.Now()))
		defer cancel()
		r, err := l.invokeUnary(ctx, pc.call)
		l.unaryDone(pc, r, err)
	})
}

func (l *callLink) unaryDone(pc *pendingCall, r *decreev1.Reply, err error) {
	l.mu.Lock()
	l.unaryN--
	l.lastUse = l.mux.clock.Now()
	l.mu.Unlock()
	pc.done(r, err)
}

func (l *callLink) invokeUnary(ctx context.Context, c *decreev1.Call) (*decreev1.Reply, error) {
	pc, err := l.mux.tr.Unary(l.addr)
	if err != nil {
		return nil, err
	}
	r := &decreev1.Reply{Seq: c.GetSeq()}
	switch k := c.GetKind().(type) {
	case *decreev1.Call_Prepare:
		resp, err := pc.Prepare(ctx, k.Prepare)
		r.Kind = &decreev1.Reply_Prepare{Prepare: resp}
		return r, err
	case *decreev1.Call_Commit:
		resp, err := pc.Commit(ctx, k.Commit)
		r.Kind = &decreev1.Reply_Decision{Decision: resp}
		return r, err
	case *decreev1.Call_Abort:
		resp, err := pc.Abort(ctx, k.Abort)
		r.Kind = &decreev1.Reply_Decision{Decision: resp}
		return r, err
	case *decreev1.Call_Resolve:
		resp, err := pc.Resolve(ctx, k.Resolve)
		r.Kind = &decreev1.Reply_Resolve{Resolve: resp}
		return r, err
	default:
		return nil, fmt.Errorf("call of unknown kind %T", k)
	}
}

// replyError is the call's error carried by r, or an error if r does not
// answer c's kind.
func replyError(c *decreev1.Call, r *decreev1.Reply) error {
	if e := r.GetError(); e != nil {
		return status.Error(codes.Code(e.GetCode()), e.GetMessage())
	}
	var ok bool
	switch c.GetKind().(type) {
	case *decreev1.Call_Prepare:
		ok = r.GetPrepare() != nil
	case *decreev1.Call_Commit, *decreev1.Call_Abort:
		ok = r.GetDecision() != nil
	case *decreev1.Call_Resolve:
		ok = r.GetResolve() != nil
	}
	if !ok {
		return status.Errorf(codes.Internal, "participant answered call %d with a reply of another kind", c.GetSeq())
	}
	return nil
}
