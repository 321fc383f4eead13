package coordinator

import "time"

// Clock is the node's source of time, injected so tests and simulations can
// drive ticks themselves.
type Clock interface {
	Now() time.Time
	// NewTicker returns a channel that delivers ticks every d, and a stop func.
	NewTicker(d time.Duration) (<-chan time.Time, func())
}

// WallClock is the real clock.
type WallClock struct{}

// Now returns the current time.
func (WallClock) Now() time.Time { return time.Now() }

// NewTicker wraps time.NewTicker.
func (WallClock) NewTicker(d time.Duration) (<-chan time.Time, func()) {
	t := time.NewTicker(d)
	return t.C, t.Stop
}
