package coordinator

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/decree-tx/decree/coordinator/internal/partcall"
	"github.com/decree-tx/decree/coordinator/internal/twopc"
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

// The handlers only translate: each starts its request with the
// Driver's serve method, which answers through a callback (so that the
// simulation runs the same code without blocking), and waits.

func (s *coordinatorService) Commit(ctx context.Context, req *decreev1.CommitRequest) (*decreev1.CommitResponse, error) {
	return awaitAnswer(ctx, s.d, func(done func(*decreev1.CommitResponse, error)) uint64 {
		return s.d.serveCommit(ctx, req, done)
	})
}

func (s *coordinatorService) Outcome(ctx context.Context, req *decreev1.OutcomeRequest) (*decreev1.OutcomeResponse, error) {
	return awaitAnswer(ctx, s.d, func(done func(*decreev1.OutcomeResponse, error)) uint64 {
		return s.d.serveOutcome(ctx, req, done)
	})
}

func (s *coordinatorService) ListTransactions(ctx context.Context, req *decreev1.ListTransactionsRequest) (*decreev1.ListTransactionsResponse, error) {
	return awaitAnswer(ctx, s.d, func(done func(*decreev1.ListTransactionsResponse, error)) uint64 {
		s.d.serveList(ctx, req, done)
		return 0
	})
}

// serveCommit validates a Commit, then forwards it to the leader or hands
// it to the core. done gets the answer exactly once; the request id is for
// forget (0 when there is no waiter to forget).
func (d *Driver) serveCommit(ctx context.Context, req *decreev1.CommitRequest, done func(*decreev1.CommitResponse, error)) uint64 {
	branches, err := d.validateCommit(req)
	if err != nil {
		done(nil, status.Error(codes.InvalidArgument, err.Error()))
		return 0
	}
	if forwardedTo(d, ctx, func(l leaderLink, addr string) { l.Commit(forwardCtx(ctx), addr, req, done) }, done) {
		return 0
	}
	return d.commit(req.GetTxnId(), branches, done)
}

// serveOutcome validates an Outcome query, then forwards it to the leader
// or hands it to the core.
func (d *Driver) serveOutcome(ctx context.Context, req *decreev1.OutcomeRequest, done func(*decreev1.OutcomeResponse, error)) uint64 {
	if err := d.validateOutcome(req); err != nil {
		done(nil, status.Error(codes.InvalidArgument, err.Error()))
		return 0
	}
	if forwardedTo(d, ctx, func(l leaderLink, addr string) { l.Outcome(forwardCtx(ctx), addr, req, done) }, done) {
		return 0
	}
	return d.outcome(req.GetTxnId(), req.GetParticipants(), done)
}

// serveList validates a ListTransactions, then forwards it to the leader
// or answers it from the core and the log.
func (d *Driver) serveList(ctx context.Context, req *decreev1.ListTransactionsRequest, done func(*decreev1.ListTransactionsResponse, error)) {
	if _, known := decreev1.TxnFilter_name[int32(req.GetFilter())]; !known {
		done(nil, invalidArgument("unknown transaction filter %d", req.GetFilter()))
		return
	}
	if forwardedTo(d, ctx, func(l leaderLink, addr string) { l.ListTransactions(forwardCtx(ctx), addr, req, done) }, done) {
		return
	}
	done(d.listTransactions(ctx, req))
}

// commit hands a validated Commit to the core, with what the log holds for
// its id; done gets the response, or the core's error (statusOf maps it).
// It returns the request id (0 if done already ran).
func (d *Driver) commit(id string, branches []twopc.BranchSpec, done func(*decreev1.CommitResponse, error)) uint64 {
	logged, err := d.logged(id)
	if err != nil {
		done(nil, err)
		return 0
	}
	return d.submit(func(req uint64) twopc.Event {
		return twopc.ClientCommit{Req: req, ID: id, Branches: branches, Logged: logged}
	}, func(r twopc.Reply) {
		if r.Err != nil {
			done(nil, r.Err)
			return
		}
		done(&decreev1.CommitResponse{TxnId: id, State: stateOfOutcome(r.Outcome), Reason: r.Reason}, nil)
	})
}

// outcome hands a validated Outcome query to the core, with what the log
// holds for its id; done gets the response, or the core's error.
func (d *Driver) outcome(id string, participants []string, done func(*decreev1.OutcomeResponse, error)) uint64 {
	logged, err := d.logged(id)
	if err != nil {
		done(nil, err)
		return 0
	}
	return d.submit(func(req uint64) twopc.Event {
		return twopc.ClientOutcome{Req: req, ID: id, Participants: participants, Logged: logged}
	}, func(r twopc.Reply) {
		switch {
		case errors.Is(r.Err, twopc.ErrForgotten):
			done(&decreev1.OutcomeResponse{TxnId: id, State: decreev1.TxnState_TXN_STATE_FORGOTTEN}, nil)
		case r.Err != nil:
			done(nil, r.Err)
		default:
			done(&decreev1.OutcomeResponse{TxnId: id, State: stateOfOutcome(r.Outcome), Reason: r.Reason,
				Participants: r.Participants, Finished: r.Finished, DecidedAt: r.DecidedAt}, nil)
		}
	})
}

