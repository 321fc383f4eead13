package participant

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"slices"

	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
	"github.com/decree-tx/decree/txlog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// abortedReason is the NO vote's reason for a transaction aborted without a
// reason of its own.
const abortedReason = "aborted"

// prepare answers a validated Prepare: the recorded answer for a
// transaction seen before, otherwise the resource's vote, made durable
// first where it matters.
func (p *Participant) prepare(ctx context.Context, req *decreev1.PrepareRequest) (*decreev1.PrepareResponse, error) {
	id := req.GetTxnId()
	defer p.locks.lock(id)()
	rec, found, err := p.plog.GetTxn(id)
	if err != nil {
		return nil, storageError(err)
	}
	if found {
		if err := samePrepare(rec, req); err != nil {
			return nil, err
		}
		return p.repeatPrepare(rec, req.GetTerm())
	}
	return p.firstPrepare(ctx, req)
}

// samePrepare refuses a Prepare that reuses the id of a transaction this
// participant prepared with another payload or participant list. Repeating
// the first answer would tell the coordinator that this branch is prepared
// too: a transaction that reaches one participant under two addresses
// would commit with one branch applied (issue 12). Tombstones, and records
// written before digests were kept, have nothing to compare.
func samePrepare(rec *txlog.PTxn, req *decreev1.PrepareRequest) error {
	if len(rec.Participants) > 0 && !slices.Equal(rec.Participants, req.GetParticipants()) {
		return status.Errorf(codes.FailedPrecondition,
			"transaction %s was prepared here with participants %q, not %q", rec.ID, rec.Participants, req.GetParticipants())
	}
	if rec.PayloadDigest != nil && !bytes.Equal(rec.PayloadDigest, payloadDigest(req.GetPayload())) {
		return status.Errorf(codes.FailedPrecondition,
			"transaction %s was prepared here with another payload", rec.ID)
	}
	return nil
}

func payloadDigest(payload []byte) []byte {
	d := sha256.Sum256(payload)
	return d[:]
}

// repeatPrepare answers a Prepare for a transaction with a record: the
// first answer again, or the abort that overtook it.
func (p *Participant) repeatPrepare(rec *txlog.PTxn, term uint64) (*decreev1.PrepareResponse, error) {
	if err := p.fence(rec, fencedBy(term)); err != nil {
		return nil, err
	}
	switch rec.State {
	case txlog.PStatePrepared:
		return p.voteResponse(decreev1.Vote_VOTE_YES, ""), nil
	case txlog.PStateReadOnly:
		return p.voteResponse(decreev1.Vote_VOTE_READ_ONLY, ""), nil
	case txlog.PStateCommitted:
		if rec.OnePhase {
			return p.voteResponse(decreev1.Vote_VOTE_COMMITTED, ""), nil
		}
		// The coordinator has decided already; YES is what it heard.
		return p.voteResponse(decreev1.Vote_VOTE_YES, ""), nil
	default:
		reason := rec.Reason
		if reason == "" {
			reason = abortedReason
		}
		return p.voteResponse(decreev1.Vote_VOTE_NO, reason), nil
	}
}

// firstPrepare asks the resource to vote and records the vote.
func (p *Participant) firstPrepare(ctx context.Context, req *decreev1.PrepareRequest) (*decreev1.PrepareResponse, error) {
	txn := Txn{ID: req.GetTxnId(), Payload: req.GetPayload(), Participants: req.GetParticipants(), OnePhase: req.GetOnePhase()}
	b := p.plog.NewBatch()
	defer b.Discard()
	vote, reason, err := p.res.Prepare(ctx, txn, batchWriter{b})
	if err != nil {
		p.log.Warn().Err(err).Str("txn", txn.ID).Msg("resource prepare failed")
		return nil, resourceError("prepare", err)
	}
	rec := &txlog.PTxn{
		ID: txn.ID, Participants: txn.Participants, Term: req.GetTerm(),
		OnePhase: txn.OnePhase, PreparedAt: p.now(), PayloadDigest: payloadDigest(txn.Payload),
	}
	switch vote {
	case VoteYes:
		if txn.OnePhase {
			return p.commitOnePhase(ctx, b, rec)
		}
		return p.recordYes(b, rec)
	case VoteNo:
		return p.recordNo(rec, reason)
	case VoteReadOnly:
		return p.recordReadOnly(b, rec)
	default:
		return nil, status.Errorf(codes.Internal, "resource prepare returned invalid vote %v", vote)
	}
}

