package coordinator

import (
	"bytes"
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
)

func TestMaxRecvBytesFollowsTheRequestLimits(t *testing.T) {
	def := ServerLimits{}.MaxRecvBytes()
	if want := 64*(1<<20+branchOverhead) + requestOverhead; def != want {
		t.Fatalf("default limit %d, want %d", def, want)
	}
	if got := (ServerLimits{MaxBranches: 2, MaxPayload: 10}).MaxRecvBytes(); got != peerMessageBytes {
		t.Fatalf("small request limits: %d, want the peer message limit %d", got, peerMessageBytes)
	}
	if got := (ServerLimits{MaxBranches: 64, MaxPayload: 4 << 20}).MaxRecvBytes(); got <= 256<<20 {
		t.Fatalf("64 branches of 4 MiB: limit %d is too small for a valid Commit", got)
	}
}

// A message larger than the limit is refused (ResourceExhausted) before
// any handler sees it; one under it goes through.
func TestServerRefusesMessagesPastItsLimit(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(ServerOptions(ServerLimits{MaxBranches: 1, MaxPayload: 1})...)
	decreev1.RegisterCoordinatorServer(srv, decreev1.UnimplementedCoordinatorServer{})
	go srv.Serve(lis)
	defer srv.Stop()
	conn, err := grpc.NewClient("passthrough:///"+lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cc := decreev1.NewCoordinatorClient(conn)
	commit := func(n int) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := cc.Commit(ctx, &decreev1.CommitRequest{Branches: []*decreev1.Branch{{Payload: make([]byte, n)}}})
		return err
	}
	if err := commit(peerMessageBytes + 1); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("oversized: %v, want ResourceExhausted", err)
	}
	if err := commit(1 << 20); status.Code(err) != codes.Unimplemented {
		t.Fatalf("under the limit: %v, want it to reach the (unimplemented) handler", err)
	}
}

// A large batch of raft messages is cut into batches under the limit, in
// order, each addressed like the original.
func TestSplitBatchKeepsOrderUnderTheLimit(t *testing.T) {
	b := &decreev1.RaftBatch{ClusterId: 7, From: 1, To: 2}
	for i := range 10 {
		b.Messages = append(b.Messages, bytes.Repeat([]byte{byte(i)}, 300))
	}
	b.Messages = append(b.Messages, make([]byte, 2000)) // larger than the limit: alone
	parts := splitBatch(b, 1000)
	var got [][]byte
	for _, p := range parts {
		if p.GetClusterId() != 7 || p.GetFrom() != 1 || p.GetTo() != 2 {
			t.Fatalf("part addressed %d/%d->%d", p.GetClusterId(), p.GetFrom(), p.GetTo())
		}
		if proto.Size(p) > 1000 && len(p.GetMessages()) > 1 {
			t.Fatalf("part of %d bytes with %d messages exceeds the limit", proto.Size(p), len(p.GetMessages()))
		}
		got = append(got, p.GetMessages()...)
	}
	if len(parts) < 4 || len(got) != len(b.Messages) {
		t.Fatalf("%d parts, %d messages", len(parts), len(got))
	}
	for i := range got {
		if !bytes.Equal(got[i], b.Messages[i]) {
			t.Fatalf("message %d out of order", i)
		}
	}
}

type recordingStream struct {
	grpc.ClientStream
	sent []any
}

func (s *recordingStream) SendMsg(m any) error { s.sent = append(s.sent, m); return nil }

// The peer connection's interceptor sends an oversized batch in parts and
// any other message as it is.
func TestSplittingStreamSendsOversizedBatchesInParts(t *testing.T) {
	rec := &recordingStream{}
	s := &splittingStream{ClientStream: rec, limit: 1000}
	small := &decreev1.RaftBatch{Messages: [][]byte{make([]byte, 10)}}
	big := &decreev1.RaftBatch{Messages: [][]byte{make([]byte, 600), make([]byte, 600)}}
	for _, m := range []any{small, big} {
		if err := s.SendMsg(m); err != nil {
			t.Fatal(err)
		}
	}
	if len(rec.sent) != 3 || rec.sent[0] != small {
		t.Fatalf("sent %d messages, want the small batch as is and the big one in 2 parts", len(rec.sent))
	}
}
