package coordinator

// The deterministic simulation: real raft nodes (RawNode through Node's
// Ready handling, txlog on Pebble's crashable in-memory FS), the real 2PC
// Core, the real state machine and the real participant SDK, driven on one
// goroutine by virtual time and one seeded random source. Nothing sleeps or
// reads the wall clock.
//
// raft draws its randomized election timeout from crypto/rand, which cannot
// be seeded, so the simulation never ticks a node that is not leader: it
// keeps each follower's lease and election timer itself, from the seed, and
// acts through RawNode.ForgetLeader (lease expired) and RawNode.Campaign
// (election timeout). Leaders are ticked normally: heartbeats and
// CheckQuorum use no randomness. PreVote and CheckQuorum stay on.

import (
	"container/heap"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/decree-tx/decree/coordinator/internal/twopc"
	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
	"github.com/decree-tx/decree/txlog"
)

const (
	simTick          = 10 * time.Millisecond
	simElectionTicks = 10
	simCallTimeout   = 400 * time.Millisecond
	simLinkIdle      = 500 * time.Millisecond
	simTraceKeep     = 80
)

var simEpoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

type simEvent struct {
	at  time.Time
	seq uint64
	fn  func()
}

type simQueue []*simEvent

func (q simQueue) Len() int { return len(q) }
func (q simQueue) Less(i, j int) bool {
	if !q[i].at.Equal(q[j].at) {
		return q[i].at.Before(q[j].at)
	}
	return q[i].seq < q[j].seq
}
func (q simQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *simQueue) Push(x any)   { *q = append(*q, x.(*simEvent)) }
func (q *simQueue) Pop() any {
	old := *q
	e := old[len(old)-1]
	*q = old[:len(old)-1]
	return e
}

// faultPlan is what a seed's schedule may inject.
type faultPlan struct {
	drop, dup   float64
	maxDelay    time.Duration
	crashNodes  bool
	crashParts  bool
	partitions  bool
	pauses      bool
	faultEvery  time.Duration
	activeFor   time.Duration
	clients     int
	readOnlyPct float64
	noPct       float64
	parallel    bool
	// snapEvery and catchUp are the nodes' snapshot settings: small, so
	// that lagging nodes get streamed snapshots.
	snapEvery, catchUp uint64
	// retention, when set, makes the leader collect records this old every
	// collectEvery, collectLimit at a time: garbage collection runs during
	// the faults, and every record is collected after them.
	retention, collectEvery time.Duration
	collectLimit            int
	// hostile is the chance that a delivered raft batch is followed by a
	// hostile one (sim_hostile_test.go); 0 in about half the seeds.
	hostile float64
	// actors are the bad clients, admission limits and old participant
	// (sim_clients_test.go).
	actors actorPlan
}

func (p faultPlan) String() string {
	mode := "classic 2PC"
	if p.parallel {
		mode = "parallel commit"
	}
	gc := ""
	if p.retention > 0 {
		gc = fmt.Sprintf(", retention %v collected every %v, %d at a time", p.retention, p.collectEvery, p.collectLimit)
	}
	hostile := ""
	if p.hostile > 0 {
		hostile = fmt.Sprintf(", hostile peer %.2f", p.hostile)
	}
	return mode + fmt.Sprintf(", drop=%.2f dup=%.2f delay<=%v crash-nodes=%v crash-participants=%v partitions=%v pauses=%v every~%v for %v, %d clients, snapshot every %d keeping %d",
		p.drop, p.dup, p.maxDelay, p.crashNodes, p.crashParts, p.partitions, p.pauses, p.faultEvery, p.activeFor, p.clients, p.snapEvery, p.catchUp) + gc + hostile + p.actors.String()
}

// simTxn is a transaction a simulated client runs.
type simTxn struct {
	id       string
	parts    []string // participant addresses
	payloads []string
}

