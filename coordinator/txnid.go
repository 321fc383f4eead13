package coordinator

import (
	"encoding/hex"
	"errors"
	"fmt"
	"time"
)

// ErrForgotten marks a transaction id older than the retention horizon that
// has no record: its outcome, if it had one, was collected.
var ErrForgotten = errors.New("transaction is older than the retention horizon")

// maxTxnIDLen bounds ids; canonical UUIDs are 36 bytes.
const maxTxnIDLen = 36

// parseTxnID checks that id is a UUIDv7 in canonical text form and returns
// the millisecond timestamp it carries. Ids must be time-ordered so that an
// old id without a record can be told apart (FORGOTTEN) from a new one
// (presumed aborted).
func parseTxnID(id string) (time.Time, error) {
	if id == "" {
		return time.Time{}, errors.New("transaction id is empty")
	}
	if len(id) != maxTxnIDLen {
		return time.Time{}, fmt.Errorf("transaction id %.64q is not a canonical UUID (36 characters)", id)
	}
	var raw [16]byte
	j := 0
	for i := 0; i < len(id); i += 2 {
		if i == 8 || i == 13 || i == 18 || i == 23 {
			if id[i] != '-' {
				return time.Time{}, fmt.Errorf("transaction id %q is not a canonical UUID", id)
			}
			i--
			continue
		}
		if _, err := hex.Decode(raw[j:j+1], []byte(id[i:i+2])); err != nil {
			return time.Time{}, fmt.Errorf("transaction id %q is not a canonical UUID", id)
		}
		j++
	}
	if raw[6]>>4 != 7 || raw[8]>>6 != 0b10 {
		return time.Time{}, fmt.Errorf("transaction id %q is not a UUIDv7 (time-ordered)", id)
	}
	ms := int64(raw[0])<<40 | int64(raw[1])<<32 | int64(raw[2])<<24 | int64(raw[3])<<16 | int64(raw[4])<<8 | int64(raw[5])
	return time.UnixMilli(ms), nil
}

// isForgotten reports whether id was minted before the retention horizon
// (unix nanos). Ids that do not parse are never forgotten; they were
// refused at the door.
func isForgotten(id string, horizon int64) bool {
	if horizon == 0 {
		return false
	}
	t, err := parseTxnID(id)
	return err == nil && t.UnixNano() < horizon
}
