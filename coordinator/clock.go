package coordinator

import "github.com/decree-tx/decree/internal/clock"

// Clock is the node's source of time, injected so tests and simulations can
// drive ticks themselves. It is the same interface as participant.Clock and
// client.Clock.
type Clock = clock.Clock

// WallClock is the real clock.
type WallClock = clock.Wall
