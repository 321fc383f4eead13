// Package backoff is Decree's one retry schedule: exponential from Min to
// Max, each delay jittered so that retries that failed together do not
// retry together. It has no clock and no randomness of its own: the caller
// sleeps, and the jitter comes from an injected source, so a schedule is
// deterministic given that source (the coordinator's core and the
// simulation depend on it).
package backoff

import "time"

// Policy is an exponential backoff with jitter. The delay before retry n
// (n = 1 for the first) is d = Min·2^(n-1), capped at Max, then jittered
// down uniformly within (d/2, d]: d - Rand()·d/2. Jittering down, never
// up, keeps every delay within Max and the mean at 3/4 of d; Rand 0 (or a
// nil Rand) gives d itself, so tests can ask for the exact schedule.
//
// A Max below Min is taken as Min.
type Policy struct {
	Min, Max time.Duration
	// Rand returns a number in [0, 1). It is called once per Delay; the
	// caller makes it safe for concurrent use if it shares the Policy
	// across goroutines (math/rand/v2.Float64 is).
	Rand func() float64
}

// Delay returns the wait before retry attempt (1 is the first; below 1 is
// taken as 1).
func (p Policy) Delay(attempt int) time.Duration {
	return p.jitter(p.Base(attempt))
}

// Base returns the delay before retry attempt without jitter: Min doubled
// attempt-1 times, capped at Max.
func (p Policy) Base(attempt int) time.Duration {
	ceiling := max(p.Min, p.Max)
	d := p.Min
	// Stop doubling at the ceiling: no overflow, however many attempts.
	for i := 1; i < attempt && d < ceiling; i++ {
		d *= 2
	}
	return min(d, ceiling)
}

func (p Policy) jitter(d time.Duration) time.Duration {
	if p.Rand == nil || d <= 0 {
		return d
	}
	span := d - d/2
	// Rounding can carry Rand()·span up to span itself; keep d/2 out.
	j := min(max(time.Duration(p.Rand()*float64(span)), 0), span-1)
	return d - j
}

// Backoff is the state of one operation retried under a Policy: the count
// of failures in a row. The zero Backoff with a Policy set is ready; it is
// not safe for concurrent use.
type Backoff struct {
	Policy   Policy
	attempts int
}

// Next counts one more failure and returns the wait before the retry.
func (b *Backoff) Next() time.Duration {
	b.attempts++
	return b.Policy.Delay(b.attempts)
}

// Reset starts over from Min, after a success.
func (b *Backoff) Reset() { b.attempts = 0 }
