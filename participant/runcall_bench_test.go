package participant

import (
	"context"
	"testing"

	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
)

// stubServer answers every Prepare at once.
type stubServer struct {
	decreev1.UnimplementedParticipantServer
}

func (stubServer) Prepare(context.Context, *decreev1.PrepareRequest) (*decreev1.PrepareResponse, error) {
	return &decreev1.PrepareResponse{Vote: decreev1.Vote_VOTE_YES}, nil
}

// BenchmarkRunCall measures what a streamed call costs around the call
// itself (its deadline context and its reply), from many goroutines on one
// stream's context, as the call workers run them.
func BenchmarkRunCall(b *testing.B) {
	stream, cancel := context.WithCancel(context.Background())
	defer cancel()
	call := &decreev1.Call{Seq: 1, TimeoutMicros: 5_000_000,
		Kind: &decreev1.Call_Prepare{Prepare: &decreev1.PrepareRequest{TxnId: "t"}}}
	b.SetParallelism(8)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if r := runCall(stream, stubServer{}, call); r.GetPrepare() == nil {
				b.Fatalf("reply %v", r)
			}
		}
	})
}