// logged reads what the decision log holds for id, for the core to judge.
func (d *Driver) logged(id string) (twopc.Logged, error) {
	r, ok, err := d.rlog.Record(id)
	switch {
	case err != nil:
		return twopc.Logged{}, status.Errorf(codes.Internal, "read record: %v", err)
	case !ok:
		return twopc.Logged{Forgotten: isForgotten(id, d.rlog.Horizon())}, nil
	}
	return twopc.Logged{Found: true, Outcome: outcomeFromRecord(r.Outcome), Reason: r.Reason, Participants: r.Participants,
		Finished: r.Finished, DecidedAt: r.DecidedAt}, nil
}

// awaitAnswer starts a request that answers through its done, and waits
// for the answer, for the caller to give up, or for the driver to stop;
// errors become gRPC statuses.
func awaitAnswer[T any](ctx context.Context, d *Driver, start func(done func(T, error)) uint64) (T, error) {
	type answer struct {
		v   T
		err error
	}
	ch := make(chan answer, 1)
	req := start(func(v T, err error) { ch <- answer{v, err} })
	var err error
	select {
	case a := <-ch:
		if a.err == nil {
			return a.v, nil
		}
		err = a.err
	case <-ctx.Done():
		err = ctx.Err()
	case <-d.stopc:
		err = ErrStopped
	}
	d.forget(req)
	var zero T
	return zero, d.statusOf(ctx, err)
}

// listTransactions answers a ListTransactions on the leader.
func (d *Driver) listTransactions(ctx context.Context, req *decreev1.ListTransactionsRequest) (*decreev1.ListTransactionsResponse, error) {
	limit := int(req.GetLimit())
	if limit <= 0 || limit > d.cfg.MaxList {
		limit = d.cfg.MaxList
	}
	resp := &decreev1.ListTransactionsResponse{}
	filter := req.GetFilter()
	if filter == decreev1.TxnFilter_TXN_FILTER_ALL || filter == decreev1.TxnFilter_TXN_FILTER_UNDECIDED {
		und, err := d.undecided(ctx)
		if err != nil {
			return nil, d.statusOf(ctx, err)
		}
		for _, u := range und {
			resp.Txns = append(resp.Txns, &decreev1.TxnInfo{TxnId: u.ID, State: decreev1.TxnState_TXN_STATE_UNDECIDED, Participants: u.Participants})
		}
	}
	if filter == decreev1.TxnFilter_TXN_FILTER_UNDECIDED {
		return truncate(resp, limit), nil
	}
	scan := d.rlog.ScanRecords
	var sends map[string]int
	if filter == decreev1.TxnFilter_TXN_FILTER_UNFINISHED {
		scan = d.rlog.ScanUnfinished // the index, not the whole table
		var err error
		if sends, err = d.decisionSends(ctx); err != nil {
			return nil, d.statusOf(ctx, err)
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

// leaderLink is the edge through which a follower forwards a request to
// the leader at addr: gRPC in production (grpcLeaderLink), the simulated
// network in the simulation. ctx carries the forwarded mark and the
// caller's deadline. done runs exactly once, on any goroutine.
type leaderLink interface {
	Commit(ctx context.Context, addr string, req *decreev1.CommitRequest, done func(*decreev1.CommitResponse, error))
	Outcome(ctx context.Context, addr string, req *decreev1.OutcomeRequest, done func(*decreev1.OutcomeResponse, error))
	ListTransactions(ctx context.Context, addr string, req *decreev1.ListTransactionsRequest, done func(*decreev1.ListTransactionsResponse, error))
}

// forwardedTo is the one forwarding path of the Coordinator service. On the
// leader it reports false, and the caller serves the request itself. On a
// follower it sends the request to the leader with send (marked as
// forwarded, under the caller's context, so that its deadline and
// cancellation reach the leader) or, when it can do neither, ends it with
// an Unavailable status through fail; it reports true. Requests are
// validated before: a bad one is refused where it arrived, without a hop.
func forwardedTo[T any](d *Driver, ctx context.Context, send func(l leaderLink, addr string), fail func(T, error)) bool {
	addr, err := d.route(ctx)
	switch {
	case err != nil:
		var zero T
		fail(zero, err)
	case addr != "":
		send(d.leaderLink, addr)
	default:
		return false
	}
	return true
}

// route says where a request goes: "" to be served here, the leader's
// address to be forwarded there, or an Unavailable status (with a leader
// hint when one is known) when it can go nowhere.
func (d *Driver) route(ctx context.Context) (string, error) {
	if d.leader.Load() {
		return "", nil
	}
	st := d.rlog.Status()
	addr, known := d.rlog.PeerAddr(st.Leader)
	if st.Leader == 0 || !known {
		return "", status.Error(codes.Unavailable, "no coordinator leader is known; retry shortly")
	}
	if st.Leader == d.rlog.ID() && d.awaitLeadership(ctx) {
		return "", nil
	}
	if st.Leader == d.rlog.ID() || isForwarded(ctx) {
		return "", d.unavailable(ctx, "leadership is changing; retry")
	}
	// Name the leader so the client goes there directly next time.
	_ = grpc.SetHeader(ctx, metadata.Pairs(LeaderHintKey, addr))
	return addr, nil
}

// awaitLeadership waits a few driver ticks for the driver to take up the
// leadership raft just gave this node, rather than bounce the caller.
func (d *Driver) awaitLeadership(ctx context.Context) bool {
	if d.stepped {
		return false // the loop cannot run while this waits
	}
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
	if st := d.rlog.Status(); st.Leader != 0 {
		if addr, ok := d.rlog.PeerAddr(st.Leader); ok {
			_ = grpc.SetTrailer(ctx, metadata.Pairs(LeaderHintKey, addr))
		}
	}
	return status.Error(codes.Unavailable, msg)
}

// statusOf maps driver, core and node errors to gRPC statuses; a status
// passes as it is.
func (d *Driver) statusOf(ctx context.Context, err error) error {
	if _, ok := status.FromError(err); ok {
		return err
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, "deadline exceeded before the outcome was known; ask Outcome")
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "call cancelled; ask Outcome")
	case errors.Is(err, twopc.ErrNotLeader), errors.Is(err, ErrNoLeader), errors.Is(err, ErrStopped):
		return d.unavailable(ctx, err.Error())
	case errors.Is(err, twopc.ErrOverloaded):
		return status.Error(codes.ResourceExhausted, err.Error())
	case errors.Is(err, twopc.ErrNotParticipant), errors.Is(err, twopc.ErrForgotten):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, twopc.ErrNoParticipants):
		return status.Error(codes.InvalidArgument, err.Error())
	default:
		return status.Error(codes.Unavailable, err.Error())
	}
}