// world is one simulation run.
type world struct {
	seed      uint64
	rng       *rand.Rand
	hrng      *rand.Rand // the hostile peer's (sim_hostile_test.go)
	now       time.Time
	q         simQueue
	seq       uint64
	plan      faultPlan
	nodes     []*simNode
	parts     []*simPart
	clients   []*simClient
	byAddr    map[string]*simPart
	peerMap   map[uint64]string // the coordinator nodes' addresses (simPeers)
	clusterID uint64

	cut        map[[2]string]bool
	faultsOn   bool
	lastArrive map[[2]string]time.Time

	trace      hash.Hash
	traceLines []string
	traceN     int
	fullTrace  []string
	keepFull   bool
	schedule   []string
	faults     map[string]int
	violations []string

	txns      map[string]*simTxn
	forgotten map[string]bool // ids the cluster answered FORGOTTEN
	decided   map[string]decreev1.Outcome
	told      map[string]decreev1.Outcome
	partState map[string]map[string]txlog.PState // participant -> txn -> state
	acked     map[string]map[string]txlog.PState // outcomes a participant acknowledged
	votedYes  map[string]map[string]bool         // YES or READ_ONLY answered
	nextTxn   int
	activeEnd time.Time

	actors actorState // sim_clients_test.go
}

func newWorld(seed uint64) *world {
	w := &world{
		seed: seed, rng: rand.New(rand.NewPCG(seed, 0x5eed)), hrng: newHostileRand(seed), now: simEpoch,
		cut: map[[2]string]bool{}, lastArrive: map[[2]string]time.Time{},
		trace: sha256.New(), faults: map[string]int{}, byAddr: map[string]*simPart{},
		txns: map[string]*simTxn{}, forgotten: map[string]bool{}, decided: map[string]decreev1.Outcome{}, told: map[string]decreev1.Outcome{},
		partState: map[string]map[string]txlog.PState{}, acked: map[string]map[string]txlog.PState{},
		votedYes: map[string]map[string]bool{},
	}
	w.plan = w.drawPlan()
	return w
}

func (w *world) drawPlan() faultPlan {
	r := w.rng
	pick := func(vs ...float64) float64 { return vs[r.IntN(len(vs))] }
	p := faultPlan{
		drop:        pick(0, 0, 0.01, 0.05),
		dup:         pick(0, 0, 0.02, 0.1),
		maxDelay:    time.Duration(pick(2, 5, 20)) * time.Millisecond,
		crashNodes:  r.IntN(2) == 0,
		crashParts:  r.IntN(2) == 0,
		partitions:  r.IntN(2) == 0,
		pauses:      r.IntN(3) == 0,
		faultEvery:  time.Duration(100+r.IntN(400)) * time.Millisecond,
		activeFor:   time.Duration(1500+r.IntN(2000)) * time.Millisecond,
		clients:     2 + r.IntN(3),
		readOnlyPct: pick(0, 0.05),
		noPct:       pick(0.02, 0.1),
		parallel:    r.IntN(2) == 0,
		snapEvery:   uint64(pick(8, 16, 40)),
		catchUp:     uint64(1 + r.IntN(8)),
	}
	if r.IntN(2) == 0 {
		// Longer than a transaction can stay undecided under these faults
		// (the active phase, its partitions and pauses, the transports'
		// redial backoff): a participant whose transaction is FORGOTTEN
		// before it was decided stays in doubt for an operator, by design.
		// Seed 507 of the first 1000 found 2-4 s too short once the raft
		// transport's backoff ran in the simulation.
		p.retention = time.Duration(4000+r.IntN(2000)) * time.Millisecond
		p.collectEvery = time.Duration(100+r.IntN(400)) * time.Millisecond
		p.collectLimit = 1 + r.IntN(8)
	}
	// From a stream of its own: the rest of the schedule is the same with
	// or without the hostile peer.
	p.hostile = w.drawHostile()
	p.actors = w.drawActors()
	return p
}

// at schedules fn after d of virtual time.
func (w *world) at(d time.Duration, fn func()) {
	w.seq++
	heap.Push(&w.q, &simEvent{at: w.now.Add(d), seq: w.seq, fn: fn})
}

// simMaxEvents bounds one seed's work: a run that needs more is stuck in
// a retry storm, which is a failure of its own.
const simMaxEvents = 3_000_000

