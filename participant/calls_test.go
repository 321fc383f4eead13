package participant_test

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/decree-tx/decree/participant"
	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
)

func openCalls(t *testing.T, p *participant.Participant) decreev1.Participant_CallsClient {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	p.Register(srv)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	// The coordinator dials a participant by the name its transactions
	// list; "me:1" here.
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithAuthority("me:1"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	stream, err := decreev1.NewParticipantClient(conn).Calls(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return stream
}

// exchange sends one batch and reads replies until every call of it is
// answered, keyed by seq.
func exchange(t *testing.T, s decreev1.Participant_CallsClient, calls ...*decreev1.Call) map[uint64]*decreev1.Reply {
	t.Helper()
	if err := s.Send(&decreev1.CallBatch{Calls: calls}); err != nil {
		t.Fatal(err)
	}
	got := map[uint64]*decreev1.Reply{}
	for len(got) < len(calls) {
		b, err := s.Recv()
		if err != nil {
			t.Fatalf("recv after %d of %d replies: %v", len(got), len(calls), err)
		}
		for _, r := range b.GetReplies() {
			if got[r.GetSeq()] != nil {
				t.Fatalf("call %d answered twice", r.GetSeq())
			}
			got[r.GetSeq()] = r
		}
	}
	return got
}

func prepareCall(seq uint64, req *decreev1.PrepareRequest) *decreev1.Call {
	return &decreev1.Call{Seq: seq, Kind: &decreev1.Call_Prepare{Prepare: req}}
}

// The Calls stream runs each call as its unary form would, answers each
// by seq (errors as their status), and ends cleanly when the caller does.
func TestCallsStream(t *testing.T) {
	log := openLog(t, t.TempDir())
	p := newParticipant(t, &kvResource{}, participant.Options{Log: log})
	s := openCalls(t, p)

	got := exchange(t, s,
		prepareCall(1, prepareReq(tid("t1"), "set a=1", 1, "me:1", "you:1")),
		prepareCall(2, prepareReq(tid("t2"), "no broke", 1, "me:1", "you:1")),
		prepareCall(3, prepareReq("", "set b=1", 1, "me:1")),
		&decreev1.Call{Seq: 4, Kind: &decreev1.Call_Commit{Commit: &decreev1.DecisionRequest{TxnId: tid("t3"), Term: 1}}},
	)
	if v := got[1].GetPrepare().GetVote(); v != decreev1.Vote_VOTE_YES {
		t.Errorf("t1 voted %v, want YES", v)
	}
	if r := got[2].GetPrepare(); r.GetVote() != decreev1.Vote_VOTE_NO || r.GetReason() != "broke" {
		t.Errorf("t2 answered %v, want NO broke", r)
	}
	if c := codes.Code(got[3].GetError().GetCode()); c != codes.InvalidArgument {
		t.Errorf("empty id answered %v, want InvalidArgument", got[3])
	}
	if c := codes.Code(got[4].GetError().GetCode()); c != codes.FailedPrecondition {
		t.Errorf("commit of a never prepared txn answered %v, want FailedPrecondition", got[4])
	}

	got = exchange(t, s,
		&decreev1.Call{Seq: 5, Kind: &decreev1.Call_Commit{Commit: &decreev1.DecisionRequest{TxnId: tid("t1"), Term: 1}}},
		&decreev1.Call{Seq: 6, Kind: &decreev1.Call_Abort{Abort: &decreev1.DecisionRequest{TxnId: tid("t2"), Term: 1}}},
		&decreev1.Call{Seq: 7, Kind: &decreev1.Call_Resolve{Resolve: &decreev1.ResolveRequest{TxnId: tid("t9"), Term: 1}}},
	)
	for seq := uint64(5); seq <= 6; seq++ {
		if got[seq].GetDecision() == nil {
			t.Errorf("call %d answered %v, want a decision reply", seq, got[seq])
		}
	}
	if st := got[7].GetResolve().GetState(); st != decreev1.ParticipantState_PARTICIPANT_STATE_ABORTED {
		t.Errorf("resolve of an unknown txn: %v, want ABORTED", st)
	}
	if v := userValue(t, log, "data/a"); v != "1" {
		t.Errorf("committed write: a=%q, want 1", v)
	}
	if err := s.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("after the caller closed: %v, want EOF", err)
	}
}

// waitingResource blocks every Prepare until its context ends.
type waitingResource struct{ kvResource }

func (r *waitingResource) Prepare(ctx context.Context, _ participant.Txn, _ participant.Writer) (participant.Vote, string, error) {
	<-ctx.Done()
	return 0, "", ctx.Err()
}

// A streamed call is cancelled when the deadline it carries passes, as a
// unary call's would be.
func TestCallsStreamDeadline(t *testing.T) {
	log := openLog(t, t.TempDir())
	p := newParticipant(t, &waitingResource{}, participant.Options{Log: log})
	s := openCalls(t, p)
	call := prepareCall(1, prepareReq(tid("t1"), "set a=1", 1, "me:1", "you:1"))
	call.TimeoutMicros = 20_000
	got := exchange(t, s, call)
	if c := codes.Code(got[1].GetError().GetCode()); c != codes.DeadlineExceeded {
		t.Fatalf("blocked prepare answered %v, want DeadlineExceeded", got[1])
	}
}

// heldResource blocks every Prepare until release is closed, after saying
// so on entered.
type heldResource struct {
	kvResource
	entered chan struct{}
	release chan struct{}
}

func (r *heldResource) Prepare(ctx context.Context, txn participant.Txn, w participant.Writer) (participant.Vote, string, error) {
	r.entered <- struct{}{}
	<-r.release
	return r.kvResource.Prepare(ctx, txn, w)
}

// TestGracefulStopEndsCallsStreams: a coordinator keeps its Calls stream
// open for as long as it leads, and GracefulStop waits for every stream.
// The README's recipe (Start's context ends, then GracefulStop) and Stop
// must both end the stream, after answering the calls already running,
// or GracefulStop never returns.
func TestGracefulStopEndsCallsStreams(t *testing.T) {
	for _, how := range []string{"start context", "stop"} {
		t.Run(how, func(t *testing.T) {
			log := openLog(t, t.TempDir())
			r := &heldResource{entered: make(chan struct{}, 1), release: make(chan struct{})}
			p := newParticipant(t, r, participant.Options{Log: log})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			p.Start(ctx)
			lis, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			srv := grpc.NewServer()
			p.Register(srv)
			go func() { _ = srv.Serve(lis) }()
			t.Cleanup(srv.Stop)
			conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
				grpc.WithAuthority("me:1"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { conn.Close() })
			// A deadline, so that a stream that never ends fails the test.
			streamCtx, cancelStream := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancelStream()
			s, err := decreev1.NewParticipantClient(conn).Calls(streamCtx)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Send(&decreev1.CallBatch{Calls: []*decreev1.Call{prepareCall(1, prepareReq(tid("t1"), "set a=1", 1, "me:1", "you:1"))}}); err != nil {
				t.Fatal(err)
			}
			<-r.entered // the call is running

			if how == "stop" {
				go p.Stop()
			} else {
				cancel()
			}
			stopped := make(chan struct{})
			go func() { srv.GracefulStop(); close(stopped) }()
			close(r.release)

			// The running call is answered, then the stream ends.
			b, err := s.Recv()
			if err != nil || len(b.GetReplies()) != 1 || b.GetReplies()[0].GetPrepare().GetVote() != yes {
				t.Fatalf("running call: %v, %v; want its YES", b, err)
			}
			if _, err := s.Recv(); codeOf(err) != codes.Unavailable {
				t.Fatalf("stream after stop: %v, want Unavailable", err)
			}
			select {
			case <-stopped:
			case <-time.After(10 * time.Second):
				t.Fatal("GracefulStop did not return after the Calls stream ended")
			}
		})
	}
}
