package coordinator

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/decree-tx/decree/coordinator/internal/twopc"
	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
	"github.com/decree-tx/decree/txlog"
)

var (
	simSeed   = flag.Uint64("sim.seed", 0, "replay this one simulation seed and print its trace hash")
	simSeeds  = flag.Int("sim.seeds", 30, "how many seeds TestSimulation runs")
	simFirst  = flag.Uint64("sim.first", 1, "first seed TestSimulation runs")
	simTrace  = flag.Bool("sim.trace", false, "with -sim.seed: print the whole trace")
	simVerify = flag.Bool("sim.verify", false, "run every seed twice and compare trace hashes")
)

// simResult is what one seed did.
type simResult struct {
	seed       uint64
	hash       string
	faults     map[string]int
	txns       int
	failure    string
	fullTrace  []string
	virtualDur time.Duration
}

// runSim runs one seed to the end: an active phase with faults, a heal,
// quiescence, and the final checks.
func runSim(seed uint64, keepTrace bool) simResult {
	w := newWorld(seed)
	w.keepFull = keepTrace
	w.setup()
	defer w.teardown()
	w.activeEnd = w.now.Add(w.plan.activeFor)
	w.faultsOn = true
	w.tracef("seed %d plan %s", seed, w.plan)
	w.runUntil(w.activeEnd)
	w.heal()
	w.quiesce()
	if len(w.violations) == 0 && w.plan.retention > 0 {
		w.collectAll()
	}
	if len(w.violations) == 0 {
		w.finalChecks()
	}
	res := simResult{seed: seed, hash: w.traceHash(), faults: w.faults, txns: len(w.txns), fullTrace: w.fullTrace, virtualDur: w.elapsed()}
	if len(w.violations) > 0 {
		res.failure = w.report()
	}
	return res
}

func (w *world) setup() {
	peers, err := ParsePeers(simPeers)
	if err != nil {
		w.violate("parse %q: %v", simPeers, err)
		return
	}
	if err := ValidatePeers(1, peers); err != nil {
		w.violate("peers %q: %v", simPeers, err)
		return
	}
	w.peerMap, w.clusterID = peers, ClusterID("sim", peers)
	for i := range 3 {
		n := &simNode{w: w, id: uint64(i + 1), name: fmt.Sprintf("n%d", i+1), fs: vfs.NewCrashableMem()}
		w.nodes = append(w.nodes, n)
	}
	for _, n := range w.nodes {
		n.boot()
	}
	for i := range 3 {
		p := &simPart{w: w, name: fmt.Sprintf("p%d", i+1), addr: fmt.Sprintf("p%d:1", i+1), fs: vfs.NewCrashableMem()}
		w.parts = append(w.parts, p)
		w.byAddr[p.addr] = p
		p.boot()
	}
	w.setupActors()
	for i := range w.plan.clients {
		c := &simClient{w: w, name: fmt.Sprintf("c%d", i+1)}
		w.clients = append(w.clients, c)
		w.at(time.Duration(300+w.rng.IntN(100))*time.Millisecond, c.next)
	}
	w.at(simTick, w.tick)
	w.at(w.plan.faultEvery, w.injectFault)
}

func (w *world) teardown() {
	for _, n := range w.nodes {
		n.shutdown()
	}
	for _, p := range w.parts {
		p.shutdown()
	}
}

func (w *world) tick() {
	for _, n := range w.nodes {
		if n.up && !n.paused {
			n.tick()
		}
	}
	if w.elapsed()%(5*simTick) == 0 {
		for _, p := range w.parts {
			if p.up {
				p.recover()
			}
		}
	}
	w.at(simTick, w.tick)
}

