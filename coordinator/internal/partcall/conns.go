package partcall

import (
	"context"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
)

// participantKeepalive is the keepalive of connections to participants
// (and of calls forwarded to the leader). A participant is served by the
// user's own grpc.Server, usually with the default enforcement policy: no
// ping more often than every 5 minutes, none without an open stream. A
// client pinging more often is sent GOAWAY ENHANCE_YOUR_CALM
// ("too_many_pings") and loses its connection, so pings stay above that;
// liveness comes from the calls' deadlines instead (a call that times out
// on the Calls stream resets it). The pings only find a connection that
// died silently, eventually.
var participantKeepalive = keepalive.ClientParameters{Time: 5*time.Minute + 30*time.Second, Timeout: 20 * time.Second}

// Conns keeps one lazily-connecting gRPC connection per address, reused
// by every call to that participant (or, forwarding, to the leader).
type Conns struct {
	dial      func(ctx context.Context, addr string) (net.Conn, error)
	keepalive keepalive.ClientParameters
	mu        sync.Mutex
	conns     map[string]*grpc.ClientConn
}

func NewConns(dial func(ctx context.Context, addr string) (net.Conn, error)) *Conns {
	return &Conns{dial: dial, keepalive: participantKeepalive, conns: make(map[string]*grpc.ClientConn)}
}

func (p *Conns) Get(addr string) (*grpc.ClientConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.conns[addr]; ok {
		return c, nil
	}
	c, err := grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(p.dial),
		grpc.WithKeepaliveParams(p.keepalive),
	)
	if err != nil {
		return nil, err
	}
	p.conns[addr] = c
	return c, nil
}

// drop closes the connection to addr, if any: a participant link that
// went idle releases it; the next get dials again.
func (p *Conns) Drop(addr string) {
	p.mu.Lock()
	c, ok := p.conns[addr]
	delete(p.conns, addr)
	p.mu.Unlock()
	if ok {
		c.Close()
	}
}

// size is the number of connections held.
func (p *Conns) Size() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

func (p *Conns) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for addr, c := range p.conns {
		c.Close()
		delete(p.conns, addr)
	}
}
