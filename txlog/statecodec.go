package txlog

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// KV is one key-value pair of the state keyspace. Keys are relative to the
// state prefix (a record's key is "txn/<id>").
type KV struct {
	Key, Value []byte
}

// stateV1 is the version byte of the snapshot data format.
const stateV1 = 1

// The snapshot data format is deterministic so that replicas with the same
// state produce the same bytes:
//
//	version byte (1)
//	uvarint number of pairs
//	per pair, in strictly increasing key order:
//	  uvarint key length, key, uvarint value length, value
//
// The applied index is not part of the data: it is the snapshot's index.

// EncodeState encodes kvs in the snapshot data format. The keys must be in
// strictly increasing order and must not include the reserved key "applied".
func EncodeState(kvs []KV) ([]byte, error) {
	var e stateEncoder
	for _, kv := range kvs {
		if err := e.add(kv.Key, kv.Value); err != nil {
			return nil, err
		}
	}
	return e.finish(), nil
}

// DecodeState decodes snapshot data written by EncodeState or by
// Store.CreateSnapshot. It rejects truncated, garbled or non-canonical data
// with an error.
func DecodeState(data []byte) ([]KV, error) {
	d := &decoder{what: "state", buf: data}
	if v := d.byte("version"); d.err == nil && v != stateV1 {
		return nil, fmt.Errorf("decode state: unsupported version %d", v)
	}
	n := d.count("pairs")
	var kvs []KV
	for i := 0; i < n && d.err == nil; i++ {
		kv := KV{Key: d.bytes("key"), Value: d.bytes("value")}
		if d.err != nil {
			break
		}
		var prev []byte
		if i > 0 {
			prev = kvs[i-1].Key
		}
		if err := checkNextKey(kv.Key, prev, i > 0); err != nil {
			return nil, fmt.Errorf("decode state: pair %d: %w", i, err)
		}
		kvs = append(kvs, kv)
	}
	if err := d.end(); err != nil {
		return nil, err
	}
	return kvs, nil
}

// checkNextKey validates key as the successor of prev in a state listing.
// hasPrev is false for the first key, which may be empty.
func checkNextKey(key, prev []byte, hasPrev bool) error {
	if string(key) == reservedStateKey {
		return fmt.Errorf("reserved key %q", key)
	}
	if hasPrev && bytes.Compare(prev, key) >= 0 {
		return fmt.Errorf("key %q not after %q", key, prev)
	}
	return nil
}

// stateEncoder builds snapshot data one pair at a time, so that the store
// can stream a Pebble iterator into it.
type stateEncoder struct {
	body    []byte
	n       uint64
	lastKey []byte
}

func (e *stateEncoder) add(key, value []byte) error {
	if err := checkNextKey(key, e.lastKey, e.n > 0); err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	e.body = appendBytes(appendBytes(e.body, key), value)
	e.lastKey = append(e.lastKey[:0], key...)
	e.n++
	return nil
}

func (e *stateEncoder) finish() []byte {
	out := make([]byte, 0, 1+binary.MaxVarintLen64+len(e.body))
	out = append(out, stateV1)
	out = binary.AppendUvarint(out, e.n)
	return append(out, e.body...)
}
