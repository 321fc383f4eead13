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
	Core CoreConfig
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
		notNegative("CoreTickInterval", c.CoreTickInterval),
		notNegative("CallTimeout", c.CallTimeout),
		notNegative("MaxBranches", c.MaxBranches),
		notNegative("MaxPayload", c.MaxPayload),
		notNegative("MaxList", c.MaxList),
	); err != nil {
		return err
	}
	if err := c.Core.Validate(); err != nil {
		return fmt.Errorf("core: %w", err)
	}
	return nil
}

func (c DriverConfig) withDefaults() DriverConfig {
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
	c.Core = c.Core.withDefaults()
	return c
}

// Driver runs the 2PC Core on a Node: it feeds the core events from the
// network, raft and the clock on one goroutine, and carries out the core's
// actions: participant calls go through the callMux (one coalescing stream
// per participant) and come back as events; proposals run on their own
// goroutines, which end with the call. It also serves the Coordinator gRPC service.
type Driver struct {
	cfg   DriverConfig
	log   zerolog.Logger
	node  *Node
	core  *Core
	conns *connPool
	mux   *callMux // participant calls

	evc     chan Event
	listc   chan chan []UndecidedTxn
	phase2c chan chan []Phase2Txn
	statsc  chan chan CoreStats
	ctx     context.Context // cancelled by Stop; parent of every call
	cancel  context.CancelFunc
	stopc   chan struct{}
	donec   chan struct{}
	stop    sync.Once
	calls   sync.WaitGroup

	nextReq atomic.Uint64
	mu      sync.Mutex
	waiting map[uint64]chan Reply

	leader atomic.Bool
	term   atomic.Uint64

	drops rateLog[[2]string] // lines about ignored events, per kind and reason
}

// dropLogEvery is how often the driver logs one kind of event the core
// ignored, for one reason; the others are only counted (CoreStats).
const dropLogEvery = 5 * time.Second

// NewDriver starts the 2PC driver on node, or returns why cfg cannot work.
func NewDriver(node *Node, cfg DriverConfig) (*Driver, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("driver config: %w", err)
	}
	cfg = cfg.withDefaults()
	d := &Driver{
		cfg:     cfg,
		log:     cfg.Logger.With().Str("component", "2pc").Uint64("node", node.ID()).Logger(),
		node:    node,
		core:    NewCore(cfg.Core),
		conns:   newConnPool(cfg.Dial),
		evc:     make(chan Event, 4096),
		listc:   make(chan chan []UndecidedTxn),
		phase2c: make(chan chan []Phase2Txn),
		statsc:  make(chan chan CoreStats),
		stopc:   make(chan struct{}),
		donec:   make(chan struct{}),
		waiting: make(map[uint64]chan Reply),
	}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	d.mux = newCallMux(d.ctx, d.conns, cfg.Clock, cfg.CallTimeout, d.log)
	backlog := d.phase2Backlog
	node.phase2.Store(&backlog)
	go d.run()
	return d, nil
}

// Stop ends the driver loop, waits for in-flight calls and closes
// connections. Call it before stopping the node.
func (d *Driver) Stop() {
	d.stop.Do(func() { close(d.stopc); d.cancel() })
	<-d.donec
	d.calls.Wait()
	d.mux.wait()
	d.conns.close()
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
			d.checkLeadership()
			d.step(Tick{})
		case ch := <-d.listc:
			ch <- d.core.Undecided()
		case ch := <-d.phase2c:
			ch <- d.core.Phase2Backlog()
		case ch := <-d.statsc:
			ch <- d.core.Stats()
		case <-d.stopc:
			d.step(LeadershipChanged{Leader: false, Term: d.term.Load()})
			return
		}
	}
}

func (d *Driver) checkLeadership() {
	st := d.node.Status()
	leader := st.Role == raft.StateLeader
	if leader != d.leader.Load() || st.Term != d.term.Load() {
		d.leader.Store(leader)
		d.term.Store(st.Term)
		d.log.Info().Bool("leader", leader).Uint64("term", st.Term).Msg("leadership changed")
		d.step(LeadershipChanged{Leader: leader, Term: st.Term})
	}
}

func (d *Driver) step(ev Event) {
	actions := d.core.Step(d.cfg.Clock.Now(), ev)
	if dr, ok := d.core.LastDropped(); ok {
		d.logDropped(dr)
	}
	for _, a := range actions {
		d.execute(a)
	}
}

