package partcall

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/decree-tx/decree/internal/clock"
	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
)

// This file is the production side of the Mux: its gRPC transport and
// the goroutines that drive the links. Everything they run is shared with
// the stepped mux (calls.go); keep it that way, so the simulation runs the
// same logic.

// New returns a production mux: gRPC over conns, driven by its own
// goroutines. openTimeout bounds opening a stream. Cancel ctx, then call
// wait, to stop it.
func New(ctx context.Context, conns *Conns, clock clock.Clock, openTimeout time.Duration, log zerolog.Logger) *Mux {
	return newMux(ctx, &grpcCalls{conns: conns, clock: clock, openTimeout: openTimeout}, clock, false, log)
}

// spawn runs f on a goroutine of the mux.
func (m *Mux) spawn(f func()) {
	m.running.Add(1)
	m.wg.Go(func() {
		defer m.running.Add(-1)
		f()
	})
}

// callSync is call for a caller that waits: it returns the reply, or the
// error, or ctx's error if ctx ends first. Production only: a stepped mux
// would wait for a pump its owner cannot run.
func (m *Mux) callSync(ctx context.Context, addr string, c *decreev1.Call, timeout time.Duration) (*decreev1.Reply, error) {
	type result struct {
		r   *decreev1.Reply
		err error
	}
	ch := make(chan result, 1)
	m.Call(addr, c, timeout, func(r *decreev1.Reply, err error) { ch <- result{r, err} })
	select {
	case res := <-ch:
		return res.r, res.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// wait returns once every goroutine of the mux has ended; the mux's context
// must be cancelled first.
func (m *Mux) Wait() { m.wg.Wait() }

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

// receive ends calls with the replies of one stream until it dies.
func (l *callLink) receive(cs *callStream) {
	for {
		b, err := cs.stream.Recv()
		if err != nil {
			l.died(cs, err)
			return
		}
		l.handle(cs, b)
	}
}

// grpcCalls is the production Transport: the participants' gRPC
// service over the Conns.
type grpcCalls struct {
	conns       *Conns
	clock       clock.Clock
	openTimeout time.Duration
}

// grpcStream is a gRPC Calls stream and the cancel of its context.
type grpcStream struct {
	decreev1.Participant_CallsClient
	cancelFn context.CancelFunc
}

func (s *grpcStream) Cancel() { s.cancelFn() }

// openCalls opens a Calls stream, bounded by openTimeout: a participant
// whose address swallows packets must not hold the link for long.
func (t *grpcCalls) OpenCalls(ctx context.Context, addr string) (Stream, error) {
	conn, err := t.conns.Get(addr)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	// The opening and the timeout race to settle first: the timeout
	// cancels the stream only if it wins, and then the opening, even a
	// successful one, is reported late. The watcher lives only as long as
	// the opening, so it is not one of the mux's counted goroutines.
	var settled atomic.Bool
	opened := make(chan struct{})
	timeout := t.clock.After(t.openTimeout)
	go func() {
		select {
		case <-timeout:
			if settled.CompareAndSwap(false, true) {
				cancel()
			}
		case <-opened:
		}
	}()
	stream, err := decreev1.NewParticipantClient(conn).Calls(ctx)
	late := !settled.CompareAndSwap(false, true)
	close(opened)
	if late && err == nil {
		err = fmt.Errorf("opening the calls stream took over %v", t.openTimeout)
	}
	if err != nil {
		cancel()
		return nil, err
	}
	return &grpcStream{Participant_CallsClient: stream, cancelFn: cancel}, nil
}

func (t *grpcCalls) Unary(addr string) (UnaryParticipant, error) {
	conn, err := t.conns.Get(addr)
	if err != nil {
		return nil, err
	}
	return grpcUnary{decreev1.NewParticipantClient(conn)}, nil
}

func (t *grpcCalls) Release(addr string) { t.conns.Drop(addr) }

// grpcUnary is a ParticipantClient as a UnaryParticipant.
type grpcUnary struct{ c decreev1.ParticipantClient }

func (u grpcUnary) Prepare(ctx context.Context, r *decreev1.PrepareRequest) (*decreev1.PrepareResponse, error) {
	return u.c.Prepare(ctx, r)
}

func (u grpcUnary) Commit(ctx context.Context, r *decreev1.DecisionRequest) (*decreev1.DecisionResponse, error) {
	return u.c.Commit(ctx, r)
}

func (u grpcUnary) Abort(ctx context.Context, r *decreev1.DecisionRequest) (*decreev1.DecisionResponse, error) {
	return u.c.Abort(ctx, r)
}

func (u grpcUnary) Resolve(ctx context.Context, r *decreev1.ResolveRequest) (*decreev1.ResolveResponse, error) {
	return u.c.Resolve(ctx, r)
}

var (
	_ Transport        = (*grpcCalls)(nil)
	_ UnaryParticipant = grpcUnary{}
	_ UnaryParticipant = (decreev1.ParticipantServer)(nil)
)
