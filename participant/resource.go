package participant

import (
	"context"
	"fmt"
	"time"
)

// Txn is a transaction as a Resource sees it at Prepare.
type Txn struct {
	// ID is the transaction's id, its idempotency key.
	ID string
	// Payload is this participant's branch of the transaction, opaque to
	// the SDK.
	Payload []byte
	// Participants lists every participant of the transaction, this one
	// included.
	Participants []string
	// OnePhase is set when this participant is the transaction's only
	// one: a YES vote is followed at once by Commit, in the same batch.
	OnePhase bool
}

// Vote is a Resource's answer to Prepare.
type Vote int

// Votes.
const (
	// VoteYes promises to commit if asked: whatever Commit needs must be
	// written through the Writer during Prepare.
	VoteYes Vote = iota + 1
	// VoteNo refuses the transaction; the Prepare's writes are discarded.
	VoteNo
	// VoteReadOnly says the resource changed nothing and needs neither
	// Commit nor Abort; the Prepare's writes are discarded.
	VoteReadOnly
)

func (v Vote) String() string {
	switch v {
	case VoteYes:
		return "yes"
	case VoteNo:
		return "no"
	case VoteReadOnly:
		return "read-only"
	default:
		return fmt.Sprintf("Vote(%d)", int(v))
	}
}

// Resource is what a user implements to take part in transactions.
//
// Writes made through w are committed atomically with the SDK's durable
// record of the vote or outcome; returning VoteNo, VoteReadOnly or an error
// discards them. The SDK calls the methods of one transaction one at a time,
// but different transactions concurrently: the Writer gives atomicity and
// durability, not isolation, so a resource guards data shared between
// transactions itself (for example with locks or reservations taken in
// Prepare, recorded in its keys, and released by Commit or Abort).
//
// Commit and Abort are called only for a transaction the resource voted YES
// on, exactly once per transaction unless they fail: an error leaves the
// transaction prepared, and the call is repeated later. They must not fail
// for good: the decision is final.
type Resource interface {
	// Prepare votes on txn. With VoteNo, reason says why (it reaches the
	// application). An error counts as a NO vote that is not recorded, so
	// a repeated Prepare calls Prepare again.
	Prepare(ctx context.Context, txn Txn, w Writer) (Vote, string, error)
	// Commit applies the prepared transaction id.
	Commit(ctx context.Context, id string, w Writer) error
	// Abort undoes the prepared transaction id.
	Abort(ctx context.Context, id string, w Writer) error
}

// Writer reads and writes the resource's keys within one SDK step. Its
// reads see its own writes. Keys are the resource's own; the SDK keeps its
// records apart. A Writer is valid only during the call it is passed to.
type Writer interface {
	Get(key []byte) ([]byte, bool, error)
	Set(key, value []byte)
	Delete(key []byte)
}

// Reader is a consistent, read-only view of the resource's keys.
type Reader interface {
	Get(key []byte) ([]byte, bool, error)
	// Scan calls fn for every key starting with prefix, in key order,
	// until fn returns false. fn may keep the slices it gets.
	Scan(prefix []byte, fn func(key, value []byte) bool) error
}

// InDoubtTxn is a prepared transaction whose outcome the participant does
// not know yet.
type InDoubtTxn struct {
	ID           string
	Participants []string
	PreparedAt   time.Time
}
