package coordinator

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"go.etcd.io/raft/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/decree-tx/decree/coordinator/internal/partcall"
	"github.com/decree-tx/decree/coordinator/internal/twopc"
	"github.com/decree-tx/decree/internal/opts"
	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
	"github.com/decree-tx/decree/txlog"
	"github.com/decree-tx/decree/txnspec"
)

// Defaults of DriverConfig's fields.
const (
	DefaultCoreTickInterval = 10 * time.Millisecond
	DefaultCallTimeout      = 5 * time.Second
	DefaultMaxList          = 1000
)

// DriverConfig configures a Driver. Zero values take the defaults.
type DriverConfig struct {
	Core twopc.Config
	// CoreTickInterval is how often the 2PC core's timers run: voting
	// deadlines, retries, Finished batching (default
	// DefaultCoreTickInterval). Raft's clock is Config.RaftTickInterval.
	CoreTickInterval time.Duration
	// CallTimeout bounds one Commit/Abort/Resolve call to a participant,
	// and one proposal (default DefaultCallTimeout).
	CallTimeout time.Duration
	// Limits enforced on client requests.
	MaxBranches int // default txnspec.DefaultMaxParticipants
	MaxPayload  int // bytes per branch, default txnspec.DefaultMaxPayload
	// MaxList caps ListTransactions rows (default DefaultMaxList).
	MaxList int
	Clock   Clock
	Dial    func(ctx context.Context, addr string) (net.Conn, error)
	Logger  zerolog.Logger
}

// Validate reports the settings of c, its Core included, that cannot work,
// each naming its field. NewDriver calls it.
func (c DriverConfig) Validate() error {
	if err := errors.Join(
		opts.NotNegative("CoreTickInterval", c.CoreTickInterval),
		opts.NotNegative("CallTimeout", c.CallTimeout),
		opts.NotNegative("MaxBranches", c.MaxBranches),
		opts.NotNegative("MaxPayload", c.MaxPayload),
		opts.NotNegative("MaxList", c.MaxList),
	); err != nil {
		return err
	}
	if err := c.Core.Validate(); err != nil {
		return fmt.Errorf("core: %w", err)
	}
	return nil
}

// EnsureDefaults returns c with its zero fields, and its Core's, set to
// their defaults (the Default* constants).
func (c DriverConfig) EnsureDefaults() DriverConfig {
	if c.CoreTickInterval <= 0 {
		c.CoreTickInterval = DefaultCoreTickInterval
	}
	if c.CallTimeout <= 0 {
		c.CallTimeout = DefaultCallTimeout
	}
	if c.MaxBranches <= 0 {
		c.MaxBranches = txnspec.DefaultMaxParticipants
	}
	if c.MaxPayload <= 0 {
		c.MaxPayload = txnspec.DefaultMaxPayload
	}
	if c.MaxList <= 0 {
		c.MaxList = DefaultMaxList
	}
	if c.Clock == nil {
		c.Clock = WallClock{}
	}
	if c.Dial == nil {
		var d net.Dialer
		c.Dial = func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }
	}
	c.Core = c.Core.EnsureDefaults()
	return c
}

// participantCaller carries one call to a participant: done gets the reply,
// or why there is none, exactly once, at the latest timeout after the
// call; it must not block. The callMux is the production one.
type participantCaller interface {
	Call(addr string, c *decreev1.Call, timeout time.Duration, done partcall.Done)
}

// Driver runs the 2PC Core on a replicated decision log: it feeds the core
// events from clients, participants, raft and the clock on one goroutine,
// and carries out the core's actions through the edges it is given:
// participant calls (participantCaller: one coalescing stream per
// participant in production), proposals and reads through raft
// (decisionLog), whose answers come back to the loop as events. It also
// serves the Coordinator gRPC service, whose handlers only translate
// between gRPC and events.
//
// The loop is the only reader and writer of the core. In production it is
// a goroutine (run); the simulation owns a Driver built by newDriver
// instead, and steps it from its own single goroutine (tick, drain).
type Driver struct {
	cfg   DriverConfig
	log   zerolog.Logger
	rlog  decisionLog
	core  *twopc.Core
	calls participantCaller
	conns *partcall.Conns // forwarding to the leader, and the mux's connections
	// leaderLink forwards a follower's requests to the leader.
	leaderLink leaderLink
	mux        *partcall.Mux // production only: Stop waits for its goroutines

	evc     chan twopc.Event
	askc    chan func()     // a read of the core, run on the loop (askLoop)
	ctx     context.Context // cancelled by Stop; parent of every call
	cancel  context.CancelFunc
	stopc   chan struct{}
	donec   chan struct{}
	stop    sync.Once
	pending sync.WaitGroup // proposals and reads in flight (nodeLog)

	nextReq atomic.Uint64
	mu      sync.Mutex
	waiting map[uint64]func(twopc.Reply)

	leader atomic.Bool
	term   atomic.Uint64

	drops rateLog[[2]string] // lines about ignored events, per kind and reason
	// stepped says the owner runs the loop on its goroutine (tick, drain),
	// as the simulation does: nothing may wait for the loop, which cannot
	// run meanwhile. onAction, if set, sees every action before it is
	// carried out: the simulation traces them.
	stepped  bool
	onAction func(twopc.Action)
}

