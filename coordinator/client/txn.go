package client

import (
	"context"
	"fmt"

	"google.golang.org/grpc"

	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
	"github.com/decree-tx/decree/txnspec"
)

// Branch is one participant's part of a transaction.
type Branch struct {
	// Participant is the participant's gRPC address, host:port.
	Participant string
	// Payload is handed to the participant's Resource as is.
	Payload []byte
}

// Txn is a transaction: one branch per participant.
type Txn struct {
	// ID is the idempotency key, a UUIDv7 in canonical text form; Commit
	// mints one when it is empty. Committing the same ID again returns the
	// first outcome.
	ID       string
	Branches []Branch
}

// State is a transaction's outcome as the client knows it.
type State int

const (
	// StateUnknown: the client could not learn the outcome (see ErrOutcomeUnknown).
	StateUnknown State = iota
	// StateUndecided: voting is still in progress at the leader.
	StateUndecided
	StateCommitted
	StateAborted
	// StateForgotten: the transaction is older than the cluster's retention
	// window; its outcome is gone.
	StateForgotten
)

func (s State) String() string {
	switch s {
	case StateUndecided:
		return "undecided"
	case StateCommitted:
		return "committed"
	case StateAborted:
		return "aborted"
	case StateForgotten:
		return "forgotten"
	default:
		return "unknown"
	}
}

func stateOf(s decreev1.TxnState) State {
	switch s {
	case decreev1.TxnState_TXN_STATE_UNDECIDED:
		return StateUndecided
	case decreev1.TxnState_TXN_STATE_COMMITTED:
		return StateCommitted
	case decreev1.TxnState_TXN_STATE_ABORTED:
		return StateAborted
	case decreev1.TxnState_TXN_STATE_FORGOTTEN:
		return StateForgotten
	default:
		return StateUnknown
	}
}

// decided reports whether s is a transaction's final outcome.
func (s State) decided() bool { return s == StateCommitted || s == StateAborted }

// Result is a transaction's outcome.
type Result struct {
	ID    string
	State State
	// Reason says why an aborted transaction aborted, as the cluster put it.
	Reason string
}

// Commit runs txn to its end and returns the applied outcome: StateCommitted,
// or StateAborted with the cluster's reason (an abort is not an error).
//
// Commit validates txn (errors wrap ErrInvalid), mints an ID when txn.ID is
// empty, and sends it to the preferred node, moving between nodes and backing
// off while none can act. If a call dies mid-way it asks for the outcome
// instead, which settles an undecided transaction. Errors the cluster
// returns for a bad request are returned at once, wrapped, with their gRPC
// status intact. When ctx ends before an outcome is known, the error wraps
// both ErrOutcomeUnknown and ctx.Err(), and the Result carries the ID.
func (c *Client) Commit(ctx context.Context, txn Txn) (Result, error) {
	req, parts, err := c.commitRequest(txn)
	if err != nil {
		return Result{ID: req.GetTxnId()}, err
	}
	id := req.GetTxnId()
	var resp *decreev1.CommitResponse
	err = c.until(ctx, "commit", false, func(ctx context.Context, cc decreev1.CoordinatorClient, opts ...grpc.CallOption) error {
		r, err := cc.Commit(ctx, req, opts...)
		resp = r
		return err
	})
	switch {
	case err == nil && resp.GetTxnId() != id:
		c.log.Warn().Str("txn", id).Str("answered", resp.GetTxnId()).Msg("commit answered for another transaction; resolving")
	case err == nil:
		return c.settled(ctx, Result{ID: id, State: stateOf(resp.GetState()), Reason: resp.GetReason()}, parts)
	case classify(err) == classFinal:
		return Result{ID: id}, fmt.Errorf("commit %s: %w", id, err)
	case isInterrupted(err):
		return Result{ID: id}, fmt.Errorf("commit %s: %w: %w", id, ErrOutcomeUnknown, err)
	default:
		c.log.Warn().Str("txn", id).Err(err).Msg("commit failed mid-way; resolving its outcome")
	}
	return c.resolve(ctx, id, parts)
}

// settled returns a decided Commit answer, and resolves any other.
func (c *Client) settled(ctx context.Context, res Result, parts []string) (Result, error) {
	switch {
	case res.State.decided():
		return res, nil
	case res.State == StateForgotten:
		return res, fmt.Errorf("commit %s: %w: the cluster has forgotten it", res.ID, ErrOutcomeUnknown)
	}
	return c.resolve(ctx, res.ID, parts)
}

// resolve asks for the outcome of a transaction whose Commit call failed.
func (c *Client) resolve(ctx context.Context, id string, parts []string) (Result, error) {
	start := c.opts.Clock.Now()
	res, err := c.await(ctx, id, parts)
	if err != nil {
		return Result{ID: id}, fmt.Errorf("commit %s: %w: %w", id, ErrOutcomeUnknown, err)
	}
	c.log.Info().Str("txn", id).Stringer("state", res.State).Dur("after", c.opts.Clock.Now().Sub(start)).Msg("resolved outcome")
	if res.State == StateForgotten {
		return res, fmt.Errorf("commit %s: %w: the cluster has forgotten it", id, ErrOutcomeUnknown)
	}
	return res, nil
}

func isInterrupted(err error) bool {
	_, ok := err.(*interrupted)
	return ok
}

// commitRequest validates txn, mints its ID if needed, and returns the
// request and the participants.
func (c *Client) commitRequest(txn Txn) (*decreev1.CommitRequest, []string, error) {
	req := &decreev1.CommitRequest{TxnId: txn.ID}
	parts := make([]string, len(txn.Branches))
	for i, b := range txn.Branches {
		parts[i] = b.Participant
	}
	if len(parts) == 0 {
		return req, nil, fmt.Errorf("%w: transaction has no branches", ErrInvalid)
	}
	if err := checkParticipants(parts); err != nil {
		return req, nil, err
	}
	if req.TxnId == "" {
		id, err := c.opts.NewID()
		if err != nil {
			return req, nil, fmt.Errorf("mint transaction id: %w", err)
		}
		req.TxnId = id
	}
	if err := checkID(req.TxnId); err != nil {
		return req, nil, err
	}
	for _, b := range txn.Branches {
		req.Branches = append(req.Branches, &decreev1.Branch{Participant: b.Participant, Payload: b.Payload})
	}
	return req, parts, nil
}

func checkParticipants(parts []string) error {
	seen := make(map[string]bool, len(parts))
	for i, p := range parts {
		if p == "" {
			return fmt.Errorf("%w: branch %d has no participant", ErrInvalid, i)
		}
		if err := checkHostPort(p); err != nil {
			return fmt.Errorf("%w: participant %q: %v", ErrInvalid, p, err)
		}
		if seen[p] {
			return fmt.Errorf("%w: participant %q appears twice", ErrInvalid, p)
		}
		seen[p] = true
	}
	return nil
}

// checkID accepts what the coordinator accepts as an id: a UUIDv7 in
// canonical form.
func checkID(id string) error {
	if _, err := txnspec.ParseID(id); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return nil
}