// injectFault draws the next fault of the seed's plan, while active.
func (w *world) injectFault() {
	if !w.now.Before(w.activeEnd) {
		return
	}
	var kinds []func()
	if w.plan.crashNodes {
		kinds = append(kinds, w.crashLeader, w.crashRandomNode)
	}
	if w.plan.crashParts {
		kinds = append(kinds, w.crashParticipant)
	}
	if w.plan.partitions {
		kinds = append(kinds, w.isolateLeader, w.isolateMinority, w.splitHalves)
	}
	if w.plan.pauses {
		kinds = append(kinds, w.pauseLeader)
	}
	if len(kinds) > 0 {
		kinds[w.rng.IntN(len(kinds))]()
	}
	w.at(w.plan.faultEvery/2+time.Duration(w.rng.Int64N(int64(w.plan.faultEvery))), w.injectFault)
}

func (w *world) leader() *simNode {
	for _, n := range w.nodes {
		if n.up && n.leader {
			return n
		}
	}
	return nil
}

func (w *world) downFor() time.Duration { return time.Duration(50+w.rng.IntN(800)) * time.Millisecond }

func (w *world) crashNode(n *simNode, kind string) {
	if n == nil || !n.up {
		return
	}
	w.fault(kind, "n%d crashes (unsynced writes lost)", n.id)
	n.crash()
	w.at(w.downFor(), func() {
		if !n.up {
			w.tracef("n%d restarts", n.id)
			n.boot()
		}
	})
}

func (w *world) crashLeader()     { w.crashNode(w.leader(), "crash-leader") }
func (w *world) crashRandomNode() { w.crashNode(w.nodes[w.rng.IntN(len(w.nodes))], "crash-node") }

func (w *world) crashParticipant() {
	p := w.parts[w.rng.IntN(len(w.parts))]
	if !p.up {
		return
	}
	w.fault("crash-participant", "%s crashes with %d in doubt", p.addr, len(p.p.InDoubt()))
	p.crash()
	w.at(w.downFor(), func() {
		if !p.up {
			w.tracef("%s restarts", p.addr)
			p.boot()
		}
	})
}

// partition cuts every link between the two groups for a while.
func (w *world) partition(kind string, a, b []string) {
	w.fault(kind, "%v | %v", a, b)
	for _, x := range a {
		for _, y := range b {
			w.cut[[2]string{x, y}], w.cut[[2]string{y, x}] = true, true
		}
	}
	w.at(time.Duration(100+w.rng.IntN(1200))*time.Millisecond, func() {
		for _, x := range a {
			for _, y := range b {
				delete(w.cut, [2]string{x, y})
				delete(w.cut, [2]string{y, x})
			}
		}
		w.tracef("healed %v | %v", a, b)
	})
}

// isolateLeader cuts the leader off from the other coordinators only: it
// still reaches the participants and clients.
func (w *world) isolateLeader() {
	l := w.leader()
	if l == nil {
		return
	}
	var others []string
	for _, n := range w.nodes {
		if n != l {
			others = append(others, n.name)
		}
	}
	w.partition("partition-leader", []string{l.name}, others)
}

func (w *world) everyone() []string {
	var all []string
	for _, n := range w.nodes {
		all = append(all, n.name)
	}
	for _, p := range w.parts {
		all = append(all, p.name)
	}
	for _, c := range w.clients {
		all = append(all, c.name)
	}
	return all
}

func (w *world) isolateMinority() {
	n := w.nodes[w.rng.IntN(len(w.nodes))]
	var rest []string
	for _, x := range w.everyone() {
		if x != n.name {
			rest = append(rest, x)
		}
	}
	w.partition("partition-minority", []string{n.name}, rest)
}

func (w *world) splitHalves() {
	all := w.everyone()
	w.rng.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
	half := len(all) / 2
	w.partition("partition-halves", all[:half], all[half:])
}

func (w *world) pauseLeader() {
	l := w.leader()
	if l == nil || l.paused {
		return
	}
	d := time.Duration(300+w.rng.IntN(700)) * time.Millisecond
	w.fault("pause-leader", "n%d paused for %v", l.id, d)
	l.paused = true
	inc := l.inc
	w.at(d, func() {
		if l.inc == inc && l.paused {
			w.tracef("n%d resumes", l.id)
			l.resume()
		}
	})
}