// dropLogEvery is how often the driver logs one kind of event the core
// ignored, for one reason; the others are only counted (CoreStats).
const dropLogEvery = 5 * time.Second

// NewDriver starts the 2PC driver on node, or returns why cfg cannot work.
func NewDriver(node *Node, cfg DriverConfig) (*Driver, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("driver config: %w", err)
	}
	cfg = cfg.EnsureDefaults()
	d := newDriver(cfg, node.ID())
	d.conns = partcall.NewConns(cfg.Dial)
	d.mux = partcall.New(d.ctx, d.conns, cfg.Clock, cfg.CallTimeout, d.log)
	d.rlog, d.calls = nodeLog{n: node, ctx: d.ctx, wg: &d.pending}, d.mux
	d.leaderLink = grpcLeaderLink{conns: d.conns}
	backlog := d.phase2Backlog
	node.phase2.Store(&backlog)
	go d.run()
	return d, nil
}

// newDriver builds a driver whose edges (rlog, calls, conns) the caller
// sets, and that nothing runs yet. cfg has its defaults.
func newDriver(cfg DriverConfig, nodeID uint64) *Driver {
	d := &Driver{
		cfg:     cfg,
		log:     cfg.Logger.With().Str("component", "2pc").Uint64("node", nodeID).Logger(),
		core:    twopc.New(cfg.Core),
		evc:     make(chan twopc.Event, 4096),
		askc:    make(chan func()),
		stopc:   make(chan struct{}),
		donec:   make(chan struct{}),
		waiting: make(map[uint64]func(twopc.Reply)),
	}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	return d
}

// Stop ends the driver loop, waits for in-flight calls and closes
// connections. Call it before stopping the node.
func (d *Driver) Stop() {
	d.stop.Do(func() { close(d.stopc); d.cancel() })
	<-d.donec
	d.pending.Wait()
	d.mux.Wait()
	d.conns.Close()
}

func (d *Driver) run() {
	defer close(d.donec)
	tickc, stopTick := d.cfg.Clock.NewTicker(d.cfg.CoreTickInterval)
	defer stopTick()
	for {
		select {
		case ev := <-d.evc:
			d.step(ev)
			for i := 0; i < drainLimit && len(d.evc) > 0; i++ {
				d.step(<-d.evc)
			}
		case <-tickc:
			d.tick()
		case ask := <-d.askc:
			ask()
		case <-d.stopc:
			d.step(twopc.LeadershipChanged{Leader: false, Term: d.term.Load()})
			return
		}
	}
}

// tick is one beat of the core's clock, after taking up any change of
// leadership.
func (d *Driver) tick() {
	d.checkLeadership()
	d.step(twopc.Tick{})
}

// drain steps the events waiting in the queue, and reports how many: the
// simulation's loop, which feeds and drains on one goroutine.
func (d *Driver) drain() int {
	n := 0
	for ; len(d.evc) > 0; n++ {
		d.step(<-d.evc)
	}
	return n
}

func (d *Driver) checkLeadership() {
	st := d.rlog.Status()
	leader := st.Role == raft.StateLeader
	if leader != d.leader.Load() || st.Term != d.term.Load() {
		d.leader.Store(leader)
		d.term.Store(st.Term)
		d.log.Info().Bool("leader", leader).Uint64("term", st.Term).Msg("leadership changed")
		d.step(twopc.LeadershipChanged{Leader: leader, Term: st.Term})
	}
}

