package txlog

import (
	"bytes"
	"slices"
	"testing"
)

var codecStates = map[string][]KV{
	"empty": nil,
	"one":   {{Key: []byte("k"), Value: []byte("v")}},
	"many": {
		{Key: []byte(""), Value: []byte("empty key")},
		{Key: []byte("a"), Value: nil},
		{Key: []byte("meta/x"), Value: bytes.Repeat([]byte{0xff}, 200)},
		{Key: []byte("txn/a"), Value: record("a", OutcomeCommitted).Marshal()},
		{Key: []byte("txn/b"), Value: record("b", OutcomeAborted).Marshal()},
	},
}

func TestStateRoundTrip(t *testing.T) {
	for name, kvs := range codecStates {
		t.Run(name, func(t *testing.T) {
			data, err := EncodeState(kvs)
			if err != nil {
				t.Fatalf("encode: %v", err)
			}
			got, err := DecodeState(data)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if !slices.EqualFunc(got, kvs, kvEqual) {
				t.Fatalf("got %q, want %q", got, kvs)
			}
		})
	}
}

func TestEncodeStateRejects(t *testing.T) {
	cases := map[string][]KV{
		"unsorted":  {{Key: []byte("b")}, {Key: []byte("a")}},
		"duplicate": {{Key: []byte("a")}, {Key: []byte("a")}},
		"reserved":  {{Key: []byte("applied")}},
	}
	for name, kvs := range cases {
		if _, err := EncodeState(kvs); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestDecodeStateRejects(t *testing.T) {
	valid, err := EncodeState(codecStates["many"])
	if err != nil {
		t.Fatal(err)
	}
	for i := range len(valid) {
		if _, err := DecodeState(valid[:i]); err == nil {
			t.Errorf("truncated to %d bytes: no error", i)
		}
	}
	cases := map[string][]byte{
		"version":  append([]byte{9}, valid[1:]...),
		"trailing": append(bytes.Clone(valid), 0),
		"unsorted": {stateV1, 2, 1, 'b', 0, 1, 'a', 0},
		"reserved": {stateV1, 1, 7, 'a', 'p', 'p', 'l', 'i', 'e', 'd', 0},
		"count":    {stateV1, 100, 0, 0},
	}
	for name, b := range cases {
		if _, err := DecodeState(b); err == nil {
			t.Errorf("%s: no error", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
}

func FuzzDecodeState(f *testing.F) {
	for _, kvs := range codecStates {
		data, err := EncodeState(kvs)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte{})
	f.Add([]byte{stateV1, 1, 0x80, 0x00, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		kvs, err := DecodeState(data)
		if err != nil {
			return
		}
		got, err := EncodeState(kvs)
		if err != nil {
			t.Fatalf("re-encoding decoded state: %v", err)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("re-encoding %x gives %x", data, got)
		}
	})
}
