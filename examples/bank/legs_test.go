package bank

import (
	"bytes"
	"math"
	"reflect"
	"strings"
	"testing"
)

func TestLegsRoundTrip(t *testing.T) {
	for _, legs := range [][]Leg{
		{{Account: "a", Delta: -1}},
		{{Account: AccountName(7), Delta: -250}, {Account: AccountName(8), Delta: 250}},
		{{Account: strings.Repeat("z", maxAccountLen), Delta: math.MaxInt64}, {Account: "é", Delta: math.MinInt64}},
	} {
		got, err := DecodeLegs(EncodeLegs(legs))
		if err != nil {
			t.Fatalf("decode %v: %v", legs, err)
		}
		if !reflect.DeepEqual(got, legs) {
			t.Fatalf("round trip %v = %v", legs, got)
		}
	}
}

func TestLegsEncodingIsCompact(t *testing.T) {
	b := EncodeLegs([]Leg{{Account: AccountName(1), Delta: -100}, {Account: AccountName(2), Delta: 100}})
	// version, count, 2 × (length, 9 bytes of name, 2-byte varint)
	if len(b) != 2+2*(1+9+2) {
		t.Fatalf("encoding of %d bytes: %x", len(b), b)
	}
}

func TestDecodeLegsRejects(t *testing.T) {
	valid := EncodeLegs([]Leg{{Account: "a", Delta: 5}})
	for name, b := range map[string][]byte{
		"empty":             nil,
		"version 0":         append([]byte{0}, valid[1:]...),
		"version 2":         append([]byte{2}, valid[1:]...),
		"no legs":           {legsV1, 0},
		"too many legs":     {legsV1, maxLegs + 1},
		"truncated count":   {legsV1, 0x80},
		"truncated name":    {legsV1, 1, 5, 'a'},
		"truncated delta":   valid[:len(valid)-1],
		"empty account":     {legsV1, 1, 0, 2},
		"long account":      EncodeLegs([]Leg{{Account: strings.Repeat("z", maxAccountLen+1), Delta: 1}}),
		"zero delta":        {legsV1, 1, 1, 'a', 0},
		"duplicate account": EncodeLegs([]Leg{{Account: "a", Delta: 1}, {Account: "a", Delta: -1}}),
		"trailing byte":     append(bytes.Clone(valid), 0),
		"non-canonical":     {legsV1, 0x81, 0x00, 1, 'a', 2},
		"fewer legs":        {legsV1, 2, 1, 'a', 2},
	} {
		if legs, err := DecodeLegs(b); err == nil {
			t.Errorf("%s: DecodeLegs(%x) = %v, want an error", name, b, legs)
		}
	}
}

// FuzzDecodeLegs checks that DecodeLegs never panics and accepts only
// canonical encodings of valid legs.
func FuzzDecodeLegs(f *testing.F) {
	f.Add(EncodeLegs([]Leg{{Account: "a", Delta: -1}}))
	f.Add(EncodeLegs([]Leg{{Account: AccountName(1), Delta: -9}, {Account: AccountName(2), Delta: 9}}))
	f.Add([]byte{legsV1, 0x81, 0x00, 1, 'a', 2})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		legs, err := DecodeLegs(b)
		if err != nil {
			return
		}
		if !bytes.Equal(EncodeLegs(legs), b) {
			t.Fatalf("DecodeLegs(%x) = %v, which encodes to %x", b, legs, EncodeLegs(legs))
		}
		checkValidLegs(t, legs)
	})
}

// FuzzLegsRoundTrip checks that valid legs survive a round trip and
// invalid ones are refused.
func FuzzLegsRoundTrip(f *testing.F) {
	f.Add("acct-0001", int64(-5), "acct-0002", int64(5))
	f.Add("a", int64(0), "b", int64(1))
	f.Add("a", int64(1), "a", int64(-1))
	f.Add("", int64(1), "b", int64(1))
	f.Fuzz(func(t *testing.T, a string, da int64, b string, db int64) {
		legs := []Leg{{Account: a, Delta: da}, {Account: b, Delta: db}}
		got, err := DecodeLegs(EncodeLegs(legs))
		valid := a != b && a != "" && b != "" && len(a) <= maxAccountLen && len(b) <= maxAccountLen && da != 0 && db != 0
		switch {
		case valid && err != nil:
			t.Fatalf("valid legs %v refused: %v", legs, err)
		case valid && !reflect.DeepEqual(got, legs):
			t.Fatalf("round trip %v = %v", legs, got)
		case !valid && err == nil:
			t.Fatalf("invalid legs %v accepted", legs)
		}
	})
}

func checkValidLegs(t *testing.T, legs []Leg) {
	t.Helper()
	seen := map[string]bool{}
	if len(legs) == 0 || len(legs) > maxLegs {
		t.Fatalf("accepted %d legs", len(legs))
	}
	for _, l := range legs {
		if l.Account == "" || len(l.Account) > maxAccountLen || l.Delta == 0 || seen[l.Account] {
			t.Fatalf("accepted invalid leg %+v in %v", l, legs)
		}
		seen[l.Account] = true
	}
}