func (d *Driver) step(ev twopc.Event) {
	actions := d.core.Step(d.cfg.Clock.Now(), ev)
	if dr, ok := d.core.LastDropped(); ok {
		d.logDropped(dr)
	}
	for _, a := range actions {
		if d.onAction != nil {
			d.onAction(a)
		}
		d.execute(a)
	}
}

// logDropped logs an event the core ignored (the core counts each one):
// at most one line per kind and reason every dropLogEvery, with how many
// were held back since the last, so that a flood of late answers cannot
// flood the log. Most are benign races (a vote after its deadline, an
// acknowledgement from an ended leadership), hence debug; one that no
// correct driver feeds is a warning.
func (d *Driver) logDropped(dr twopc.Dropped) {
	suppressed, ok := d.drops.allow([2]string{dr.Kind, dr.Why}, d.cfg.Clock.Now(), dropLogEvery)
	if !ok {
		return
	}
	line := d.log.Debug()
	if dr.Suspect() {
		line = d.log.Warn()
	}
	line.Str("event", dr.Kind).Str("txn", dr.ID).Str("why", dr.Why).Uint64("also_dropped", suppressed).
		Msg("the 2PC core ignored an event")
}

// feed hands an event to the loop; it gives up once the driver stops.
func (d *Driver) feed(ev twopc.Event) {
	select {
	case d.evc <- ev:
	case <-d.stopc:
	}
}

func (d *Driver) execute(a twopc.Action) {
	switch a := a.(type) {
	case twopc.SendPrepare:
		d.prepare(a)
	case twopc.ResolveAtParticipant:
		d.resolve(a)
	case twopc.ProposeDecide:
		d.proposeDecide(a)
	case twopc.ProposeStaged:
		d.proposeStaged(a)
	case twopc.ProposeFinished:
		d.proposeFinished(a)
	case twopc.ProposeCollect:
		d.proposeCollect(a)
	case twopc.SendDecision:
		d.sendDecision(a)
	case twopc.LoadUnfinished:
		d.loadUnfinished(a)
	case twopc.Reply:
		d.reply(a)
	case twopc.Conflict:
		d.log.Error().Str("txn", a.ID).Str("conflict", a.What).Msg("INVARIANT VIOLATION")
	default:
		d.log.Error().Str("action", fmt.Sprintf("%T", a)).Msg("unknown core action")
	}
}

// prepare asks a participant for its vote; the answer, or the failure,
// comes back to the loop as an event.
func (d *Driver) prepare(a twopc.SendPrepare) {
	d.calls.Call(a.Participant, prepareCall(a), d.cfg.Core.PrepareTimeout, func(r *decreev1.Reply, err error) {
		if err != nil {
			d.feed(twopc.PrepareFailed{ID: a.ID, Participant: a.Participant, Term: a.Term, Err: err.Error(), Refused: notParticipant(err)})
			return
		}
		vote := r.GetPrepare()
		d.feed(twopc.VoteReceived{ID: a.ID, Participant: a.Participant, Term: a.Term, Vote: vote.GetVote(), Reason: vote.GetReason(),
			ParticipantID: vote.GetParticipantId()})
	})
}

// notParticipant says a participant call was answered Unimplemented: the
// address serves no participant API (another coordinator, say), so the
// call reached no participant. The SDK answers its own refusals with other
// codes.
func notParticipant(err error) bool { return status.Code(err) == codes.Unimplemented }

func (d *Driver) resolve(a twopc.ResolveAtParticipant) {
	d.calls.Call(a.Participant, resolveCall(a.ID, a.Term), d.cfg.CallTimeout, func(r *decreev1.Reply, err error) {
		ev := twopc.ParticipantResolved{ID: a.ID, Participant: a.Participant, Term: a.Term, State: r.GetResolve().GetState(),
			ParticipantID: r.GetResolve().GetParticipantId()}
		if err != nil {
			ev.Err, ev.Refused = err.Error(), notParticipant(err)
		}
		d.feed(ev)
	})
}

func (d *Driver) proposeDecide(a twopc.ProposeDecide) {
	cmd := decideCommand(a.ID, a.Outcome, a.Participants, a.Reason, a.DecidedAt)
	cmd.GetDecide().Presumed = a.Presumed
	d.rlog.Propose(cmd, d.cfg.CallTimeout, func(res Result, err error) {
		if err != nil {
			d.log.Warn().Err(err).Str("txn", a.ID).Msg("decision not applied; will retry")
			d.feed(twopc.ProposeFailed{ID: a.ID, Term: a.Term, Err: err.Error(), Forgotten: errors.Is(err, twopc.ErrForgotten)})
			return
		}
		d.feed(twopc.DecisionApplied{ID: a.ID, Term: a.Term, Outcome: res.Outcome, Reason: res.Reason, Participants: res.Participants})
	})
}

