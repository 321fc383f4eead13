package coordinator

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

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

// callDone receives the end of one call: the participant's reply, or why
// there is none. It runs on a goroutine of the mux and must not block for
// long: it holds up the replies behind it.
type callDone func(*decreev1.Reply, error)

// callMux carries the leader's calls to participants. Each participant has
// one long-lived Calls stream: every call queued while the previous batch
// was being sent goes out in the next CallBatch, and the participant
// coalesces its replies the same way, so under load many prepares, commits
// and aborts share one message, one write and one wake-up at each end. A
// participant that does not serve Calls (Unimplemented) gets the unary
// methods instead, one goroutine per call.
//
// Every call ends exactly once, through its callDone: with the reply, with
// the participant's error for it, or with an error of its own (the stream
// broke, the deadline passed, the mux stopped). A reply arriving after the
// call ended is dropped.
type callMux struct {
	ctx   context.Context
	conns *connPool
	clock Clock
	log   zerolog.Logger
	// sweep is how often deadlines are checked.
	sweep time.Duration
	// openTimeout bounds opening a stream.
	openTimeout time.Duration
	// idle is how long a link may go without a call before it closes.
	idle time.Duration

	mu    sync.Mutex
	links map[string]*callLink
	wg    sync.WaitGroup
	// running counts the mux's goroutines (links' senders, sweepers,
	// receivers and unary calls), for tests and leak checks.
	running atomic.Int64
}

func newCallMux(ctx context.Context, conns *connPool, clock Clock, openTimeout time.Duration, log zerolog.Logger) *callMux {
	return &callMux{
		ctx: ctx, conns: conns, clock: clock, log: log,
		sweep: 50 * time.Millisecond, openTimeout: openTimeout, idle: linkIdleTimeout,
		links: make(map[string]*callLink),
	}
}

// call sends c to the participant at addr; done gets its end, at the latest
// timeout after now. Once the mux has stopped, done runs at once, on the
// caller's goroutine, with ErrStopped.
func (m *callMux) call(addr string, c *decreev1.Call, timeout time.Duration, done callDone) {
	pc := &pendingCall{call: c, size: callSize(c), deadline: m.clock.Now().Add(timeout), done: done}
	m.submit(addr, pc)
}

// submit queues pc on addr's link, opening a new link if the one found
// closed for idleness meanwhile.
func (m *callMux) submit(addr string, pc *pendingCall) {
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

// spawn runs f on a goroutine of the mux.
func (m *callMux) spawn(f func()) {
	m.running.Add(1)
	m.wg.Go(func() {
		defer m.running.Add(-1)
		f()
	})
}

// linkCount is the number of open links.
func (m *callMux) linkCount() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.links)
}

