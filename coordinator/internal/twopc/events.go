package twopc

import (
	"errors"
	"fmt"
	"strings"

	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
)

// ErrNotLeader is the answer to a client whose transaction this node cannot
// drive because it is not (or is no longer) the leader. The client resolves
// the outcome with Outcome, on whichever node leads now.
var ErrNotLeader = errors.New("this coordinator is not the leader")

// ErrForgotten answers a request for a transaction older than the
// retention horizon whose record may have been collected: nothing about it
// can be known or decided any more.
var ErrForgotten = errors.New("transaction is older than the retention horizon")

// ErrOverloaded is the answer to a client whose new transaction would take
// the leader past its limit of transactions in flight or of payload bytes
// held; nothing of it was started, so the client may retry later.
var ErrOverloaded = errors.New("the leader is at its limit")

// ErrSettling answers an outcome query or a commit retry for a staged
// transaction (parallel commit) that the leader could not take up because
// it is finishing it already: the caller asks again.
var ErrSettling = errors.New("the transaction is staged and being settled at its participants; ask again")

// ErrNoParticipants: an outcome query for an id the cluster has no record
// of named no participants. It may be a one-phase transaction that
// committed at its only participant, so presuming abort without asking
// could contradict it.
var ErrNoParticipants = errors.New("no record here: name its participants to settle it (a one-phase transaction's outcome lives at its participant)")

// ErrNotParticipant: an outcome query named, as a one-phase transaction's
// only participant, an address that is not a participant. Nothing is
// decided: its outcome cannot be learned there.
var ErrNotParticipant = errors.New("not a participant")

// Event is an input to the 2PC core. Feedback events carry the leader term
// their action was issued in; the core ignores feedback from an earlier
// term, so a slow RPC from a previous leadership cannot affect this one.
type Event interface{ event() }

// BranchSpec is one participant's part of a transaction.
type BranchSpec struct {
	Participant string
	Payload     []byte
}

// Logged is what this node's decision log held for a transaction id when
// a client's request arrived. The service reads it (a disk read, off the
// core's goroutine); the core judges it.
type Logged struct {
	// Found says the log has a record: a decision, or, with Outcome
	// unspecified, a Staged record without one (parallel commit).
	Found        bool
	Outcome      decreev1.Outcome
	Reason       string
	Participants []string
	Finished     bool
	DecidedAt    int64
	// Forgotten says there is no record and the id is older than the
	// retention horizon: a record may have existed and been collected.
	Forgotten bool
}

// decided says the log holds the transaction's decision.
func (l Logged) decided() bool { return l.Found && l.Outcome != decreev1.Outcome_OUTCOME_UNSPECIFIED }

// ClientCommit asks the leader to run a transaction. Req identifies the
// waiting caller in the Reply. Logged is what the log held for the id: a
// decision is answered, a Staged record is settled by its participants'
// votes (never voted again), a forgotten id is refused.
type ClientCommit struct {
	Req      uint64
	ID       string
	Branches []BranchSpec
	Logged   Logged
}

// ClientOutcome asks the leader for a transaction's outcome, deciding it if
// the cluster never did: presumed abort, made durable before anyone hears
// it, or, for a one-phase transaction (one participant named), the answer
// of its participant. Participants are the caller's; a record's win.
type ClientOutcome struct {
	Req          uint64
	ID           string
	Participants []string
	Logged       Logged
}

// LoadFailed says a LoadUnfinished could not catch up with the log (its
// read index failed); the core tries again after a pause.
type LoadFailed struct {
	Term uint64
	Err  string
}

// VoteReceived is a participant's answer to Prepare. ParticipantID is the
// participant's durable identity (empty from an SDK that predates it):
// two branches answering with the same one are one participant.
type VoteReceived struct {
	ID, Participant string
	Term            uint64
	Vote            decreev1.Vote
	Reason          string
	ParticipantID   string
}

// PrepareFailed says a Prepare got no usable answer (error or timeout).
type PrepareFailed struct {
	ID, Participant string
	Term            uint64
	Err             string
	// Refused says the address serves no participant API (Unimplemented):
	// this prepare reached no participant and prepared nothing there.
	Refused bool
}

