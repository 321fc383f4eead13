package twopc

import (
	"container/heap"
	"strings"
	"time"
)

// timer is a moment a transaction has something due: its voting deadline
// or a retry. A tick visits only the transactions whose timers are due, so
// its cost follows the work due, not the transactions held: thousands
// waiting on a silent participant cost nothing between their retries.
type timer struct {
	due time.Time
	id  string
}

// timerHeap orders timers by due time, ties by id, so a tick's actions do
// not depend on map order. Entries are never removed early: a timer whose
// transaction moved on or finished is dropped when it comes due, and the
// transaction's own state says whether anything fires.
type timerHeap []timer

func (h timerHeap) Len() int { return len(h) }
func (h timerHeap) Less(i, j int) bool {
	if c := h[i].due.Compare(h[j].due); c != 0 {
		return c < 0
	}
	return strings.Compare(h[i].id, h[j].id) < 0
}
func (h timerHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *timerHeap) Push(x any)   { *h = append(*h, x.(timer)) }
func (h *timerHeap) Pop() any {
	old := *h
	t := old[len(old)-1]
	old[len(old)-1] = timer{}
	*h = old[:len(old)-1]
	return t
}

// schedule makes a tick at or after due visit transaction id.
func (c *Core) schedule(id string, due time.Time) {
	heap.Push(&c.timers, timer{due: due, id: id})
}

// armRetry arms a transaction's retry and schedules the visit.
func (c *Core) armRetry(t *coreTxn, r *retryState) {
	r.arm(c.now, c.retry)
	c.schedule(t.id, r.due)
}

// runDue visits, in (due, id) order, every transaction with a timer due.
// A visit fires only what is due and disarms it, so visiting a
// transaction twice (two timers due) does no harm.
func (c *Core) runDue() {
	for len(c.timers) > 0 && !c.now.Before(c.timers[0].due) {
		tm := heap.Pop(&c.timers).(timer)
		if t, ok := c.txns[tm.id]; ok {
			c.tickTxn(t)
		}
	}
}