// callSync is call for a caller that waits: it returns the reply, or the
// error, or ctx's error if ctx ends first.
func (m *callMux) callSync(ctx context.Context, addr string, c *decreev1.Call, timeout time.Duration) (*decreev1.Reply, error) {
	type result struct {
		r   *decreev1.Reply
		err error
	}
	ch := make(chan result, 1)
	m.call(addr, c, timeout, func(r *decreev1.Reply, err error) { ch <- result{r, err} })
	select {
	case res := <-ch:
		return res.r, res.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// wait returns once every goroutine of the mux has ended; the mux's context
// must be cancelled first.
func (m *callMux) wait() { m.wg.Wait() }

func (m *callMux) link(addr string) (*callLink, error) {
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
		m.spawn(l.run)
	}
	return l, nil
}

type pendingCall struct {
	call     *decreev1.Call
	size     int
	deadline time.Time
	done     callDone
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

// callLink is the queue and stream of one participant. One goroutine (run)
// opens the stream and sends; one per stream receives.
type callLink struct {
	mux  *callMux
	addr string
	log  zerolog.Logger
	wake chan struct{}
	// closed is closed when the link retires for idleness: its goroutines
	// end, and calls go to a new link.
	closed chan struct{}

	mu      sync.Mutex
	queue   []*pendingCall
	cur     *callStream // nil: none open
	unary   bool        // the participant does not serve Calls
	nextSeq uint64
	lastUse time.Time // the last call queued
	unaryN  int       // unary calls in flight
	retired bool
}

// callStream is one open Calls stream and the calls sent on it awaiting a
// reply. inflight is guarded by the link's mu and is nil once the stream
// has died (its calls ended).
type callStream struct {
	stream   decreev1.Participant_CallsClient
	cancel   context.CancelFunc
	inflight map[uint64]*pendingCall
}

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

// run sends what is queued. Deadlines are swept by another goroutine
// (sweep): a Send blocked by a participant that stopped reading must not
// hold them up.
func (l *callLink) run() {
	l.mux.spawn(l.sweep)
	for {
		select {
		case <-l.mux.ctx.Done():
			l.stop()
			return
		case <-l.closed:
			return
		case <-l.wake:
			l.flush()
		}
	}
}

func (l *callLink) sweep() {
	tick, stop := l.mux.clock.NewTicker(l.mux.sweep)
	defer stop()
	for {
		select {
		case <-l.mux.ctx.Done():
			return
		case <-tick:
			now := l.mux.clock.Now()
			l.expire(now)
			if l.retireIfIdle(now) {
				return
			}
		}
	}
}

// retireIfIdle closes a link that has had nothing to do for the idle
// time: its stream, its goroutines and its connection. It leaves the
// mux's map first, under both locks, so a new call either finds it still
// open or opens a new one.
func (l *callLink) retireIfIdle(now time.Time) bool {
	m := l.mux
	m.mu.Lock()
	l.mu.Lock()
	idle := len(l.queue) == 0 && l.unaryN == 0 && now.Sub(l.lastUse) >= m.idle &&
		(l.cur == nil || len(l.cur.inflight) == 0)
	var cs *callStream
	if idle {
		l.retired, cs, l.cur = true, l.cur, nil
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
	if cs != nil {
		cs.cancel() // its receiver ends
	}
	close(l.closed)
	m.conns.drop(l.addr)
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
	conn, err := l.mux.conns.get(l.addr)
	if err == nil {
		var cs *callStream
		if cs, err = l.openStream(decreev1.NewParticipantClient(conn)); err == nil {
			l.mu.Lock()
			l.cur = cs
			l.mu.Unlock()
			l.mux.spawn(func() { l.receive(cs) })
			return
		}
	}
	l.log.Debug().Err(err).Msg("cannot open calls stream")
	l.mu.Lock()
	failed := l.queue
	l.queue = nil
	l.mu.Unlock()
	endAll(failed, unavailable("participant %s: %v", l.addr, err))
}

// openStream opens a Calls stream, bounded by openTimeout: a participant
// whose address swallows packets must not hold the link for long.
func (l *callLink) openStream(pc decreev1.ParticipantClient) (*callStream, error) {
	ctx, cancel := context.WithCancel(l.mux.ctx)
	// The opening and the timeout race to settle first: the timeout
	// cancels the stream only if it wins, and then the opening, even a
	// successful one, is reported late. The watcher lives only as long as
	// the opening, so it is not one of the mux's counted goroutines.
	var settled atomic.Bool
	opened := make(chan struct{})
	timeout := l.mux.clock.After(l.mux.openTimeout)
	go func() {
		select {
		case <-timeout:
			if settled.CompareAndSwap(false, true) {
				cancel()
			}
		case <-opened:
		}
	}()
	stream, err := pc.Calls(ctx)
	late := !settled.CompareAndSwap(false, true)
	close(opened)
	if late && err == nil {
		err = fmt.Errorf("opening the calls stream took over %v", l.mux.openTimeout)
	}
	if err != nil {
		cancel()
		return nil, err
	}
	return &callStream{stream: stream, cancel: cancel, inflight: make(map[uint64]*pendingCall)}, nil
}

// send writes one batch. A failed send is left to the receiver, which sees
// the stream's status and ends the calls in flight, these included.
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

// receive ends calls with the replies of one stream until it dies, then
// ends the rest of its calls; if the participant turned out not to serve
// Calls, they are sent again with the unary methods instead.
func (l *callLink) receive(cs *callStream) {
	for {
		b, err := cs.stream.Recv()
		if err != nil {
			l.died(cs, err)
			return
		}
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
}

func (l *callLink) died(cs *callStream, err error) {
	cs.cancel()
	unimplemented := status.Code(err) == codes.Unimplemented
	l.mu.Lock()
	orphans := cs.inflight
	cs.inflight = nil
	if l.cur == cs {
		l.cur = nil
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
		for seq, pc := range l.cur.inflight {
			if !now.Before(pc.deadline) {
				delete(l.cur.inflight, seq)
				late = append(late, pc)
				stuck = l.cur
			}
		}
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

// stop ends everything queued; the receivers end the calls in flight when
// their streams fail with the mux's context.
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

// callUnary makes one call with the unary method of its kind.
func (l *callLink) callUnary(pc *pendingCall) {
	l.mu.Lock()
	l.unaryN++
	l.mu.Unlock()
	l.mux.spawn(func() {
		ctx, cancel := context.WithTimeout(l.mux.ctx, pc.deadline.Sub(l.mux.clock.Now()))
		defer cancel()
		r, err := l.invokeUnary(ctx, pc.call)
		l.mu.Lock()
		l.unaryN--
		l.lastUse = l.mux.clock.Now()
		l.mu.Unlock()
		pc.done(r, err)
	})
}

func (l *callLink) invokeUnary(ctx context.Context, c *decreev1.Call) (*decreev1.Reply, error) {
	conn, err := l.mux.conns.get(l.addr)
	if err != nil {
		return nil, err
	}
	pc := decreev1.NewParticipantClient(conn)
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

func prepareCall(a SendPrepare) *decreev1.Call {
	return &decreev1.Call{Kind: &decreev1.Call_Prepare{Prepare: &decreev1.PrepareRequest{
		TxnId: a.ID, Payload: a.Payload, Participants: a.Participants, OnePhase: a.OnePhase, Term: a.Term}}}
}

func decisionCall(a SendDecision) *decreev1.Call {
	req := &decreev1.DecisionRequest{TxnId: a.ID, Term: a.Term}
	if a.Outcome == decreev1.Outcome_OUTCOME_COMMITTED {
		return &decreev1.Call{Kind: &decreev1.Call_Commit{Commit: req}}
	}
	return &decreev1.Call{Kind: &decreev1.Call_Abort{Abort: req}}
}

func resolveCall(id string, term uint64) *decreev1.Call {
	return &decreev1.Call{Kind: &decreev1.Call_Resolve{Resolve: &decreev1.ResolveRequest{TxnId: id, Term: term}}}
}