// recordYes makes the YES vote and the resource's writes durable, in one
// synced batch, before the vote is sent.
func (p *Participant) recordYes(b *txlog.PBatch, rec *txlog.PTxn) (*decreev1.PrepareResponse, error) {
	rec.State = txlog.PStatePrepared
	b.PutTxn(rec)
	if err := p.plog.Commit(b); err != nil {
		return nil, storageError(err)
	}
	p.addInDoubt(rec)
	p.log.Debug().Str("txn", rec.ID).Uint64("term", rec.Term).Msg("prepared")
	return p.voteResponse(decreev1.Vote_VOTE_YES, ""), nil
}

// recordNo leaves an aborted record with the reason, without the
// resource's writes, so that a repeated Prepare answers the same.
//
// The record is synced before the NO is sent. It is this participant's
// outcome of the transaction: a later Abort acknowledges on the strength
// of it, and it is the tombstone that makes a late, duplicated Prepare
// vote NO. Unsynced, a crash could erase both after the acknowledgement
// (the deterministic simulation found this).
func (p *Participant) recordNo(rec *txlog.PTxn, reason string) (*decreev1.PrepareResponse, error) {
	if reason == "" {
		reason = "resource voted no"
	}
	rec.State, rec.Reason, rec.DecidedAt = txlog.PStateAborted, reason, rec.PreparedAt
	b := p.plog.NewBatch()
	b.PutTxn(rec)
	if err := p.plog.Commit(b); err != nil {
		return nil, storageError(err)
	}
	p.log.Debug().Str("txn", rec.ID).Str("reason", reason).Msg("voted no")
	return p.voteResponse(decreev1.Vote_VOTE_NO, reason), nil
}

// recordReadOnly records a READ_ONLY vote, synced: with parallel commit a
// transaction may be committed on the strength of the durable votes, so a
// READ_ONLY answer must not turn into an abort after a crash. The
// resource's writes, if any, are dropped: a read-only branch changes
// nothing.
func (p *Participant) recordReadOnly(writes *txlog.PBatch, rec *txlog.PTxn) (*decreev1.PrepareResponse, error) {
	if n := writes.UserWrites(); n > 0 {
		p.log.Warn().Str("txn", rec.ID).Int("writes", n).Msg("resource voted read-only but wrote; writes discarded")
	}
	rec.State, rec.DecidedAt = txlog.PStateReadOnly, rec.PreparedAt
	b := p.plog.NewBatch()
	b.PutTxn(rec)
	if err := p.plog.Commit(b); err != nil {
		return nil, storageError(err)
	}
	return p.voteResponse(decreev1.Vote_VOTE_READ_ONLY, ""), nil
}

// commitOnePhase commits a transaction whose only participant this is: the
// resource's Prepare and Commit writes and the Committed record go in one
// synced batch. If the resource's Commit fails, the vote becomes NO.
func (p *Participant) commitOnePhase(ctx context.Context, b *txlog.PBatch, rec *txlog.PTxn) (*decreev1.PrepareResponse, error) {
	if err := p.res.Commit(ctx, rec.ID, batchWriter{b}); err != nil {
		p.log.Warn().Err(err).Str("txn", rec.ID).Msg("resource one-phase commit failed; voting no")
		return p.recordNo(rec, fmt.Sprintf("one-phase commit failed: %v", err))
	}
	rec.State, rec.DecidedAt = txlog.PStateCommitted, rec.PreparedAt
	b.PutTxn(rec)
	if err := p.plog.Commit(b); err != nil {
		return nil, storageError(err)
	}
	p.log.Debug().Str("txn", rec.ID).Msg("committed in one phase")
	return p.voteResponse(decreev1.Vote_VOTE_COMMITTED, ""), nil
}

// voteResponse is a Prepare's answer, naming this participant's identity
// so that the coordinator can tell two spellings of its address apart
// from two participants.
func (p *Participant) voteResponse(v decreev1.Vote, reason string) *decreev1.PrepareResponse {
	return &decreev1.PrepareResponse{Vote: v, Reason: reason, ParticipantId: p.plog.ID()}
}

// batchWriter hands a batch to the resource as a Writer, hiding the
// batch's record methods.
type batchWriter struct {
	b *txlog.PBatch
}

func (w batchWriter) Get(key []byte) ([]byte, bool, error) { return w.b.Get(key) }
func (w batchWriter) Set(key, value []byte)                { w.b.Set(key, value) }
func (w batchWriter) Delete(key []byte)                    { w.b.Delete(key) }
