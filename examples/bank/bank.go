package bank

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"sync"

	"github.com/decree-tx/decree/participant"
	"github.com/rs/zerolog"
)

// Reasons of a Bank's NO votes; they reach the application as the abort
// reason.
const (
	ReasonInsufficientFunds = "insufficient funds"
	ReasonUnknownAccount    = "unknown account"
	ReasonAccountBusy       = "account busy"
	// ReasonBalanceOverflow refuses a credit that would overflow a balance.
	ReasonBalanceOverflow = "balance overflow"
	// reasonBadPayload prefixes the NO vote on a payload DecodeLegs refuses.
	reasonBadPayload = "bad payload: "
)

// Bank is a participant.Resource holding accounts. Its branch payloads are
// encoded legs (EncodeLegs).
type Bank struct {
	name string
	log  zerolog.Logger

	mu       sync.Mutex
	reserved reservations // guarded by mu
}

var _ participant.Resource = (*Bank)(nil)

// NewBank returns a bank with no reservations. A bank restarted on an
// existing log must have its reservations restored from the log's lock/
// keys first, as NewServer does.
func NewBank(name string, log zerolog.Logger) *Bank {
	return &Bank{
		name:     name,
		log:      log.With().Str("component", "bank").Str("bank", name).Logger(),
		reserved: make(reservations),
	}
}

// Prepare reserves the accounts of the transaction's legs and votes YES, or
// votes NO with a Reason constant, or "bad payload: ..." for a payload
// DecodeLegs refuses.
func (b *Bank) Prepare(_ context.Context, txn participant.Txn, w participant.Writer) (participant.Vote, string, error) {
	legs, err := DecodeLegs(txn.Payload)
	if err != nil {
		return participant.VoteNo, reasonBadPayload + err.Error(), nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	reason, err := b.check(txn.ID, legs, w)
	if err != nil {
		return 0, "", fmt.Errorf("prepare %s: %w", txn.ID, err)
	}
	if reason != "" {
		b.log.Debug().Str("txn", txn.ID).Str("reason", reason).Msg("voting no")
		return participant.VoteNo, reason, nil
	}
	for _, l := range legs {
		w.Set(lockKey(l.Account), []byte(txn.ID))
		b.reserved.reserve(l.Account, txn.ID)
	}
	w.Set(pendingKey(txn.ID), txn.Payload)
	return participant.VoteYes, "", nil
}

// check returns why the legs cannot be reserved for txn, or "" if they
// can: an unknown account, then a busy one, then a balance that cannot
// take its delta. Balances are read only once every account is known to be
// free: only then is the last release of each on disk. b.mu must be held.
func (b *Bank) check(txn string, legs []Leg, w participant.Writer) (string, error) {
	for _, l := range legs {
		if _, found, err := w.Get(acctKey(l.Account)); err != nil || !found {
			return ReasonUnknownAccount, wrapErr(err, "read account %q", l.Account)
		}
	}
	for _, l := range legs {
		if free, err := b.free(l.Account, txn, w); err != nil || !free {
			return ReasonAccountBusy, err
		}
	}
	for _, l := range legs {
		v, _, err := balance(w, l.Account)
		if err != nil {
			return "", err
		}
		if reason := afford(v, l.Delta); reason != "" {
			return reason, nil
		}
	}
	return "", nil
}

// free reports whether txn may reserve account: no other transaction holds
// it, in memory or on disk. b.mu must be held.
func (b *Bank) free(account, txn string, w participant.Writer) (bool, error) {
	if free, err := b.reserved.free(account, txn, w); err != nil || !free {
		return false, err
	}
	holder, locked, err := w.Get(lockKey(account))
	if err != nil {
		return false, fmt.Errorf("read lock of %q: %w", account, err)
	}
	return !locked || bytes.Equal(holder, []byte(txn)), nil
}

// afford returns why balance cannot take delta, or "".
func afford(balance, delta int64) string {
	switch {
	case delta < 0 && balance+delta < 0:
		return ReasonInsufficientFunds
	case delta > 0 && balance > math.MaxInt64-delta:
		return ReasonBalanceOverflow
	}
	return ""
}

// Commit applies the prepared transaction's deltas and releases its
// accounts.
func (b *Bank) Commit(_ context.Context, id string, w participant.Writer) error {
	legs, found, err := pendingLegs(w, id)
	if err != nil {
		return fmt.Errorf("commit %s: %w", id, err)
	}
	if !found {
		b.log.Error().Str("txn", id).Msg("commit of a transaction with no pending transfer")
		return fmt.Errorf("commit %s: no pending transfer", id)
	}
	for _, l := range legs {
		if err := applyLeg(w, l); err != nil {
			return fmt.Errorf("commit %s: %w", id, err)
		}
	}
	b.release(id, legs, w)
	b.log.Debug().Str("txn", id).Int("legs", len(legs)).Msg("committed")
	return nil
}

// applyLeg adds the leg's delta to its account's balance.
func applyLeg(w participant.Writer, l Leg) error {
	v, found, err := balance(w, l.Account)
	switch {
	case err != nil:
		return err
	case !found:
		return fmt.Errorf("account %q vanished", l.Account)
	case afford(v, l.Delta) != "":
		return fmt.Errorf("account %q: %s for delta %d on balance %d", l.Account, afford(v, l.Delta), l.Delta, v)
	}
	w.Set(acctKey(l.Account), encodeBalance(v+l.Delta))
	return nil
}

// Abort releases the prepared transaction's accounts; with nothing pending
// it does nothing.
func (b *Bank) Abort(_ context.Context, id string, w participant.Writer) error {
	legs, found, err := pendingLegs(w, id)
	if err != nil {
		return fmt.Errorf("abort %s: %w", id, err)
	}
	if found {
		b.release(id, legs, w)
	}
	b.log.Debug().Str("txn", id).Bool("pending", found).Msg("aborted")
	return nil
}

// release deletes txn's locks and pending legs and marks its reservations
// released (see reservations for why they are not forgotten yet).
func (b *Bank) release(txn string, legs []Leg, w participant.Writer) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, l := range legs {
		holder, locked, err := w.Get(lockKey(l.Account))
		if err == nil && locked && bytes.Equal(holder, []byte(txn)) {
			w.Delete(lockKey(l.Account))
		} else {
			b.log.Error().Err(err).Str("txn", txn).Str("account", l.Account).Str("holder", string(holder)).
				Msg("releasing an account this transaction does not hold on disk")
		}
		w.Set(releasedKey(l.Account), []byte(txn))
		b.reserved.release(l.Account, txn)
	}
	w.Delete(pendingKey(txn))
}

// restore rebuilds the reservation table from the lock/ keys scan finds.
func (b *Bank) restore(scan func(prefix []byte, fn func(key, value []byte) bool) error) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	err := scan([]byte(lockPrefix), func(key, value []byte) bool {
		b.reserved.reserve(string(key[len(lockPrefix):]), string(value))
		return true
	})
	if err != nil {
		return fmt.Errorf("restore reservations: %w", err)
	}
	if n := len(b.reserved); n > 0 {
		b.log.Info().Int("accounts", n).Msg("restored reservations")
	}
	return nil
}
