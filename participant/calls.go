package participant

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"

	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// maxCallsInFlight bounds the calls of one Calls stream being served at
// once. When it is reached the stream is not read until a call finishes,
// so gRPC flow control slows the coordinator down instead of this process
// growing without bound.
const maxCallsInFlight = 4096

// ServeCalls serves a Calls stream by running every call it carries
// through unary's Prepare, Commit, Abort and Resolve, each on its own
// goroutine, so that the calls of a batch proceed together (their synced
// log writes share fsyncs). Replies are coalesced: whatever has finished
// while the previous batch was being sent goes in the next one.
//
// It returns when the coordinator closes its side and every call has been
// answered, or when the stream fails. Participant.Register serves it; it is
// exported for services that wrap the SDK's unary methods (middleware,
// tests) and want their wrapping to apply to streamed calls too. Such a
// wrapper should call Participant.ServeCalls instead, so that its streams
// end when the participant stops.
func ServeCalls(stream decreev1.Participant_CallsServer, unary decreev1.ParticipantServer) error {
	var stop <-chan struct{}
	if s, ok := unary.(*server); ok {
		stop = s.p.callsStop
	}
	return serveCalls(stream, unary, stop)
}

// ServeCalls is the package's ServeCalls for a service wrapping p's: the
// stream also ends when p stops (Stop, or the end of Start's context).
func (p *Participant) ServeCalls(stream decreev1.Participant_CallsServer, unary decreev1.ParticipantServer) error {
	return serveCalls(stream, unary, p.callsStop)
}

// errStopping ends a Calls stream when the participant stops. A
// coordinator holds its stream open for as long as it leads, so without
// this a grpc.Server's GracefulStop, which waits for every stream, would
// never return. The coordinator fails the calls left unanswered and
// reconnects (or retries) on its own schedule.
var errStopping = status.Error(codes.Unavailable, "participant is stopping")

// serveCalls serves the stream until it ends or stop closes. On stop it
// takes no new call, answers the calls already running, and returns.
func serveCalls(stream decreev1.Participant_CallsServer, unary decreev1.ParticipantServer, stop <-chan struct{}) error {
	select {
	case <-stop:
		return errStopping
	default:
	}
	out := newReplyQueue()
	sendErr := make(chan error, 1)
	go func() { sendErr <- out.sendAll(stream) }()

	w := newCallWorkers(stream.Context(), unary, out)
	recvErr := make(chan error, 1) // the receiver outlives a stopped stream's handler briefly
	go func() { recvErr <- w.receive(stream) }()
	var err error
	select {
	case err = <-recvErr:
	case <-stop:
		w.quit()
		err = errStopping
	}
	w.wait()
	out.close()
	if sErr := <-sendErr; sErr != nil {
		return sErr
	}
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

// callWorkers runs the calls of one stream on a pool of goroutines that
// lives as long as the stream: a call hands itself to an idle worker, or
// starts a new one while fewer than maxCallsInFlight run. Long-lived
// workers keep the stacks they grew (the log's reads and writes run deep),
// where a goroutine per call would grow and copy a fresh stack every time.
type callWorkers struct {
	ctx   context.Context
	unary decreev1.ParticipantServer
	out   *replyQueue
	work  chan *decreev1.Call // unbuffered: a send succeeds only to an idle worker
	slots chan struct{}       // one per call being run
	wg    sync.WaitGroup
	done  chan struct{} // closed when the stream's calls have all been handed out

	// quitting (under mu) and quitc (closed with it) say the participant
	// is stopping: no call is started after, and idle workers leave.
	mu       sync.Mutex
	quitting bool
	quitc    chan struct{}
}

func newCallWorkers(ctx context.Context, unary decreev1.ParticipantServer, out *replyQueue) *callWorkers {
	return &callWorkers{ctx: ctx, unary: unary, out: out, work: make(chan *decreev1.Call),
		slots: make(chan struct{}, maxCallsInFlight), done: make(chan struct{}), quitc: make(chan struct{})}
}

// quit stops the starting of calls. Once it returns no worker is added, so
// wait may follow.
func (w *callWorkers) quit() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.quitting {
		w.quitting = true
		close(w.quitc)
	}
}

// receive reads batches until the stream ends and starts their calls. When
// maxCallsInFlight calls are running it stops reading until one finishes.
func (w *callWorkers) receive(stream decreev1.Participant_CallsServer) error {
	defer close(w.done)
	for {
		b, err := stream.Recv()
		if err != nil {
			return err
		}
		for _, c := range b.GetCalls() {
			select {
			case w.slots <- struct{}{}:
			case <-w.ctx.Done():
				return w.ctx.Err()
			case <-w.quitc:
				return errStopping
			}
			if !w.start(c) {
				return errStopping
			}
		}
	}
}

// start hands c to an idle worker or a new one, unless quitting.
func (w *callWorkers) start(c *decreev1.Call) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.quitting {
		return false
	}
	select {
	case w.work <- c:
	default:
		w.wg.Go(func() { w.loop(c) })
	}
	return true
}

// workerIdle is how long a worker waits for another call before it ends,
// so that a stream's pool shrinks back after a burst. It is a real timer,
// not Options.Clock: it only bounds how long an idle goroutine lingers,
// which no protocol step or test observes, and the loop resets it after
// every call, which a Clock's After would do with a new timer each time.
const workerIdle = 10 * time.Second

