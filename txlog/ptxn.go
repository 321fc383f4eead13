package txlog

import (
	"encoding/binary"
	"fmt"
)

// PState is the state of a transaction at a participant.
type PState uint8

// Participant states. The numeric values are part of the PTxn encoding; the
// zero value is not a valid state and is never stored.
const (
	// PStatePrepared: the participant voted YES and has not heard the
	// outcome yet.
	PStatePrepared PState = 1
	// PStateCommitted: the outcome, or the one-phase commit, is applied.
	PStateCommitted PState = 2
	// PStateAborted: the participant voted NO, applied an abort, or left a
	// tombstone for an Abort or Resolve of a transaction it never prepared.
	PStateAborted PState = 3
	// PStateReadOnly: the participant voted READ_ONLY and takes no part in
	// phase 2.
	PStateReadOnly PState = 4
)

func (s PState) String() string {
	switch s {
	case PStatePrepared:
		return "prepared"
	case PStateCommitted:
		return "committed"
	case PStateAborted:
		return "aborted"
	case PStateReadOnly:
		return "read-only"
	default:
		return fmt.Sprintf("PState(%d)", uint8(s))
	}
}

// valid reports whether s is one of the defined states.
func (s PState) valid() bool {
	return s >= PStatePrepared && s <= PStateReadOnly
}

// PTxn is a participant's durable record of one transaction.
type PTxn struct {
	ID    string
	State PState
	// Participants lists every participant of the transaction, as the
	// Prepare named them; empty for tombstones.
	Participants []string
	// Term is the highest coordinator Raft term seen for this transaction.
	Term uint64
	// Reason explains an abort (the NO vote's reason, or how the tombstone
	// came about).
	Reason   string
	OnePhase bool
	// PreparedAt and DecidedAt are unix nanoseconds from the participant's
	// clock; zero when the event did not happen.
	PreparedAt, DecidedAt int64
	// PayloadDigest is the SHA-256 of the Prepare's payload; nil in
	// tombstones and in records written before it existed. With
	// Participants it tells a repeated Prepare from a different one that
	// reuses the id.
	PayloadDigest []byte
}

// ptxnV1 and ptxnV2 are the version bytes of the PTxn encodings. A new
// field gets a new version; UnmarshalPTxn keeps decoding the older ones.
// V2 appends the payload digest; a record without one is written as V1, so
// that every record has exactly one encoding.
const (
	ptxnV1 = 1
	ptxnV2 = 2
)

// Marshal encodes t: the version byte, then the fields in declaration order,
// strings and lists length-prefixed with uvarints, the term as a uvarint and
// times as zig-zag varints.
func (t *PTxn) Marshal() []byte {
	// Sized once: growing the buffer field by field was most of the cost.
	return t.appendMarshal(make([]byte, 0, t.marshalBound()))
}

// marshalBound bounds the length of t's encoding.
func (t *PTxn) marshalBound() int {
	return 1 + stringLen(t.ID) + 1 + stringsLen(t.Participants) + 3*binary.MaxVarintLen64 +
		stringLen(t.Reason) + 1 + binary.MaxVarintLen64 + len(t.PayloadDigest)
}

// appendMarshal appends t's encoding (see Marshal) to b.
func (t *PTxn) appendMarshal(b []byte) []byte {
	version := byte(ptxnV1)
	if len(t.PayloadDigest) > 0 {
		version = ptxnV2
	}
	b = append(b, version)
	b = appendString(b, t.ID)
	b = append(b, byte(t.State))
	b = appendStrings(b, t.Participants)
	b = binary.AppendUvarint(b, t.Term)
	b = appendString(b, t.Reason)
	b = append(b, boolByte(t.OnePhase))
	b = binary.AppendVarint(b, t.PreparedAt)
	b = binary.AppendVarint(b, t.DecidedAt)
	if version == ptxnV2 {
		b = binary.AppendUvarint(b, uint64(len(t.PayloadDigest)))
		b = append(b, t.PayloadDigest...)
	}
	return b
}

// UnmarshalPTxn decodes a record written by PTxn.Marshal. It rejects
// truncated, garbled or non-canonical input and undefined states.
func UnmarshalPTxn(b []byte) (*PTxn, error) {
	d := &decoder{what: "participant txn", buf: b}
	v := d.byte("version")
	if d.err == nil && v != ptxnV1 && v != ptxnV2 {
		return nil, fmt.Errorf("decode participant txn: unsupported version %d", v)
	}
	t := &PTxn{ID: string(d.bytes("id"))}
	t.State = PState(d.byte("state"))
	if d.err == nil && !t.State.valid() {
		d.fail("state", fmt.Sprintf("invalid value %d", t.State))
	}
	t.Participants = d.strings("participants")
	t.Term = d.uvarint("term")
	t.Reason = string(d.bytes("reason"))
	t.OnePhase = d.bool("one phase")
	t.PreparedAt = d.varint("prepared at")
	t.DecidedAt = d.varint("decided at")
	if v == ptxnV2 {
		t.PayloadDigest = d.bytes("payload digest")
		if d.err == nil && len(t.PayloadDigest) == 0 {
			d.fail("payload digest", "empty in a version 2 record")
		}
	}
	if err := d.end(); err != nil {
		return nil, err
	}
	return t, nil
}