// limits are the request limits this node enforces, shared with the
// participant SDK's.
func (d *Driver) limits() txnspec.Limits {
	return txnspec.Limits{MaxParticipants: d.cfg.MaxBranches, MaxPayload: d.cfg.MaxPayload}
}

func (d *Driver) validateCommit(req *decreev1.CommitRequest) ([]twopc.BranchSpec, error) {
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
	out := make([]twopc.BranchSpec, len(bs))
	for i, b := range bs {
		if err := d.limits().CheckPayload(len(b.GetPayload())); err != nil {
			return nil, fmt.Errorf("branch %d: %w", i, err)
		}
		out[i] = twopc.BranchSpec{Participant: parts[i], Payload: b.GetPayload()}
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

// grpcLeaderLink forwards over gRPC, on the caller's goroutine: its handler
// waits for the answer anyway.
type grpcLeaderLink struct{ conns *partcall.Conns }

func (l grpcLeaderLink) Commit(ctx context.Context, addr string, req *decreev1.CommitRequest, done func(*decreev1.CommitResponse, error)) {
	forwardCall(ctx, l, addr, req, decreev1.CoordinatorClient.Commit, done)
}

func (l grpcLeaderLink) Outcome(ctx context.Context, addr string, req *decreev1.OutcomeRequest, done func(*decreev1.OutcomeResponse, error)) {
	forwardCall(ctx, l, addr, req, decreev1.CoordinatorClient.Outcome, done)
}

func (l grpcLeaderLink) ListTransactions(ctx context.Context, addr string, req *decreev1.ListTransactionsRequest, done func(*decreev1.ListTransactionsResponse, error)) {
	forwardCall(ctx, l, addr, req, decreev1.CoordinatorClient.ListTransactions, done)
}

// forwardCall makes one forwarded call with call, a CoordinatorClient
// method.
func forwardCall[Req, Resp any](ctx context.Context, l grpcLeaderLink, addr string, req Req,
	call func(decreev1.CoordinatorClient, context.Context, Req, ...grpc.CallOption) (Resp, error), done func(Resp, error),
) {
	conn, err := l.conns.Get(addr)
	if err != nil {
		var zero Resp
		done(zero, status.Errorf(codes.Unavailable, "cannot reach the leader at %s: %v", addr, err))
		return
	}
	done(call(decreev1.NewCoordinatorClient(conn), ctx, req))
}
