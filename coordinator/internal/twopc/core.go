package twopc

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/decree-tx/decree/internal/backoff"
	"github.com/decree-tx/decree/internal/opts"
	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
)

// Defaults of Config's fields.
const (
	DefaultPrepareTimeout = 5 * time.Second
	DefaultRetryMin       = 50 * time.Millisecond
	DefaultRetryMax       = 5 * time.Second
	DefaultFinishBatch    = 256
	DefaultFinishDelay    = 20 * time.Millisecond
	DefaultRetention      = 24 * time.Hour
	DefaultCollectEvery   = time.Minute
	DefaultRescanEvery    = 30 * time.Second
	DefaultMaxInFlight    = 10000
	DefaultMaxHeldBytes   = 256 << 20
)

// Config tunes the 2PC core. Zero values take the defaults.
type Config struct {
	// PrepareTimeout bounds voting: a participant silent this long makes
	// the transaction abort (default 5s).
	PrepareTimeout time.Duration
	// RetryMin and RetryMax bound the exponential backoff of phase-2
	// deliveries and failed proposals (defaults 50ms and 5s); each delay is
	// jittered down within (d/2, d] (internal/backoff).
	RetryMin, RetryMax time.Duration
	// Rand returns a number in [0, 1) for the retries' jitter (default
	// math/rand/v2.Float64). The core calls it only from Step, in an order
	// fixed by the events, so a seeded source keeps a run deterministic.
	Rand func() float64
	// FinishBatch and FinishDelay batch Finished proposals: one is made
	// when this many transactions are done, or the oldest has waited this
	// long (defaults 256 and 20ms).
	FinishBatch int
	FinishDelay time.Duration
	// Retention is how long finished records are kept (default 24h);
	// CollectEvery is how often the leader collects older ones (default 1m).
	Retention    time.Duration
	CollectEvery time.Duration
	// ParallelCommit stages transactions of two or more participants in
	// raft while they vote, and answers COMMITTED once the Staged record
	// has applied and every vote is YES: one consensus round instead of
	// two. Off: classic two-phase commit.
	ParallelCommit bool
	// RescanEvery is how often the leader looks for applied, unfinished
	// decisions it is not driving (default 30s): one proposed by a deposed
	// leader can apply after this leader's first scan.
	RescanEvery time.Duration
	// MaxInFlight caps the transactions the leader votes on at once;
	// MaxHeldBytes caps the payload bytes it holds for their prepares. A
	// new transaction past either is refused with ErrOverloaded (defaults
	// 10000 and 256 MiB).
	MaxInFlight  int
	MaxHeldBytes int64
}

// Validate reports the settings of c that cannot work, each naming its
// field: a negative value (zero stands for the default), or a RetryMin
// above RetryMax.
func (c Config) Validate() error {
	if err := errors.Join(
		opts.NotNegative("PrepareTimeout", c.PrepareTimeout),
		opts.NotNegative("RetryMin", c.RetryMin),
		opts.NotNegative("RetryMax", c.RetryMax),
		opts.NotNegative("FinishBatch", c.FinishBatch),
		opts.NotNegative("FinishDelay", c.FinishDelay),
		opts.NotNegative("Retention", c.Retention),
		opts.NotNegative("CollectEvery", c.CollectEvery),
		opts.NotNegative("RescanEvery", c.RescanEvery),
		opts.NotNegative("MaxInFlight", c.MaxInFlight),
		opts.NotNegative("MaxHeldBytes", c.MaxHeldBytes),
	); err != nil {
		return err
	}
	if d := c.EnsureDefaults(); d.RetryMin > d.RetryMax {
		return fmt.Errorf("RetryMin (%s) exceeds RetryMax (%s): the backoff could not grow from one to the other",
			opts.OrDefault(c.RetryMin, DefaultRetryMin), opts.OrDefault(c.RetryMax, DefaultRetryMax))
	}
	return nil
}

// EnsureDefaults returns c with every zero field set to its default
// (Pebble's style: the defaults are the exported Default* constants).
func (c Config) EnsureDefaults() Config {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.PrepareTimeout, DefaultPrepareTimeout)
	def(&c.RetryMin, DefaultRetryMin)
	def(&c.RetryMax, DefaultRetryMax)
	def(&c.FinishDelay, DefaultFinishDelay)
	def(&c.Retention, DefaultRetention)
	def(&c.CollectEvery, DefaultCollectEvery)
	def(&c.RescanEvery, DefaultRescanEvery)
	if c.FinishBatch <= 0 {
		c.FinishBatch = DefaultFinishBatch
	}
	if c.MaxInFlight <= 0 {
		c.MaxInFlight = DefaultMaxInFlight
	}
	if c.MaxHeldBytes <= 0 {
		c.MaxHeldBytes = DefaultMaxHeldBytes
	}
	if c.Rand == nil {
		c.Rand = rand.Float64
	}
	return c
}

// Core is the deterministic two-phase-commit state machine of the leader:
// events in, actions out. It has no goroutines, clock, network or disk;
// time arrives with each Step. Everything it holds is soft state of the
// current leadership: a new leader rebuilds phase 2 from the replicated
// records (LoadUnfinished), and voting that was not yet decided is left to
// presumed abort.
type Core struct {
	cfg    Config
	retry  backoff.Policy // of phase-2 deliveries, proposals and Resolves
	leader bool
	term   uint64
	now    time.Time
	txns   map[string]*coreTxn
	timers timerHeap // when each transaction has something due (core_timers.go)

	finishing   []string
	finishSince time.Time
	lastCollect time.Time
	collectMore bool // the last Collect left expired records: go on at the next tick
	lastRescan  time.Time
	load        retryState // a LoadUnfinished again after a LoadFailed

	// inFlight and heldBytes count the client transactions not yet in
	// phase 2, and their payload bytes (admit, release).
	inFlight  int
	heldBytes int64

	out []Action
	// drop is why the current Step ignores its event, if it does;
	// dropped counts the ignored events per kind (Stats).
	drop    Dropped
	dropped map[string]uint64
}

