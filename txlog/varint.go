package txlog

import (
	"encoding/binary"
	"fmt"
	"math/bits"
)

// decoder reads the primitives shared by the record and state codecs. The
// first failure sticks: later reads return zero values and err reports the
// first problem. Only minimal varint encodings are accepted, so every input
// that decodes re-encodes to exactly the same bytes.
type decoder struct {
	what string // what is being decoded, for error messages
	buf  []byte
	err  error
}

func (d *decoder) fail(field, problem string) {
	if d.err == nil {
		d.err = fmt.Errorf("decode %s: %s: %s", d.what, field, problem)
	}
}

func (d *decoder) uvarint(field string) uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.buf)
	switch {
	case n == 0:
		d.fail(field, "truncated")
		return 0
	case n < 0:
		d.fail(field, "varint overflows 64 bits")
		return 0
	case n != uvarintLen(v):
		d.fail(field, "non-minimal varint")
		return 0
	}
	d.buf = d.buf[n:]
	return v
}

// varint reads a zig-zag encoded signed integer, as binary.AppendVarint
// writes it.
func (d *decoder) varint(field string) int64 {
	u := d.uvarint(field)
	v := int64(u >> 1)
	if u&1 != 0 {
		v = ^v
	}
	return v
}

func (d *decoder) byte(field string) byte {
	if d.err != nil {
		return 0
	}
	if len(d.buf) == 0 {
		d.fail(field, "truncated")
		return 0
	}
	b := d.buf[0]
	d.buf = d.buf[1:]
	return b
}

// bytes reads a length-prefixed byte string and returns a copy of it.
func (d *decoder) bytes(field string) []byte {
	n := d.uvarint(field + " length")
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.buf)) {
		d.fail(field, fmt.Sprintf("length %d exceeds the %d remaining bytes", n, len(d.buf)))
		return nil
	}
	b := append([]byte(nil), d.buf[:n]...)
	d.buf = d.buf[n:]
	return b
}

// count reads the number of elements that follow. Each element takes at
// least one byte, which bounds the count by the remaining input and keeps
// garbage from triggering huge allocations.
func (d *decoder) count(field string) int {
	n := d.uvarint(field + " count")
	if d.err != nil {
		return 0
	}
	if n > uint64(len(d.buf)) {
		d.fail(field, fmt.Sprintf("count %d exceeds the %d remaining bytes", n, len(d.buf)))
		return 0
	}
	return int(n)
}

// end checks that the whole input was consumed.
func (d *decoder) end() error {
	if d.err == nil && len(d.buf) > 0 {
		d.fail("end", fmt.Sprintf("%d unexpected trailing bytes", len(d.buf)))
	}
	return d.err
}

// uvarintLen is the length of the minimal encoding of v.
func uvarintLen(v uint64) int {
	return max(1, (bits.Len64(v)+6)/7)
}

func appendBytes(dst, b []byte) []byte {
	return append(binary.AppendUvarint(dst, uint64(len(b))), b...)
}

func appendString(dst []byte, s string) []byte {
	return append(binary.AppendUvarint(dst, uint64(len(s))), s...)
}
