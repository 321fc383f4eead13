package txlog

import (
	"encoding/hex"
	"errors"
	"fmt"
	"time"
)

// TxnIDLen is the length of a transaction id: a UUID in canonical text form.
const TxnIDLen = 36

// ParseTxnID checks that id is a UUIDv7 in canonical text form and returns
// the millisecond timestamp it carries. The coordinator refuses other ids at
// the door, and the record index orders finished records by this time too
// (see finKey), so both must read ids the same way: hence one parser, here.
func ParseTxnID(id string) (time.Time, error) {
	if id == "" {
		return time.Time{}, errors.New("transaction id is empty")
	}
	if len(id) != TxnIDLen {
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
