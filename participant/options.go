package participant

import (
	"context"
	"errors"
	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
	"math/rand/v2"
	"net"
	"time"

	"github.com/decree-tx/decree/internal/clock"
	"github.com/decree-tx/decree/txlog"
	"github.com/decree-tx/decree/txnspec"
	"github.com/rs/zerolog"
)

// Defaults of Options.
const (
	DefaultInDoubtTimeout = 5 * time.Second
	DefaultRetryMin       = 100 * time.Millisecond
	DefaultRetryMax       = 5 * time.Second
	DefaultQueryTimeout   = 2 * time.Second
	DefaultMaxPayload     = txnspec.DefaultMaxPayload
	// DefaultMaxParticipants is the coordinator's --max-branches default.
	DefaultMaxParticipants = txnspec.DefaultMaxParticipants
)

// Clock is the participant's source of time. It is the same interface as
// coordinator.Clock and client.Clock.
type Clock = clock.Clock

// Options configures New.
type Options struct {
	// Log is the participant's durable store; required. The caller opens
	// it and closes it after Stop.
	Log *txlog.ParticipantLog
	// Coordinators lists the coordinator endpoints (host:port) asked for
	// the outcome of in-doubt transactions; at least one is required.
	Coordinators []string
	// Outcomes, if set, answers outcome queries instead of gRPC calls to
	// Coordinators: for an in-process coordinator, or a simulation.
	Outcomes OutcomeSource
	// Dial, if set, dials the coordinators (grpc.WithContextDialer).
	Dial func(ctx context.Context, addr string) (net.Conn, error)
	// InDoubtTimeout is how long a prepared transaction may stay undecided
	// before the participant asks the coordinators for its outcome.
	// Transactions found prepared at New are asked about at once.
	InDoubtTimeout time.Duration
	// RetryMin and RetryMax bound the backoff between outcome queries for
	// one transaction; each wait is jittered down by up to half.
	RetryMin, RetryMax time.Duration
	// QueryTimeout bounds one outcome query to one coordinator.
	QueryTimeout time.Duration
	// MaxPayload is the largest Prepare payload accepted, in bytes; set it
	// to the coordinators' --max-payload.
	MaxPayload int
	// MaxParticipants is the longest participant list a Prepare may carry;
	// set it to the coordinators' --max-branches.
	MaxParticipants int
	// Clock schedules outcome queries and stamps records; nil means the
	// wall clock.
	Clock Clock
	// Rand returns a number in [0, 1) for backoff jitter; nil means
	// math/rand/v2.Float64.
	Rand func() float64
	// Logger receives the participant's logs; the zero value discards
	// them.
	Logger zerolog.Logger
}

// withDefaults checks o and fills in its defaults.
func (o Options) withDefaults() (Options, error) {
	if o.Log == nil {
		return o, errors.New("participant options: Log is required")
	}
	if len(o.Coordinators) == 0 && o.Outcomes == nil {
		return o, errors.New("participant options: at least one coordinator endpoint is required")
	}
	for _, c := range o.Coordinators {
		if c == "" {
			return o, errors.New("participant options: empty coordinator endpoint")
		}
	}
	o.InDoubtTimeout = positiveOr(o.InDoubtTimeout, DefaultInDoubtTimeout)
	o.RetryMin = positiveOr(o.RetryMin, DefaultRetryMin)
	o.RetryMax = max(positiveOr(o.RetryMax, DefaultRetryMax), o.RetryMin)
	o.QueryTimeout = positiveOr(o.QueryTimeout, DefaultQueryTimeout)
	l := txnspec.Limits{MaxParticipants: o.MaxParticipants, MaxPayload: o.MaxPayload}.WithDefaults()
	o.MaxParticipants, o.MaxPayload = l.MaxParticipants, l.MaxPayload
	if o.Clock == nil {
		o.Clock = clock.Wall{}
	}
	if o.Rand == nil {
		o.Rand = rand.Float64
	}
	return o, nil
}

func positiveOr(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// OutcomeSource tells a participant the cluster's outcome of a transaction
// it holds prepared: COMMITTED, ABORTED (the cluster aborts an unknown id
// durably before answering), FORGOTTEN, or an error when nobody could
// answer. By default the participant asks Options.Coordinators over gRPC.
type OutcomeSource interface {
	Outcome(ctx context.Context, id string, participants []string) (decreev1.TxnState, error)
}
