package txlog

import "encoding/binary"

// Key layout of the Pebble database; see the package documentation.
var (
	identityKey  = []byte("m/identity")
	hardStateKey = []byte("r/hs")
	snapshotKey  = []byte("r/snap")
	appliedKey   = []byte("s/applied")

	// entryPrefix starts the log entries; entryEnd is the first key past
	// them.
	entryPrefix = []byte("r/e/")
	entryEnd    = prefixEnd(entryPrefix)

	// statePrefix starts the state keyspace; stateEnd is the first key
	// past it.
	statePrefix = []byte("s/")
	stateEnd    = prefixEnd(statePrefix)

	// recordPrefix is the record table, relative to statePrefix.
	recordPrefix = []byte("txn/")
)

// reservedStateKey is the state-relative key of the applied index. State
// machine writes must never touch it.
const reservedStateKey = "applied"

// entryKey returns the key of the log entry at index i. Big-endian indexes
// keep the entries in log order.
func entryKey(i uint64) []byte {
	return binary.BigEndian.AppendUint64(append([]byte(nil), entryPrefix...), i)
}

// entryIndex decodes the index from an entry key.
func entryIndex(key []byte) (uint64, bool) {
	if len(key) != len(entryPrefix)+8 {
		return 0, false
	}
	return binary.BigEndian.Uint64(key[len(entryPrefix):]), true
}

// stateKey maps a state-relative key to its database key.
func stateKey(key []byte) []byte {
	return append(append(make([]byte, 0, len(statePrefix)+len(key)), statePrefix...), key...)
}

// recordKey returns the state-relative key of the record with the given id.
func recordKey(id string) []byte {
	return append(append(make([]byte, 0, len(recordPrefix)+len(id)), recordPrefix...), id...)
}

// appendRecordKey appends the database key of id's record to dst.
func appendRecordKey(dst []byte, id string) []byte {
	return append(append(append(dst, statePrefix...), recordPrefix...), id...)
}

// prefixEnd returns the first key after every key that starts with prefix.
// The prefixes used here never end in 0xff.
func prefixEnd(prefix []byte) []byte {
	end := append([]byte(nil), prefix...)
	end[len(end)-1]++
	return end
}

func encodeUint64(v uint64) []byte {
	return binary.BigEndian.AppendUint64(nil, v)
}
