package clock

import (
	"slices"
	"sync"
	"time"
)

// Fake is a Clock for tests whose time moves only when Advance is called.
// Waits and tickers fire during Advance, in no particular order among
// those due; every channel is buffered, so Advance never blocks.
type Fake struct {
	mu      sync.Mutex
	now     time.Time
	waits   []fakeWait
	tickers []*fakeTicker
}

type fakeWait struct {
	at time.Time
	ch chan time.Time
}

type fakeTicker struct {
	every time.Duration
	next  time.Time
	ch    chan time.Time
}

var _ Clock = (*Fake)(nil)

// NewFake returns a fake clock reading start.
func NewFake(start time.Time) *Fake { return &Fake{now: start} }

// Now returns the fake time.
func (c *Fake) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// After delivers the fake time once Advance has moved it d on.
func (c *Fake) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	if d <= 0 {
		ch <- c.now
		return ch
	}
	c.waits = append(c.waits, fakeWait{at: c.now.Add(d), ch: ch})
	return ch
}

// NewTicker delivers the fake time whenever Advance passes a multiple of d
// from now; like time.Ticker it holds one tick and drops the rest.
func (c *Fake) NewTicker(d time.Duration) (<-chan time.Time, func()) {
	if d <= 0 {
		panic("clock: non-positive interval for NewTicker")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTicker{every: d, next: c.now.Add(d), ch: make(chan time.Time, 1)}
	c.tickers = append(c.tickers, t)
	return t.ch, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.tickers = slices.DeleteFunc(c.tickers, func(o *fakeTicker) bool { return o == t })
	}
}

// Advance moves the clock d on and fires the waits and tickers due.
func (c *Fake) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	c.waits = slices.DeleteFunc(c.waits, func(w fakeWait) bool {
		if w.at.After(c.now) {
			return false
		}
		w.ch <- c.now
		return true
	})
	for _, t := range c.tickers {
		if t.next.After(c.now) {
			continue
		}
		missed := c.now.Sub(t.next) / t.every
		t.next = t.next.Add((missed + 1) * t.every)
		select {
		case t.ch <- c.now:
		default:
		}
	}
}

// Waiters returns how many After waits are pending: a test polls it to
// know that the code under test has gone to sleep.
func (c *Fake) Waiters() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.waits)
}
