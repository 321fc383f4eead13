package client

import (
	"context"
	"fmt"
	"math"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
)

// Outcome returns the outcome of transaction id: StateCommitted,
// StateAborted, or StateForgotten when it is older than the cluster's
// retention window. Asking settles the transaction: an id the cluster has no
// record of is aborted durably first (presumed abort). Pass the transaction's
// participants when known: a one-phase transaction's outcome lives at its
// only participant.
//
// Outcome retries across nodes, and keeps asking while the transaction is
// still being voted on, until ctx ends; then the error wraps
// ErrOutcomeUnknown and ctx.Err(), and the Result holds the last state seen.
func (c *Client) Outcome(ctx context.Context, id string, participants ...string) (Result, error) {
	if err := checkID(id); err != nil {
		return Result{ID: id}, err
	}
	if err := checkParticipants(participants); err != nil {
		return Result{ID: id}, err
	}
	res, err := c.await(ctx, id, participants)
	switch {
	case err == nil:
		return res, nil
	case isInterrupted(err):
		return res, fmt.Errorf("outcome %s: %w: %w", id, ErrOutcomeUnknown, err)
	default:
		return res, fmt.Errorf("outcome %s: %w", id, err)
	}
}

// await asks for id's outcome until it is decided or forgotten, backing off
// while the transaction is undecided.
func (c *Client) await(ctx context.Context, id string, parts []string) (Result, error) {
	b := c.newBackoff()
	for {
		res, err := c.outcomeOnce(ctx, id, parts)
		if err != nil || res.State.decided() || res.State == StateForgotten {
			return res, err
		}
		d := b.Next()
		c.log.Debug().Str("txn", id).Stringer("state", res.State).Dur("backoff", d).Msg("outcome not decided yet")
		if err := c.sleep(ctx, d); err != nil {
			return res, &interrupted{ctx: err}
		}
	}
}

func (c *Client) outcomeOnce(ctx context.Context, id string, parts []string) (Result, error) {
	req := &decreev1.OutcomeRequest{TxnId: id, Participants: parts}
	var resp *decreev1.OutcomeResponse
	err := c.until(ctx, "outcome", true, func(ctx context.Context, cc decreev1.CoordinatorClient, opts ...grpc.CallOption) error {
		r, err := cc.Outcome(ctx, req, opts...)
		if err == nil && r.GetTxnId() != id {
			return status.Errorf(codes.Internal, "outcome answered for transaction %q", r.GetTxnId())
		}
		resp = r
		return err
	})
	if err != nil {
		return Result{ID: id}, err
	}
	return Result{ID: id, State: stateOf(resp.GetState()), Reason: resp.GetReason()}, nil
}

// Filter selects the transactions List returns.
type Filter int

const (
	FilterAll Filter = iota
	FilterUndecided
	FilterCommitted
	FilterAborted
	// FilterUnfinished: decided, but not every participant has acknowledged
	// phase 2 yet.
	FilterUnfinished
)

var filterNames = [...]string{"all", "undecided", "committed", "aborted", "unfinished"}

func (f Filter) String() string {
	if f < 0 || int(f) >= len(filterNames) {
		return fmt.Sprintf("Filter(%d)", int(f))
	}
	return filterNames[f]
}

// ParseFilter parses a Filter's name: all, undecided, committed, aborted or
// unfinished.
func ParseFilter(s string) (Filter, error) {
	for i, name := range filterNames {
		if s == name {
			return Filter(i), nil
		}
	}
	return 0, fmt.Errorf("%w: unknown filter %q", ErrInvalid, s)
}

func (f Filter) proto() (decreev1.TxnFilter, error) {
	switch f {
	case FilterAll:
		return decreev1.TxnFilter_TXN_FILTER_ALL, nil
	case FilterUndecided:
		return decreev1.TxnFilter_TXN_FILTER_UNDECIDED, nil
	case FilterCommitted:
		return decreev1.TxnFilter_TXN_FILTER_COMMITTED, nil
	case FilterAborted:
		return decreev1.TxnFilter_TXN_FILTER_ABORTED, nil
	case FilterUnfinished:
		return decreev1.TxnFilter_TXN_FILTER_UNFINISHED, nil
	}
	return 0, fmt.Errorf("%w: unknown filter %v", ErrInvalid, f)
}

// TxnInfo describes one transaction the cluster holds.
type TxnInfo struct {
	ID           string
	State        State
	Participants []string
	// Acked lists the participants that acknowledged phase 2.
	Acked    []string
	Finished bool
	// DecidedAt is the deciding leader's clock; zero while undecided.
	DecidedAt time.Time
	Reason    string
	// DecisionSends counts the leader's deliveries of the decision, for
	// an unfinished transaction listed by the leader that drives it.
	DecisionSends int
}

// List returns up to limit transactions matching filter (limit 0: the
// server's default), retrying across nodes until ctx ends.
func (c *Client) List(ctx context.Context, filter Filter, limit int) ([]TxnInfo, error) {
	f, err := filter.proto()
	if err != nil {
		return nil, err
	}
	if limit < 0 {
		return nil, fmt.Errorf("%w: negative limit %d", ErrInvalid, limit)
	}
	req := &decreev1.ListTransactionsRequest{Filter: f, Limit: uint32(min(limit, math.MaxUint32))}
	var resp *decreev1.ListTransactionsResponse
	err = c.until(ctx, "list", true, func(ctx context.Context, cc decreev1.CoordinatorClient, opts ...grpc.CallOption) error {
		r, err := cc.ListTransactions(ctx, req, opts...)
		resp = r
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list transactions: %w", err)
	}
	txns := make([]TxnInfo, 0, len(resp.GetTxns()))
	for _, t := range resp.GetTxns() {
		txns = append(txns, txnInfo(t))
	}
	return txns, nil
}

func txnInfo(t *decreev1.TxnInfo) TxnInfo {
	info := TxnInfo{
		ID:           t.GetTxnId(),
		State:        stateOf(t.GetState()),
		Participants: t.GetParticipants(),
		Acked:        t.GetAcked(),
		Finished:     t.GetFinished(),
		Reason:       t.GetReason(),

		DecisionSends: int(t.GetDecisionSends()),
	}
	if ns := t.GetDecidedAt(); ns != 0 {
		info.DecidedAt = time.Unix(0, ns)
	}
	return info
}
