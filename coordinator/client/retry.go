package client

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/decree-tx/decree/internal/backoff"
	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
)

// LeaderHintKey is the response metadata key in which a node that cannot
// serve names the leader it knows (host:port); decreev1.LeaderHintKey is
// its one definition.
const LeaderHintKey = decreev1.LeaderHintKey

// errClass says what a failed call tells about the request.
type errClass int

const (
	// classFinal: a bad request or a closed client; retrying cannot help.
	classFinal errClass = iota
	// classUnavailable: no node that could act took the request (no leader,
	// refused, shutting down). Resending is safe: when a connection broke
	// mid-call gRPC also says Unavailable, and the calls are idempotent.
	classUnavailable
	// classAmbiguous: the call died mid-way; the request may have been acted on.
	classAmbiguous
)

func classify(err error) errClass {
	if errors.Is(err, ErrClosed) {
		return classFinal
	}
	st, ok := status.FromError(err)
	if !ok {
		return classAmbiguous
	}
	switch st.Code() {
	case codes.Unavailable:
		return classUnavailable
	case codes.DeadlineExceeded, codes.Canceled, codes.Internal, codes.Unknown,
		codes.Aborted, codes.DataLoss:
		return classAmbiguous
	default: // InvalidArgument, FailedPrecondition, NotFound, Unimplemented, ...
		// ResourceExhausted too: a node refuses a message over its size
		// limit, or a transaction past the leader's limits, before acting
		// on it; resolving would only record a presumed abort.
		return classFinal
	}
}

// interrupted reports that the caller's context ended before an answer; last
// is the last failure seen, if any. It unwraps to the context's error only.
type interrupted struct{ ctx, last error }

func (e *interrupted) Error() string {
	if e.last == nil {
		return e.ctx.Error()
	}
	return fmt.Sprintf("%v (last error: %v)", e.ctx, e.last)
}

func (e *interrupted) Unwrap() error { return e.ctx }

// rpc is one call on one node; opts collect the response metadata.
type rpc func(ctx context.Context, cc decreev1.CoordinatorClient, opts ...grpc.CallOption) error

// until runs call on the preferred node until it succeeds. On Unavailable
// (and, with retryAmbiguous, on failures mid-way) it moves to the hinted
// leader or the next node and backs off; a hint is followed at once unless
// the previous attempt also followed one. Final errors are returned as they
// are, ambiguous ones too unless retryAmbiguous; when ctx ends first, an
// *interrupted is returned.
func (c *Client) until(ctx context.Context, op string, retryAmbiguous bool, call rpc) error {
	b := c.newBackoff()
	followed := false
	for {
		addr := c.current()
		hint, err := c.attempt(ctx, addr, call)
		if err == nil {
			// A node that forwarded the call names the leader: go there
			// next time and save the hop.
			c.worked(cmp.Or(hint, addr))
			return nil
		}
		class := classify(err)
		switch {
		case class == classFinal:
			return err
		case ctx.Err() != nil:
			return &interrupted{ctx: ctx.Err(), last: err}
		case class == classAmbiguous && !retryAmbiguous:
			return err
		}
		next := c.advance(addr, hint)
		followed = hint != "" && next == hint && !followed
		var d time.Duration
		if !followed {
			d = b.Next()
		}
		c.log.Debug().Str("op", op).Str("node", addr).Err(err).Str("hint", hint).
			Str("next", next).Dur("backoff", d).Msg("retrying on another node")
		if serr := c.sleep(ctx, d); serr != nil {
			return &interrupted{ctx: serr, last: err}
		}
	}
}

// attempt makes one call on addr and returns the leader hint the node sent
// (with a refusal, or with an answer it forwarded), if it is a valid address.
func (c *Client) attempt(ctx context.Context, addr string, call rpc) (string, error) {
	cc, err := c.conn(addr)
	if err != nil {
		return "", err
	}
	var header, trailer metadata.MD
	err = call(ctx, decreev1.NewCoordinatorClient(cc), grpc.Header(&header), grpc.Trailer(&trailer))
	return c.leaderHint(header, trailer), err
}

func (c *Client) leaderHint(mds ...metadata.MD) string {
	for _, md := range mds {
		for _, h := range md.Get(LeaderHintKey) {
			if err := checkHostPort(h); err != nil {
				c.log.Debug().Str("hint", h).Err(err).Msg("ignoring malformed leader hint")
				continue
			}
			return h
		}
	}
	return ""
}

// sleep waits d on the injected clock, or until ctx ends.
func (c *Client) sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-c.opts.Clock.After(d):
		return nil
	}
}

// newBackoff returns the schedule of one call's retries: doubling from
// RetryMin to RetryMax, each delay jittered down within (d/2, d] so clients
// that failed together do not retry together.
func (c *Client) newBackoff() *backoff.Backoff {
	return &backoff.Backoff{Policy: backoff.Policy{Min: c.opts.RetryMin, Max: c.opts.RetryMax, Rand: c.opts.Rand}}
}