// logDropped logs an event the core ignored (the core counts each one):
// at most one line per kind and reason every dropLogEvery, with how many
// were held back since the last, so that a flood of late answers cannot
// flood the log. Most are benign races (a vote after its deadline, an
// acknowledgement from an ended leadership), hence debug; one that no
// correct driver feeds is a warning.
func (d *Driver) logDropped(dr Dropped) {
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
func (d *Driver) feed(ev Event) {
	select {
	case d.evc <- ev:
	case <-d.stopc:
	}
}

func (d *Driver) execute(a Action) {
	switch a := a.(type) {
	case SendPrepare:
		d.prepare(a)
	case ResolveAtParticipant:
		d.resolveOnePhase(a)
	case ProposeDecide:
		d.async(func(ctx context.Context) { d.proposeDecide(ctx, a) })
	case ProposeStaged:
		d.async(func(ctx context.Context) { d.proposeStaged(ctx, a) })
	case ProposeFinished:
		d.async(func(ctx context.Context) { d.proposeFinished(ctx, a) })
	case ProposeCollect:
		d.async(func(ctx context.Context) { d.proposeCollect(ctx, a) })
	case SendDecision:
		d.sendDecision(a)
	case LoadUnfinished:
		d.async(func(ctx context.Context) { d.loadUnfinished(ctx, a) })
	case Reply:
		d.reply(a)
	case Conflict:
		d.log.Error().Str("txn", a.ID).Str("conflict", a.What).Msg("INVARIANT VIOLATION")
	default:
		d.log.Error().Str("action", fmt.Sprintf("%T", a)).Msg("unknown core action")
	}
}

// async runs f on its own goroutine with a context cancelled when the
// driver stops; the goroutine ends with the call.
func (d *Driver) async(f func(ctx context.Context)) {
	d.calls.Go(func() { f(d.ctx) })
}

// prepare asks a participant for its vote; the answer, or the failure,
// comes back to the loop as an event.
func (d *Driver) prepare(a SendPrepare) {
	d.mux.call(a.Participant, prepareCall(a), d.cfg.Core.PrepareTimeout, func(r *decreev1.Reply, err error) {
		if err != nil {
			d.feed(PrepareFailed{ID: a.ID, Participant: a.Participant, Term: a.Term, Err: err.Error(), Refused: notParticipant(err)})
			return
		}
		vote := r.GetPrepare()
		d.feed(VoteReceived{ID: a.ID, Participant: a.Participant, Term: a.Term, Vote: vote.GetVote(), Reason: vote.GetReason(),
			ParticipantID: vote.GetParticipantId()})
	})
}

// notParticipant says a participant call was answered Unimplemented: the
// address serves no participant API (another coordinator, say), so the
// call reached no participant. The SDK answers its own refusals with other
// codes.
func notParticipant(err error) bool { return status.Code(err) == codes.Unimplemented }

func (d *Driver) resolveOnePhase(a ResolveAtParticipant) {
	d.mux.call(a.Participant, resolveCall(a.ID, a.Term), d.cfg.CallTimeout, func(r *decreev1.Reply, err error) {
		ev := ParticipantResolved{ID: a.ID, Participant: a.Participant, Term: a.Term, State: r.GetResolve().GetState(),
			ParticipantID: r.GetResolve().GetParticipantId()}
		if err != nil {
			ev.Err = err.Error()
		}
		d.feed(ev)
	})
}

func (d *Driver) propose(ctx context.Context, cmd *decreev1.Command) (Result, error) {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.CallTimeout)
	defer cancel()
	res, err := d.node.Propose(ctx, cmd)
	if err == nil && res.Err != nil {
		err = res.Err
	}
	return res, err
}

func (d *Driver) proposeDecide(ctx context.Context, a ProposeDecide) {
	cmd := decideCommand(a.ID, a.Outcome, a.Participants, a.Reason, a.DecidedAt)
	cmd.GetDecide().Presumed = a.Presumed
	res, err := d.propose(ctx, cmd)
	if err != nil {
		d.log.Warn().Err(err).Str("txn", a.ID).Msg("decision not applied; will retry")
		d.feed(ProposeFailed{ID: a.ID, Term: a.Term, Err: err.Error()})
		return
	}
	d.feed(DecisionApplied{ID: a.ID, Term: a.Term, Outcome: res.Outcome, Reason: res.Reason, Participants: res.Participants})
}

// proposeStaged replicates the Staged record. If it fails, the transaction
// still commits the classic way, when its Decide applies.
func (d *Driver) proposeStaged(ctx context.Context, a ProposeStaged) {
	res, err := d.propose(ctx, stagedCommand(a.ID, a.Participants))
	if err != nil {
		d.log.Debug().Err(err).Str("txn", a.ID).Msg("staged record not applied; the decision will commit it")
		return
	}
	d.feed(StagedApplied{ID: a.ID, Term: a.Term, Outcome: res.Outcome, Reason: res.Reason})
}

func stagedCommand(id string, parts []string) *decreev1.Command {
	return &decreev1.Command{Kind: &decreev1.Command_Staged{Staged: &decreev1.Staged{TxnId: id, Participants: parts}}}
}

func decideCommand(id string, o decreev1.Outcome, parts []string, reason string, at int64) *decreev1.Command {
	return &decreev1.Command{Kind: &decreev1.Command_Decide{Decide: &decreev1.Decide{
		TxnId: id, Outcome: o, Participants: parts, Reason: reason, DecidedAt: at}}}
}