// proposeStaged replicates the Staged record. If it fails, the transaction
// still commits the classic way, when its Decide applies.
func (d *Driver) proposeStaged(a twopc.ProposeStaged) {
	d.rlog.Propose(stagedCommand(a.ID, a.Participants), d.cfg.CallTimeout, func(res Result, err error) {
		if err != nil {
			d.log.Debug().Err(err).Str("txn", a.ID).Msg("staged record not applied; the decision will commit it")
			return
		}
		d.feed(twopc.StagedApplied{ID: a.ID, Term: a.Term, Outcome: res.Outcome, Reason: res.Reason})
	})
}

func stagedCommand(id string, parts []string) *decreev1.Command {
	return &decreev1.Command{Kind: &decreev1.Command_Staged{Staged: &decreev1.Staged{TxnId: id, Participants: parts}}}
}

func decideCommand(id string, o decreev1.Outcome, parts []string, reason string, at int64) *decreev1.Command {
	return &decreev1.Command{Kind: &decreev1.Command_Decide{Decide: &decreev1.Decide{
		TxnId: id, Outcome: o, Participants: parts, Reason: reason, DecidedAt: at}}}
}

func (d *Driver) proposeFinished(a twopc.ProposeFinished) {
	cmd := &decreev1.Command{Kind: &decreev1.Command_Finished{Finished: &decreev1.Finished{TxnIds: a.IDs, FinishedAt: a.At}}}
	d.rlog.Propose(cmd, d.cfg.CallTimeout, func(_ Result, err error) {
		if err != nil {
			d.feed(twopc.ProposeFailed{Term: a.Term, Finished: a.IDs, Err: err.Error()})
		}
	})
}

func (d *Driver) proposeCollect(a twopc.ProposeCollect) {
	cmd := &decreev1.Command{Kind: &decreev1.Command_Collect{Collect: &decreev1.Collect{Before: a.Before}}}
	d.rlog.Propose(cmd, d.cfg.CallTimeout, func(res Result, err error) {
		if err != nil {
			d.log.Warn().Err(err).Msg("collecting old records failed; will try next period")
			return
		}
		d.feed(twopc.CollectApplied{Term: a.Term, More: res.More})
	})
}

// sendDecision delivers the applied decision to a participant; its
// acknowledgement, or the failure, comes back to the loop as an event.
func (d *Driver) sendDecision(a twopc.SendDecision) {
	d.calls.Call(a.Participant, decisionCall(a), d.cfg.CallTimeout, func(_ *decreev1.Reply, err error) {
		if err != nil {
			d.log.Debug().Err(err).Str("txn", a.ID).Str("participant", a.Participant).Msg("decision delivery failed; will retry")
			d.feed(twopc.DeliveryFailed{ID: a.ID, Participant: a.Participant, Term: a.Term, Err: err.Error()})
			return
		}
		d.feed(twopc.Acked{ID: a.ID, Participant: a.Participant, Term: a.Term})
	})
}

// loadUnfinished catches up with everything committed before this
// leadership (ReadIndex), then reports applied, unfinished decisions. If
// it cannot catch up, the core tries again (LoadFailed).
func (d *Driver) loadUnfinished(a twopc.LoadUnfinished) {
	d.rlog.ReadIndex(d.cfg.CallTimeout, func(err error) {
		switch {
		case errors.Is(err, ErrStopped):
			return
		case err != nil:
			d.feed(twopc.LoadFailed{Term: a.Term, Err: err.Error()})
			return
		case d.term.Load() != a.Term || !d.leader.Load():
			return // the leadership ended; the next one loads again
		}
		txns, staged, err := scanUnfinished(d.rlog)
		if err != nil {
			d.log.Error().Err(err).Msg("cannot scan unfinished decisions")
			d.feed(twopc.LoadFailed{Term: a.Term, Err: err.Error()})
			return
		}
		if len(txns)+len(staged) > 0 {
			d.log.Info().Int("unfinished", len(txns)).Int("staged", len(staged)).Uint64("term", a.Term).Msg("resuming phase 2")
		}
		d.feed(twopc.Recovered{Term: a.Term, Txns: txns, Staged: staged})
	})
}

