package txlog

import (
	"bytes"
	"math"
	"reflect"
	"testing"
)

var codecPTxns = map[string]*PTxn{
	"prepared": {ID: "tx-1", State: PStatePrepared, Participants: []string{"a:1", "b:2"}, Term: 3, PreparedAt: 1_700_000_000_000_000_000},
	"committed": {ID: "tx-2", State: PStateCommitted, Participants: []string{"a"}, Term: 1, OnePhase: true,
		PreparedAt: 5, DecidedAt: 6},
	"aborted":     {ID: "tx-3", State: PStateAborted, Reason: "insufficient funds", DecidedAt: -1},
	"with digest": {ID: "tx-4", State: PStatePrepared, Participants: []string{"a:1"}, PayloadDigest: []byte{1, 2, 3}},
	"read-only":   {ID: "x", State: PStateReadOnly, Participants: []string{""}},
	"extremes": {ID: string(make([]byte, 300)), State: PStateAborted, Term: math.MaxUint64,
		PreparedAt: math.MinInt64, DecidedAt: math.MaxInt64},
}

func TestPTxnRoundTrip(t *testing.T) {
	for name, want := range codecPTxns {
		t.Run(name, func(t *testing.T) {
			b := want.Marshal()
			got, err := UnmarshalPTxn(b)
			if err != nil {
				t.Fatalf("unmarshal: %v", err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("got %+v, want %+v", got, want)
			}
			if !bytes.Equal(got.Marshal(), b) {
				t.Fatal("re-encoding differs")
			}
		})
	}
}

func TestUnmarshalPTxnRejects(t *testing.T) {
	valid := codecPTxns["committed"].Marshal()
	for i := range len(valid) {
		if _, err := UnmarshalPTxn(valid[:i]); err == nil {
			t.Errorf("truncated to %d bytes: no error", i)
		}
	}
	cases := map[string][]byte{
		"version":         append([]byte{2}, valid[1:]...),
		"trailing":        append(bytes.Clone(valid), 0),
		"zero state":      {ptxnV1, 0, 0, 0, 0, 0, 0, 0, 0},
		"state too large": {ptxnV1, 0, 5, 0, 0, 0, 0, 0, 0},
		"one phase":       {ptxnV1, 0, 1, 0, 0, 0, 2, 0, 0},
		"non-minimal":     {ptxnV1, 0, 1, 0, 0x80, 0x00, 0, 0, 0, 0},
		"huge count":      {ptxnV1, 0, 1, 0xff, 0xff, 0xff, 0xff, 0x0f, 0, 0, 0, 0, 0},
		"length past end": {ptxnV1, 9, 'a'},
		"v2 no digest":    {ptxnV2, 0, 1, 0, 0, 0, 0, 0, 0, 0},
		"version 3":       {3, 0, 1, 0, 0, 0, 0, 0, 0},
	}
	for name, b := range cases {
		if _, err := UnmarshalPTxn(b); err == nil {
			t.Errorf("%s: no error", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
}

func TestPStateString(t *testing.T) {
	for s, want := range map[PState]string{
		PStatePrepared: "prepared", PStateCommitted: "committed", PStateAborted: "aborted",
		PStateReadOnly: "read-only", 0: "PState(0)", 9: "PState(9)",
	} {
		if got := s.String(); got != want {
			t.Errorf("PState(%d).String() = %q, want %q", uint8(s), got, want)
		}
	}
}

func FuzzUnmarshalPTxn(f *testing.F) {
	for _, p := range codecPTxns {
		f.Add(p.Marshal())
	}
	f.Add([]byte{})
	f.Add([]byte{ptxnV1})
	f.Add([]byte{ptxnV1, 0x80, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := UnmarshalPTxn(b)
		if err != nil {
			return
		}
		if !p.State.valid() {
			t.Fatalf("decoded undefined state %d", p.State)
		}
		if got := p.Marshal(); !bytes.Equal(got, b) {
			t.Fatalf("re-encoding %x gives %x", b, got)
		}
	})
}
