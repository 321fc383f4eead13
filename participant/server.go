package participant

import (
	"context"
	"errors"

	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// maxIDLen is the longest transaction id accepted, in bytes.
const maxIDLen = 128

// server is the gRPC face of a Participant: it validates requests and hands
// them on.
type server struct {
	decreev1.UnimplementedParticipantServer
	p *Participant
}

func (s *server) Prepare(ctx context.Context, req *decreev1.PrepareRequest) (*decreev1.PrepareResponse, error) {
	if err := validatePrepare(req, s.p.opts.MaxPayload); err != nil {
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
	return &decreev1.ResolveResponse{State: state}, nil
}

// Calls serves the coalesced form of the four calls above.
func (s *server) Calls(stream decreev1.Participant_CallsServer) error {
	return ServeCalls(stream, s)
}

func validateID(id string) error {
	switch {
	case id == "":
		return status.Error(codes.InvalidArgument, "empty transaction id")
	case len(id) > maxIDLen:
		return status.Errorf(codes.InvalidArgument, "transaction id of %d bytes exceeds %d", len(id), maxIDLen)
	}
	return nil
}

func validatePrepare(req *decreev1.PrepareRequest, maxPayload int) error {
	if err := validateID(req.GetTxnId()); err != nil {
		return err
	}
	if n := len(req.GetPayload()); n > maxPayload {
		return status.Errorf(codes.InvalidArgument, "payload of %d bytes exceeds %d", n, maxPayload)
	}
	ps := req.GetParticipants()
	if len(ps) == 0 {
		return status.Error(codes.InvalidArgument, "no participants")
	}
	if req.GetOnePhase() && len(ps) != 1 {
		return status.Errorf(codes.InvalidArgument, "one-phase prepare with %d participants, want 1", len(ps))
	}
	seen := make(map[string]bool, len(ps))
	for _, p := range ps {
		if p == "" {
			return status.Error(codes.InvalidArgument, "empty participant")
		}
		if seen[p] {
			return status.Errorf(codes.InvalidArgument, "duplicate participant %q", p)
		}
		seen[p] = true
	}
	return nil
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
