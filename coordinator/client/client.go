// Package client is the Go client applications use to run transactions on a
// Decree coordinator cluster.
//
// Commit sends a transaction to any node of the cluster, follows leader
// hints, moves to the next node and backs off while no node can act, and,
// when a call dies mid-way, asks the cluster for the transaction's outcome
// itself. So Commit answers a definitive COMMITTED or ABORTED unless the
// cluster stays unavailable past the caller's deadline; then its error wraps
// ErrOutcomeUnknown and the Result still carries the transaction ID, so the
// caller can ask Outcome later.
package client

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"

	"github.com/decree-tx/decree/internal/clock"
	"github.com/decree-tx/decree/txnspec"
)

// Default retry delays: the first back-off is about RetryMin, doubling up to
// RetryMax.
const (
	DefaultRetryMin = 20 * time.Millisecond
	DefaultRetryMax = time.Second
)

var (
	// ErrInvalid marks a request or configuration rejected before anything
	// was sent.
	ErrInvalid = errors.New("invalid request")
	// ErrOutcomeUnknown marks a transaction whose outcome the client could not
	// learn before its context ended (or the cluster could not tell). The
	// transaction may be committed, aborted or still running; ask Outcome.
	ErrOutcomeUnknown = errors.New("transaction outcome unknown")
	// ErrClosed is returned by calls on a closed Client.
	ErrClosed = errors.New("client is closed")
)

// Clock is the client's source of time, injected so tests control back-off.
// It is the same interface as coordinator.Clock and participant.Clock.
type Clock = clock.Clock

// Options configure a Client. The zero value is usable.
type Options struct {
	// Dial, when set, opens connections instead of the default TCP dialer.
	Dial func(ctx context.Context, addr string) (net.Conn, error)
	// RetryMin and RetryMax bound the back-off between attempts (defaults
	// DefaultRetryMin and DefaultRetryMax).
	RetryMin, RetryMax time.Duration
	// Rand returns a number in [0, 1) to jitter back-offs; it must be safe
	// for concurrent use. Default: math/rand/v2.Float64.
	Rand func() float64
	// Clock defaults to the wall clock.
	Clock Clock
	// Logger receives retry and resolution events; the zero value is silent.
	Logger zerolog.Logger
	// NewID mints transaction IDs (UUIDv7 text). Default: uuid.NewV7.
	NewID func() (string, error)
}

func (o Options) withDefaults() (Options, error) {
	if o.RetryMin < 0 || o.RetryMax < 0 {
		return o, fmt.Errorf("%w: negative retry delay", ErrInvalid)
	}
	if o.RetryMin == 0 {
		o.RetryMin = DefaultRetryMin
	}
	if o.RetryMax == 0 {
		o.RetryMax = max(DefaultRetryMax, o.RetryMin)
	}
	if o.RetryMin > o.RetryMax {
		return o, fmt.Errorf("%w: RetryMin %v exceeds RetryMax %v", ErrInvalid, o.RetryMin, o.RetryMax)
	}
	if o.Rand == nil {
		o.Rand = rand.Float64
	}
	if o.Clock == nil {
		o.Clock = clock.Wall{}
	}
	if o.NewID == nil {
		o.NewID = newV7
	}
	return o, nil
}

func newV7() (string, error) {
	id, err := uuid.NewV7()
	if err != nil {
		return "", err
	}
	return id.String(), nil
}

// Client talks to a coordinator cluster. It is safe for concurrent use and
// keeps one lazily connected gRPC connection per node.
type Client struct {
	endpoints []string
	opts      Options
	log       zerolog.Logger

	mu        sync.Mutex
	conns     map[string]*grpc.ClientConn
	preferred string // the node that last answered, or a hinted leader
	closed    bool
}

// Dial checks the endpoints (host:port of coordinator nodes) and prepares a
// connection to each. It does no network I/O: nodes are dialed on first use.
func Dial(endpoints []string, opts Options) (*Client, error) {
	if err := checkEndpoints(endpoints); err != nil {
		return nil, err
	}
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	c := &Client{
		endpoints: slices.Clone(endpoints),
		opts:      opts,
		log:       opts.Logger.With().Str("component", "client").Logger(),
		conns:     make(map[string]*grpc.ClientConn),
		preferred: endpoints[0],
	}
	for _, ep := range endpoints {
		if _, err := c.conn(ep); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

func checkEndpoints(endpoints []string) error {
	if len(endpoints) == 0 {
		return fmt.Errorf("%w: no endpoints", ErrInvalid)
	}
	seen := make(map[string]bool, len(endpoints))
	for _, ep := range endpoints {
		if err := checkHostPort(ep); err != nil {
			return fmt.Errorf("%w: endpoint %q: %v", ErrInvalid, ep, err)
		}
		if seen[ep] {
			return fmt.Errorf("%w: endpoint %q appears twice", ErrInvalid, ep)
		}
		seen[ep] = true
	}
	return nil
}

// checkHostPort accepts what the coordinator accepts as an address.
func checkHostPort(addr string) error { return txnspec.ValidateAddr(addr) }

// Close closes every connection. Calls in flight fail.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	var errs []error
	for addr, cc := range c.conns {
		if err := cc.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close %s: %w", addr, err))
		}
		delete(c.conns, addr)
	}
	return errors.Join(errs...)
}

// conn returns the connection to addr, creating it (lazily connected) on
// first use; leader hints may name nodes missing from the endpoint list.
func (c *Client) conn(addr string) (*grpc.ClientConn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	if cc, ok := c.conns[addr]; ok {
		return cc, nil
	}
	cc, err := grpc.NewClient("passthrough:///"+addr, c.dialOptions()...)
	if err != nil {
		return nil, fmt.Errorf("%w: endpoint %q: %v", ErrInvalid, addr, err)
	}
	c.conns[addr] = cc
	return cc, nil
}

// dialOptions reconnect quickly after a node restarts (gRPC's default
// reconnect back-off grows to two minutes) and ping during long calls so a
// dead node is noticed; the coordinator's keepalive policy allows this.
func (c *Client) dialOptions() []grpc.DialOption {
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
			MinConnectTimeout: 2 * time.Second,
		}),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 10 * time.Second, Timeout: 5 * time.Second}),
	}
	if c.opts.Dial != nil {
		opts = append(opts, grpc.WithContextDialer(c.opts.Dial))
	}
	return opts
}

// current is the node to try next.
func (c *Client) current() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.preferred
}

// worked makes addr the preferred node.
func (c *Client) worked(addr string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.preferred = addr
}

// advance moves away from failed, to the hinted leader if any, else to the
// next endpoint, and returns the node to try next. When another call has
// already moved on, it keeps that choice.
func (c *Client) advance(failed, hint string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.preferred != failed {
		return c.preferred
	}
	if hint != "" && hint != failed {
		c.preferred = hint
		return hint
	}
	i := slices.Index(c.endpoints, failed) // -1 for a hinted node: start over
	c.preferred = c.endpoints[(i+1)%len(c.endpoints)]
	return c.preferred
}