type txnPhase uint8

const (
	phaseVoting txnPhase = iota + 1
	// phaseResolving: a one-phase prepare got no answer; the participant is
	// asked (Resolve) whether it committed.
	phaseResolving
	// phaseRecovering: a staged transaction without a decision, found by
	// this leader; every participant is asked (Resolve) for its vote.
	phaseRecovering
	// phaseSettling: an outcome query for an id without a record named one
	// participant; it is asked (Resolve) what became of the transaction.
	phaseSettling
	phaseDeciding
	phaseDelivering
)

type coreTxn struct {
	id           string
	phase        txnPhase
	participants []string
	payloads     map[string][]byte
	admitted     bool  // counted in Core.inFlight until phase 2
	held         int64 // its payload bytes, counted in Core.heldBytes
	onePhase     bool
	votes        map[string]decreev1.Vote
	identities   map[string]string // participant identity -> the branch that answered with it
	deadline     time.Time         // voting deadline
	proposed     decreev1.Outcome
	reason       string
	retry        retryState // re-proposal of the decision, or re-Resolve
	failure      string     // why a one-phase prepare got no answer
	parallel     bool       // staged in raft while voting
	staged       bool       // the Staged record applied, without a decision
	presumed     bool       // the decision in flight yields to a staged record
	resolved     map[string]decreev1.ParticipantState
	outcome      decreev1.Outcome
	replied      bool
	waiters      []uint64
	deliveries   map[string]*delivery
	// decidedAt is when phase 2 began (the record's DecidedAt for one
	// recovered from the log); sends counts its decision deliveries.
	decidedAt time.Time
	sends     int
}

type deliveryState uint8

const (
	deliveryInFlight deliveryState = iota + 1
	deliveryWaiting
	deliveryAcked
)

type delivery struct {
	state deliveryState
	retry retryState
}

// retryState is one retried operation: failures in a row, and when it is
// due again. It keeps only the count; the Core holds the policy.
type retryState struct {
	attempts int
	due      time.Time
	armed    bool
}

func (r *retryState) arm(now time.Time, p backoff.Policy) {
	r.attempts++
	r.due = now.Add(p.Delay(r.attempts))
	r.armed = true
}

func (r *retryState) fire(now time.Time) bool {
	if r.armed && !now.Before(r.due) {
		r.armed = false
		return true
	}
	return false
}

// New returns a core that is not leader. Like etcd raft's newRaft, it
// panics on an invalid cfg (see Config.Validate): NewDriver validates
// what it is given and returns the error.
func New(cfg Config) *Core {
	if err := cfg.Validate(); err != nil {
		panic("coordinator core: " + err.Error())
	}
	cfg = cfg.EnsureDefaults()
	return &Core{cfg: cfg, retry: backoff.Policy{Min: cfg.RetryMin, Max: cfg.RetryMax, Rand: cfg.Rand},
		txns: make(map[string]*coreTxn)}
}

// Step applies one event at time now and returns the actions it produces.
func (c *Core) Step(now time.Time, ev Event) []Action {
	c.now = now
	c.out = nil
	c.drop = Dropped{}
	switch e := ev.(type) {
	case ClientCommit:
		c.clientCommit(e)
	case ClientOutcome:
		c.clientOutcome(e)
	case LoadFailed:
		c.loadFailed(e)
	case VoteReceived:
		c.voteReceived(e)
	case PrepareFailed:
		c.prepareFailed(e)
	case ParticipantResolved:
		c.participantResolved(e)
	case StagedApplied:
		c.stagedApplied(e)
	case RecoverStaged:
		if why := c.recoverStaged(e.ID, e.Participants); why != "" {
			c.ignore(e.ID, why)
		}
	case DecisionApplied:
		c.decisionApplied(e)
	case ProposeFailed:
		c.proposeFailed(e)
	case Acked:
		c.acked(e)
	case DeliveryFailed:
		c.deliveryFailed(e)
	case LeadershipChanged:
		// Not counted when it changes nothing: the driver reports its
		// role on every stop, and the core takes a repeat as a no-op.
		c.leadershipChanged(e)
	case Recovered:
		c.recovered(e)
	case CollectApplied:
		c.collectMore = c.leader && e.Term == c.term && e.More
		if !c.leader || e.Term != c.term {
			c.ignore("", dropStale)
		}
	case Tick:
		c.tick()
	default:
		// A programming error, never input: Event's method is
		// unexported, so only this package defines events, and the driver
		// builds each from a decoded message it has already checked. An
		// event type without its case here would be silently lost, which
		// is worse than stopping.
		panic(fmt.Sprintf("coordinator core: unknown event %T", ev))
	}
	if c.drop.Why != "" {
		c.drop.Kind = reflect.TypeOf(ev).Name()
		if c.dropped == nil {
			c.dropped = make(map[string]uint64)
		}
		c.dropped[c.drop.Kind]++
	}
	return c.out
}

// Why the core ignores an event (Dropped.Why). Most are benign races: a
// vote that arrives after its deadline aborted the transaction, an
// acknowledgement from a leadership that ended. They are counted so that a
// flood, or one that should not happen, shows.
const (
	dropStale              = "stale: from an earlier leadership or term"
	dropUnknownTxn         = "no such transaction here: finished, abandoned with a leadership, or never started"
	dropWrongPhase         = "the transaction is no longer in the phase the event is for"
	dropUnknownParticipant = "the transaction has no such participant"
	dropRepeated           = "a repeat of an answer already counted"
	dropSettling           = "the transaction is already being settled or finished"
)

