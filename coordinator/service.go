package coordinator

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
	"github.com/decree-tx/decree/txlog"
	"github.com/decree-tx/decree/txnspec"
)

const (
	// forwardedKey marks a call a follower forwarded, so a node that is not
	// leader either does not forward it again (no loops).
	forwardedKey = "decree-forwarded"
	// LeaderHintKey names the leader's address in a response (see
	// decreev1.LeaderHintKey, the wire protocol's one definition).
	LeaderHintKey = decreev1.LeaderHintKey
)

// Register adds the Coordinator service to s.
func (d *Driver) Register(s *grpc.Server) {
	decreev1.RegisterCoordinatorServer(s, &coordinatorService{d: d})
}

type coordinatorService struct {
	decreev1.UnimplementedCoordinatorServer
	d *Driver
}

func (s *coordinatorService) Commit(ctx context.Context, req *decreev1.CommitRequest) (*decreev1.CommitResponse, error) {
	branches, err := s.d.validateCommit(req)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if resp, done, err := forward(ctx, s.d, req, decreev1.CoordinatorClient.Commit); done {
		return resp, err
	}
	staged := false
	if r, ok, err := s.d.node.Record(req.GetTxnId()); err != nil {
		return nil, status.Errorf(codes.Internal, "read record: %v", err)
	} else if ok && r.Outcome != txlog.OutcomeUnknown {
		return &decreev1.CommitResponse{TxnId: r.ID, State: stateOf(r.Outcome), Reason: r.Reason}, nil
	} else if ok {
		staged = true // settle it by its votes; never vote again
	}
	if s.d.forgotten(req.GetTxnId()) {
		return nil, status.Errorf(codes.FailedPrecondition, "transaction %s is older than the retention horizon", req.GetTxnId())
	}
	r, err := s.d.runCommit(ctx, req.GetTxnId(), branches, staged)
	if err != nil {
		return nil, s.d.statusOf(ctx, err)
	}
	return &decreev1.CommitResponse{TxnId: r.ID, State: stateOfOutcome(r.Outcome), Reason: r.Reason}, nil
}

// runCommit hands the transaction to the core and waits for its reply.
func (d *Driver) runCommit(ctx context.Context, id string, branches []BranchSpec, staged bool) (Reply, error) {
	req, ch := d.await()
	defer d.forget(req)
	d.feed(ClientCommit{Req: req, ID: id, Branches: branches, Staged: staged})
	select {
	case r := <-ch:
		return r, r.Err
	case <-ctx.Done():
		return Reply{}, ctx.Err()
	case <-d.stopc:
		return Reply{}, ErrStopped
	}
}

func (s *coordinatorService) Outcome(ctx context.Context, req *decreev1.OutcomeRequest) (*decreev1.OutcomeResponse, error) {
	if err := s.d.validateOutcome(req); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if resp, done, err := forward(ctx, s.d, req, decreev1.CoordinatorClient.Outcome); done {
		return resp, err
	}
	id := req.GetTxnId()
	if r, ok, err := s.d.node.Record(id); err != nil {
		return nil, status.Errorf(codes.Internal, "read record: %v", err)
	} else if ok && r.Outcome != txlog.OutcomeUnknown {
		return outcomeResponse(r), nil
	} else if ok {
		return nil, s.d.resolveStaged(id, r.Participants)
	}
	if s.d.forgotten(id) {
		return &decreev1.OutcomeResponse{TxnId: id, State: decreev1.TxnState_TXN_STATE_FORGOTTEN}, nil
	}
	if len(req.GetParticipants()) == 0 {
		// It may be a one-phase transaction that committed at its only
		// participant: presuming abort without asking could contradict it.
		return nil, status.Errorf(codes.InvalidArgument,
			"transaction %s has no record here: name its participants to settle it (a one-phase transaction's outcome lives at its participant)", id)
	}
	res, err := s.d.settle(ctx, id, req.GetParticipants())
	if errors.Is(err, ErrForgotten) {
		return &decreev1.OutcomeResponse{TxnId: id, State: decreev1.TxnState_TXN_STATE_FORGOTTEN}, nil
	}
	if err != nil {
		return nil, s.d.statusOf(ctx, err)
	}
	if res.Outcome == decreev1.Outcome_OUTCOME_UNSPECIFIED {
		// Staged meanwhile (parallel commit): its participants' votes decide it.
		return nil, s.d.resolveStaged(id, res.Participants)
	}
	return &decreev1.OutcomeResponse{TxnId: id, State: stateOfOutcome(res.Outcome), Reason: res.Reason,
		Participants: res.Participants}, nil
}

