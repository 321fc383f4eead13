package txlog

import (
	"fmt"
	"slices"
	"sync"

	"github.com/cockroachdb/pebble/v2"
)

// recentRecords answers GetRecord for the newest ids from memory. Every
// transaction is looked up by id several times while it is young: the
// Commit handler and the apply of its Decide (on every replica) look up an
// id that has no record yet, and the apply of its Finished reads the record
// its Decide wrote. In Pebble each of those is a seek in every memtable
// (bloom filters cover only the tables) and, for a handler goroutine, a
// stack grown to Pebble's depth: a quarter of the apply path's CPU in a
// 256-client bench. Ids are UUIDv7, so the young ones are the largest, and
// the cache holds exactly the records above a floor:
//
//	every record in the state whose id is above floor is in recs,
//	and recs[id] is that record, or nil while a commit changes it.
//
// So an id above the floor that recs lacks has no record, and one it holds
// is answered without Pebble; anything else (an id at or below the floor, an
// entry in flux, a cache invalidated by a snapshot install) reads Pebble as
// before. The cache is only ever a copy of the committed state: nothing
// replicated depends on it, and dropping it changes no answer.
//
// The floor rises every recentRotateEvery record writes, evicting the
// records written before the previous rise; so recs holds about two rounds
// of writes however many records the state holds. The new floor is the
// largest evicted id, and a record whose id is above the median id of the
// latest round is not evicted: a client whose clock runs ahead would
// otherwise lift the floor above every other client's ids. Ids from
// clients whose clocks lag fall below the floor and are read from Pebble.
type recentRecords struct {
	mu    sync.RWMutex
	valid bool // false while the state is being replaced, or after a failure to reload
	floor string
	recs  map[string]recentEntry
	// top is at least the largest id in the state.
	top    string
	round  uint64 // of the writes since the last rise
	writes int    // since the last rise
}

// recentEntry is a cached record, or nil while a commit changes it, and
// the round that wrote it.
type recentEntry struct {
	rec   *Record
	round uint64
}

const (
	// recentRotateEvery is how many record writes raise the floor once.
	recentRotateEvery = 8192
	// recentMax bounds recs: past it (many records kept above the floor
	// by clients minting ids far ahead), the floor jumps to top.
	recentMax = 4 * recentRotateEvery
	// recentLoad is how many of the largest records reset loads.
	recentLoad = 1024
)

// recentOp is a record write of a StateBatch: the record put, or nil for a
// deletion of id.
type recentOp struct {
	id  string
	rec *Record
}

// lookup returns the cached answer for id, and whether there is one.
func (c *recentRecords) lookup(id string) (rec *Record, found, ok bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if !c.valid || id <= c.floor {
		return nil, false, false
	}
	e, in := c.recs[id]
	if !in {
		return nil, false, true
	}
	if e.rec == nil {
		return nil, false, false // being committed: Pebble knows
	}
	return e.rec.clone(), true, true
}

// begin marks the ids a commit is about to change as in flux. It must be
// called before the commit makes them visible, so that no reader answers
// from the cache what Pebble already contradicts.
func (c *recentRecords) begin(ops []recentOp) {
	if len(ops) == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, op := range ops {
		if op.id > c.top {
			c.top = op.id
		}
		if !c.valid || op.id <= c.floor {
			continue
		}
		if _, in := c.recs[op.id]; in || op.rec != nil {
			c.recs[op.id] = recentEntry{round: c.round}
		}
	}
}

// end records the outcome of a commit begun with begin. If the commit
// failed, the entries stay in flux: Pebble answers them.
func (c *recentRecords) end(ops []recentOp, committed bool) {
	if len(ops) == 0 || !committed {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.valid {
		return
	}
	for _, op := range ops {
		if op.id <= c.floor {
			continue
		}
		if op.rec != nil {
			c.recs[op.id] = recentEntry{rec: op.rec, round: c.round}
		} else {
			delete(c.recs, op.id)
		}
	}
	c.writes += len(ops)
	switch {
	case len(c.recs) > recentMax:
		c.raise(c.top)
	case c.writes >= recentRotateEvery:
		c.rotate()
	}
}

// rotate evicts the records written before the current round, except
// those above the current round's median id, and starts a new round.
// Called with mu held.
func (c *recentRecords) rotate() {
	var cur []string
	for id, e := range c.recs {
		if e.round == c.round {
			cur = append(cur, id)
		}
	}
	median := ""
	if len(cur) > 0 {
		median = nthString(cur, len(cur)/2)
	}
	floor := c.floor
	for id, e := range c.recs {
		if e.round < c.round && id <= median {
			floor = max(floor, id)
		}
	}
	c.raise(floor)
	c.round++
}

// raise lifts the floor to at least floor and drops what falls below it.
// Called with mu held.
func (c *recentRecords) raise(floor string) {
	c.floor = max(c.floor, floor)
	for id := range c.recs {
		if id <= c.floor {
			delete(c.recs, id)
		}
	}
	c.writes = 0
}

// nthString returns the n-th smallest of ss, reordering ss (quickselect).
func nthString(ss []string, n int) string {
	lo, hi := 0, len(ss)-1
	for lo < hi {
		// Median of three as the pivot, moved to hi.
		mid := lo + (hi-lo)/2
		if ss[mid] < ss[lo] {
			ss[mid], ss[lo] = ss[lo], ss[mid]
		}
		if ss[hi] < ss[lo] {
			ss[hi], ss[lo] = ss[lo], ss[hi]
		}
		if ss[mid] < ss[hi] {
			ss[mid], ss[hi] = ss[hi], ss[mid]
		}
		pivot, store := ss[hi], lo
		for i := lo; i < hi; i++ {
			if ss[i] < pivot {
				ss[i], ss[store] = ss[store], ss[i]
				store++
			}
		}
		ss[store], ss[hi] = ss[hi], ss[store]
		switch {
		case n == store:
			return ss[n]
		case n < store:
			hi = store - 1
		default:
			lo = store + 1
		}
	}
	return ss[n]
}

// invalidate makes every lookup read Pebble until reset.
func (c *recentRecords) invalidate() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.valid, c.recs = false, nil
}

// reset starts the cache over the state r sees, with its recentLoad
// largest records and the floor below them. Loading some (rather than
// starting with the floor at the largest id) keeps a few records with ids
// that sort above every UUID (a client's own id scheme) from putting every
// new id below the floor.
func (c *recentRecords) reset(r pebble.Reader) error {
	lower := stateKey(recordPrefix)
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: prefixEnd(lower)})
	if err != nil {
		return fmt.Errorf("load the newest records: %w", err)
	}
	defer it.Close()
	recs := make(map[string]recentEntry)
	var floor, top string
	for valid := it.Last(); valid; valid = it.Prev() {
		id := string(it.Key()[len(lower):])
		if top == "" {
			top = id
		}
		if len(recs) == recentLoad {
			floor = id
			break
		}
		rec, err := UnmarshalRecord(it.Value())
		if err != nil {
			return fmt.Errorf("load the newest records: %q: %w", id, err)
		}
		recs[id] = recentEntry{rec: rec}
	}
	if err := it.Error(); err != nil {
		return fmt.Errorf("load the newest records: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.valid, c.recs = true, recs
	c.floor, c.top, c.round, c.writes = floor, top, 0, 0
	return nil
}

// clone returns a copy of r that shares nothing with it.
func (r *Record) clone() *Record {
	c := *r
	c.Participants = slices.Clone(r.Participants)
	c.Acked = slices.Clone(r.Acked)
	return &c
}
