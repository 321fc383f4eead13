package partcall

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/connectivity"

	"github.com/decree-tx/decree/internal/clock"
)

// TestParticipantKeepaliveSuitsADefaultServer: the README serves a
// participant from a plain grpc.NewServer(), whose keepalive enforcement
// (keepalive.EnforcementPolicy's zero value) allows a ping every 5 minutes
// at most, and none without an open stream; more, and the server answers
// GOAWAY too_many_pings and drops the connection. grpc-go clamps client
// pings to at least 10 s and the server's policy cannot be shortened, so
// the GOAWAY itself takes minutes to provoke; the parameters are checked
// against the policy instead.
func TestParticipantKeepaliveSuitsADefaultServer(t *testing.T) {
	const defaultMinTime = 5 * time.Minute
	ka := NewConns(nil).keepalive
	if ka.Time < defaultMinTime || ka.PermitWithoutStream {
		t.Fatalf("participant keepalive %+v: a default server wants pings at least %v apart and none without a stream", ka, defaultMinTime)
	}
	if ka.Timeout <= 0 {
		t.Fatalf("participant keepalive %+v has no timeout", ka)
	}
}

// TestParticipantConnectionSurvivesIdleOnADefaultServer holds a leader's
// connection to a participant served from a plain grpc.NewServer() (the
// scripted participant) open and idle past several pings of the keepalive
// the coordinator used to send every 10 s: the third strike earned
// GOAWAY ENHANCE_YOUR_CALM too_many_pings, and the connection dropped.
// grpc-go pings no more often than every 10 s (the GOAWAY came about
// 30 s in), so this takes 45 s; it
// runs in parallel with the package's other tests.
func TestParticipantConnectionSurvivesIdleOnADefaultServer(t *testing.T) {
	if testing.Short() {
		t.Skip("keeps a connection idle for 45 s")
	}
	t.Parallel()
	p := &scriptedParticipant{answer: voteYes}
	addr := serveScripted(t, p)
	m := newTestMux(t, clock.Wall{})
	for id, r := range collect(t, prepareN(m, addr, 1, 5*time.Second), 1) {
		if r.err != nil {
			t.Fatalf("%s: %v", id, r.err)
		}
	}
	conn, err := muxConns(m).Get(addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	if conn.GetState() != connectivity.Ready || conn.WaitForStateChange(ctx, connectivity.Ready) {
		t.Fatalf("the connection to a default participant server left READY (now %v): GOAWAY too_many_pings?", conn.GetState())
	}
	for id, r := range collect(t, prepareN(m, addr, 1, 5*time.Second), 1) {
		if r.err != nil {
			t.Fatalf("%s after the idle time: %v", id, r.err)
		}
	}
	if n := p.streams.Load(); n != 1 {
		t.Fatalf("%d Calls streams were opened, want the first one kept", n)
	}
}