// ParticipantResolved is a one-phase participant's answer to Resolve: its
// state of the transaction, after aborting it if it had never heard of it.
// Err is set when the call failed.
type ParticipantResolved struct {
	ID, Participant string
	Term            uint64
	State           decreev1.ParticipantState
	Err             string
	// Refused says the address serves no participant API (as in
	// PrepareFailed).
	Refused       bool
	ParticipantID string // as in VoteReceived
}

// DecisionApplied reports the applied outcome of a Decide this leader
// proposed (or the driver proposed for an outcome query).
type DecisionApplied struct {
	ID           string
	Term         uint64
	Outcome      decreev1.Outcome
	Reason       string
	Participants []string
}

// StagedApplied reports that a transaction's Staged record applied
// (parallel commit). Outcome is set if a decision had applied first.
type StagedApplied struct {
	ID      string
	Term    uint64
	Outcome decreev1.Outcome
	Reason  string
}

// RecoverStaged asks the leader to settle a staged transaction that has no
// decision and that it is not driving: found by an outcome query.
type RecoverStaged struct {
	ID           string
	Participants []string
}

// ProposeFailed says a proposal did not apply in time; the core retries
// what still matters. Finished lists the ids of a failed Finished batch.
type ProposeFailed struct {
	ID       string
	Term     uint64
	Finished []string
	Err      string
	// Forgotten says the log refused the id as older than the retention
	// horizon: no decision for it can ever apply.
	Forgotten bool
}

// Acked is a participant's acknowledgement of the decision.
type Acked struct {
	ID, Participant string
	Term            uint64
}

// DeliveryFailed says a Commit/Abort call failed; it is retried with backoff.
type DeliveryFailed struct {
	ID, Participant string
	Term            uint64
	Err             string
}

// LeadershipChanged reports this node's raft role and term.
type LeadershipChanged struct {
	Leader bool
	Term   uint64
}

// RecoveredTxn is an applied, unfinished decision found by a new leader.
type RecoveredTxn struct {
	ID           string
	Outcome      decreev1.Outcome
	Participants []string
	DecidedAt    int64 // unix nanoseconds, 0 if unknown
}

// Recovered hands a new leader the decisions whose phase 2 it must finish,
// and the staged transactions without a decision it must settle.
type Recovered struct {
	Term   uint64
	Txns   []RecoveredTxn
	Staged []RecoveredTxn
}

// CollectApplied reports that a Collect this leader proposed applied; More
// says it stopped at its limit with expired records left.
type CollectApplied struct {
	Term uint64
	More bool
}

// Tick advances the core's time: timeouts, retries and batching.
type Tick struct{}

func (ClientCommit) event()        {}
func (VoteReceived) event()        {}
func (PrepareFailed) event()       {}
func (ParticipantResolved) event() {}
func (DecisionApplied) event()     {}
func (ProposeFailed) event()       {}
func (Acked) event()               {}
func (DeliveryFailed) event()      {}
func (LeadershipChanged) event()   {}
func (Recovered) event()           {}
func (CollectApplied) event()      {}
func (Tick) event()                {}

// Action is an output of the 2PC core for its driver to carry out.
type Action interface {
	action()
	String() string
}

// SendPrepare asks a participant to vote.
type SendPrepare struct {
	ID, Participant string
	Payload         []byte
	Participants    []string
	OnePhase        bool
	Term            uint64
}

// ResolveAtParticipant asks a one-phase participant for its outcome,
// aborting there if it never heard of the transaction, because its prepare
// got no answer: it may have committed.
type ResolveAtParticipant struct {
	ID, Participant string
	Term            uint64
}

// ProposeDecide replicates a decision; its applied result comes back as
// DecisionApplied (or ProposeFailed).
type ProposeDecide struct {
	ID           string
	Outcome      decreev1.Outcome
	Reason       string
	Participants []string
	DecidedAt    int64
	Term         uint64
	// Presumed makes it a no-op on a staged record (parallel commit): an
	// abort for a failure, not a NO vote. It then applies as unspecified.
	Presumed bool
}

// ProposeStaged replicates, in parallel with the prepares, that the
// transaction is voting under parallel commit; its result comes back as
// StagedApplied.
type ProposeStaged struct {
	ID           string
	Participants []string
	Term         uint64
}

