package bank

import (
	"encoding/binary"
	"fmt"
)

// Key prefixes of the bank's keyspace in the participant log (see the
// package documentation).
const (
	acctPrefix     = "acct/"
	lockPrefix     = "lock/"
	pendingPrefix  = "pending/"
	releasedPrefix = "released/"
)

func acctKey(account string) []byte     { return []byte(acctPrefix + account) }
func lockKey(account string) []byte     { return []byte(lockPrefix + account) }
func pendingKey(txn string) []byte      { return []byte(pendingPrefix + txn) }
func releasedKey(account string) []byte { return []byte(releasedPrefix + account) }

// encodeBalance encodes a balance as 8 bytes, big-endian.
func encodeBalance(v int64) []byte {
	return binary.BigEndian.AppendUint64(nil, uint64(v))
}

func decodeBalance(b []byte) (int64, error) {
	if len(b) != 8 {
		return 0, fmt.Errorf("balance of %d bytes, want 8", len(b))
	}
	return int64(binary.BigEndian.Uint64(b)), nil
}

// getter reads keys: a participant.Writer or participant.Reader.
type getter interface {
	Get(key []byte) ([]byte, bool, error)
}

// balance reads an account's balance; found is false for an unknown
// account.
func balance(g getter, account string) (v int64, found bool, err error) {
	b, found, err := g.Get(acctKey(account))
	if err != nil || !found {
		return 0, false, wrapErr(err, "read account %q", account)
	}
	v, err = decodeBalance(b)
	if err != nil {
		return 0, false, fmt.Errorf("read account %q: %w", account, err)
	}
	return v, true, nil
}

// pendingLegs reads the legs a prepared transaction reserved.
func pendingLegs(g getter, txn string) ([]Leg, bool, error) {
	b, found, err := g.Get(pendingKey(txn))
	if err != nil || !found {
		return nil, false, wrapErr(err, "read pending legs of %q", txn)
	}
	legs, err := DecodeLegs(b)
	if err != nil {
		return nil, false, fmt.Errorf("read pending legs of %q: %w", txn, err)
	}
	return legs, true, nil
}

// wrapErr wraps a non-nil err with a formatted context.
func wrapErr(err error, format string, args ...any) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf(format+": %w", append(args, err)...)
}
