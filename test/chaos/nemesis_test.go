package chaos

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/rs/zerolog"
)

// Nemesis kinds.
const (
	kKillLeader      = "kill-leader"
	kKillRandom      = "kill-random"
	kKillMajority    = "kill-majority"
	kPauseLeader     = "pause-leader"
	kKillParticipant = "kill-participant"
	kPartLeader      = "partition-leader"
	kPartMinority    = "partition-minority"
	kPartHalves      = "partition-halves"
	kProxySlow       = "proxy-slow"
	kProxyLossy      = "proxy-lossy"
)

var (
	processKinds   = []string{kKillLeader, kKillRandom, kKillMajority, kPauseLeader, kKillParticipant}
	partitionKinds = []string{kPartLeader, kPartMinority, kPartHalves}
	proxyKinds     = []string{kProxySlow, kProxyLossy}
)

func allKinds() []string {
	return slices.Concat(processKinds, partitionKinds, proxyKinds)
}

// parseNemeses turns -nemeses into kinds: "process", "net", "all", "none"
// or a comma-separated list of kinds.
func parseNemeses(s string) ([]string, error) {
	var out []string
	for item := range strings.SplitSeq(s, ",") {
		switch item = strings.TrimSpace(item); item {
		case "":
		case "none":
		case "process":
			out = append(out, processKinds...)
		case "net":
			out = append(out, slices.Concat(partitionKinds, proxyKinds)...)
		case "partition":
			out = append(out, partitionKinds...)
		case "proxy":
			out = append(out, proxyKinds...)
		case "all":
			out = append(out, allKinds()...)
		default:
			if !slices.Contains(allKinds(), item) {
				return nil, fmt.Errorf("unknown nemesis %q (want process, net, all, none or some of %s)", item, strings.Join(allKinds(), ","))
			}
			out = append(out, item)
		}
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// holdRange is how long each kind of fault lasts (min, max).
var holdRange = map[string][2]time.Duration{
	kKillLeader:      {1 * time.Second, 3 * time.Second},
	kKillRandom:      {1 * time.Second, 3 * time.Second},
	kKillMajority:    {2 * time.Second, 5 * time.Second},
	kPauseLeader:     {2500 * time.Millisecond, 4 * time.Second}, // past the 1-2 s election timeout
	kKillParticipant: {1 * time.Second, 3 * time.Second},
	kPartLeader:      {3 * time.Second, 6 * time.Second},
	kPartMinority:    {3 * time.Second, 6 * time.Second},
	kPartHalves:      {3 * time.Second, 6 * time.Second},
	kProxySlow:       {4 * time.Second, 8 * time.Second},
	kProxyLossy:      {4 * time.Second, 8 * time.Second},
}

// plannedFault is one step of the seeded schedule. What it targets is
// chosen from pick when the target is not "the leader".
type plannedFault struct {
	Kind string        `json:"kind"`
	Hold time.Duration `json:"hold_ns"`
	Gap  time.Duration `json:"gap_ns"` // healthy time after the heal
	Pick uint64        `json:"pick"`
}

// planSchedule draws the faults for a run from the seed: first every kind
// once in a shuffled order (so each fires), then random kinds, until the
// planned time fills budget.
func planSchedule(seed uint64, kinds []string, budget time.Duration) []plannedFault {
	if len(kinds) == 0 {
		return nil
	}
	rng := rand.New(rand.NewPCG(seed, 1))
	order := slices.Clone(kinds)
	rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
	var plan []plannedFault
	var used time.Duration
	for i := 0; i < 10_000; i++ {
		kind := kinds[rng.IntN(len(kinds))]
		if i < len(order) {
			kind = order[i]
		}
		r := holdRange[kind]
		f := plannedFault{Kind: kind, Hold: r[0] + time.Duration(rng.Int64N(int64(r[1]-r[0]))),
			Gap: 2*time.Second + time.Duration(rng.Int64N(int64(2*time.Second))), Pick: rng.Uint64()}
		// a fault also costs finding the leader and restarting: ~1 s
		cost := f.Hold + f.Gap + time.Second
		if used+cost > budget && i >= len(order) {
			break
		}
		plan = append(plan, f)
		used += cost
	}
	return plan
}

// faultRecord is what happened when a planned fault ran.
type faultRecord struct {
	Kind     string   `json:"kind"`
	Targets  []string `json:"targets"`
	Start    int64    `json:"start_ns"` // since the run's start
	Heal     int64    `json:"heal_ns"`  // when the heal finished
	InFlight int      `json:"in_flight"`
	Note     string   `json:"note,omitempty"`
	Skipped  string   `json:"skipped,omitempty"`
	HealErr  string   `json:"heal_error,omitempty"`
	// Recovery is the longest a client or a bank waited after the heal for
	// the outcome of a transaction in flight across it (ns).
	Recovery int64 `json:"recovery_ns"`
	// What became of the transfers in flight at the injection.
	CaughtCommitted int `json:"caught_committed"`
	CaughtAborted   int `json:"caught_aborted"`
	CaughtUnknown   int `json:"caught_unknown_then_resolved"`
	caught          []string
}

// nemesis runs the schedule against the cluster.
type nemesis struct {
	c    *cluster
	w    *workload
	h    *history
	fw   *firewall // nil: partitions cannot run
	log  zerolog.Logger
	plan []plannedFault

	faults []faultRecord
}

// run executes the plan until it is done or until would end past end.
func (n *nemesis) run(ctx context.Context, start time.Duration, end time.Time) {
	if !sleepCtx(ctx, start) {
		return
	}
	for _, f := range n.plan {
		if ctx.Err() != nil || time.Until(end) < f.Hold+2*time.Second {
			return
		}
		rec := n.runOne(ctx, f)
		n.faults = append(n.faults, rec)
		ev := n.log.Info()
		if rec.Skipped != "" {
			ev = n.log.Warn()
		}
		ev.Str("kind", rec.Kind).Strs("targets", rec.Targets).Int("in_flight", rec.InFlight).
			Stringer("held", time.Duration(rec.Heal-rec.Start).Round(time.Millisecond)).Str("note", rec.Note).Str("skipped", rec.Skipped).Msg("fault healed")
		if !sleepCtx(ctx, f.Gap) {
			return
		}
	}
}

// runOne injects one fault, holds it, and heals it. Heal runs even when ctx
// ends meanwhile.
func (n *nemesis) runOne(ctx context.Context, f plannedFault) faultRecord {
	rec := faultRecord{Kind: f.Kind}
	rng := rand.New(rand.NewPCG(f.Pick, 7))
	heal, err := n.inject(ctx, f, rng, &rec)
	if err != nil {
		if heal != nil {
			_ = heal(context.WithoutCancel(ctx))
		}
		rec.Skipped = err.Error()
		rec.Start, rec.Heal = n.h.now(), n.h.now()
		return rec
	}
	sleepCtx(ctx, f.Hold)
	// A heal is bounded: one that hangs is reported, not waited for.
	done := make(chan error, 1)
	go func() { done <- heal(context.WithoutCancel(ctx)) }()
	t := time.NewTimer(time.Minute)
	defer t.Stop()
	select {
	case err = <-done:
	case <-t.C:
		err = errors.New("did not finish within a minute")
	}
	if err != nil {
		rec.HealErr = err.Error()
		n.log.Error().Err(err).Str("kind", f.Kind).Msg("heal failed")
	}
	rec.Heal = n.h.now()
	return rec
}

// inject starts the fault and returns how to heal it. It fills the record's
// targets, start and in-flight count at the moment of injection.
func (n *nemesis) inject(ctx context.Context, f plannedFault, rng *rand.Rand, rec *faultRecord) (func(context.Context) error, error) {
	c := n.c
	begin := func(targets ...*member) {
		for _, m := range targets {
			rec.Targets = append(rec.Targets, m.name)
		}
		rec.caught = n.w.inFlightIDs()
		rec.InFlight = len(rec.caught)
		rec.Start = n.h.now()
	}
	restart := func(ms ...*member) func(context.Context) error {
		return func(ctx context.Context) error {
			var errs []error
			for _, m := range ms {
				errs = append(errs, c.restart(ctx, m))
			}
			return errors.Join(errs...)
		}
	}
	others := func(m *member) []*member {
		var out []*member
		for _, o := range c.coords {
			if o != m {
				out = append(out, o)
			}
		}
		return out
	}
	switch f.Kind {
	case kKillLeader, kPauseLeader, kPartLeader:
		lead, err := c.leader(ctx, 15*time.Second)
		if err != nil {
			return nil, err
		}
		begin(lead)
		switch f.Kind {
		case kKillLeader:
			return restart(lead), lead.proc.kill()
		case kPauseLeader:
			return func(context.Context) error { return lead.proc.resume() }, lead.proc.pause()
		default:
			if n.fw == nil {
				return nil, errors.New("no firewall")
			}
			return func(context.Context) error { return n.fw.heal() }, n.fw.isolate([]*member{lead}, others(lead))
		}
	case kKillRandom:
		m := c.coords[rng.IntN(len(c.coords))]
		begin(m)
		return restart(m), m.proc.kill()
	case kKillMajority:
		perm := rng.Perm(len(c.coords))
		a, b := c.coords[perm[0]], c.coords[perm[1]]
		begin(a, b)
		return restart(a, b), errors.Join(a.proc.kill(), b.proc.kill())
	case kKillParticipant:
		b := c.banks[rng.IntN(len(c.banks))]
		held := n.awaitReservations(ctx, b)
		begin(b)
		rec.Note = fmt.Sprintf("%d reservations held when killed", held)
		return func(ctx context.Context) error {
			if err := c.restart(ctx, b); err != nil {
				return err
			}
			return c.awaitBank(ctx, b, 20*time.Second)
		}, b.proc.kill()
	case kPartMinority:
		if n.fw == nil {
			return nil, errors.New("no firewall")
		}
		m := c.coords[rng.IntN(len(c.coords))]
		var rest []*member
		for _, o := range c.all() {
			if o != m {
				rest = append(rest, o)
			}
		}
		begin(m)
		return func(context.Context) error { return n.fw.heal() }, n.fw.isolate([]*member{m}, rest)
	case kPartHalves:
		if n.fw == nil {
			return nil, errors.New("no firewall")
		}
		all := c.all()
		rng.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
		a, b := all[:len(all)/2], all[len(all)/2:]
		begin(a...)
		rec.Note = "side A: " + names(a) + " | side B: " + names(b)
		return func(context.Context) error { return n.fw.heal() }, n.fw.isolate(a, b)
	case kProxySlow, kProxyLossy:
		if c.proxy == nil {
			return nil, errors.New("no fault proxy")
		}
		m := c.coords[c.cfg.proxiedNode-1]
		begin(m)
		heal := func(context.Context) error { return c.proxy.clear() }
		if f.Kind == kProxySlow {
			lat := time.Duration(30+rng.IntN(120)) * time.Millisecond
			rec.Note = fmt.Sprintf("latency %v ±%v on its peer port", lat, lat/2)
			return heal, c.proxy.slow(lat, lat/2)
		}
		hole := time.Duration(300+rng.IntN(700)) * time.Millisecond
		rec.Note = fmt.Sprintf("a third of its peer connections black-holed for %v, then closed", hole)
		return heal, c.proxy.lossy(hole)
	}
	return nil, fmt.Errorf("unknown nemesis %q", f.Kind)
}

// awaitReservations polls a bank until it holds a prepared transaction (a
// reservation), for at most 3 s, and returns how many it saw.
func (n *nemesis) awaitReservations(ctx context.Context, b *member) int {
	i := n.c.bankIndex(b)
	held := 0
	_ = poll(ctx, 3*time.Second, 5*time.Millisecond, func() bool {
		r, err := n.c.balances(ctx, i)
		if err == nil {
			held = int(r.GetReservations())
		}
		return held > 0
	})
	return held
}

// healAll undoes whatever may still be broken: resumes paused processes,
// restarts dead ones, removes partitions and proxy toxics.
func (n *nemesis) healAll(ctx context.Context) error {
	var errs []error
	if n.fw != nil {
		errs = append(errs, n.fw.heal())
	}
	if n.c.proxy != nil {
		errs = append(errs, n.c.proxy.clear())
	}
	for _, m := range n.c.all() {
		m.proc.mu.Lock()
		paused := m.proc.paused
		m.proc.mu.Unlock()
		if paused {
			errs = append(errs, m.proc.resume())
		}
		if !m.proc.running() {
			errs = append(errs, n.c.restart(ctx, m))
		}
	}
	return errors.Join(errs...)
}

func names(ms []*member) string {
	var s []string
	for _, m := range ms {
		s = append(s, m.name)
	}
	return strings.Join(s, ",")
}