// ProposeFinished replicates that phase 2 completed for IDs.
type ProposeFinished struct {
	IDs  []string
	At   int64
	Term uint64
}

// ProposeCollect replicates garbage collection of old finished records.
type ProposeCollect struct {
	Before int64
	Term   uint64
}

// SendDecision delivers the applied outcome to a participant.
type SendDecision struct {
	ID, Participant string
	Outcome         decreev1.Outcome
	Term            uint64
}

// Reply answers a waiting client: the applied outcome, or Err. An answer
// read from the log also carries the record's Finished and DecidedAt.
// Participants is shared with the core, not copied (a reply is on every
// transaction's path, and only an Outcome answer reads it): the core never
// changes a transaction's participant slice in place, only replaces it, and
// the reader must not change it either.
type Reply struct {
	Req          uint64
	ID           string
	Outcome      decreev1.Outcome
	Reason       string
	Participants []string
	Finished     bool
	DecidedAt    int64
	Err          error
}

// LoadUnfinished asks the driver to find applied, unfinished decisions
// (after catching up to the commit index) and report them as Recovered.
type LoadUnfinished struct{ Term uint64 }

// Conflict reports something that must never happen, for loud logging.
type Conflict struct{ ID, What string }

func (SendPrepare) action()          {}
func (ResolveAtParticipant) action() {}
func (ProposeDecide) action()        {}
func (ProposeFinished) action()      {}
func (ProposeCollect) action()       {}
func (SendDecision) action()         {}
func (Reply) action()                {}
func (LoadUnfinished) action()       {}
func (Conflict) action()             {}

func (a SendPrepare) String() string {
	mode := "2pc"
	if a.OnePhase {
		mode = "1pc"
	}
	return fmt.Sprintf("prepare %s -> %s (%s, term %d)", a.ID, a.Participant, mode, a.Term)
}

func (a ResolveAtParticipant) String() string {
	return fmt.Sprintf("resolve %s at %s (term %d)", a.ID, a.Participant, a.Term)
}

func (a ProposeDecide) String() string {
	s := fmt.Sprintf("propose decide %s %s [%s]", a.ID, OutcomeWord(a.Outcome), strings.Join(a.Participants, " "))
	if a.Presumed {
		s += " (presumed)"
	}
	if a.Reason != "" {
		s += ": " + a.Reason
	}
	return s
}

func (a ProposeStaged) String() string {
	return fmt.Sprintf("propose staged %s [%s]", a.ID, strings.Join(a.Participants, " "))
}

func (a ProposeFinished) String() string {
	return fmt.Sprintf("propose finished %s", strings.Join(a.IDs, " "))
}

func (a ProposeCollect) String() string { return fmt.Sprintf("propose collect before %d", a.Before) }

func (a SendDecision) String() string {
	return fmt.Sprintf("%s %s -> %s (term %d)", DecisionVerb(a.Outcome), a.ID, a.Participant, a.Term)
}

func (a Reply) String() string {
	if a.Err != nil {
		return fmt.Sprintf("reply %d %s error: %v", a.Req, a.ID, a.Err)
	}
	s := fmt.Sprintf("reply %d %s %s", a.Req, a.ID, OutcomeWord(a.Outcome))
	if a.Reason != "" {
		s += ": " + a.Reason
	}
	return s
}

func (a LoadUnfinished) String() string { return fmt.Sprintf("load unfinished (term %d)", a.Term) }
func (a Conflict) String() string       { return fmt.Sprintf("CONFLICT %s: %s", a.ID, a.What) }

func OutcomeWord(o decreev1.Outcome) string {
	switch o {
	case decreev1.Outcome_OUTCOME_COMMITTED:
		return "committed"
	case decreev1.Outcome_OUTCOME_ABORTED:
		return "aborted"
	default:
		return "undecided"
	}
}

func DecisionVerb(o decreev1.Outcome) string {
	if o == decreev1.Outcome_OUTCOME_COMMITTED {
		return "commit"
	}
	return "abort"
}

func (StagedApplied) event()  {}
func (RecoverStaged) event()  {}
func (ClientOutcome) event()  {}
func (LoadFailed) event()     {}
func (ProposeStaged) action() {}