// loop runs c, then whatever calls it is handed, until the stream is done
// or no call came for workerIdle.
func (w *callWorkers) loop(c *decreev1.Call) {
	idle := time.NewTimer(workerIdle)
	defer idle.Stop()
	for {
		w.out.push(runCall(w.ctx, w.unary, c))
		<-w.slots
		idle.Reset(workerIdle)
		select {
		case c = <-w.work:
		case <-idle.C:
			return
		case <-w.done:
			return
		case <-w.quitc:
			return
		}
	}
}

// wait returns when every call handed out has been answered.
func (w *callWorkers) wait() { w.wg.Wait() }

// runCall runs one call through unary, within the caller's deadline, and
// turns its result into a Reply.
func runCall(ctx context.Context, unary decreev1.ParticipantServer, c *decreev1.Call) *decreev1.Reply {
	if t := c.GetTimeoutMicros(); t > 0 {
		cc := newCallContext(ctx, time.Now().Add(time.Duration(t)*time.Microsecond))
		defer cc.release()
		ctx = cc
	}
	r := &decreev1.Reply{Seq: c.GetSeq()}
	var err error
	switch k := c.GetKind().(type) {
	case *decreev1.Call_Prepare:
		var resp *decreev1.PrepareResponse
		if resp, err = unary.Prepare(ctx, k.Prepare); err == nil {
			r.Kind = &decreev1.Reply_Prepare{Prepare: resp}
		}
	case *decreev1.Call_Commit:
		var resp *decreev1.DecisionResponse
		if resp, err = unary.Commit(ctx, k.Commit); err == nil {
			r.Kind = &decreev1.Reply_Decision{Decision: resp}
		}
	case *decreev1.Call_Abort:
		var resp *decreev1.DecisionResponse
		if resp, err = unary.Abort(ctx, k.Abort); err == nil {
			r.Kind = &decreev1.Reply_Decision{Decision: resp}
		}
	case *decreev1.Call_Resolve:
		var resp *decreev1.ResolveResponse
		if resp, err = unary.Resolve(ctx, k.Resolve); err == nil {
			r.Kind = &decreev1.Reply_Resolve{Resolve: resp}
		}
	default:
		err = status.Error(codes.InvalidArgument, "call of unknown kind")
	}
	if err != nil {
		st := status.Convert(err)
		r.Kind = &decreev1.Reply_Error{Error: &decreev1.CallError{Code: uint32(st.Code()), Message: st.Message()}}
	}
	return r
}

// callContext is a streamed call's context: the stream's, with the call's
// deadline. context.WithTimeout would start a timer and register with the
// stream's context for every call, 2.7% of the CPU of a 256-client bench
// (each transaction makes four calls); most calls end without anyone
// waiting on Done, so the timer starts only when Done is first asked for,
// or when Err finds the deadline passed. It behaves as WithTimeout's
// context and its deferred cancel would: Done closes at the deadline, when
// the stream's context ends or when the call is over, and Err is non-nil
// exactly when Done is (or would be) closed.
type callContext struct {
	context.Context // the stream's
	deadline        time.Time

	mu       sync.Mutex
	timed    context.Context // WithDeadline of the above, made on demand
	cancel   context.CancelFunc
	released bool // the call is over
}

func newCallContext(parent context.Context, deadline time.Time) *callContext {
	return &callContext{Context: parent, deadline: deadline}
}

// Deadline is the earlier of the call's and the stream's.
func (c *callContext) Deadline() (time.Time, bool) {
	if d, ok := c.Context.Deadline(); ok && d.Before(c.deadline) {
		return d, true
	}
	return c.deadline, true
}

func (c *callContext) Done() <-chan struct{} { return c.start().Done() }

func (c *callContext) Err() error {
	c.mu.Lock()
	timed, released := c.timed, c.released
	c.mu.Unlock()
	if timed != nil {
		return timed.Err()
	}
	if !released && c.Context.Err() == nil && time.Now().Before(c.deadline) {
		return nil
	}
	// Ended: make Done, closed already, so that the two agree.
	return c.start().Err()
}

// start makes the timed context once.
func (c *callContext) start() context.Context {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.timed == nil {
		c.timed, c.cancel = context.WithDeadline(c.Context, c.deadline)
		if c.released {
			c.cancel()
		}
	}
	return c.timed
}

// release ends the context when the call is over, and stops its timer if
// one was started.
func (c *callContext) release() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.released = true
	if c.cancel != nil {
		c.cancel()
	}
}

// replyQueue collects finished replies for the single goroutine allowed to
// Send on the stream.
type replyQueue struct {
	mu      sync.Mutex
	pending []*decreev1.Reply
	closed  bool
	wake    chan struct{}
}

func newReplyQueue() *replyQueue { return &replyQueue{wake: make(chan struct{}, 1)} }

func (q *replyQueue) push(r *decreev1.Reply) {
	q.mu.Lock()
	q.pending = append(q.pending, r)
	q.mu.Unlock()
	q.signal()
}

func (q *replyQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	q.signal()
}

func (q *replyQueue) signal() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// take returns everything pending, and whether the queue is closed.
func (q *replyQueue) take() ([]*decreev1.Reply, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	rs := q.pending
	q.pending = nil
	return rs, q.closed
}

// sendAll sends the pending replies as batches until the queue is closed
// and drained. After a send fails it keeps draining (the calls still finish
// and must not block) and returns the error.
func (q *replyQueue) sendAll(stream decreev1.Participant_CallsServer) error {
	var failed error
	for range q.wake {
		rs, closed := q.take()
		if len(rs) > 0 && failed == nil {
			failed = stream.Send(&decreev1.ReplyBatch{Replies: rs})
		}
		if closed {
			return failed
		}
	}
	return failed
}
