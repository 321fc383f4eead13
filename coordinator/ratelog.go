package coordinator

import (
	"sync"
	"time"
)

// rateLog rate-limits log lines per key (a raft sender, an event kind):
// one line per key per period, the others only counted. Its keys must come
// from a small set, since it keeps one entry per key. It is safe for
// concurrent use: the raft loop and stream goroutines share one.
type rateLog[K comparable] struct {
	mu   sync.Mutex
	last map[K]rateEntry
}

type rateEntry struct {
	at         time.Time
	suppressed uint64
}

// allow reports whether to log now for key, at most once every period,
// and how many lines for it went unlogged since the last one.
func (l *rateLog[K]) allow(key K, now time.Time, period time.Duration) (uint64, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.last == nil {
		l.last = make(map[K]rateEntry)
	}
	e, seen := l.last[key]
	if seen && now.Sub(e.at) < period {
		e.suppressed++
		l.last[key] = e
		return 0, false
	}
	l.last[key] = rateEntry{at: now}
	return e.suppressed, true
}