// heal ends all faults: links restored, every process up and running.
func (w *world) heal() {
	w.faultsOn = false
	w.cut = map[[2]string]bool{}
	for _, n := range w.nodes {
		if !n.up {
			n.boot()
		} else if n.paused {
			n.resume()
		}
	}
	for _, p := range w.parts {
		if !p.up {
			p.boot()
		}
	}
	w.tracef("healed everything")
}

// quiesce runs until every client is done, every participant holds nothing
// in doubt, and every replica has finished every decision; or fails.
func (w *world) quiesce() {
	deadline := w.now.Add(90 * time.Second)
	for len(w.violations) == 0 {
		w.runUntil(w.now.Add(500 * time.Millisecond))
		why := w.unquiet()
		if why == "" {
			return
		}
		if !w.now.Before(deadline) {
			w.violate("not quiet 90s after healing: %s", why)
			return
		}
	}
}

func (w *world) unquiet() string {
	for _, c := range w.clients {
		if !c.done {
			return c.name + " is not done"
		}
	}
	for _, p := range w.parts {
		if d := p.p.InDoubt(); len(d) > 0 {
			return fmt.Sprintf("%s holds %s in doubt", p.addr, d[0].ID)
		}
	}
	for _, n := range w.nodes {
		unfinished := ""
		_ = n.store.ScanRecords(func(r *txlog.Record) bool {
			if !r.Finished {
				unfinished = r.ID
				return false
			}
			return true
		})
		if unfinished != "" {
			return fmt.Sprintf("n%d has not finished %s", n.id, unfinished)
		}
	}
	// The leader's core holds nothing in flight: a one-phase commit is
	// answered before its record is proposed.
	if l := w.leader(); l != nil {
		if und, _ := l.drv.undecided(context.Background()); len(und) > 0 {
			return fmt.Sprintf("n%d is still deciding %s", l.id, und[0].ID)
		}
	}
	// Every replica has caught up: the transport may take up to its
	// redial backoff to reach a peer that was down or cut off.
	return w.lagging()
}

// collectAll runs on until every record has expired and every replica has
// collected it (many bounded Collects), then asks the leader for the
// outcome of every transaction: each answer is the decided outcome or
// FORGOTTEN, never a new decision.
func (w *world) collectAll() {
	quiet := w.now.UnixNano() // every transaction ended before
	deadline := w.now.Add(w.plan.retention + 30*time.Second)
	w.runUntil(w.now.Add(w.plan.retention + w.plan.collectEvery))
	for len(w.violations) == 0 {
		w.runUntil(w.now.Add(100 * time.Millisecond))
		why := w.uncollected(quiet)
		if why == "" {
			break
		}
		if !w.now.Before(deadline) {
			w.violate("records not collected %v after they expired: %s", 30*time.Second, why)
			return
		}
	}
	l := w.leader()
	if l == nil {
		return // uncollected found none
	}
	var collected uint64
	for _, n := range w.nodes {
		collected = max(collected, n.node.Stats().CollectedRecords)
	}
	w.tracef("every replica collected every expired record (n%d: %d collects, up to %d records)", l.id, l.node.Stats().Collects, collected)
	ids, answered := sortedKeys(w.txns), 0
	l.run(l.inc, func() {
		for _, id := range ids {
			l.drv.serveOutcome(context.Background(), w.txns[id].outcomeRequest(), func(r *decreev1.OutcomeResponse, err error) {
				answered++
				switch {
				case err != nil:
					w.violate("after collecting, the outcome of %s is %v, not FORGOTTEN", id, err)
				case r.GetState() == decreev1.TxnState_TXN_STATE_FORGOTTEN:
				default:
					w.noteDecision(id, outcomeOfState(r.GetState()), "answered after collecting")
				}
			})
			l.drv.drain()
			// A late copy of its Commit: refused, or answered from its
			// record, never voted again.
			l.drv.serveCommit(context.Background(), w.txns[id].commitRequest(), func(r *decreev1.CommitResponse, err error) {
				answered++
				switch {
				case errors.Is(err, twopc.ErrForgotten):
				case err != nil:
					w.violate("after collecting, a commit of %s fails with %v, not FORGOTTEN", id, err)
				default:
					w.noteDecision(id, outcomeOfState(r.GetState()), "answered a late commit after collecting")
				}
			})
			l.drv.drain()
		}
	})
	if answered != 2*len(ids) {
		w.violate("after collecting, %d of %d outcome queries and commits were not answered at once", 2*len(ids)-answered, 2*len(ids))
	}
}

