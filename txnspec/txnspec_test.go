package txnspec

import (
	"encoding/hex"
	"strconv"
	"strings"
	"testing"
)

func TestParseID(t *testing.T) {
	good := "01890a5d-ac96-774b-bcce-b302099a8057"
	ts, err := ParseID(good)
	if err != nil {
		t.Fatal(err)
	}
	if ts.UnixMilli() != 0x01890a5dac96 {
		t.Fatalf("timestamp %d", ts.UnixMilli())
	}
	for _, bad := range []string{
		"", "not-a-uuid", good + "0", strings.ToUpper(good)[:35] + "g",
		"01890a5d-ac96-474b-bcce-b302099a8057", // version 4
		"01890a5d-ac96-774b-4cce-b302099a8057", // wrong variant
		"01890a5dac96-774b-bcce-b302099a8057-",
		"01890a5d-ac96-774b-bcce-b302099a805\n", // control character
	} {
		if _, err := ParseID(bad); err == nil {
			t.Errorf("ParseID(%q) accepted", bad)
		}
	}
}

func TestValidateAddr(t *testing.T) {
	for _, good := range []string{"127.0.0.1:1", "localhost:65535", "[::1]:7000", "bank-1.example:8101"} {
		if err := ValidateAddr(good); err != nil {
			t.Errorf("ValidateAddr(%q): %v", good, err)
		}
	}
	for _, bad := range []string{"", "host", ":80", "host:0", "host:65536", "host:x", "ho st:1", "host\x00:1", "host:1\n", "a\x7f:1"} {
		if err := ValidateAddr(bad); err == nil {
			t.Errorf("ValidateAddr(%q) accepted", bad)
		}
	}
}

func TestLimits(t *testing.T) {
	l := Limits{MaxParticipants: 2, MaxPayload: 3}
	for _, tc := range []struct {
		ps      []string
		wantErr string
	}{
		{[]string{"a:1"}, ""},
		{[]string{"a:1", "b:1"}, ""},
		{nil, "at least one participant"},
		{[]string{"a:1", "b:1", "c:1"}, "3 participants exceed the limit of 2"},
		{[]string{"a:1", "a:1"}, "a:1 appears twice"},
		{[]string{"a:1", "a\t:1"}, "participant 1: address"},
	} {
		err := l.CheckParticipants(tc.ps)
		if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("CheckParticipants(%q) = %v, want %q", tc.ps, err, tc.wantErr)
		}
	}
	if l.CheckPayload(3) != nil || l.CheckPayload(4) == nil {
		t.Error("CheckPayload: 3 bytes pass, 4 do not")
	}
	if d := (Limits{}).WithDefaults(); d.MaxParticipants != DefaultMaxParticipants || d.MaxPayload != DefaultMaxPayload {
		t.Errorf("defaults %+v", d)
	}
	many := make([]string, DefaultMaxParticipants+1)
	for i := range many {
		many[i] = "h:" + string(rune('1'+i%9)) + strings.Repeat("0", i/9%4)
	}
	if err := (Limits{}).CheckParticipants(many); err == nil || !strings.Contains(err.Error(), "exceed the limit of 64") {
		t.Errorf("default limit: %v", err)
	}
}

// ParseID decodes hex digits itself: it must accept and refuse exactly
// what encoding/hex does, at every position, for every byte.
func TestParseIDDigitsMatchEncodingHex(t *testing.T) {
	good := "01890a5d-ac96-774b-bcce-b302099a8057"
	for i := range len(good) {
		if good[i] == '-' {
			continue
		}
		for c := range 256 {
			id := good[:i] + string([]byte{byte(c)}) + good[i+1:]
			_, herr := hex.DecodeString(strings.ReplaceAll(id, "-", ""))
			ts, err := ParseID(id)
			versionOK := i != 14 && i != 19 // the version and variant digits are checked too
			if herr == nil && versionOK && (err != nil || ts.UnixMilli() != mustMillis(t, id)) {
				t.Fatalf("ParseID(%q) = %v, %v; encoding/hex accepts it", id, ts, err)
			}
			if herr != nil && err == nil {
				t.Fatalf("ParseID(%q) accepted a byte encoding/hex refuses", id)
			}
		}
	}
}

func mustMillis(t *testing.T, id string) int64 {
	t.Helper()
	raw, err := hex.DecodeString(strings.ReplaceAll(id, "-", "")[:12])
	if err != nil {
		t.Fatal(err)
	}
	var ms int64
	for _, b := range raw {
		ms = ms<<8 | int64(b)
	}
	return ms
}

func TestParseAddrReturnsTheParts(t *testing.T) {
	for _, tc := range []struct {
		addr string
		host string
		port uint16
	}{
		{"127.0.0.1:7001", "127.0.0.1", 7001},
		{"[::1]:1", "::1", 1},
		{"Node-1.example:065535", "Node-1.example", 65535},
	} {
		host, port, err := ParseAddr(tc.addr)
		if err != nil || host != tc.host || port != tc.port {
			t.Errorf("ParseAddr(%q) = %q, %d, %v; want %q, %d", tc.addr, host, port, err, tc.host, tc.port)
		}
	}
	if _, _, err := ParseAddr("host:0"); err == nil {
		t.Error("ParseAddr accepted port 0")
	}
}

// A raised limit allows long lists: their duplicates are found as in short
// ones (by a set, so the check stays linear).
func TestCheckParticipantsLongList(t *testing.T) {
	const n = 10 * smallList
	l := Limits{MaxParticipants: n}
	ps := make([]string, n)
	for i := range ps {
		ps[i] = "h" + strconv.Itoa(i) + ":1"
	}
	if err := l.CheckParticipants(ps); err != nil {
		t.Fatalf("distinct list: %v", err)
	}
	ps[n-1] = ps[3]
	if err := l.CheckParticipants(ps); err == nil || !strings.Contains(err.Error(), "h3:1 appears twice") {
		t.Fatalf("duplicate in a long list: %v", err)
	}
}