// settle decides a transaction the cluster has no record of (an
// unspecified outcome means it was staged meanwhile). Presumed
// abort, made durable: the abort is applied before anyone hears it. A
// one-phase transaction's outcome lives at its only participant, so that
// one is asked (aborting there if it never heard of it) and its answer is
// recorded instead. The decision's phase 2 then runs like any other.
func (d *Driver) settle(ctx context.Context, id string, participants []string) (Result, error) {
	term := d.term.Load()
	var st decreev1.ParticipantState
	if len(participants) == 1 {
		var err error
		if st, err = d.resolveAt(ctx, participants[0], id, term); err != nil {
			if notParticipant(err) {
				return Result{}, fmt.Errorf("%w: %s serves no participant API: %w", errNotParticipant, participants[0], err)
			}
			return Result{}, fmt.Errorf("ask the one-phase participant %s: %w", participants[0], err)
		}
	}
	outcome, reason := settleDecision(st)
	cmd := decideCommand(id, outcome, participants, reason, d.cfg.Clock.Now().UnixNano())
	// Presumed either way: a staged record (parallel commit) must be
	// decided by all its participants' votes, never by one caller's list.
	cmd.GetDecide().Presumed = true
	res, err := d.propose(ctx, cmd)
	if err != nil || res.Outcome == decreev1.Outcome_OUTCOME_UNSPECIFIED {
		return res, err
	}
	d.feed(DecisionApplied{ID: id, Term: term, Outcome: res.Outcome, Reason: res.Reason, Participants: res.Participants})
	return res, nil
}

// errNotParticipant: an outcome query named, as a one-phase transaction's
// only participant, an address that is not a participant. Nothing is
// decided: its outcome cannot be learned there.
var errNotParticipant = errors.New("not a participant")

// resolveStaged hands a staged transaction without a decision to the core,
// which asks its participants, and tells the caller to ask again.
func (d *Driver) resolveStaged(id string, participants []string) error {
	d.feed(RecoverStaged{ID: id, Participants: participants})
	return status.Errorf(codes.Unavailable, "transaction %s is staged and being settled at its participants; ask again", id)
}

// settleDecision is the decision for an id the cluster has no record of:
// presumed abort, unless its only participant (one-phase, asked with
// Resolve; st is unspecified otherwise) says it committed.
func settleDecision(st decreev1.ParticipantState) (decreev1.Outcome, string) {
	switch st {
	case decreev1.ParticipantState_PARTICIPANT_STATE_COMMITTED:
		return decreev1.Outcome_OUTCOME_COMMITTED, ""
	case decreev1.ParticipantState_PARTICIPANT_STATE_ABORTED:
		return decreev1.Outcome_OUTCOME_ABORTED, "aborted at its only participant"
	default:
		return decreev1.Outcome_OUTCOME_ABORTED, "presumed abort: no decision was recorded"
	}
}

func (d *Driver) resolveAt(ctx context.Context, participant, id string, term uint64) (decreev1.ParticipantState, error) {
	r, err := d.mux.callSync(ctx, participant, resolveCall(id, term), d.cfg.CallTimeout)
	if err != nil {
		return 0, err
	}
	return r.GetResolve().GetState(), nil
}

func (s *coordinatorService) ListTransactions(ctx context.Context, req *decreev1.ListTransactionsRequest) (*decreev1.ListTransactionsResponse, error) {
	if _, known := decreev1.TxnFilter_name[int32(req.GetFilter())]; !known {
		return nil, invalidArgument("unknown transaction filter %d", req.GetFilter())
	}
	if resp, done, err := forward(ctx, s.d, req, decreev1.CoordinatorClient.ListTransactions); done {
		return resp, err
	}
	limit := int(req.GetLimit())
	if limit <= 0 || limit > s.d.cfg.MaxList {
		limit = s.d.cfg.MaxList
	}
	resp := &decreev1.ListTransactionsResponse{}
	filter := req.GetFilter()
	if filter == decreev1.TxnFilter_TXN_FILTER_ALL || filter == decreev1.TxnFilter_TXN_FILTER_UNDECIDED {
		und, err := s.d.undecided(ctx)
		if err != nil {
			return nil, s.d.statusOf(ctx, err)
		}
		for _, u := range und {
			resp.Txns = append(resp.Txns, &decreev1.TxnInfo{TxnId: u.ID, State: decreev1.TxnState_TXN_STATE_UNDECIDED, Participants: u.Participants})
		}
	}
	if filter == decreev1.TxnFilter_TXN_FILTER_UNDECIDED {
		return truncate(resp, limit), nil
	}
	scan := s.d.node.ScanRecords
	var sends map[string]int
	if filter == decreev1.TxnFilter_TXN_FILTER_UNFINISHED {
		scan = s.d.node.store.ScanUnfinished // the index, not the whole table
		var err error
		if sends, err = s.d.decisionSends(ctx); err != nil {
			return nil, s.d.statusOf(ctx, err)
		}
	}
	err := scan(func(r *txlog.Record) bool {
		if matches(filter, r) {
			info := txnInfo(r)
			info.DecisionSends = uint32(sends[r.ID])
			resp.Txns = append(resp.Txns, info)
		}
		return len(resp.Txns) < limit
	})
	if err != nil {
		return nil, status.Errorf(codes.Internal, "scan records: %v", err)
	}
	return truncate(resp, limit), nil
}