// lagging says why the replicas are not all caught up with a leader: no
// leader, or one that has applied more than another replica.
func (w *world) lagging() string {
	l := w.leader()
	if l == nil {
		return "no leader"
	}
	applied := l.node.Status().Applied
	for _, n := range w.nodes {
		if a := n.node.Status().Applied; a != applied {
			return fmt.Sprintf("n%d applied %d, the leader n%d %d", n.id, a, l.id, applied)
		}
	}
	return ""
}

// uncollected says why garbage collection is not complete: no leader,
// replicas at different applied indexes, a horizon not yet past the time
// the run went quiet, or an expired record still held.
func (w *world) uncollected(quiet int64) string {
	if why := w.lagging(); why != "" {
		return why
	}
	for _, n := range w.nodes {
		h, left := n.node.horizon.Load(), ""
		if h < quiet {
			return fmt.Sprintf("n%d has horizon %d, before %d", n.id, h, quiet)
		}
		_ = n.store.ScanRecords(func(r *txlog.Record) bool {
			if r.Finished && r.FinishedAt < h && isForgotten(r.ID, h) {
				left = r.ID
			}
			return left == ""
		})
		if left != "" {
			return fmt.Sprintf("n%d still holds %s", n.id, left)
		}
	}
	return ""
}

// finalChecks: identical decision tables, every transaction decided as its
// client was told, every participant holding exactly the decided outcome.
func (w *world) finalChecks() {
	tables := make([]map[string]*txlog.Record, len(w.nodes))
	for i, n := range w.nodes {
		tables[i] = map[string]*txlog.Record{}
		_ = n.store.ScanRecords(func(r *txlog.Record) bool { tables[i][r.ID] = r; return true })
	}
	for i := 1; i < len(tables); i++ {
		if d := diffTables(tables[0], tables[i]); d != "" {
			w.violate("decision tables of n1 and n%d differ: %s", i+1, d)
			return
		}
	}
	for _, id := range sortedKeys(w.txns) {
		t := w.txns[id]
		rec, ok := tables[0][id]
		if !ok && isForgotten(id, w.nodes[0].node.horizon.Load()) {
			// Collected: the participants still hold what was decided.
			out, told := w.told[id]
			if !told {
				out = w.decided[id]
			}
			w.checkParticipantsHold(t, out)
			continue
		}
		if !ok && len(t.parts) == 1 {
			// One-phase: the outcome lives at the participant; recording it
			// in the cluster afterwards is best effort.
			w.checkParticipantsHold(t, w.told[id])
			continue
		}
		if !ok {
			w.violate("%s was never decided", id)
			return
		}
		out := outcomeFromRecord(rec.Outcome)
		if told, ok := w.told[id]; !ok || told != out {
			w.violate("%s: client told %s, replicas hold %s", id, twopc.OutcomeWord(told), twopc.OutcomeWord(out))
			return
		}
		w.checkParticipantsHold(t, out)
	}
	w.checkLists(tables[0])
	w.checkStatus()
	w.checkActors(tables[0])
}

