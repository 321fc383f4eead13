package participant

import (
	"context"

	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
	"github.com/decree-tx/decree/txlog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// decision is an outcome delivered to the participant.
type decision int

const (
	decideCommit decision = iota + 1
	decideAbort
)

func (d decision) String() string {
	if d == decideCommit {
		return "commit"
	}
	return "abort"
}

// fence carries the term of the coordinator leader behind a call. Outcomes
// learned by the recovery loop are unfenced: they are the cluster's applied
// decisions, whoever leads.
type fence struct {
	term    uint64
	enabled bool
}

func fencedBy(term uint64) fence { return fence{term: term, enabled: true} }

// tombstoneReason is the reason recorded for a transaction aborted before
// this participant prepared it.
const tombstoneReason = "aborted before prepare"

// decide applies a Commit or Abort for id. The reply (a nil error) is sent
// only once the outcome is durable.
func (p *Participant) decide(ctx context.Context, id string, d decision, f fence) error {
	defer p.locks.lock(id)()
	rec, found := p.preparedRecord(id)
	if !found {
		var err error
		if rec, found, err = p.plog.GetTxn(id); err != nil {
			return storageError(err)
		}
	}
	if !found {
		return p.decideUnknown(id, d, f)
	}
	if err := checkTerm(rec, f); err != nil {
		return err
	}
	switch {
	case rec.State == txlog.PStatePrepared:
		return p.finish(ctx, rec, d, f)
	case rec.State == txlog.PStateReadOnly,
		rec.State == txlog.PStateCommitted && d == decideCommit,
		rec.State == txlog.PStateAborted && d == decideAbort:
		return p.raiseTerm(rec, f)
	default:
		return p.violation(id, rec.State.String(), d)
	}
}

// decideUnknown handles a decision for a transaction without a record: an
// Abort leaves a durable tombstone, so that a late Prepare votes NO; a
// Commit is an invariant violation and changes nothing.
func (p *Participant) decideUnknown(id string, d decision, f fence) error {
	if d == decideCommit {
		return p.violation(id, "never prepared", d)
	}
	return p.writeTombstone(id, f.term)
}

// finish applies d to a prepared transaction: the resource's Commit or
// Abort and the new record in one synced batch.
func (p *Participant) finish(ctx context.Context, rec *txlog.PTxn, d decision, f fence) error {
	b := p.plog.NewBatch()
	defer b.Discard()
	w := batchWriter{b}
	next := *rec
	var err error
	if d == decideCommit {
		next.State = txlog.PStateCommitted
		err = p.res.Commit(ctx, rec.ID, w)
	} else {
		next.State = txlog.PStateAborted
		err = p.res.Abort(ctx, rec.ID, w)
	}
	if err != nil {
		p.log.Error().Err(err).Str("txn", rec.ID).Stringer("decision", d).Msg("resource failed to apply the outcome; the transaction stays prepared")
		return resourceError(d.String(), err)
	}
	next.Term, next.DecidedAt = max(rec.Term, f.term), p.now()
	b.PutTxn(&next)
	if err := p.plog.Commit(b); err != nil {
		return storageError(err)
	}
	p.removeInDoubt(rec.ID)
	p.log.Debug().Str("txn", rec.ID).Stringer("decision", d).Msg("outcome applied")
	return nil
}

// resolve answers a Resolve: the recorded state, after aborting durably a
// transaction this participant has never heard of. A read-only branch
// answers COMMITTED: it has nothing to undo and takes no part in phase 2,
// so it agrees with either outcome and must not veto a commit.
func (p *Participant) resolve(id string, term uint64) (decreev1.ParticipantState, error) {
	defer p.locks.lock(id)()
	rec, found, err := p.plog.GetTxn(id)
	if err != nil {
		return 0, storageError(err)
	}
	if !found {
		if err := p.writeTombstone(id, term); err != nil {
			return 0, err
		}
		return decreev1.ParticipantState_PARTICIPANT_STATE_ABORTED, nil
	}
	if err := p.fence(rec, fencedBy(term)); err != nil {
		return 0, err
	}
	switch rec.State {
	case txlog.PStatePrepared:
		return decreev1.ParticipantState_PARTICIPANT_STATE_PREPARED, nil
	case txlog.PStateAborted:
		return decreev1.ParticipantState_PARTICIPANT_STATE_ABORTED, nil
	default: // committed or read-only
		return decreev1.ParticipantState_PARTICIPANT_STATE_COMMITTED, nil
	}
}

// writeTombstone durably records id as aborted before it was prepared.
func (p *Participant) writeTombstone(id string, term uint64) error {
	now := p.now()
	b := p.plog.NewBatch()
	b.PutTxn(&txlog.PTxn{ID: id, State: txlog.PStateAborted, Term: term, Reason: tombstoneReason, DecidedAt: now})
	if err := p.plog.Commit(b); err != nil {
		return storageError(err)
	}
	p.log.Debug().Str("txn", id).Msg("aborted before prepare")
	return nil
}

// fence refuses a call from a stale leader and records a newer term.
func (p *Participant) fence(rec *txlog.PTxn, f fence) error {
	if err := checkTerm(rec, f); err != nil {
		return err
	}
	return p.raiseTerm(rec, f)
}

// checkTerm refuses a call whose term is below the highest the transaction
// has seen.
func checkTerm(rec *txlog.PTxn, f fence) error {
	if f.enabled && f.term < rec.Term {
		return status.Errorf(codes.FailedPrecondition, "stale term %d: transaction %q has seen term %d", f.term, rec.ID, rec.Term)
	}
	return nil
}

// raiseTerm durably records a term above the transaction's, so that the
// fence holds across restarts.
func (p *Participant) raiseTerm(rec *txlog.PTxn, f fence) error {
	if !f.enabled || f.term <= rec.Term {
		return nil
	}
	next := *rec
	next.Term = f.term
	b := p.plog.NewBatch()
	b.PutTxn(&next)
	if err := p.plog.Commit(b); err != nil {
		return storageError(err)
	}
	p.raiseInDoubtTerm(rec.ID, f.term)
	return nil
}

// violation reports a decision that contradicts the participant's record:
// two conflicting outcomes, or a Commit of a transaction never prepared.
// It is logged loudly and refused; nothing changes.
func (p *Participant) violation(id, state string, d decision) error {
	p.log.Error().Str("txn", id).Str("state", state).Stringer("decision", d).
		Msg("INVARIANT VIOLATION: decision conflicts with the participant's record; refused")
	return status.Errorf(codes.FailedPrecondition, "invariant violation: %s of transaction %q, which is %s here", d, id, state)
}