// decisionSends maps each transaction in phase 2 to the deliveries of its
// decision this leader made.
func (d *Driver) decisionSends(ctx context.Context) (map[string]int, error) {
	backlog, err := d.phase2Backlog(ctx)
	if err != nil {
		return nil, err
	}
	sends := make(map[string]int, len(backlog))
	for _, t := range backlog {
		sends[t.ID] = t.Sends
	}
	return sends, nil
}

func truncate(resp *decreev1.ListTransactionsResponse, limit int) *decreev1.ListTransactionsResponse {
	if len(resp.Txns) > limit {
		resp.Txns = resp.Txns[:limit]
	}
	return resp
}

func matches(f decreev1.TxnFilter, r *txlog.Record) bool {
	switch f {
	case decreev1.TxnFilter_TXN_FILTER_COMMITTED:
		return r.Outcome == txlog.OutcomeCommitted
	case decreev1.TxnFilter_TXN_FILTER_ABORTED:
		return r.Outcome == txlog.OutcomeAborted
	case decreev1.TxnFilter_TXN_FILTER_UNFINISHED:
		return !r.Finished
	default:
		return true
	}
}

// forward is the one forwarding path of the Coordinator service: on a
// follower it sends req to the leader with call (a CoordinatorClient
// method), marked as forwarded and under the caller's context, so its
// deadline and cancellation reach the leader; it returns the leader's
// answer, or why there is none, with done set. On the leader done is false
// and the caller serves the request itself. Requests are validated before
// forwarding: a bad one is refused where it arrived, without a hop.
func forward[Req, Resp any](ctx context.Context, d *Driver, req Req,
	call func(decreev1.CoordinatorClient, context.Context, Req, ...grpc.CallOption) (Resp, error),
) (resp Resp, done bool, err error) {
	fwd, err := d.forwarder(ctx)
	if err != nil {
		return resp, true, err
	}
	if fwd == nil {
		return resp, false, nil
	}
	resp, err = call(fwd, forwardCtx(ctx), req)
	return resp, true, err
}

func (d *Driver) forgotten(id string) bool { return isForgotten(id, d.node.horizon.Load()) }

// forwarder returns a client for the leader when this node is not the
// leader, nil when it should serve the call itself, or an Unavailable
// status (with a leader hint when one is known) when it can do neither.
func (d *Driver) forwarder(ctx context.Context) (decreev1.CoordinatorClient, error) {
	if d.leader.Load() {
		return nil, nil
	}
	st := d.node.Status()
	addr, known := d.node.cfg.Peers[st.Leader]
	if st.Leader == 0 || !known {
		return nil, status.Error(codes.Unavailable, "no coordinator leader is known; retry shortly")
	}
	if st.Leader == d.node.ID() && d.awaitLeadership(ctx) {
		return nil, nil
	}
	if st.Leader == d.node.ID() || isForwarded(ctx) {
		return nil, d.unavailable(ctx, "leadership is changing; retry")
	}
	conn, err := d.conns.get(addr)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "cannot reach leader %d at %s: %v", st.Leader, addr, err)
	}
	// Name the leader so the client goes there directly next time.
	_ = grpc.SetHeader(ctx, metadata.Pairs(LeaderHintKey, addr))
	return decreev1.NewCoordinatorClient(conn), nil
}