// checkStatus asks every node for its Admin status after quiescence: one
// leader that all know, in one term, everything applied everywhere, no
// phase-2 backlog, and the leader listing every member.
func (w *world) checkStatus() {
	var sts []*decreev1.StatusResponse
	for _, n := range w.nodes {
		st, err := (&adminService{node: n.node}).Status(context.Background(), &decreev1.StatusRequest{})
		if err != nil {
			w.violate("n%d status: %v", n.id, err)
			return
		}
		sts = append(sts, st)
	}
	l := sts[0]
	for _, st := range sts {
		if st.GetRole() == decreev1.Role_ROLE_LEADER {
			l = st
		}
	}
	for _, st := range sts {
		if st.GetLeader() != l.GetId() || st.GetTerm() != l.GetTerm() || st.GetApplied() != l.GetApplied() ||
			st.GetClusterId() != l.GetClusterId() || st.GetPhase2Backlog() != 0 {
			w.violate("after quiescence n%d reports leader %d term %d applied %d backlog %d; the leader n%d: term %d applied %d",
				st.GetId(), st.GetLeader(), st.GetTerm(), st.GetApplied(), st.GetPhase2Backlog(), l.GetId(), l.GetTerm(), l.GetApplied())
		}
	}
	if len(l.GetMembers()) != len(w.nodes) {
		w.violate("the leader n%d reports %d members, want %d", l.GetId(), len(l.GetMembers()), len(w.nodes))
	}
}

// checkLists asks the leader to list the transactions after quiescence:
// nothing undecided or unfinished, and every record listed as held.
func (w *world) checkLists(table map[string]*txlog.Record) {
	l := w.leader()
	if l == nil {
		w.violate("no leader after quiescence")
		return
	}
	list := func(f decreev1.TxnFilter) (txns []*decreev1.TxnInfo) {
		l.drv.serveList(context.Background(), &decreev1.ListTransactionsRequest{Filter: f}, func(r *decreev1.ListTransactionsResponse, err error) {
			if err != nil {
				w.violate("n%d lists %s: %v", l.id, f, err)
			}
			txns = r.GetTxns()
		})
		return txns
	}
	for _, f := range []decreev1.TxnFilter{decreev1.TxnFilter_TXN_FILTER_UNDECIDED, decreev1.TxnFilter_TXN_FILTER_UNFINISHED} {
		if txns := list(f); len(txns) > 0 {
			w.violate("after quiescence n%d lists %d %s transactions, first %s", l.id, len(txns), f, txns[0].GetTxnId())
		}
	}
	for _, n := range w.nodes {
		// Health is reported each tick; quiescence may fall between
		// ticks, right after a node learned the leader.
		n.health = n.drv.reportHealth(n.statuses, n.health)
		if st := n.statuses[""]; st != healthpb.HealthCheckResponse_SERVING {
			w.violate("after quiescence n%d reports %s (%s)", n.id, st, n.health.why)
		}
	}
	all := list(decreev1.TxnFilter_TXN_FILTER_ALL)
	if len(all) != min(len(table), l.drv.cfg.MaxList) {
		w.violate("n%d lists %d transactions, holds %d", l.id, len(all), len(table))
	}
	for _, t := range all {
		r, ok := table[t.GetTxnId()]
		if !ok || t.GetState() != stateOf(r.Outcome) || !t.GetFinished() {
			w.violate("n%d lists %s as %s (finished %v), holds %v", l.id, t.GetTxnId(), t.GetState(), t.GetFinished(), r)
		}
	}
	committed := 0
	for _, r := range table {
		if r.Outcome == txlog.OutcomeCommitted {
			committed++
		}
	}
	if got := len(list(decreev1.TxnFilter_TXN_FILTER_COMMITTED)); got != min(committed, l.drv.cfg.MaxList) {
		w.violate("n%d lists %d committed transactions, holds %d", l.id, got, committed)
	}
}

func diffTables(a, b map[string]*txlog.Record) string {
	ids := sortedKeys(a)
	for _, id := range sortedKeys(b) {
		if _, ok := a[id]; !ok {
			ids = append(ids, id)
		}
	}
	for _, id := range ids {
		x, y := a[id], b[id]
		if x == nil || y == nil || x.Outcome != y.Outcome || x.Finished != y.Finished || !slices.Equal(x.Participants, y.Participants) {
			return fmt.Sprintf("%s: %+v vs %+v", id, x, y)
		}
	}
	return ""
}