// Dropped describes an event the core ignored.
type Dropped struct {
	Kind string // the event's type, as VoteReceived
	ID   string // the transaction it names, if any
	Why  string
}

// Suspect says no correct driver should have fed the event: it names a
// participant the transaction does not have.
func (d Dropped) Suspect() bool { return d.Why == dropUnknownParticipant }

// Stats counts what the core did not act on. Counters only grow.
type Stats struct {
	// Dropped counts the ignored events per kind (the event's type name).
	Dropped map[string]uint64
}

// Stats returns the core's counters so far.
func (c *Core) Stats() Stats {
	return Stats{Dropped: maps.Clone(c.dropped)}
}

// LastDropped returns the event the last Step ignored, if it ignored it.
func (c *Core) LastDropped() (Dropped, bool) { return c.drop, c.drop.Why != "" }

// ignore notes that the current Step's event is dropped, and why.
func (c *Core) ignore(id, why string) {
	c.drop = Dropped{ID: id, Why: why}
}

// IsLeader reports whether the core acts as leader, and in which term.
func (c *Core) IsLeader() (bool, uint64) { return c.leader, c.term }

// Undecided lists the transactions in voting or waiting for their decision.
func (c *Core) Undecided() []UndecidedTxn {
	var out []UndecidedTxn
	for _, t := range c.txns {
		if t.phase != phaseDelivering {
			out = append(out, UndecidedTxn{ID: t.id, Participants: slices.Clone(t.participants)})
		}
	}
	slices.SortFunc(out, func(a, b UndecidedTxn) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Phase2Txn is a decided transaction whose decision has not reached every
// participant yet.
type Phase2Txn struct {
	ID string
	// Age is the time since its decision (the leader's clock).
	Age time.Duration
	// Sends counts the decision deliveries this leader made for it.
	Sends int
}

// Phase2Backlog lists the transactions in phase 2, oldest first (ties by
// id). The leader's status and `decree txn list` show it: a participant
// that never acknowledges leaves its transactions here.
func (c *Core) Phase2Backlog() []Phase2Txn {
	var out []Phase2Txn
	for _, t := range c.txns {
		if t.phase == phaseDelivering {
			out = append(out, Phase2Txn{ID: t.id, Age: max(c.now.Sub(t.decidedAt), 0), Sends: t.sends})
		}
	}
	slices.SortFunc(out, func(a, b Phase2Txn) int {
		if c := cmp.Compare(b.Age, a.Age); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out
}

// UndecidedTxn is an in-flight transaction without an applied decision.
type UndecidedTxn struct {
	ID           string
	Participants []string
}

func (c *Core) emit(a Action) { c.out = append(c.out, a) }

func (c *Core) clientCommit(e ClientCommit) {
	if !c.leader {
		c.emit(Reply{Req: e.Req, ID: e.ID, Err: ErrNotLeader})
		return
	}
	if e.Logged.decided() {
		c.emit(loggedReply(e.Req, e.ID, e.Logged))
		return
	}
	if t, ok := c.txns[e.ID]; ok {
		c.join(t, e.Req)
		return
	}
	if e.Logged.Found {
		// Staged without a decision: its participants' votes decide it.
		c.settleStaged(e.Req, e.ID, e.Logged.Participants)
		return
	}
	if e.Logged.Forgotten {
		c.emit(Reply{Req: e.Req, ID: e.ID, Err: ErrForgotten})
		return
	}
	if err := c.admit(e.Branches); err != nil {
		c.emit(Reply{Req: e.Req, ID: e.ID, Err: err})
		return
	}
	t := &coreTxn{
		id:         e.ID,
		admitted:   true,
		held:       payloadBytes(e.Branches),
		phase:      phaseVoting,
		payloads:   make(map[string][]byte, len(e.Branches)),
		onePhase:   len(e.Branches) == 1,
		votes:      make(map[string]decreev1.Vote, len(e.Branches)),
		deadline:   c.now.Add(c.cfg.PrepareTimeout),
		waiters:    []uint64{e.Req},
		deliveries: make(map[string]*delivery),
	}
	for _, b := range e.Branches {
		t.participants = append(t.participants, b.Participant)
		t.payloads[b.Participant] = b.Payload
	}
	c.txns[e.ID] = t
	c.schedule(t.id, t.deadline)
	for _, p := range t.participants {
		c.emit(SendPrepare{ID: t.id, Participant: p, Payload: t.payloads[p],
			Participants: slices.Clone(t.participants), OnePhase: t.onePhase, Term: c.term})
	}
	if c.cfg.ParallelCommit && !t.onePhase {
		t.parallel = true
		c.emit(ProposeStaged{ID: t.id, Participants: slices.Clone(t.participants), Term: c.term})
	}
}

// join makes req wait for t's outcome: a retry, or a query, of a
// transaction in flight. Once decided, it is answered at once.
func (c *Core) join(t *coreTxn, req uint64) {
	if t.phase == phaseDelivering {
		c.emit(Reply{Req: req, ID: t.id, Outcome: t.outcome, Reason: t.reason, Participants: t.participants})
		return
	}
	t.waiters = append(t.waiters, req)
}

// settleStaged recovers a staged transaction a client asks about, and
// makes the client wait for its outcome.
func (c *Core) settleStaged(req uint64, id string, participants []string) {
	if why := c.recoverStaged(id, participants); why != "" {
		// Its phase 2 just finished (c.finishing): the record will say.
		c.emit(Reply{Req: req, ID: id, Err: ErrSettling})
		return
	}
	c.txns[id].waiters = []uint64{req}
}

// loggedReply answers from the decision the log holds.
func loggedReply(req uint64, id string, l Logged) Reply {
	return Reply{Req: req, ID: id, Outcome: l.Outcome, Reason: l.Reason, Participants: l.Participants,
		Finished: l.Finished, DecidedAt: l.DecidedAt}
}

// clientOutcome answers an outcome query. An id the cluster holds no
// record of, and is not deciding, is decided now: presumed abort, made
// durable before anyone hears it; but a one-phase transaction's outcome
// lives at its only participant, so that one is asked first (and aborts
// it there if it never heard of it) and its answer is recorded instead.
// Either way the decision is proposed as presumed, so that a Staged
// record (parallel commit) that applied meanwhile is decided by all its
// participants' votes, never by one caller's list. Its phase 2 then runs
// like any other.
func (c *Core) clientOutcome(e ClientOutcome) {
	switch {
	case !c.leader:
		c.emit(Reply{Req: e.Req, ID: e.ID, Err: ErrNotLeader})
		return
	case e.Logged.decided():
		c.emit(loggedReply(e.Req, e.ID, e.Logged))
		return
	}
	if t, ok := c.txns[e.ID]; ok {
		c.join(t, e.Req)
		return
	}
	switch {
	case e.Logged.Found:
		c.settleStaged(e.Req, e.ID, e.Logged.Participants)
		return
	case e.Logged.Forgotten:
		c.emit(Reply{Req: e.Req, ID: e.ID, Err: ErrForgotten})
		return
	case len(e.Participants) == 0:
		c.emit(Reply{Req: e.Req, ID: e.ID, Err: fmt.Errorf("transaction %s has %w", e.ID, ErrNoParticipants)})
		return
	}
	t := &coreTxn{id: e.ID, participants: slices.Clone(e.Participants), presumed: true, waiters: []uint64{e.Req},
		votes: map[string]decreev1.Vote{}, deliveries: make(map[string]*delivery)}
	c.txns[e.ID] = t
	if len(t.participants) == 1 {
		t.phase = phaseSettling
		c.emit(ResolveAtParticipant{ID: t.id, Participant: t.participants[0], Term: c.term})
		return
	}
	c.decide(t, decreev1.Outcome_OUTCOME_ABORTED, reasonPresumed)
}

// Reasons recorded with a decision an outcome query made.
const (
	reasonPresumed     = "presumed abort: no decision was recorded"
	reasonAbortedThere = "aborted at its only participant"
)

// settled decides a one-phase transaction an outcome query asked its
// participant about: what the participant says, an abort unless it
// committed. A failed call ends the query: the caller asks again, and a
// bogus address costs nothing further.
func (c *Core) settled(t *coreTxn, e ParticipantResolved) {
	if e.Err != "" {
		err := fmt.Errorf("ask the one-phase participant %s: %s", e.Participant, e.Err)
		if e.Refused {
			err = fmt.Errorf("%w: %s serves no participant API: %s", ErrNotParticipant, e.Participant, e.Err)
		}
		for _, req := range t.waiters {
			c.emit(Reply{Req: req, ID: t.id, Err: err})
		}
		delete(c.txns, t.id)
		return
	}
	switch e.State {
	case decreev1.ParticipantState_PARTICIPANT_STATE_COMMITTED:
		c.decide(t, decreev1.Outcome_OUTCOME_COMMITTED, "")
	case decreev1.ParticipantState_PARTICIPANT_STATE_ABORTED:
		c.decide(t, decreev1.Outcome_OUTCOME_ABORTED, reasonAbortedThere)
	default:
		c.decide(t, decreev1.Outcome_OUTCOME_ABORTED, reasonPresumed)
	}
}

// admit refuses a new transaction that would take the leader past its
// limits, or counts it in.
func (c *Core) admit(bs []BranchSpec) error {
	n := payloadBytes(bs)
	if c.inFlight >= c.cfg.MaxInFlight {
		return fmt.Errorf("%w: %d transactions in flight (limit %d); retry later", ErrOverloaded, c.inFlight, c.cfg.MaxInFlight)
	}
	// One transaction alone may always run, whatever its size: the
	// request limits bound it.
	if c.inFlight > 0 && c.heldBytes+n > c.cfg.MaxHeldBytes {
		return fmt.Errorf("%w: %d payload bytes held for prepares, %d more exceed the limit of %d; retry later",
			ErrOverloaded, c.heldBytes, n, c.cfg.MaxHeldBytes)
	}
	c.inFlight++
	c.heldBytes += n
	return nil
}

// release uncounts a transaction that reached phase 2.
func (c *Core) release(t *coreTxn) {
	if t.admitted {
		t.admitted = false
		c.inFlight--
		c.heldBytes -= t.held
	}
}

func payloadBytes(bs []BranchSpec) int64 {
	var n int64
	for _, b := range bs {
		n += int64(len(b.Payload))
	}
	return n
}

// sameParticipant records that branch answered as participant identity
// id, and returns the other branch that answered with the same identity,
// if any: two addresses of one participant. A participant would take the
// second branch's prepare for a repeat of the first, so committing would
// apply one branch only.
func (t *coreTxn) sameParticipant(branch, id string) (string, bool) {
	if id == "" {
		return "", false
	}
	if other, ok := t.identities[id]; ok && other != branch {
		return other, true
	}
	if t.identities == nil {
		t.identities = make(map[string]string, len(t.participants))
	}
	t.identities[id] = branch
	return "", false
}

func aliasReason(first, second, id string) string {
	return fmt.Sprintf("branches %s and %s reach the same participant (identity %s); give each participant one branch", first, second, id)
}

// voting returns the transaction if feedback for it is current.
func (c *Core) voting(id, participant string, term uint64) *coreTxn {
	if !c.leader || term != c.term {
		c.ignore(id, dropStale)
		return nil
	}
	t, ok := c.txns[id]
	if !ok {
		c.ignore(id, dropUnknownTxn)
		return nil
	}
	if !slices.Contains(t.participants, participant) {
		c.ignore(id, dropUnknownParticipant)
		return nil
	}
	if t.phase != phaseVoting && t.phase != phaseResolving {
		c.ignore(id, dropWrongPhase)
		return nil
	}
	if _, dup := t.votes[participant]; dup {
		c.ignore(id, dropRepeated)
		return nil
	}
	return t
}

func (c *Core) voteReceived(e VoteReceived) {
	t := c.voting(e.ID, e.Participant, e.Term)
	if t == nil {
		return
	}
	if other, dup := t.sameParticipant(e.Participant, e.ParticipantID); dup {
		// Recorded as NO: no vote of this branch may count towards a
		// commit, implicit (parallel commit) or not; the abort reaches
		// the participant through the other branch.
		t.votes[e.Participant] = decreev1.Vote_VOTE_NO
		c.decide(t, decreev1.Outcome_OUTCOME_ABORTED, aliasReason(other, e.Participant, e.ParticipantID))
		return
	}
	t.votes[e.Participant] = e.Vote
	switch e.Vote {
	case decreev1.Vote_VOTE_YES, decreev1.Vote_VOTE_READ_ONLY:
		if len(t.votes) == len(t.participants) && !c.maybeImplicitCommit(t) {
			c.decide(t, decreev1.Outcome_OUTCOME_COMMITTED, "")
		}
	case decreev1.Vote_VOTE_COMMITTED:
		if !t.onePhase {
			c.emit(Conflict{ID: t.id, What: e.Participant + " answered a two-phase prepare with COMMITTED"})
			c.decide(t, decreev1.Outcome_OUTCOME_ABORTED, e.Participant+" answered COMMITTED to a two-phase prepare")
			return
		}
		// The only participant committed durably: that is the outcome.
		// Record it for later outcome queries; the client hears it now.
		c.replyAll(t, decreev1.Outcome_OUTCOME_COMMITTED, "")
		c.decide(t, decreev1.Outcome_OUTCOME_COMMITTED, "")
	case decreev1.Vote_VOTE_NO:
		c.decide(t, decreev1.Outcome_OUTCOME_ABORTED, fmt.Sprintf("%s voted no: %s", e.Participant, e.Reason))
	default:
		c.decide(t, decreev1.Outcome_OUTCOME_ABORTED, fmt.Sprintf("%s sent an unknown vote %v", e.Participant, e.Vote))
	}
}

func (c *Core) prepareFailed(e PrepareFailed) {
	t := c.voting(e.ID, e.Participant, e.Term)
	if t == nil {
		return
	}
	if t.phase == phaseResolving {
		c.ignore(e.ID, dropWrongPhase) // timed out: its participant is being asked
		return
	}
	if e.Refused {
		// No participant service answers there, so this prepare prepared
		// nothing: a NO, safe in one phase too (no need to ask what it
		// committed), and no abort needs delivering there.
		t.votes[e.Participant] = decreev1.Vote_VOTE_NO
		c.decide(t, decreev1.Outcome_OUTCOME_ABORTED, fmt.Sprintf("%s is not a participant: %s", e.Participant, e.Err))
		return
	}
	reason := fmt.Sprintf("%s failed to prepare: %s", e.Participant, e.Err)
	if t.onePhase {
		// The prepare may have committed before its answer was lost.
		c.resolveOnePhase(t, reason)
		return
	}
	t.votes[e.Participant] = decreev1.Vote_VOTE_UNSPECIFIED
	c.abortFailed(t, reason)
}

// abortFailed aborts a transaction a participant did not vote on (an
// error or a timeout, not a NO). Under parallel commit the abort yields
// to a staged record: the transaction may have committed through another
// leader, so only its participants' votes can decide it.
func (c *Core) abortFailed(t *coreTxn, reason string) {
	t.presumed = t.parallel
	c.decide(t, decreev1.Outcome_OUTCOME_ABORTED, reason)
}

// resolveOnePhase asks the only participant what became of its one-phase
// prepare, instead of presuming abort: the outcome lives there.
func (c *Core) resolveOnePhase(t *coreTxn, failure string) {
	t.phase, t.failure = phaseResolving, failure
	c.emit(ResolveAtParticipant{ID: t.id, Participant: t.participants[0], Term: c.term})
}

func (c *Core) participantResolved(e ParticipantResolved) {
	if !c.leader || e.Term != c.term {
		c.ignore(e.ID, dropStale)
		return
	}
	t, ok := c.txns[e.ID]
	switch {
	case !ok:
		c.ignore(e.ID, dropUnknownTxn)
		return
	case t.phase == phaseRecovering:
		c.stagedResolved(t, e)
		return
	case t.phase == phaseSettling && t.participants[0] == e.Participant:
		c.settled(t, e)
		return
	case t.phase != phaseResolving:
		c.ignore(e.ID, dropWrongPhase)
		return
	case t.participants[0] != e.Participant:
		c.ignore(e.ID, dropUnknownParticipant)
		return
	}
	switch {
	case e.Err != "":
		c.armRetry(t, &t.retry)
	case e.State == decreev1.ParticipantState_PARTICIPANT_STATE_COMMITTED:
		t.votes[e.Participant] = decreev1.Vote_VOTE_COMMITTED
		c.replyAll(t, decreev1.Outcome_OUTCOME_COMMITTED, "")
		c.decide(t, decreev1.Outcome_OUTCOME_COMMITTED, "")
	case e.State == decreev1.ParticipantState_PARTICIPANT_STATE_ABORTED:
		t.votes[e.Participant] = decreev1.Vote_VOTE_NO
		c.decide(t, decreev1.Outcome_OUTCOME_ABORTED, t.failure)
	default:
		// Prepared but not committed: abort it like a two-phase branch.
		c.decide(t, decreev1.Outcome_OUTCOME_ABORTED, t.failure)
	}
}

// stagedApplied: with the Staged record applied, the transaction commits
// as soon as every vote is YES. A decision that applied first wins.
func (c *Core) stagedApplied(e StagedApplied) {
	if !c.leader || e.Term != c.term {
		c.ignore(e.ID, dropStale)
		return
	}
	t, ok := c.txns[e.ID]
	if !ok {
		c.ignore(e.ID, dropUnknownTxn)
		return
	}
	if t.phase != phaseVoting && t.phase != phaseDeciding {
		c.ignore(e.ID, dropWrongPhase)
		return
	}
	if e.Outcome != decreev1.Outcome_OUTCOME_UNSPECIFIED {
		c.decisionApplied(DecisionApplied{ID: e.ID, Term: e.Term, Outcome: e.Outcome, Reason: e.Reason, Participants: t.participants})
		return
	}
	t.staged = true
	c.maybeImplicitCommit(t)
}

// maybeImplicitCommit commits a parallel-commit transaction once it is
// staged and every participant's YES (durable before it was sent) is in:
// that is the commit point. The client hears it at once. If no Decide was
// proposed yet, none is: phase 2 starts now and the batched Finished
// records the commit (a Finished of a staged record means committed). A
// Decide already in flight (the votes came before the stage) just lands.
func (c *Core) maybeImplicitCommit(t *coreTxn) bool {
	if !t.parallel || !t.staged || t.replied || len(t.votes) != len(t.participants) {
		return false
	}
	for _, v := range t.votes {
		if v != decreev1.Vote_VOTE_YES && v != decreev1.Vote_VOTE_READ_ONLY {
			return false
		}
	}
	c.replyAll(t, decreev1.Outcome_OUTCOME_COMMITTED, "")
	if t.phase == phaseVoting {
		t.outcome = decreev1.Outcome_OUTCOME_COMMITTED
		c.startDelivery(t)
	}
	return true
}

// recoverStaged settles a staged transaction without a decision: every
// participant is asked for its vote, and one that never voted aborts it
// (so a late prepare cannot succeed). All prepared: commit; any aborted:
// abort. No transaction aborts merely because the leader changed. It
// returns why it started nothing, if it did not.
func (c *Core) recoverStaged(id string, participants []string) (ignored string) {
	if !c.leader {
		return dropStale
	}
	if _, ok := c.txns[id]; ok || slices.Contains(c.finishing, id) {
		return dropSettling
	}
	t := &coreTxn{id: id, phase: phaseRecovering, participants: slices.Clone(participants), parallel: true,
		staged: true, votes: map[string]decreev1.Vote{}, resolved: map[string]decreev1.ParticipantState{},
		deliveries: make(map[string]*delivery)}
	c.txns[id] = t
	c.resolveUnanswered(t)
	return ""
}

func (c *Core) resolveUnanswered(t *coreTxn) {
	for _, p := range t.participants {
		if _, ok := t.resolved[p]; !ok {
			c.emit(ResolveAtParticipant{ID: t.id, Participant: p, Term: c.term})
		}
	}
}

func (c *Core) stagedResolved(t *coreTxn, e ParticipantResolved) {
	if !slices.Contains(t.participants, e.Participant) {
		c.ignore(e.ID, dropUnknownParticipant)
		return
	}
	if e.Err != "" {
		c.armRetry(t, &t.retry)
		return
	}
	if other, dup := t.sameParticipant(e.Participant, e.ParticipantID); dup {
		// No leader committed it: its votes came from one participant
		// twice, which the leader that staged it refused to count. The
		// abort reaches that participant through the other branch.
		t.votes[e.Participant] = decreev1.Vote_VOTE_NO
		c.decide(t, decreev1.Outcome_OUTCOME_ABORTED, "recovered a staged transaction: "+aliasReason(other, e.Participant, e.ParticipantID))
		return
	}
	t.resolved[e.Participant] = e.State
	if len(t.resolved) < len(t.participants) {
		return
	}
	for _, p := range t.participants {
		switch t.resolved[p] {
		case decreev1.ParticipantState_PARTICIPANT_STATE_ABORTED:
			t.votes[p] = decreev1.Vote_VOTE_NO
		case decreev1.ParticipantState_PARTICIPANT_STATE_COMMITTED:
			t.votes[p] = decreev1.Vote_VOTE_COMMITTED
		default:
			t.votes[p] = decreev1.Vote_VOTE_YES
		}
	}
	for _, p := range t.participants {
		if t.votes[p] == decreev1.Vote_VOTE_NO {
			c.decide(t, decreev1.Outcome_OUTCOME_ABORTED, "recovered a staged transaction: "+p+" had not voted yes")
			return
		}
	}
	c.decide(t, decreev1.Outcome_OUTCOME_COMMITTED, "")
}

// decide stops voting and proposes the outcome. Whatever applies first for
// the id is the outcome; it comes back as DecisionApplied.
func (c *Core) decide(t *coreTxn, o decreev1.Outcome, reason string) {
	t.phase = phaseDeciding
	t.proposed, t.reason = o, reason
	c.proposeDecision(t)
}

func (c *Core) proposeDecision(t *coreTxn) {
	c.emit(ProposeDecide{ID: t.id, Outcome: t.proposed, Reason: t.reason,
		Participants: slices.Clone(t.participants), DecidedAt: c.now.UnixNano(), Term: c.term, Presumed: t.presumed})
}

func (c *Core) decisionApplied(e DecisionApplied) {
	if !c.leader || e.Term != c.term {
		c.ignore(e.ID, dropStale)
		return
	}
	t, ok := c.txns[e.ID]
	if e.Outcome == decreev1.Outcome_OUTCOME_UNSPECIFIED {
		// A presumed abort met a staged record: settle it by the votes
		// of the record's participants (e.Participants), never by the
		// list an outcome query named, which may leave some out.
		if ok && t.phase == phaseDeciding && t.presumed {
			t.phase, t.presumed = phaseRecovering, false
			if len(e.Participants) > 0 {
				t.participants = slices.Clone(e.Participants)
			}
			t.votes, t.resolved = map[string]decreev1.Vote{}, map[string]decreev1.ParticipantState{}
			c.resolveUnanswered(t)
		} else {
			c.ignore(e.ID, dropWrongPhase) // no presumed abort of it in flight
		}
		return
	}
	if !ok {
		// A decision the driver proposed itself (presumed abort for an
		// outcome query): run its phase 2 like any other.
		t = &coreTxn{id: e.ID, participants: slices.Clone(e.Participants), deliveries: make(map[string]*delivery)}
		c.txns[e.ID] = t
	} else if t.phase == phaseDelivering {
		c.ignore(e.ID, dropRepeated)
		return
	}
	if t.replied && e.Outcome != decreev1.Outcome_OUTCOME_COMMITTED {
		c.emit(Conflict{ID: t.id, What: "COMMITTED was acknowledged to the client (one-phase or parallel commit), but " + OutcomeWord(e.Outcome) + " applied first"})
	}
	t.outcome, t.reason = e.Outcome, e.Reason
	c.replyAll(t, e.Outcome, e.Reason)
	c.startDelivery(t)
}

func (c *Core) replyAll(t *coreTxn, o decreev1.Outcome, reason string) {
	for _, req := range t.waiters {
		c.emit(Reply{Req: req, ID: t.id, Outcome: o, Reason: reason, Participants: t.participants})
	}
	t.waiters = nil
	t.replied = true
}

// startDelivery sends the decision to every participant that still needs
// it: not to one that voted NO on an abort (it aborted already), a
// read-only voter, or the participant of a one-phase commit.
func (c *Core) startDelivery(t *coreTxn) {
	t.phase = phaseDelivering
	if t.decidedAt.IsZero() {
		t.decidedAt = c.now
	}
	c.release(t)
	defer t.dropVoting()
	for _, p := range t.participants {
		v, voted := t.votes[p]
		switch {
		case voted && v == decreev1.Vote_VOTE_READ_ONLY,
			voted && v == decreev1.Vote_VOTE_COMMITTED,
			voted && v == decreev1.Vote_VOTE_NO && t.outcome == decreev1.Outcome_OUTCOME_ABORTED:
			continue
		}
		t.deliveries[p] = &delivery{state: deliveryInFlight}
		c.sendDecision(t, p)
	}
	c.maybeFinished(t)
}

func (c *Core) sendDecision(t *coreTxn, p string) {
	t.sends++
	c.emit(SendDecision{ID: t.id, Participant: p, Outcome: t.outcome, Term: c.term})
}

// dropVoting frees what only voting needed: a transaction waiting in
// phase 2, perhaps for days on a participant that is gone, keeps no more
// than its id, participants and deliveries.
func (t *coreTxn) dropVoting() {
	t.payloads, t.votes, t.identities, t.resolved = nil, nil, nil, nil
	t.failure, t.waiters = "", nil
}

func (c *Core) delivering(id, participant string, term uint64) (*coreTxn, *delivery) {
	if !c.leader || term != c.term {
		c.ignore(id, dropStale)
		return nil, nil
	}
	t, ok := c.txns[id]
	if !ok {
		c.ignore(id, dropUnknownTxn)
		return nil, nil
	}
	if t.phase != phaseDelivering {
		c.ignore(id, dropWrongPhase)
		return nil, nil
	}
	d, ok := t.deliveries[participant]
	if !ok {
		// Either not a participant, or one phase 2 skips (it voted NO
		// on an abort, READ_ONLY, or committed in one phase).
		if !slices.Contains(t.participants, participant) {
			c.ignore(id, dropUnknownParticipant)
		} else {
			c.ignore(id, dropWrongPhase)
		}
		return nil, nil
	}
	if d.state != deliveryInFlight {
		c.ignore(id, dropRepeated)
		return nil, nil
	}
	return t, d
}

func (c *Core) acked(e Acked) {
	t, d := c.delivering(e.ID, e.Participant, e.Term)
	if t == nil {
		return
	}
	d.state = deliveryAcked
	c.maybeFinished(t)
}

func (c *Core) deliveryFailed(e DeliveryFailed) {
	t, d := c.delivering(e.ID, e.Participant, e.Term)
	if d == nil {
		return
	}
	d.state = deliveryWaiting
	c.armRetry(t, &d.retry)
}

func (c *Core) maybeFinished(t *coreTxn) {
	for _, d := range t.deliveries {
		if d.state != deliveryAcked {
			return
		}
	}
	delete(c.txns, t.id)
	if len(c.finishing) == 0 {
		c.finishSince = c.now
	}
	c.finishing = append(c.finishing, t.id)
	c.flushFinished(false)
}

func (c *Core) flushFinished(timed bool) {
	if len(c.finishing) == 0 {
		return
	}
	if len(c.finishing) < c.cfg.FinishBatch && !(timed && c.now.Sub(c.finishSince) >= c.cfg.FinishDelay) {
		return
	}
	c.emit(ProposeFinished{IDs: c.finishing, At: c.now.UnixNano(), Term: c.term})
	c.finishing = nil
}

func (c *Core) proposeFailed(e ProposeFailed) {
	if !c.leader || e.Term != c.term {
		c.ignore(e.ID, dropStale)
		return
	}
	if len(e.Finished) > 0 {
		// Finished is idempotent: queue the ids again.
		if len(c.finishing) == 0 {
			c.finishSince = c.now
		}
		c.finishing = append(c.finishing, e.Finished...)
		return
	}
	t, ok := c.txns[e.ID]
	switch {
	case !ok:
		c.ignore(e.ID, dropUnknownTxn)
	case t.phase != phaseDeciding:
		c.ignore(e.ID, dropWrongPhase)
	case e.Forgotten:
		// Retrying cannot help. Its participants, if any prepared, stay
		// in doubt: FORGOTTEN is their answer, for an operator.
		for _, req := range t.waiters {
			c.emit(Reply{Req: req, ID: t.id, Err: ErrForgotten})
		}
		c.release(t)
		delete(c.txns, t.id)
	default:
		c.armRetry(t, &t.retry)
	}
}

func (c *Core) leadershipChanged(e LeadershipChanged) {
	if e.Leader == c.leader && e.Term == c.term {
		return
	}
	c.abandonAll()
	c.leader, c.term = e.Leader, e.Term
	if c.leader {
		c.lastCollect, c.lastRescan, c.collectMore = c.now, c.now, false
		c.load = retryState{}
		c.emit(LoadUnfinished{Term: c.term})
	}
}

// abandonAll drops the soft state of a leadership that ended. Waiting
// clients are told to ask for the outcome; decided transactions are finished
// by whichever node leads next, from the replicated records.
func (c *Core) abandonAll() {
	for _, id := range c.sortedIDs() {
		t := c.txns[id]
		for _, req := range t.waiters {
			c.emit(Reply{Req: req, ID: t.id, Err: ErrNotLeader})
		}
	}
	c.txns = make(map[string]*coreTxn)
	c.timers = nil
	c.finishing = nil
	c.inFlight, c.heldBytes = 0, 0
}

// loadFailed schedules the load again, with backoff, while the leadership
// lasts: until it succeeds, this leader does not know the phase 2 it owes.
func (c *Core) loadFailed(e LoadFailed) {
	if !c.leader || e.Term != c.term {
		c.ignore("", dropStale)
		return
	}
	c.load.arm(c.now, c.retry)
}

func (c *Core) recovered(e Recovered) {
	if !c.leader || e.Term != c.term {
		c.ignore("", dropStale)
		return
	}
	c.load = retryState{}
	for _, r := range e.Staged {
		c.recoverStaged(r.ID, r.Participants)
	}
	for _, r := range e.Txns {
		if _, ok := c.txns[r.ID]; ok || slices.Contains(c.finishing, r.ID) {
			continue
		}
		t := &coreTxn{id: r.ID, participants: slices.Clone(r.Participants), outcome: r.Outcome,
			replied: true, deliveries: make(map[string]*delivery)}
		if r.DecidedAt != 0 {
			t.decidedAt = time.Unix(0, r.DecidedAt)
		}
		c.txns[r.ID] = t
		c.startDelivery(t)
	}
}

func (c *Core) tick() {
	if !c.leader {
		return
	}
	c.runDue()
	c.flushFinished(true)
	if c.collectMore || c.now.Sub(c.lastCollect) >= c.cfg.CollectEvery {
		c.lastCollect, c.collectMore = c.now, false
		c.emit(ProposeCollect{Before: c.now.Add(-c.cfg.Retention).UnixNano(), Term: c.term})
	}
	if c.load.fire(c.now) || c.now.Sub(c.lastRescan) >= c.cfg.RescanEvery {
		c.lastRescan = c.now
		c.emit(LoadUnfinished{Term: c.term})
	}
}

// sortedIDs keeps the order of actions independent of map order.
func (c *Core) sortedIDs() []string {
	ids := make([]string, 0, len(c.txns))
	for id := range c.txns {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

func (c *Core) tickTxn(t *coreTxn) {
	switch t.phase {
	case phaseVoting:
		if !c.now.Before(t.deadline) && t.onePhase {
			c.resolveOnePhase(t, c.silentReason(t))
		} else if !c.now.Before(t.deadline) {
			c.abortFailed(t, c.silentReason(t))
		}
	case phaseResolving:
		if t.retry.fire(c.now) {
			c.emit(ResolveAtParticipant{ID: t.id, Participant: t.participants[0], Term: c.term})
		}
	case phaseRecovering:
		if t.retry.fire(c.now) {
			c.resolveUnanswered(t)
		}
	case phaseDeciding:
		if t.retry.fire(c.now) {
			c.proposeDecision(t)
		}
	case phaseDelivering:
		for _, p := range t.participants {
			if d, ok := t.deliveries[p]; ok && d.state == deliveryWaiting && d.retry.fire(c.now) {
				d.state = deliveryInFlight
				c.sendDecision(t, p)
			}
		}
	}
}

func (c *Core) silentReason(t *coreTxn) string {
	var silent []string
	for _, p := range t.participants {
		if _, ok := t.votes[p]; !ok {
			silent = append(silent, p)
		}
	}
	return fmt.Sprintf("prepare timed out after %v waiting for %v", c.cfg.PrepareTimeout, silent)
}