// awaitLeadership waits a few driver ticks for the driver to take up the
// leadership raft just gave this node, rather than bounce the caller.
func (d *Driver) awaitLeadership(ctx context.Context) bool {
	tickc, stop := d.cfg.Clock.NewTicker(d.cfg.CoreTickInterval)
	defer stop()
	for range 5 {
		select {
		case <-tickc:
		case <-ctx.Done():
			return false
		}
		if d.leader.Load() {
			return true
		}
	}
	return false
}

func isForwarded(ctx context.Context) bool {
	md, ok := metadata.FromIncomingContext(ctx)
	return ok && len(md.Get(forwardedKey)) > 0
}

func forwardCtx(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, forwardedKey, "1")
}

// unavailable builds an Unavailable status and names the leader, if any,
// in the LeaderHintKey trailer.
func (d *Driver) unavailable(ctx context.Context, msg string) error {
	if st := d.node.Status(); st.Leader != 0 {
		if addr, ok := d.node.cfg.Peers[st.Leader]; ok {
			_ = grpc.SetTrailer(ctx, metadata.Pairs(LeaderHintKey, addr))
		}
	}
	return status.Error(codes.Unavailable, msg)
}

// statusOf maps driver and node errors to gRPC statuses.
func (d *Driver) statusOf(ctx context.Context, err error) error {
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, "deadline exceeded before the outcome was known; ask Outcome")
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "call cancelled; ask Outcome")
	case errors.Is(err, ErrNotLeader), errors.Is(err, ErrNoLeader), errors.Is(err, ErrStopped):
		return d.unavailable(ctx, err.Error())
	case errors.Is(err, ErrOverloaded):
		return status.Error(codes.ResourceExhausted, err.Error())
	case errors.Is(err, errNotParticipant):
		return status.Error(codes.FailedPrecondition, err.Error())
	default:
		return status.Error(codes.Unavailable, err.Error())
	}
}

// limits are the request limits this node enforces, shared with the
// participant SDK's.
func (d *Driver) limits() txnspec.Limits {
	return txnspec.Limits{MaxParticipants: d.cfg.MaxBranches, MaxPayload: d.cfg.MaxPayload}
}

func (d *Driver) validateCommit(req *decreev1.CommitRequest) ([]BranchSpec, error) {
	if _, err := txnspec.ParseID(req.GetTxnId()); err != nil {
		return nil, err
	}
	bs := req.GetBranches()
	parts := make([]string, len(bs))
	for i, b := range bs {
		parts[i] = b.GetParticipant()
	}
	if err := d.limits().CheckParticipants(parts); err != nil {
		return nil, fmt.Errorf("branches: %w", err)
	}
	out := make([]BranchSpec, len(bs))
	for i, b := range bs {
		if err := d.limits().CheckPayload(len(b.GetPayload())); err != nil {
			return nil, fmt.Errorf("branch %d: %w", i, err)
		}
		out[i] = BranchSpec{Participant: parts[i], Payload: b.GetPayload()}
	}
	return out, nil
}

func (d *Driver) validateOutcome(req *decreev1.OutcomeRequest) error {
	if _, err := txnspec.ParseID(req.GetTxnId()); err != nil {
		return err
	}
	if len(req.GetParticipants()) == 0 {
		return nil // a record, if any, names them
	}
	return d.limits().CheckParticipants(req.GetParticipants())
}

func stateOf(o txlog.Outcome) decreev1.TxnState { return stateOfOutcome(outcomeFromRecord(o)) }

func stateOfOutcome(o decreev1.Outcome) decreev1.TxnState {
	switch o {
	case decreev1.Outcome_OUTCOME_COMMITTED:
		return decreev1.TxnState_TXN_STATE_COMMITTED
	case decreev1.Outcome_OUTCOME_ABORTED:
		return decreev1.TxnState_TXN_STATE_ABORTED
	default:
		return decreev1.TxnState_TXN_STATE_UNDECIDED
	}
}

func outcomeResponse(r *txlog.Record) *decreev1.OutcomeResponse {
	return &decreev1.OutcomeResponse{TxnId: r.ID, State: stateOf(r.Outcome), Reason: r.Reason,
		Participants: r.Participants, Finished: r.Finished, DecidedAt: r.DecidedAt}
}

func txnInfo(r *txlog.Record) *decreev1.TxnInfo {
	return &decreev1.TxnInfo{TxnId: r.ID, State: stateOf(r.Outcome), Participants: r.Participants,
		Acked: r.Acked, Finished: r.Finished, DecidedAt: r.DecidedAt, Reason: r.Reason}
}
