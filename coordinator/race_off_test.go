//go:build !race

package coordinator

// raceEnabled reports whether the race detector is on: tests too slow
// under it run in make test's separate pass without it.
const raceEnabled = false
