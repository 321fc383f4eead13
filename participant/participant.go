package participant

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
	"github.com/decree-tx/decree/txlog"
	"github.com/decree-tx/decree/txnspec"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
)

// Participant serves one Resource as a Decree participant.
type Participant struct {
	res   Resource
	opts  Options
	plog  *txlog.ParticipantLog
	log   zerolog.Logger
	locks keyLocks
	coord OutcomeSource
	// closeCoord closes the gRPC connections of the default source.
	closeCoord func()

	mu sync.Mutex
	// inDoubt holds the prepared, undecided transactions. An entry is
	// added after its Prepared record is durable and removed after its
	// outcome is, both under the transaction's key lock.
	inDoubt map[string]*inDoubt
	// wake tells the recovery loop that a transaction is due earlier than
	// it planned to wake up. sleeping and sleepUntil (zero: no timer) say
	// whether and until when the loop sleeps; guarded by mu.
	wake       chan struct{}
	sleeping   bool
	sleepUntil time.Time

	startOnce, stopOnce sync.Once
	cancel              context.CancelFunc
	wg                  sync.WaitGroup
	// callsStop is closed when the participant stops (Stop, or the end of
	// Start's context): its Calls streams end, so that GracefulStop of the
	// gRPC server returns.
	callsStop     chan struct{}
	callsStopOnce sync.Once
}

// inDoubt is the recovery loop's view of one prepared transaction.
type inDoubt struct {
	// rec is the durable Prepared record, kept so that the outcome is
	// applied without reading it back from the log.
	rec          txlog.PTxn
	participants []string
	preparedAt   time.Time
	// due is when to ask the coordinators next; attempts counts the
	// queries that did not settle the outcome.
	due      time.Time
	attempts int
}

// New returns a participant serving r. It loads the prepared transactions
// from opts.Log: they are InDoubt until resolved, which starts with Start.
func New(r Resource, opts Options) (*Participant, error) {
	if r == nil {
		return nil, errors.New("new participant: nil resource")
	}
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("new participant: %w", err)
	}
	p := &Participant{
		res: r, opts: opts, plog: opts.Log,
		log:       opts.Logger.With().Str("component", "participant").Logger(),
		inDoubt:   make(map[string]*inDoubt),
		wake:      make(chan struct{}, 1),
		callsStop: make(chan struct{}),
	}
	if err := p.loadInDoubt(); err != nil {
		return nil, fmt.Errorf("new participant: %w", err)
	}
	p.coord, p.closeCoord = opts.Outcomes, func() {}
	if p.coord == nil {
		c, err := dialCoordinators(opts, p.log)
		if err != nil {
			return nil, fmt.Errorf("new participant: %w", err)
		}
		p.coord, p.closeCoord = c, c.close
	}
	return p, nil
}

// loadInDoubt fills inDoubt from the log's prepared records, due at once.
func (p *Participant) loadInDoubt() error {
	err := p.plog.ScanTxns(func(t *txlog.PTxn) bool {
		if t.State == txlog.PStatePrepared {
			p.inDoubt[t.ID] = &inDoubt{rec: *t, participants: t.Participants, preparedAt: time.Unix(0, t.PreparedAt)}
		}
		return true
	})
	if err != nil {
		return fmt.Errorf("load prepared transactions: %w", err)
	}
	if len(p.inDoubt) > 0 {
		p.log.Warn().Int("count", len(p.inDoubt)).Msg("found in-doubt transactions; they are resolved with the coordinators once started")
	}
	return nil
}

// ID returns the participant's durable identity (its log's): coordinators
// use it to see that two branches of a transaction reach one participant.
func (p *Participant) ID() string { return p.plog.ID() }

func (p *Participant) limits() txnspec.Limits {
	return txnspec.Limits{MaxParticipants: p.opts.MaxParticipants, MaxPayload: p.opts.MaxPayload}
}

// Register registers the participant's gRPC service on s.
func (p *Participant) Register(s *grpc.Server) {
	decreev1.RegisterParticipantServer(s, p.Service())
}

// Service returns the participant's service implementation, for callers
// that serve or call it without a gRPC server of their own (in-process
// transports, simulations). It validates requests exactly as Register's.
func (p *Participant) Service() decreev1.ParticipantServer {
	return &server{p: p}
}

