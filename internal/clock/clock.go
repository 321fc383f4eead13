// Package clock is Decree's one source of time. The coordinator, the
// participant SDK and the client take a Clock instead of calling the time
// package, so tests and the simulation decide when time passes; Wall is
// the real clock. Each public package re-exports the interface as its own
// Clock (a type alias), so users can pass one clock to all three.
package clock

import "time"

// Clock tells the time and schedules wake-ups. It is kept to what the
// callers need: a one-shot wait (After) and a periodic tick (NewTicker).
// Implementations must be safe for concurrent use.
type Clock interface {
	Now() time.Time
	// After delivers the time once d has passed; d <= 0 delivers at once.
	After(d time.Duration) <-chan time.Time
	// NewTicker delivers the time every d, dropping ticks a slow reader
	// misses, until the returned stop func is called.
	NewTicker(d time.Duration) (<-chan time.Time, func())
}

// Wall is the real clock.
type Wall struct{}

var _ Clock = Wall{}

// Now returns time.Now().
func (Wall) Now() time.Time { return time.Now() }

// After wraps time.After; since Go 1.23 an unfired timer nobody refers to
// is collected, so callers need not stop it.
func (Wall) After(d time.Duration) <-chan time.Time { return time.After(d) }

// NewTicker wraps time.NewTicker.
func (Wall) NewTicker(d time.Duration) (<-chan time.Time, func()) {
	t := time.NewTicker(d)
	return t.C, t.Stop
}
