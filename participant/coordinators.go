package participant

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// coordinators queries the coordinator cluster for outcomes, over one
// lazily connecting gRPC connection per endpoint.
type coordinators struct {
	addrs   []string
	conns   []*grpc.ClientConn
	clients []decreev1.CoordinatorClient
	opts    Options
	log     zerolog.Logger
	// preferred is the endpoint that answered last; queries start there.
	preferred atomic.Int64
}

func dialCoordinators(opts Options, log zerolog.Logger) (*coordinators, error) {
	c := &coordinators{addrs: opts.Coordinators, opts: opts, log: log}
	dialOpts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	if opts.Dial != nil {
		dialOpts = append(dialOpts, grpc.WithContextDialer(opts.Dial))
	}
	for _, addr := range opts.Coordinators {
		conn, err := grpc.NewClient("passthrough:///"+addr, dialOpts...)
		if err != nil {
			c.close()
			return nil, fmt.Errorf("coordinator %s: %w", addr, err)
		}
		c.conns = append(c.conns, conn)
		c.clients = append(c.clients, decreev1.NewCoordinatorClient(conn))
	}
	return c, nil
}

// Outcome asks the endpoints in turn, starting with the one that answered
// last, for the outcome of id, and returns the first answer.
func (c *coordinators) Outcome(ctx context.Context, id string, participants []string) (decreev1.TxnState, error) {
	req := &decreev1.OutcomeRequest{TxnId: id, Participants: participants}
	start := int(c.preferred.Load())
	var errs []error
	for k := range c.clients {
		i := (start + k) % len(c.clients)
		callCtx, cancel := context.WithTimeout(ctx, c.opts.QueryTimeout)
		resp, err := c.clients[i].Outcome(callCtx, req)
		cancel()
		if err == nil {
			c.preferred.Store(int64(i))
			return resp.GetState(), nil
		}
		c.log.Debug().Err(err).Str("txn", id).Str("coordinator", c.addrs[i]).Msg("outcome query failed; trying the next coordinator")
		errs = append(errs, fmt.Errorf("%s: %w", c.addrs[i], err))
		if ctx.Err() != nil {
			break
		}
	}
	return 0, fmt.Errorf("query outcome of %q: %w", id, errors.Join(errs...))
}

func (c *coordinators) close() {
	for _, conn := range c.conns {
		_ = conn.Close()
	}
}