// runUntil processes events up to t, stopping at the first violation.
func (w *world) runUntil(t time.Time) {
	for w.q.Len() > 0 && !w.q[0].at.After(t) && len(w.violations) == 0 {
		ev := heap.Pop(&w.q).(*simEvent)
		w.now = ev.at
		ev.fn()
		if w.seq > simMaxEvents {
			w.violate("more than %d events: a retry storm or livelock (%d queued)", simMaxEvents, w.q.Len())
		}
	}
	if len(w.violations) == 0 {
		w.now = t
	}
}

func (w *world) elapsed() time.Duration { return w.now.Sub(simEpoch) }

func (w *world) tracef(format string, a ...any) {
	line := fmt.Sprintf("%9.3fs ", w.elapsed().Seconds()) + fmt.Sprintf(format, a...)
	w.trace.Write([]byte(line))
	w.trace.Write([]byte{'\n'})
	w.traceN++
	if w.keepFull {
		w.fullTrace = append(w.fullTrace, line)
	}
	if len(w.traceLines) == simTraceKeep {
		copy(w.traceLines, w.traceLines[1:])
		w.traceLines = w.traceLines[:simTraceKeep-1]
	}
	w.traceLines = append(w.traceLines, line)
}

func (w *world) traceHash() string { return hex.EncodeToString(w.trace.Sum(nil))[:16] }

func (w *world) violate(format string, a ...any) {
	v := fmt.Sprintf(format, a...)
	w.tracef("VIOLATION %s", v)
	w.violations = append(w.violations, v)
}

func (w *world) fault(kind, format string, a ...any) {
	w.faults[kind]++
	line := fmt.Sprintf("%7.3fs %s: %s", w.elapsed().Seconds(), kind, fmt.Sprintf(format, a...))
	w.schedule = append(w.schedule, line)
	w.tracef("FAULT %s: %s", kind, fmt.Sprintf(format, a...))
}

// send delivers fn at `to` after a network delay, unless the link is cut
// (now or on arrival) or the message is lost; it may deliver it twice.
// lost, if set, runs (later, never inside the caller) when it is dropped.
func (w *world) send(from, to string, fn func(), lost func()) {
	drop := func() {
		if lost != nil {
			w.at(0, lost)
		}
	}
	if w.cut[[2]string{from, to}] {
		drop()
		return
	}
	if w.faultsOn && w.rng.Float64() < w.plan.drop {
		w.faults["message-drop"]++
		drop()
		return
	}
	deliver := func() {
		if w.cut[[2]string{from, to}] {
			if lost != nil {
				lost()
			}
			return
		}
		fn()
	}
	w.schedule1(from, to, deliver)
	if w.faultsOn && w.rng.Float64() < w.plan.dup {
		w.faults["message-duplicate"]++
		w.schedule1(from, to, deliver)
	}
}

func (w *world) schedule1(from, to string, fn func()) {
	d := 200*time.Microsecond + time.Duration(w.rng.Int64N(int64(w.plan.maxDelay)))
	link := [2]string{from, to}
	arrive := w.now.Add(d)
	if last, ok := w.lastArrive[link]; ok && arrive.Before(last) && w.faultsOn {
		w.faults["message-reorder"]++
	}
	if arrive.After(w.lastArrive[link]) {
		w.lastArrive[link] = arrive
	}
	w.at(d, fn)
}

// noteDecision records an outcome that left the cluster (an applied result,
// an answer, a delivered decision): the first one for an id must be the
// only one.
func (w *world) noteDecision(id string, o decreev1.Outcome, where string) {
	if o != decreev1.Outcome_OUTCOME_COMMITTED && o != decreev1.Outcome_OUTCOME_ABORTED {
		return
	}
	w.checkNotBad(id, "decided "+twopc.OutcomeWord(o)+" ("+where+")")
	prev, ok := w.decided[id]
	if ok && prev != o {
		w.violate("first decision wins broken: %s was %s, now %s (%s)", id, twopc.OutcomeWord(prev), twopc.OutcomeWord(o), where)
		return
	}
	if !ok && w.forgotten[id] {
		w.violate("%s answered FORGOTTEN, then decided %s (%s)", id, twopc.OutcomeWord(o), where)
		return
	}
	w.decided[id] = o
}

