package coordinator

import (
	"testing"
	"time"
)

func TestIsForgotten(t *testing.T) {
	good := "01890a5d-ac96-774b-bcce-b302099a8057"
	ts := time.UnixMilli(0x01890a5dac96)
	if !isForgotten(good, ts.UnixNano()+1) || isForgotten(good, ts.UnixNano()) || isForgotten(good, 0) {
		t.Fatal("isForgotten compares the id's time with the horizon")
	}
	if isForgotten("not-a-uuid", ts.UnixNano()+1) {
		t.Fatal("an id that does not parse is never forgotten")
	}
}