// scanUnfinished lists the applied decisions whose phase 2 has not
// finished, and the staged transactions that have no decision yet. It reads
// the unfinished index, so its cost follows the work in flight, not the
// records kept for retention.
func scanUnfinished(s interface {
	ScanUnfinished(func(*txlog.Record) bool) error
}) (txns, staged []twopc.RecoveredTxn, err error) {
	err = s.ScanUnfinished(func(r *txlog.Record) bool {
		rt := twopc.RecoveredTxn{ID: r.ID, Outcome: outcomeFromRecord(r.Outcome), Participants: r.Participants, DecidedAt: r.DecidedAt}
		switch {
		case r.Outcome == txlog.OutcomeUnknown:
			staged = append(staged, rt)
		case !r.Finished:
			txns = append(txns, rt)
		}
		return true
	})
	return txns, staged, err
}

// submit feeds the event that ev builds for a new request id, and runs
// onReply with the core's Reply to it, on the loop's goroutine (it must not
// block). It returns the request id, for forget.
func (d *Driver) submit(ev func(req uint64) twopc.Event, onReply func(twopc.Reply)) uint64 {
	req := d.nextReq.Add(1)
	d.mu.Lock()
	d.waiting[req] = onReply
	d.mu.Unlock()
	d.feed(ev(req))
	return req
}

// forget drops the waiter of a request whose caller gave up.
func (d *Driver) forget(req uint64) {
	d.mu.Lock()
	delete(d.waiting, req)
	d.mu.Unlock()
}

func (d *Driver) reply(r twopc.Reply) {
	d.mu.Lock()
	fn, ok := d.waiting[r.Req]
	delete(d.waiting, r.Req)
	d.mu.Unlock()
	if ok {
		fn(r)
	}
}

// undecided asks the loop for the transactions still in voting.
func (d *Driver) undecided(ctx context.Context) ([]twopc.UndecidedTxn, error) {
	return askLoop(ctx, d, (*twopc.Core).Undecided)
}

// phase2Backlog asks the loop for the transactions in phase 2.
func (d *Driver) phase2Backlog(ctx context.Context) ([]twopc.Phase2Txn, error) {
	return askLoop(ctx, d, (*twopc.Core).Phase2Backlog)
}

// CoreStats returns the core's counters: the events it ignored, per kind.
func (d *Driver) CoreStats(ctx context.Context) (twopc.Stats, error) {
	return askLoop(ctx, d, (*twopc.Core).Stats)
}

// askLoop runs read on the core, on the loop, which alone may touch it. A
// stepped driver's owner is the loop: it reads at once.
func askLoop[T any](ctx context.Context, d *Driver, read func(*twopc.Core) T) (T, error) {
	if d.stepped {
		return read(d.core), nil
	}
	var zero T
	ch := make(chan T, 1)
	select {
	case d.askc <- func() { ch <- read(d.core) }:
	case <-ctx.Done():
		return zero, ctx.Err()
	case <-d.stopc:
		return zero, ErrStopped
	}
	select {
	case v := <-ch:
		return v, nil
	case <-ctx.Done():
		return zero, ctx.Err()
	}
}

// prepareCall, decisionCall and resolveCall put the core's actions on
// the wire.
func prepareCall(a twopc.SendPrepare) *decreev1.Call {
	return &decreev1.Call{Kind: &decreev1.Call_Prepare{Prepare: &decreev1.PrepareRequest{
		TxnId: a.ID, Payload: a.Payload, Participants: a.Participants, OnePhase: a.OnePhase, Term: a.Term}}}
}

func decisionCall(a twopc.SendDecision) *decreev1.Call {
	req := &decreev1.DecisionRequest{TxnId: a.ID, Term: a.Term}
	if a.Outcome == decreev1.Outcome_OUTCOME_COMMITTED {
		return &decreev1.Call{Kind: &decreev1.Call_Commit{Commit: req}}
	}
	return &decreev1.Call{Kind: &decreev1.Call_Abort{Abort: req}}
}

func resolveCall(id string, term uint64) *decreev1.Call {
	return &decreev1.Call{Kind: &decreev1.Call_Resolve{Resolve: &decreev1.ResolveRequest{TxnId: id, Term: term}}}
}