func (d *Driver) proposeFinished(ctx context.Context, a ProposeFinished) {
	cmd := &decreev1.Command{Kind: &decreev1.Command_Finished{Finished: &decreev1.Finished{TxnIds: a.IDs, FinishedAt: a.At}}}
	if _, err := d.propose(ctx, cmd); err != nil {
		d.feed(ProposeFailed{Term: a.Term, Finished: a.IDs, Err: err.Error()})
	}
}

func (d *Driver) proposeCollect(ctx context.Context, a ProposeCollect) {
	cmd := &decreev1.Command{Kind: &decreev1.Command_Collect{Collect: &decreev1.Collect{Before: a.Before}}}
	res, err := d.propose(ctx, cmd)
	if err != nil {
		d.log.Warn().Err(err).Msg("collecting old records failed; will try next period")
		return
	}
	d.feed(CollectApplied{Term: a.Term, More: res.More})
}

// sendDecision delivers the applied decision to a participant; its
// acknowledgement, or the failure, comes back to the loop as an event.
func (d *Driver) sendDecision(a SendDecision) {
	d.mux.call(a.Participant, decisionCall(a), d.cfg.CallTimeout, func(_ *decreev1.Reply, err error) {
		if err != nil {
			d.log.Debug().Err(err).Str("txn", a.ID).Str("participant", a.Participant).Msg("decision delivery failed; will retry")
			d.feed(DeliveryFailed{ID: a.ID, Participant: a.Participant, Term: a.Term, Err: err.Error()})
			return
		}
		d.feed(Acked{ID: a.ID, Participant: a.Participant, Term: a.Term})
	})
}

// loadUnfinished catches up with everything committed before this
// leadership (ReadIndex), then reports applied, unfinished decisions.
func (d *Driver) loadUnfinished(ctx context.Context, a LoadUnfinished) {
	for {
		if ctx.Err() != nil || d.term.Load() != a.Term || !d.leader.Load() {
			return // the leadership ended; the next one scans again
		}
		rctx, cancel := context.WithTimeout(ctx, d.cfg.CallTimeout)
		err := d.node.ReadIndex(rctx)
		cancel()
		if err == nil {
			break
		}
		if errors.Is(err, ErrStopped) {
			return
		}
		d.pause(ctx, d.cfg.Core.RetryMin)
	}
	txns, staged, err := scanUnfinished(d.node.store)
	if err != nil {
		d.log.Error().Err(err).Msg("cannot scan unfinished decisions")
		return
	}
	if len(txns)+len(staged) > 0 {
		d.log.Info().Int("unfinished", len(txns)).Int("staged", len(staged)).Uint64("term", a.Term).Msg("resuming phase 2")
	}
	d.feed(Recovered{Term: a.Term, Txns: txns, Staged: staged})
}

// scanUnfinished lists the applied decisions whose phase 2 has not
// finished, and the staged transactions that have no decision yet. It reads
// the unfinished index, so its cost follows the work in flight, not the
// records kept for retention.
func scanUnfinished(s interface {
	ScanUnfinished(func(*txlog.Record) bool) error
}) (txns, staged []RecoveredTxn, err error) {
	err = s.ScanUnfinished(func(r *txlog.Record) bool {
		rt := RecoveredTxn{ID: r.ID, Outcome: outcomeFromRecord(r.Outcome), Participants: r.Participants, DecidedAt: r.DecidedAt}
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

// pause waits about d (one tick of the injected clock) or until ctx ends.
func (d *Driver) pause(ctx context.Context, dur time.Duration) {
	tick, stop := d.cfg.Clock.NewTicker(dur)
	defer stop()
	select {
	case <-tick:
	case <-ctx.Done():
	}
}

// await registers a waiter for a Reply and returns its request id.
func (d *Driver) await() (uint64, chan Reply) {
	req := d.nextReq.Add(1)
	ch := make(chan Reply, 1)
	d.mu.Lock()
	d.waiting[req] = ch
	d.mu.Unlock()
	return req, ch
}

func (d *Driver) forget(req uint64) {
	d.mu.Lock()
	delete(d.waiting, req)
	d.mu.Unlock()
}

func (d *Driver) reply(r Reply) {
	d.mu.Lock()
	ch, ok := d.waiting[r.Req]
	delete(d.waiting, r.Req)
	d.mu.Unlock()
	if ok {
		ch <- r
	}
}

// undecided asks the loop for the transactions still in voting.
func (d *Driver) undecided(ctx context.Context) ([]UndecidedTxn, error) {
	return askLoop(ctx, d, d.listc)
}

// phase2Backlog asks the loop for the transactions in phase 2.
func (d *Driver) phase2Backlog(ctx context.Context) ([]Phase2Txn, error) {
	return askLoop(ctx, d, d.phase2c)
}

// CoreStats returns the core's counters: the events it ignored, per kind.
func (d *Driver) CoreStats(ctx context.Context) (CoreStats, error) {
	return askLoop(ctx, d, d.statsc)
}

// askLoop asks the driver loop for something only it may read.
func askLoop[T any](ctx context.Context, d *Driver, reqc chan chan T) (T, error) {
	var zero T
	ch := make(chan T, 1)
	select {
	case reqc <- ch:
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
