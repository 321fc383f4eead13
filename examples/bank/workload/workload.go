// Package workload drives random bank transfers through the Decree client
// and measures them: the transfer workload of the bank example.
package workload

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/decree-tx/decree/coordinator/client"
	"github.com/decree-tx/decree/examples/bank"
)

// Config describes a workload. Duration and Count bound it; at least one
// must be set, and it stops at whichever comes first.
type Config struct {
	Client *client.Client
	// Banks are the bank participants' addresses; each holds Accounts
	// accounts named bank.AccountName(0..Accounts-1).
	Banks    []string
	Accounts int
	Workers  int
	Duration time.Duration
	Count    int
	// MaxAmount bounds a transfer's amount, drawn from [1, MaxAmount].
	MaxAmount int64
	// CallTimeout bounds one transfer, including resolving its outcome.
	CallTimeout time.Duration
	// Seed makes the choice of transfers reproducible.
	Seed uint64
	// Now is the clock (default time.Now).
	Now func() time.Time
}

func (c *Config) check() error {
	switch {
	case c.Client == nil:
		return errors.New("workload needs a client")
	case len(c.Banks) == 0 || c.Accounts <= 0:
		return errors.New("workload needs banks and accounts")
	case c.Accounts == 1 && len(c.Banks) == 1:
		return errors.New("workload needs at least two accounts")
	case c.Workers <= 0:
		return errors.New("workload needs at least one worker")
	case c.Duration <= 0 && c.Count <= 0:
		return errors.New("workload needs a duration or a count")
	}
	if c.MaxAmount <= 0 {
		c.MaxAmount = 100
	}
	if c.CallTimeout <= 0 {
		c.CallTimeout = 30 * time.Second
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return nil
}

// Workload is a running transfer workload.
type Workload struct {
	cfg   Config
	stats *Stats
}

// New checks cfg and prepares a workload.
func New(cfg Config) (*Workload, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	return &Workload{cfg: cfg, stats: newStats(cfg.Now())}, nil
}

// Stats is the live statistics, for progress reporting.
func (w *Workload) Stats() *Stats { return w.stats }

// Run starts the workers and returns when the count is done, the duration
// has passed, or ctx ends. Each worker finishes its transfer in flight, so
// every transfer started gets a definitive outcome or an error.
func (w *Workload) Run(ctx context.Context) Snapshot {
	if w.cfg.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, w.cfg.Duration)
		defer cancel()
	}
	var budget chan struct{}
	if w.cfg.Count > 0 {
		budget = make(chan struct{}, w.cfg.Count)
		for range w.cfg.Count {
			budget <- struct{}{}
		}
		close(budget)
	}
	var wg sync.WaitGroup
	for i := range w.cfg.Workers {
		rng := newRand(w.cfg.Seed, uint64(i))
		wg.Go(func() { w.worker(ctx, rng, budget) })
	}
	wg.Wait()
	return w.stats.Snapshot(w.cfg.Now())
}

func (w *Workload) worker(ctx context.Context, rng *rand.Rand, budget <-chan struct{}) {
	for ctx.Err() == nil {
		if budget != nil {
			if _, ok := <-budget; !ok {
				return
			}
		}
		w.transfer(rng)
	}
}

// transfer runs one random transfer. It uses its own deadline rather than
// the run's, so a transfer in flight when the run ends still settles.
func (w *Workload) transfer(rng *rand.Rand) {
	t := w.randomTransfer(rng)
	ctx, cancel := context.WithTimeout(context.Background(), w.cfg.CallTimeout)
	defer cancel()
	start := w.cfg.Now()
	res, err := w.cfg.Client.Commit(ctx, t.Txn(""))
	took := w.cfg.Now().Sub(start)
	if err != nil {
		w.stats.record("", "", took, fmt.Errorf("transfer %s: %w", res.ID, err))
		return
	}
	state := "aborted"
	if res.State == client.StateCommitted {
		state = "committed"
	}
	w.stats.record(state, res.Reason, took, nil)
}

func (w *Workload) randomTransfer(rng *rand.Rand) bank.Transfer {
	pick := func() bank.AccountRef {
		return bank.AccountRef{Bank: w.cfg.Banks[rng.IntN(len(w.cfg.Banks))], Account: bank.AccountName(rng.IntN(w.cfg.Accounts))}
	}
	from, to := pick(), pick()
	for to == from {
		to = pick()
	}
	return bank.Transfer{From: from, To: to, Amount: 1 + rng.Int64N(w.cfg.MaxAmount)}
}

func newRand(seed, stream uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, stream)) }
