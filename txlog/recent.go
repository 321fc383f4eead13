package txlog

import (
	"fmt"
	"slices"
	"sync"

	"github.com/cockroachdb/pebble/v2"
)

// recentCache answers the lookup of a record by id from memory for the
// newest ids: the coordinator's transaction records (Store.GetRecord) and a
// participant's (ParticipantLog.GetTxn). Every transaction is looked up by
// id several times while it is young: at a coordinator the Commit handler
// and the apply of its Decide on every replica look up an id with no record
// yet, and the apply of its Finished reads the record its Decide wrote; at
// a participant its first Prepare looks up an id with no record. In Pebble
// each is a seek in every memtable (bloom filters cover only the tables)
// and, on a handler goroutine, a stack grown to Pebble's depth: GetRecord
// was 7.4% of the CPU of a 256-client bench, GetTxn 3.8%. Ids are UUIDv7,
// so the young ones are the largest, and the cache holds exactly the
// records above a floor:
//
//	every record whose id is above floor is in recs,
//	and recs[id].rec is that record, or nil while a commit changes it.
//
// So an id above the floor that recs lacks has no record, and one it holds
// is answered without Pebble; anything else (an id at or below the floor, an
// entry in flux, a cache invalidated while a snapshot replaces the state)
// reads Pebble. The cache is only ever a copy of the committed records:
// nothing replicated or on disk depends on it.
//
// The floor rises every recentRotateEvery record writes, evicting the
// records written before the previous rise; so recs holds about two rounds
// of writes however many records there are. The new floor is the largest
// evicted id, and a record whose id is above the median id of the latest
// round is not evicted: a client whose clock runs ahead would otherwise lift
// the floor above every other client's ids. Ids from clients whose clocks
// lag fall below the floor and are read from Pebble.
type recentCache[T any] struct {
	clone func(*T) *T // a copy sharing nothing with its argument

	mu    sync.RWMutex
	valid bool // false while the records are being replaced, or after a failure to reload
	floor string
	recs  map[string]recentEntry[T]
	// top is at least the largest id there is a record of.
	top    string
	round  uint64 // of the writes since the last rise
	writes int    // since the last rise
	seq    uint64 // numbers the commits begun
}

// recentEntry is a cached record, or nil while a commit changes it.
// pending counts the commits in flight that write it; conflicted says two
// overlapped, whose order into Pebble the cache cannot know, so the entry
// stays nil until a later write alone sets it.
type recentEntry[T any] struct {
	rec        *T
	round      uint64 // that wrote it
	pending    int32
	conflicted bool
	// begun and settled are the last commits that began and ended a
	// write of it, so that a commit writing it twice counts once.
	begun, settled uint64
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

// recentOp is one record write of a batch: the record put, or nil for a
// deletion of id.
type recentOp[T any] struct {
	id  string
	rec *T
	// marked is set by begin on the ops it marked in flux, the ones end
	// must settle.
	marked bool
}

// lookup returns the cached answer for id, and whether there is one.
func (c *recentCache[T]) lookup(id string) (rec *T, found, ok bool) {
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
		return nil, false, false // being committed, or conflicted: Pebble knows
	}
	return c.clone(e.rec), true, true
}

// begin marks the ids a commit is about to change as in flux. It must be
// called before the commit makes them visible, so that no reader answers
// from the cache what Pebble already contradicts, and be followed by end
// with the number it returns.
func (c *recentCache[T]) begin(ops []recentOp[T]) (seq uint64) {
	if len(ops) == 0 {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	for i := range ops {
		op := &ops[i]
		c.top = max(c.top, op.id)
		if !c.valid || op.id <= c.floor {
			continue
		}
		// Even the deletion of an id without a record is marked: a
		// concurrent commit may be putting it, and which of the two
		// reaches Pebble last is unknown.
		e := c.recs[op.id]
		op.marked = true
		e.rec, e.round = nil, c.round
		if e.begun != c.seq {
			e.begun = c.seq
			if e.pending++; e.pending > 1 {
				e.conflicted = true
			}
		}
		c.recs[op.id] = e
	}
	return c.seq
}

// end records the outcome of the commit begin numbered seq. If the
// commit failed, its entries stay nil: Pebble answers them.
func (c *recentCache[T]) end(ops []recentOp[T], seq uint64, committed bool) {
	if len(ops) == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.valid {
		return
	}
	for i := len(ops) - 1; i >= 0; i-- { // the last write of an id wins
		op := ops[i]
		if !op.marked {
			continue
		}
		e, in := c.recs[op.id]
		if !in {
			continue // evicted since begin: the floor rose past it
		}
		if e.settled == seq {
			continue // written again later in the same commit
		}
		e.settled = seq
		e.pending--
		switch {
		case e.pending > 0:
		case e.conflicted || !committed:
			e.conflicted = false
		case op.rec == nil:
			delete(c.recs, op.id)
			continue
		default:
			e.rec = op.rec
		}
		c.recs[op.id] = e
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
func (c *recentCache[T]) rotate() {
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
func (c *recentCache[T]) raise(floor string) {
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

// invalidate makes every lookup read Pebble until reset. The caller must
// keep commits out until reset.
func (c *recentCache[T]) invalidate() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.valid, c.recs = false, nil
}

// reset starts the cache over the records under prefix that r sees, with
// the recentLoad largest and the floor below them. Loading some (rather than
// starting with the floor at the largest id) keeps a few records with ids
// that sort above every UUID (a client's own id scheme) from putting every
// new id below the floor. The caller must keep commits out until it
// returns.
func (c *recentCache[T]) reset(r pebble.Reader, prefix []byte, decode func([]byte) (*T, error)) error {
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
	if err != nil {
		return fmt.Errorf("load the newest records: %w", err)
	}
	defer it.Close()
	recs := make(map[string]recentEntry[T])
	var floor, top string
	for valid := it.Last(); valid; valid = it.Prev() {
		id := string(it.Key()[len(prefix):])
		if top == "" {
			top = id
		}
		if len(recs) == recentLoad {
			floor = id
			break
		}
		rec, err := decode(it.Value())
		if err != nil {
			return fmt.Errorf("load the newest records: %q: %w", id, err)
		}
		recs[id] = recentEntry[T]{rec: rec}
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

// clone returns a copy of r that shares nothing with it. Its two lists
// share one array (each capped at its length), and nil stays nil.
func (r *Record) clone() *Record {
	c := *r
	np, na := len(r.Participants), len(r.Acked)
	if np+na == 0 {
		c.Participants, c.Acked = slices.Clone(r.Participants), slices.Clone(r.Acked)
		return &c
	}
	ss := append(append(make([]string, 0, np+na), r.Participants...), r.Acked...)
	c.Participants, c.Acked = nil, nil
	if r.Participants != nil {
		c.Participants = ss[:np:np]
	}
	if r.Acked != nil {
		c.Acked = ss[np : np+na : np+na]
	}
	return &c
}

// clone returns a copy of t that shares nothing with it.
func (t *PTxn) clone() *PTxn {
	c := *t
	c.Participants = slices.Clone(t.Participants)
	c.PayloadDigest = slices.Clone(t.PayloadDigest)
	return &c
}