// noteForgotten records a FORGOTTEN answer: the id must be older than the
// retention horizon, and is never decided afterwards (noteDecision).
func (w *world) noteForgotten(n *simNode, id, to string) {
	if !isForgotten(id, n.node.horizon.Load()) {
		w.violate("n%d answered FORGOTTEN for %s, which is not older than its horizon", n.id, id)
	}
	w.forgotten[id] = true
	w.tracef("n%d told %s that %s is FORGOTTEN", n.id, to, id)
}

func (w *world) noteTold(id string, o decreev1.Outcome) {
	if prev, ok := w.told[id]; ok && prev != o {
		w.violate("client told %s %s, then %s", id, twopc.OutcomeWord(prev), twopc.OutcomeWord(o))
	}
	w.told[id] = o
	w.noteDecision(id, o, "told to a client")
	w.tracef("client told %s %s", id, twopc.OutcomeWord(o))
}

func (w *world) noteVote(part, id string, v decreev1.Vote) {
	if v == decreev1.Vote_VOTE_YES || v == decreev1.Vote_VOTE_READ_ONLY || v == decreev1.Vote_VOTE_COMMITTED {
		m := w.votedYes[part]
		if m == nil {
			m = map[string]bool{}
			w.votedYes[part] = m
		}
		m[id] = true
	}
	if v == decreev1.Vote_VOTE_COMMITTED {
		w.noteDecision(id, decreev1.Outcome_OUTCOME_COMMITTED, part+" committed in one phase")
	}
}

// observe reads a participant's record of id and checks atomicity and that
// the participant only committed what the cluster decided.
func (w *world) observe(p *simPart, id string) {
	rec, ok, err := p.log.GetTxn(id)
	if err != nil {
		w.violate("%s: read %s: %v", p.addr, id, err)
		return
	}
	if !ok {
		return
	}
	m := w.partState[p.addr]
	if m == nil {
		m = map[string]txlog.PState{}
		w.partState[p.addr] = m
	}
	if m[id] == rec.State {
		return
	}
	m[id] = rec.State
	if rec.State == txlog.PStateCommitted && w.decided[id] != decreev1.Outcome_OUTCOME_COMMITTED {
		w.violate("%s committed %s, which the cluster never decided to commit", p.addr, id)
	}
	w.checkAtomic(id)
}

func (w *world) checkAtomic(id string) {
	var committed, aborted []string
	for _, p := range w.parts {
		switch w.partState[p.addr][id] {
		case txlog.PStateCommitted:
			committed = append(committed, p.addr)
		case txlog.PStateAborted:
			aborted = append(aborted, p.addr)
		}
	}
	if len(committed) > 0 && len(aborted) > 0 {
		w.violate("atomicity: %s committed at %v and aborted at %v", id, committed, aborted)
	}
}

func (w *world) noteAck(p *simPart, id string, st txlog.PState) {
	m := w.acked[p.addr]
	if m == nil {
		m = map[string]txlog.PState{}
		w.acked[p.addr] = m
	}
	m[id] = st
}

// report is the failure message of a run: seed, plan, faults, trace tail.
func (w *world) report() string {
	var b strings.Builder
	fmt.Fprintf(&b, "seed %d FAILED: %s\nreplay: make sim SEED=%d\nplan: %s\nfault schedule:\n", w.seed, strings.Join(w.violations, "; "), w.seed, w.plan)
	for _, s := range w.schedule {
		fmt.Fprintf(&b, "  %s\n", s)
	}
	fmt.Fprintf(&b, "trace (last %d of %d lines, hash %s):\n", len(w.traceLines), w.traceN, w.traceHash())
	for _, l := range w.traceLines {
		fmt.Fprintf(&b, "  %s\n", l)
	}
	return b.String()
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}
