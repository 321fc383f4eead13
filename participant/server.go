package participant

import (
	"context"
	"errors"
	"slices"

	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
	"github.com/decree-tx/decree/txnspec"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// server is the gRPC face of a Participant: it validates requests and hands
// them on.
type server struct {
	decreev1.UnimplementedParticipantServer
	p *Participant
}

func (s *server) Prepare(ctx context.Context, req *decreev1.PrepareRequest) (*decreev1.PrepareResponse, error) {
	if err := validatePrepare(ctx, req, s.p.limits()); err != nil {
		return nil, err
	}
	return s.p.prepare(ctx, req)
}

func (s *server) Commit(ctx context.Context, req *decreev1.DecisionRequest) (*decreev1.DecisionResponse, error) {
	if err := validateID(req.GetTxnId()); err != nil {
		return nil, err
	}
	if err := s.p.decide(ctx, req.GetTxnId(), decideCommit, fencedBy(req.GetTerm())); err != nil {
		return nil, err
	}
	return &decreev1.DecisionResponse{}, nil
}

func (s *server) Abort(ctx context.Context, req *decreev1.DecisionRequest) (*decreev1.DecisionResponse, error) {
	if err := validateID(req.GetTxnId()); err != nil {
		return nil, err
	}
	if err := s.p.decide(ctx, req.GetTxnId(), decideAbort, fencedBy(req.GetTerm())); err != nil {
		return nil, err
	}
	return &decreev1.DecisionResponse{}, nil
}

func (s *server) Resolve(_ context.Context, req *decreev1.ResolveRequest) (*decreev1.ResolveResponse, error) {
	if err := validateID(req.GetTxnId()); err != nil {
		return nil, err
	}
	state, err := s.p.resolve(req.GetTxnId(), req.GetTerm())
	if err != nil {
		return nil, err
	}
	return &decreev1.ResolveResponse{State: state, ParticipantId: s.p.plog.ID()}, nil
}

// Calls serves the coalesced form of the four calls above.
func (s *server) Calls(stream decreev1.Participant_CallsServer) error {
	return ServeCalls(stream, s)
}

// validateID checks a call's transaction id as the coordinator checks a
// client's: a canonical UUIDv7.
func validateID(id string) error {
	if _, err := txnspec.ParseID(id); err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	return nil
}

// validatePrepare checks a Prepare exactly as the coordinator checks the
// client request it comes from (txnspec), and that its participant list
// names this participant under the address the caller reached it by (the
// :authority of the call, known when it came over gRPC). A prepare the
// coordinator would refuse could never be resolved: its reservations would
// stay locked forever.
func validatePrepare(ctx context.Context, req *decreev1.PrepareRequest, limits txnspec.Limits) error {
	if err := validateID(req.GetTxnId()); err != nil {
		return err
	}
	if err := limits.CheckPayload(len(req.GetPayload())); err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	ps := req.GetParticipants()
	if err := limits.CheckParticipants(ps); err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	if req.GetOnePhase() && len(ps) != 1 {
		return status.Errorf(codes.InvalidArgument, "one-phase prepare with %d participants, want 1", len(ps))
	}
	if self, ok := calledAs(ctx); ok && !slices.Contains(ps, self) {
		return status.Errorf(codes.InvalidArgument, "participant list %q does not name this participant (called as %s)", ps, self)
	}
	return nil
}

// calledAs returns the address the caller dialled to reach this
// participant: the call's :authority, the very name the coordinator has in
// the transaction's participant list.
func calledAs(ctx context.Context) (string, bool) {
	v := metadata.ValueFromIncomingContext(ctx, ":authority")
	if len(v) != 1 || v[0] == "" {
		return "", false
	}
	return v[0], true
}

// storageError reports a failure of the participant log.
func storageError(err error) error {
	return status.Errorf(codes.Internal, "participant log: %v", err)
}

// resourceError reports a failure of the user's resource, keeping its gRPC
// status if it has one.
func resourceError(op string, err error) error {
	if _, ok := status.FromError(err); ok {
		return err
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return status.FromContextError(err).Err()
	}
	return status.Errorf(codes.Internal, "resource %s: %v", op, err)
}
