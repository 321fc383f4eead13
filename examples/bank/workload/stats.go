package workload

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/decree-tx/decree/examples/bank"
)

// Stats counts a workload's outcomes and records commit latencies. It is
// safe for concurrent use; Snapshot gives a consistent copy.
type Stats struct {
	mu        sync.Mutex
	start     time.Time
	committed int64
	aborted   map[string]int64 // by reason class
	errors    int64
	lastErr   string
	hist      *hdrhistogram.Histogram // microseconds
}

// Snapshot is a point-in-time copy of Stats.
type Snapshot struct {
	Elapsed   time.Duration
	Committed int64
	Aborted   map[string]int64
	Errors    int64
	LastError string
	P50, P90  time.Duration
	P99, P999 time.Duration
	Max       time.Duration
}

func newStats(start time.Time) *Stats {
	return &Stats{start: start, aborted: map[string]int64{}, hist: hdrhistogram.New(1, 60_000_000, 3)}
}

func (s *Stats) record(state string, reason string, took time.Duration, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case err != nil:
		s.errors++
		s.lastErr = err.Error()
		return
	case state == "committed":
		s.committed++
	default:
		s.aborted[ReasonClass(reason)]++
	}
	_ = s.hist.RecordValue(max(took.Microseconds(), 1))
}

// Snapshot copies the counters at time now.
func (s *Stats) Snapshot(now time.Time) Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	q := func(p float64) time.Duration { return time.Duration(s.hist.ValueAtQuantile(p)) * time.Microsecond }
	return Snapshot{
		Elapsed: now.Sub(s.start), Committed: s.committed, Aborted: maps.Clone(s.aborted),
		Errors: s.errors, LastError: s.lastErr,
		P50: q(50), P90: q(90), P99: q(99), P999: q(99.9), Max: time.Duration(s.hist.Max()) * time.Microsecond,
	}
}

// ReasonClass groups abort reasons for reporting: the bank's NO reasons,
// prepare timeouts, and the rest.
func ReasonClass(reason string) string {
	for _, r := range []string{bank.ReasonInsufficientFunds, bank.ReasonAccountBusy, bank.ReasonUnknownAccount} {
		if strings.Contains(reason, r) {
			return r
		}
	}
	switch {
	case strings.Contains(reason, "timed out"):
		return "prepare timeout"
	case strings.Contains(reason, "presumed abort"):
		return "presumed abort"
	case strings.Contains(reason, "failed to prepare"):
		return "participant unreachable"
	default:
		return "other"
	}
}

// AbortedTotal sums the aborts of every class.
func (s Snapshot) AbortedTotal() int64 {
	var n int64
	for _, v := range s.Aborted {
		n += v
	}
	return n
}

// Throughput is decided transactions per second over the elapsed time.
func (s Snapshot) Throughput() float64 {
	if s.Elapsed <= 0 {
		return 0
	}
	return float64(s.Committed+s.AbortedTotal()) / s.Elapsed.Seconds()
}

// AbortSummary lists abort counts by class, largest first.
func (s Snapshot) AbortSummary() string {
	classes := slices.Collect(maps.Keys(s.Aborted))
	slices.SortFunc(classes, func(a, b string) int {
		if s.Aborted[a] != s.Aborted[b] {
			return int(s.Aborted[b] - s.Aborted[a])
		}
		return strings.Compare(a, b)
	})
	parts := make([]string, 0, len(classes))
	for _, c := range classes {
		parts = append(parts, fmt.Sprintf("%s %d", c, s.Aborted[c]))
	}
	return strings.Join(parts, ", ")
}