// ResolveDue runs one recovery round on the calling goroutine: it asks the
// OutcomeSource about every in-doubt transaction that is due, one at a time
// in id order, applies the answers, and reschedules the rest with backoff.
// It returns how many it settled. Start runs such rounds in the background;
// call ResolveDue directly only when you do not call Start.
func (p *Participant) ResolveDue(ctx context.Context) int {
	due, _ := p.dueInDoubt(p.opts.Clock.Now())
	return p.resolveRound(ctx, due, 1)
}

// Start starts the recovery loop, which asks the coordinators for the
// outcome of the transactions found prepared at New at once, and of any
// other prepared transaction once it is older than InDoubtTimeout, and
// applies the answers. It runs until ctx ends or Stop. When ctx ends, the
// participant also ends its Calls streams (as Stop does), so a
// grpc.Server's GracefulStop called then returns. Later calls do nothing.
func (p *Participant) Start(ctx context.Context) {
	p.startOnce.Do(func() {
		ctx, p.cancel = context.WithCancel(ctx)
		p.wg.Go(func() { p.recoveryLoop(ctx) })
		p.wg.Go(func() {
			<-ctx.Done()
			p.endCalls()
		})
	})
}

// Stop ends the Calls streams (answering the calls already running), stops
// the recovery loop, waits for it and closes the connections to the
// coordinators. Unary calls are still served, so Stop may come before or
// after the gRPC server's GracefulStop; close the log after both.
func (p *Participant) Stop() {
	p.stopOnce.Do(func() {
		p.startOnce.Do(func() {}) // a later Start does nothing
		p.endCalls()
		if p.cancel != nil {
			p.cancel()
		}
		p.wg.Wait()
		p.closeCoord()
	})
}

// endCalls ends the Calls streams being served and refuses new ones.
func (p *Participant) endCalls() {
	p.callsStopOnce.Do(func() { close(p.callsStop) })
}

// InDoubt returns the prepared transactions whose outcome is not known yet,
// by id.
func (p *Participant) InDoubt() []InDoubtTxn {
	p.mu.Lock()
	defer p.mu.Unlock()
	txns := make([]InDoubtTxn, 0, len(p.inDoubt))
	for id, d := range p.inDoubt {
		txns = append(txns, InDoubtTxn{ID: id, Participants: slices.Clone(d.participants), PreparedAt: d.preparedAt})
	}
	slices.SortFunc(txns, func(a, b InDoubtTxn) int { return strings.Compare(a.ID, b.ID) })
	return txns
}

// ReadState calls fn with a consistent view of the resource's committed
// keys, for example for an auditor. The view is valid only during fn.
func (p *Participant) ReadState(fn func(r Reader) error) error {
	snap, err := p.plog.NewSnapshot()
	if err != nil {
		return fmt.Errorf("read state: %w", err)
	}
	defer snap.Close()
	return fn(snap)
}

// addInDoubt records that id is prepared; the recovery loop asks about it
// after InDoubtTimeout, and is woken if it would sleep past that.
func (p *Participant) addInDoubt(t *txlog.PTxn) {
	at := time.Unix(0, t.PreparedAt)
	due := at.Add(p.opts.InDoubtTimeout)
	p.mu.Lock()
	p.inDoubt[t.ID] = &inDoubt{rec: *t, participants: t.Participants, preparedAt: at, due: due}
	wake := p.sleeping && (p.sleepUntil.IsZero() || due.Before(p.sleepUntil))
	p.mu.Unlock()
	if wake {
		p.notify()
	}
}

// preparedRecord returns a copy of id's Prepared record if id is in doubt.
// Under id's key lock the answer matches the log: entries come and go, and
// their term is raised, only after the log write, under that lock.
func (p *Participant) preparedRecord(id string) (*txlog.PTxn, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	d := p.inDoubt[id]
	if d == nil {
		return nil, false
	}
	rec := d.rec
	return &rec, true
}

// raiseInDoubtTerm mirrors a raised term into id's in-doubt entry.
func (p *Participant) raiseInDoubtTerm(id string, term uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if d := p.inDoubt[id]; d != nil {
		d.rec.Term = max(d.rec.Term, term)
	}
}

func (p *Participant) removeInDoubt(id string) {
	p.mu.Lock()
	delete(p.inDoubt, id)
	p.mu.Unlock()
}

// notify wakes the recovery loop without blocking.
func (p *Participant) notify() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

func (p *Participant) now() int64 {
	return p.opts.Clock.Now().UnixNano()
}
