package txlog

import (
	"encoding/binary"
	"fmt"
)

// Outcome is the decision recorded for a transaction.
type Outcome uint8

// Outcomes. The numeric values are part of the record encoding.
const (
	OutcomeUnknown   Outcome = 0
	OutcomeCommitted Outcome = 1
	OutcomeAborted   Outcome = 2
)

func (o Outcome) String() string {
	switch o {
	case OutcomeUnknown:
		return "unknown"
	case OutcomeCommitted:
		return "committed"
	case OutcomeAborted:
		return "aborted"
	default:
		return fmt.Sprintf("Outcome(%d)", uint8(o))
	}
}

// Record is an entry of the transaction-record table.
type Record struct {
	ID           string
	Outcome      Outcome
	Participants []string
	// Acked lists the participants that acknowledged phase 2; it is a
	// subset of Participants.
	Acked []string
	// DecidedAt is in unix nanoseconds, taken from the proposing leader's
	// clock and carried in the command, so every replica stores the same
	// value.
	DecidedAt  int64
	Finished   bool
	FinishedAt int64
	// Reason says why an aborted transaction aborted (which participant
	// voted no or failed, and what it said); empty for commits.
	Reason string
}

// recordV1 is the version byte of the current record encoding. A new field
// gets a new version; UnmarshalRecord keeps decoding the older ones.
const recordV1 = 1

// Marshal encodes r: the version byte, then the fields in declaration order,
// strings and lists length-prefixed with uvarints, times as zig-zag varints.
func (r *Record) Marshal() []byte {
	// Sized once: growing the buffer field by field was most of the cost.
	return r.appendMarshal(make([]byte, 0, r.marshalBound()))
}

// marshalBound bounds the length of r's encoding.
func (r *Record) marshalBound() int {
	return 1 + 2*binary.MaxVarintLen64 + 2 + stringLen(r.ID) + stringsLen(r.Participants) +
		stringsLen(r.Acked) + stringLen(r.Reason)
}

// appendMarshal appends r's encoding (see Marshal) to b.
func (r *Record) appendMarshal(b []byte) []byte {
	b = append(b, recordV1)
	b = appendString(b, r.ID)
	b = append(b, byte(r.Outcome))
	b = appendStrings(b, r.Participants)
	b = appendStrings(b, r.Acked)
	b = binary.AppendVarint(b, r.DecidedAt)
	b = append(b, boolByte(r.Finished))
	b = binary.AppendVarint(b, r.FinishedAt)
	return appendString(b, r.Reason)
}

// UnmarshalRecord decodes a record written by Record.Marshal. It rejects
// truncated, garbled or non-canonical input with an error.
func UnmarshalRecord(b []byte) (*Record, error) {
	d := &decoder{what: "record", buf: b}
	if v := d.byte("version"); d.err == nil && v != recordV1 {
		return nil, fmt.Errorf("decode record: unsupported version %d", v)
	}
	r := &Record{ID: string(d.bytes("id"))}
	r.Outcome = Outcome(d.byte("outcome"))
	if r.Outcome > OutcomeAborted {
		d.fail("outcome", fmt.Sprintf("invalid value %d", r.Outcome))
	}
	r.Participants = d.strings("participants")
	r.Acked = d.strings("acked")
	r.DecidedAt = d.varint("decided at")
	r.Finished = d.bool("finished")
	r.FinishedAt = d.varint("finished at")
	r.Reason = string(d.bytes("reason"))
	if err := d.end(); err != nil {
		return nil, err
	}
	return r, nil
}

// stringLen bounds what appendString adds for s; stringsLen what
// appendStrings adds for ss.
func stringLen(s string) int { return binary.MaxVarintLen64 + len(s) }

func stringsLen(ss []string) int {
	n := binary.MaxVarintLen64
	for _, s := range ss {
		n += stringLen(s)
	}
	return n
}

func appendStrings(b []byte, ss []string) []byte {
	b = binary.AppendUvarint(b, uint64(len(ss)))
	for _, s := range ss {
		b = appendString(b, s)
	}
	return b
}

// strings reads a list written by appendStrings; an empty list decodes as
// nil.
func (d *decoder) strings(field string) []string {
	n := d.count(field)
	if n == 0 {
		return nil
	}
	ss := make([]string, 0, n)
	for range n {
		ss = append(ss, string(d.bytes(field)))
	}
	return ss
}

func (d *decoder) bool(field string) bool {
	switch b := d.byte(field); b {
	case 0:
		return false
	case 1:
		return true
	default:
		d.fail(field, fmt.Sprintf("invalid boolean %d", b))
		return false
	}
}

func boolByte(v bool) byte {
	if v {
		return 1
	}
	return 0
}
