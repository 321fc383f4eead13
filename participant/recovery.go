package participant

import (
	"context"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/decree-tx/decree/internal/backoff"
	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
)

// resolveWorkers bounds the outcome queries in flight at once.
const resolveWorkers = 8

// dueTxn is an in-doubt transaction due for an outcome query.
type dueTxn struct {
	id           string
	participants []string
}

// recoveryLoop asks the coordinators for the outcome of every in-doubt
// transaction that is due, applies the answers, reschedules the rest with
// backoff, and sleeps until the next one is due or a transaction is
// prepared.
func (p *Participant) recoveryLoop(ctx context.Context) {
	log := p.log.With().Str("component", "participant-recovery").Logger()
	log.Info().Msg("recovery loop started")
	defer log.Info().Msg("recovery loop stopped")
	for ctx.Err() == nil {
		now := p.opts.Clock.Now()
		due, next := p.dueInDoubt(now)
		if len(due) > 0 {
			p.resolveRound(ctx, due, resolveWorkers)
			continue
		}
		var timer <-chan time.Time
		if !next.IsZero() {
			timer = p.opts.Clock.After(next.Sub(now))
		}
		select {
		case <-ctx.Done():
		case <-p.wake:
		case <-timer:
		}
	}
}

// dueInDoubt returns the in-doubt transactions due at now, and when the
// earliest of the others is due (zero if there are none). With none due,
// the loop is about to sleep until next.
func (p *Participant) dueInDoubt(now time.Time) (due []dueTxn, next time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for id, d := range p.inDoubt {
		switch {
		case !d.due.After(now):
			due = append(due, dueTxn{id: id, participants: d.participants})
		case next.IsZero() || d.due.Before(next):
			next = d.due
		}
	}
	p.sleeping, p.sleepUntil = len(due) == 0, next
	slices.SortFunc(due, func(a, b dueTxn) int { return strings.Compare(a.id, b.id) })
	return due, next
}

// resolveRound resolves the due transactions with at most workers queries
// in flight, reschedules those still undecided, and returns how many it
// settled.
func (p *Participant) resolveRound(ctx context.Context, due []dueTxn, workers int) int {
	resolved := make([]bool, len(due))
	sem := make(chan struct{}, workers)
	var wg sync.WaitGroup
	for i, t := range due {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			resolved[i] = p.resolveOne(ctx, t)
		})
	}
	wg.Wait()
	now := p.opts.Clock.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	settled := 0
	for i, t := range due {
		if resolved[i] {
			settled++
		} else if d := p.inDoubt[t.id]; d != nil {
			d.attempts++
			d.due = now.Add(p.backoff(d.attempts))
		}
	}
	return settled
}

// resolveOne asks the coordinators for t's outcome and applies it. It
// reports whether the transaction is settled.
func (p *Participant) resolveOne(ctx context.Context, t dueTxn) bool {
	state, err := p.coord.Outcome(ctx, t.id, t.participants)
	if err != nil {
		p.log.Warn().Err(err).Str("txn", t.id).Msg("no coordinator answered an outcome query; will retry")
		return false
	}
	var d decision
	switch state {
	case decreev1.TxnState_TXN_STATE_COMMITTED:
		d = decideCommit
	case decreev1.TxnState_TXN_STATE_ABORTED:
		d = decideAbort
	case decreev1.TxnState_TXN_STATE_FORGOTTEN:
		p.log.Error().Str("txn", t.id).Msg("coordinators forgot the outcome of a prepared transaction; it cannot be decided safely and stays in doubt until an operator resolves it")
		return false
	default:
		p.log.Info().Str("txn", t.id).Stringer("state", state).Msg("outcome not decided yet; will ask again")
		return false
	}
	if err := p.decide(ctx, t.id, d, fence{}); err != nil {
		p.log.Error().Err(err).Str("txn", t.id).Stringer("decision", d).Msg("could not apply the learned outcome; will retry")
		return false
	}
	p.log.Info().Str("txn", t.id).Stringer("decision", d).Msg("resolved in-doubt transaction")
	return true
}

// backoff returns the wait before query attempt+1: RetryMin doubled per
// attempt up to RetryMax, jittered down within (d/2, d].
func (p *Participant) backoff(attempt int) time.Duration {
	return backoff.Policy{Min: p.opts.RetryMin, Max: p.opts.RetryMax, Rand: p.opts.Rand}.Delay(attempt)
}
