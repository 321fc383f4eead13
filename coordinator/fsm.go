package coordinator

import (
	"encoding/binary"
	"fmt"
	"slices"
	"time"

	"github.com/decree-tx/decree/coordinator/internal/twopc"
	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
	"github.com/decree-tx/decree/txlog"
)

// Result is what applying one command produced, as every replica computed it.
type Result struct {
	// Outcome is the transaction's applied outcome after the command: for a
	// Decide, the first decision recorded for the id, which may differ from
	// the one proposed.
	Outcome decreev1.Outcome
	// Reason and Participants are the recorded decision's.
	Reason       string
	Participants []string
	// More is set by a Collect that stopped at its limit: expired records
	// remain, and the leader collects again without waiting a period.
	More bool
	// Index is the raft index of the entry that carried the command.
	Index uint64
	// Err is set when the command was malformed; the state did not change.
	Err error
}

// stateReader is the read side of the state machine's storage.
type stateReader interface {
	GetRecord(id string) (*txlog.Record, bool, error)
	ScanFinished(before int64, fn func(txlog.FinishedRef) bool) error
}

// horizonKey holds the retention horizon (unix nanos, big-endian): records
// finished before it were collected, so an unknown id minted before it is
// FORGOTTEN, never presumed aborted.
var horizonKey = []byte("horizon")

// applier applies the commands of one batch of committed entries. Writes go
// into one txlog.StateBatch; dirty holds the records written so far so later
// commands in the same batch see them (the batch is not readable until it
// commits); a nil entry is a deletion. Apply must be deterministic: it
// reads only the command and the replicated state, never the clock or the
// node's role.
type applier struct {
	store   stateReader
	batch   *txlog.StateBatch
	dirty   map[string]*txlog.Record
	base    int64  // the retention horizon before this batch
	horizon *int64 // a new one written in this batch
	stats   *nodeStats
	limit   int // index entries one Collect may visit
}

// newApplier starts a batch on top of the committed state, whose retention
// horizon the node keeps in memory (it changes only when Collect applies).
func newApplier(store stateReader, batch *txlog.StateBatch, horizon int64) *applier {
	return &applier{store: store, batch: batch, dirty: make(map[string]*txlog.Record), base: horizon, limit: collectLimit}
}

func (a *applier) record(id string) (*txlog.Record, error) {
	if r, ok := a.dirty[id]; ok {
		return r, nil
	}
	r, ok, err := a.store.GetRecord(id)
	if err != nil {
		return nil, fmt.Errorf("read record %q: %w", id, err)
	}
	if !ok {
		return nil, nil
	}
	return r, nil
}

func (a *applier) put(r *txlog.Record) {
	a.dirty[r.ID] = r
	a.batch.PutRecord(r)
}

// apply applies one command. A storage error is returned as error (the node
// cannot continue); a malformed command yields Result.Err and no change.
func (a *applier) apply(cmd *decreev1.Command, index uint64) (Result, error) {
	switch k := cmd.GetKind().(type) {
	case *decreev1.Command_Decide:
		return a.decide(k.Decide, index)
	case *decreev1.Command_Finished:
		return a.finished(k.Finished, index)
	case *decreev1.Command_Collect:
		return a.collect(k.Collect, index)
	case *decreev1.Command_Staged:
		return a.staged(k.Staged, index)
	default:
		return Result{Index: index, Err: fmt.Errorf("unknown command %T", k)}, nil
	}
}

// decide records the first decision for an id; later ones are no-ops and
// report the recorded outcome (first decision wins).
func (a *applier) decide(d *decreev1.Decide, index uint64) (Result, error) {
	res := Result{Index: index}
	if d.GetTxnId() == "" {
		res.Err = fmt.Errorf("decide: empty transaction id")
		return res, nil
	}
	out, err := outcomeToRecord(d.GetOutcome())
	if err != nil {
		res.Err = fmt.Errorf("decide %q: %w", d.GetTxnId(), err)
		return res, nil
	}
	r, err := a.record(d.GetTxnId())
	if err != nil {
		return res, err
	}
	if r == nil {
		// An id minted before the retention horizon may have been decided
		// and collected: deciding it again could contradict that.
		if isForgotten(d.GetTxnId(), a.currentHorizon()) {
			res.Err = fmt.Errorf("decide %q: %w", d.GetTxnId(), twopc.ErrForgotten)
			return res, nil
		}
	}
	if r != nil && r.Outcome == txlog.OutcomeUnknown && d.GetPresumed() {
		// Staged: only its participants' votes decide it (parallel commit).
		res.Participants = r.Participants
		return res, nil
	}
	if r == nil || r.Outcome == txlog.OutcomeUnknown {
		r = &txlog.Record{
			ID:           d.GetTxnId(),
			Outcome:      out,
			Participants: slices.Clone(d.GetParticipants()),
			DecidedAt:    d.GetDecidedAt(),
			Reason:       d.GetReason(),
		}
		a.put(r)
	}
	res.Outcome, res.Reason, res.Participants = outcomeFromRecord(r.Outcome), r.Reason, r.Participants
	return res, nil
}