func (w *world) checkParticipantsHold(t *simTxn, out decreev1.Outcome) {
	for i, addr := range t.parts {
		p := w.byAddr[addr]
		rec, ok, _ := p.log.GetTxn(t.id)
		st := "nothing"
		if ok {
			st = rec.State.String()
		}
		committed := ok && rec.State == txlog.PStateCommitted
		readOnly := ok && rec.State == txlog.PStateReadOnly
		if out == decreev1.Outcome_OUTCOME_COMMITTED && !committed && !readOnly {
			w.violate("%s committed, but %s holds %s", t.id, addr, st)
			return
		}
		if out == decreev1.Outcome_OUTCOME_ABORTED && (committed || (ok && rec.State == txlog.PStatePrepared)) {
			w.violate("%s aborted, but %s holds %s", t.id, addr, st)
			return
		}
		want := ""
		if committed && strings.HasPrefix(t.payloads[i], "set ") {
			_, v, _ := strings.Cut(t.payloads[i], "=")
			want = v
		}
		got, _, _ := p.log.Get([]byte("data/" + t.id))
		if string(got) != want {
			w.violate("%s: %s holds data %q, want %q", t.id, addr, got, want)
			return
		}
	}
}

// TestSimulation runs -sim.seeds seeds (30 by default; `make sim` runs many
// more) in parallel, or replays -sim.seed.
func TestSimulation(t *testing.T) {
	if *simSeed != 0 {
		replaySeed(t, *simSeed)
		return
	}
	seeds := *simSeeds
	if testing.Short() {
		seeds = min(seeds, 10)
	}
	start := time.Now()
	results := runSeeds(*simFirst, seeds)
	total := map[string]int{}
	txns := 0
	for _, r := range results {
		if r.failure != "" {
			t.Fatal(r.failure)
		}
		for k, v := range r.faults {
			total[k] += v
		}
		txns += r.txns
	}
	t.Logf("%d seeds (%d..%d) passed in %v (%.1f seeds/s), %d transactions; faults: %s",
		seeds, *simFirst, *simFirst+uint64(seeds)-1, time.Since(start).Round(time.Millisecond),
		float64(seeds)/time.Since(start).Seconds(), txns, formatCounts(total))
}

func runSeeds(first uint64, n int) []simResult {
	results := make([]simResult, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, runtime.GOMAXPROCS(0))
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			results[i] = runSim(first+uint64(i), false)
			if *simVerify && results[i].failure == "" {
				if again := runSim(first+uint64(i), false); again.hash != results[i].hash {
					results[i].failure = fmt.Sprintf("seed %d is not deterministic: trace hashes %s and %s", first+uint64(i), results[i].hash, again.hash)
				}
			}
		})
	}
	wg.Wait()
	return results
}

func replaySeed(t *testing.T, seed uint64) {
	r := runSim(seed, *simTrace)
	again := runSim(seed, false)
	if *simTrace {
		for _, l := range r.fullTrace {
			fmt.Println(l)
		}
	}
	fmt.Printf("seed %d: trace hash %s (replayed: %s), %d transactions, %v virtual, faults: %s\n",
		seed, r.hash, again.hash, r.txns, r.virtualDur.Round(time.Millisecond), formatCounts(r.faults))
	if r.hash != again.hash {
		t.Errorf("seed %d is not deterministic: trace hashes %s and %s", seed, r.hash, again.hash)
	}
	if r.failure != "" {
		t.Fatal(r.failure)
	}
}

// TestSimulationIsDeterministic: the same seed gives the same trace.
func TestSimulationIsDeterministic(t *testing.T) {
	for _, seed := range []uint64{7, 8} {
		a, b := runSim(seed, false), runSim(seed, false)
		if a.hash != b.hash {
			t.Fatalf("seed %d: trace hashes %s and %s differ", seed, a.hash, b.hash)
		}
		if a.failure != "" {
			t.Fatal(a.failure)
		}
	}
}

func formatCounts(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s=%d", k, m[k]))
	}
	return strings.Join(parts, " ")
}
