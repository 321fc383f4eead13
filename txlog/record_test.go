package txlog

import (
	"bytes"
	"math"
	"testing"
)

var codecRecords = map[string]*Record{
	"zero":    {},
	"decided": {ID: "tx-1", Outcome: OutcomeCommitted, Participants: []string{"a:1", "b:2"}, DecidedAt: 1_700_000_000_000_000_000},
	"acked": {ID: "tx-2", Outcome: OutcomeAborted, Participants: []string{"a", "b", "c"}, Acked: []string{"c", "a"},
		DecidedAt: 5, Finished: true, FinishedAt: 6, Reason: "b:1 voted no: insufficient funds"},
	"extremes":     {ID: string(make([]byte, 300)), Outcome: OutcomeUnknown, DecidedAt: math.MinInt64, FinishedAt: math.MaxInt64},
	"empty string": {ID: "x", Participants: []string{""}, Acked: []string{""}, DecidedAt: -1},
}

func TestRecordRoundTrip(t *testing.T) {
	for name, r := range codecRecords {
		t.Run(name, func(t *testing.T) {
			b := r.Marshal()
			got, err := UnmarshalRecord(b)
			if err != nil {
				t.Fatalf("unmarshal: %v", err)
			}
			if !recordEqual(got, r) {
				t.Fatalf("got %+v, want %+v", got, r)
			}
			if !bytes.Equal(got.Marshal(), b) {
				t.Fatal("re-encoding differs")
			}
		})
	}
}

func TestUnmarshalRecordRejects(t *testing.T) {
	valid := codecRecords["acked"].Marshal()
	for i := range len(valid) {
		if _, err := UnmarshalRecord(valid[:i]); err == nil {
			t.Errorf("truncated to %d bytes: no error", i)
		}
	}
	cases := map[string][]byte{
		"version":         append([]byte{2}, valid[1:]...),
		"trailing":        append(bytes.Clone(valid), 0),
		"outcome":         {recordV1, 0, 3, 0, 0, 0, 0, 0},
		"finished":        {recordV1, 0, 0, 0, 0, 0, 2, 0},
		"non-minimal":     {recordV1, 0x80, 0x00, 0, 0, 0, 0, 0, 0},
		"huge count":      {recordV1, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f, 0, 0, 0, 0},
		"length past end": {recordV1, 9, 'a'},
		"overflow":        {recordV1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01},
	}
	for name, b := range cases {
		if _, err := UnmarshalRecord(b); err == nil {
			t.Errorf("%s: no error", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
}

func TestOutcomeString(t *testing.T) {
	for o, want := range map[Outcome]string{
		OutcomeUnknown: "unknown", OutcomeCommitted: "committed", OutcomeAborted: "aborted", 9: "Outcome(9)",
	} {
		if got := o.String(); got != want {
			t.Errorf("Outcome(%d).String() = %q, want %q", uint8(o), got, want)
		}
	}
}

func FuzzUnmarshalRecord(f *testing.F) {
	for _, r := range codecRecords {
		f.Add(r.Marshal())
	}
	f.Add([]byte{})
	f.Add([]byte{recordV1})
	f.Add([]byte{recordV1, 0x80, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := UnmarshalRecord(b)
		if err != nil {
			return
		}
		if got := r.Marshal(); !bytes.Equal(got, b) {
			t.Fatalf("re-encoding %x gives %x", b, got)
		}
	})
}