// staged records a transaction as voting under parallel commit: a record
// without an outcome. Its result is the outcome if one was already decided
// (first decision wins), else OUTCOME_UNSPECIFIED: staged.
func (a *applier) staged(st *decreev1.Staged, index uint64) (Result, error) {
	res := Result{Index: index}
	if st.GetTxnId() == "" {
		res.Err = fmt.Errorf("staged: empty transaction id")
		return res, nil
	}
	r, err := a.record(st.GetTxnId())
	if err != nil {
		return res, err
	}
	if r == nil {
		if isForgotten(st.GetTxnId(), a.currentHorizon()) {
			res.Err = fmt.Errorf("staged %q: %w", st.GetTxnId(), twopc.ErrForgotten)
			return res, nil
		}
		r = &txlog.Record{ID: st.GetTxnId(), Participants: slices.Clone(st.GetParticipants())}
		a.put(r)
	}
	res.Outcome, res.Reason, res.Participants = outcomeFromRecord(r.Outcome), r.Reason, r.Participants
	return res, nil
}

// collectLimit bounds the finished-index entries one Collect visits, so
// that a Collect costs the same on the apply path however many records have
// expired. It must be the same on every replica: it decides which records
// one command deletes.
const collectLimit = 10_000

// collect deletes records finished before c.Before, at most a.limit of
// them, and raises the retention horizon to it (never lowers it). It reads
// the finished index from its start, never the record table; Result.More
// says expired records remain for the next Collect.
func (a *applier) collect(c *decreev1.Collect, index uint64) (Result, error) {
	start := time.Now() // for NodeStats only; the state never depends on it
	res := Result{Index: index}
	before := c.GetBefore()
	// This batch's writes are not visible to the index scan: a record
	// finished earlier in the batch is judged here, as the scan would.
	deleted := 0
	for id, r := range a.dirty {
		if r != nil && r.Finished && r.FinishedAt < before && isForgotten(id, before) {
			a.dirty[id] = nil
			a.batch.DeleteRecord(r)
			deleted++
		}
	}
	visited := 0
	err := a.store.ScanFinished(before, func(ref txlog.FinishedRef) bool {
		if visited == a.limit {
			res.More = true
			return false
		}
		visited++
		if _, ok := a.dirty[ref.ID]; ok {
			return true // deleted earlier in this batch
		}
		// The index time is the later of FinishedAt and the id's time, so
		// every entry below before is expired and its id FORGOTTEN once the
		// horizon is raised: an outcome query never presumes it aborted.
		// The check keeps that true should the two ever disagree.
		if !isForgotten(ref.ID, before) {
			return true
		}
		a.dirty[ref.ID] = nil
		a.batch.DeleteFinished(ref)
		deleted++
		return true
	})
	if err != nil {
		return res, fmt.Errorf("collect: %w", err)
	}
	if before > a.currentHorizon() {
		a.horizon = &before
		a.batch.Set(horizonKey, binary.BigEndian.AppendUint64(nil, uint64(before)))
	}
	a.stats.collected(deleted, time.Since(start))
	return res, nil
}

func (a *applier) currentHorizon() int64 {
	if a.horizon != nil {
		return *a.horizon
	}
	return a.base
}

// readHorizon reads the committed retention horizon from the store.
func readHorizon(s interface {
	GetState(key []byte) ([]byte, bool, error)
}) (int64, error) {
	v, ok, err := s.GetState(horizonKey)
	if err != nil || !ok {
		return 0, err
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("retention horizon: %d bytes, want 8", len(v))
	}
	return int64(binary.BigEndian.Uint64(v)), nil
}

// finished marks decided transactions finished; unknown ids are skipped,
// so a repeated or reordered Finished changes nothing. A staged record
// (parallel commit, no decision) is finished only by the leader that
// committed it implicitly (staged, and every YES durable), so Finished
// records its commit; any other leader could only decide COMMIT for it,
// since presumed aborts do not apply to staged records.
func (a *applier) finished(f *decreev1.Finished, index uint64) (Result, error) {
	for _, id := range f.GetTxnIds() {
		r, err := a.record(id)
		if err != nil {
			return Result{Index: index}, err
		}
		if r == nil || r.Finished {
			continue
		}
		done := *r
		if done.Outcome == txlog.OutcomeUnknown {
			done.Outcome, done.DecidedAt = txlog.OutcomeCommitted, f.GetFinishedAt()
		}
		done.Finished = true
		done.FinishedAt = f.GetFinishedAt()
		done.Acked = slices.Clone(r.Participants)
		a.put(&done)
	}
	return Result{Index: index}, nil
}

func outcomeToRecord(o decreev1.Outcome) (txlog.Outcome, error) {
	switch o {
	case decreev1.Outcome_OUTCOME_COMMITTED:
		return txlog.OutcomeCommitted, nil
	case decreev1.Outcome_OUTCOME_ABORTED:
		return txlog.OutcomeAborted, nil
	default:
		return txlog.OutcomeUnknown, fmt.Errorf("outcome %v is not a decision", o)
	}
}

func outcomeFromRecord(o txlog.Outcome) decreev1.Outcome {
	switch o {
	case txlog.OutcomeCommitted:
		return decreev1.Outcome_OUTCOME_COMMITTED
	case txlog.OutcomeAborted:
		return decreev1.Outcome_OUTCOME_ABORTED
	default:
		return decreev1.Outcome_OUTCOME_UNSPECIFIED
	}
}
