package clock

import (
	"testing"
	"time"
)

var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func fired(ch <-chan time.Time) (time.Time, bool) {
	select {
	case t := <-ch:
		return t, true
	default:
		return time.Time{}, false
	}
}

func TestFakeAfter(t *testing.T) {
	c := NewFake(epoch)
	if _, ok := fired(c.After(0)); !ok {
		t.Fatal("After(0) did not fire at once")
	}
	ch := c.After(time.Second)
	if c.Waiters() != 1 {
		t.Fatalf("waiters %d, want 1", c.Waiters())
	}
	c.Advance(999 * time.Millisecond)
	if _, ok := fired(ch); ok {
		t.Fatal("fired early")
	}
	c.Advance(time.Millisecond)
	if at, ok := fired(ch); !ok || !at.Equal(epoch.Add(time.Second)) {
		t.Fatalf("fired %v %v, want at %v", ok, at, epoch.Add(time.Second))
	}
	if c.Waiters() != 0 || !c.Now().Equal(epoch.Add(time.Second)) {
		t.Fatalf("waiters %d now %v", c.Waiters(), c.Now())
	}
}

func TestFakeTicker(t *testing.T) {
	c := NewFake(epoch)
	ch, stop := c.NewTicker(10 * time.Millisecond)
	c.Advance(9 * time.Millisecond)
	if _, ok := fired(ch); ok {
		t.Fatal("ticked early")
	}
	c.Advance(time.Millisecond)
	if _, ok := fired(ch); !ok {
		t.Fatal("no tick at 10ms")
	}
	// A long advance delivers one tick, as time.Ticker drops missed ones,
	// and the next is due on the original grid.
	c.Advance(55 * time.Millisecond)
	if _, ok := fired(ch); !ok {
		t.Fatal("no tick after a long advance")
	}
	if _, ok := fired(ch); ok {
		t.Fatal("more than one tick buffered")
	}
	c.Advance(4 * time.Millisecond) // 69ms
	if _, ok := fired(ch); ok {
		t.Fatal("ticked off the grid")
	}
	c.Advance(time.Millisecond) // 70ms
	if _, ok := fired(ch); !ok {
		t.Fatal("no tick at 70ms")
	}
	stop()
	c.Advance(time.Second)
	if _, ok := fired(ch); ok {
		t.Fatal("ticked after stop")
	}
}
