package bank

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// A Leg is one account's part of a transfer at one bank.
type Leg struct {
	Account string
	// Delta is added to the balance: negative for a debit, positive for a
	// credit; never zero.
	Delta int64
}

// legsV1 is the version byte of the legs encoding.
const legsV1 = 1

// Limits of a decoded legs payload.
const (
	maxLegs       = 64
	maxAccountLen = 128
)

// EncodeLegs encodes legs as a branch payload: the version byte, the number
// of legs as a uvarint, then per leg the account's length (uvarint), the
// account and the delta (zig-zag varint).
func EncodeLegs(legs []Leg) []byte {
	b := []byte{legsV1}
	b = binary.AppendUvarint(b, uint64(len(legs)))
	for _, l := range legs {
		b = binary.AppendUvarint(b, uint64(len(l.Account)))
		b = append(b, l.Account...)
		b = binary.AppendVarint(b, l.Delta)
	}
	return b
}

// DecodeLegs decodes a payload written by EncodeLegs. It is strict: it
// rejects an unknown version, truncated, trailing or non-canonical bytes,
// no legs or more than 64, an empty or over-long account, an account that
// appears twice and a zero delta. Whatever it accepts, EncodeLegs encodes
// back to the same bytes.
func DecodeLegs(b []byte) ([]Leg, error) {
	legs, err := decodeLegs(b)
	if err != nil {
		return nil, fmt.Errorf("decode legs: %w", err)
	}
	if !bytes.Equal(EncodeLegs(legs), b) {
		return nil, errors.New("decode legs: non-canonical encoding")
	}
	return legs, nil
}

func decodeLegs(b []byte) ([]Leg, error) {
	if len(b) == 0 {
		return nil, errors.New("empty payload")
	}
	if b[0] != legsV1 {
		return nil, fmt.Errorf("unsupported version %d", b[0])
	}
	r := bytes.NewReader(b[1:])
	n, err := binary.ReadUvarint(r)
	switch {
	case err != nil:
		return nil, fmt.Errorf("leg count: %w", err)
	case n == 0:
		return nil, errors.New("no legs")
	case n > maxLegs:
		return nil, fmt.Errorf("%d legs exceed %d", n, maxLegs)
	}
	legs := make([]Leg, 0, n)
	seen := make(map[string]bool, n)
	for i := range int(n) {
		l, err := readLeg(r)
		if err != nil {
			return nil, fmt.Errorf("leg %d: %w", i, err)
		}
		if seen[l.Account] {
			return nil, fmt.Errorf("leg %d: account %q appears twice", i, l.Account)
		}
		seen[l.Account] = true
		legs = append(legs, l)
	}
	if r.Len() > 0 {
		return nil, fmt.Errorf("%d trailing bytes", r.Len())
	}
	return legs, nil
}

func readLeg(r *bytes.Reader) (Leg, error) {
	n, err := binary.ReadUvarint(r)
	switch {
	case err != nil:
		return Leg{}, fmt.Errorf("account length: %w", err)
	case n == 0:
		return Leg{}, errors.New("empty account")
	case n > maxAccountLen:
		return Leg{}, fmt.Errorf("account of %d bytes exceeds %d", n, maxAccountLen)
	case n > uint64(r.Len()):
		return Leg{}, errors.New("account truncated")
	}
	name := make([]byte, n)
	_, _ = r.Read(name) // cannot fail: n bytes remain
	delta, err := binary.ReadVarint(r)
	switch {
	case err != nil:
		return Leg{}, fmt.Errorf("delta: %w", err)
	case delta == 0:
		return Leg{}, errors.New("zero delta")
	}
	return Leg{Account: string(name), Delta: delta}, nil
}
