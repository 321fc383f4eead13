package main

import (
	"fmt"
	"io"
	"runtime"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// The targets, and the windows they are judged in.
const (
	soakRateWindow   = 5 * time.Minute // first and last, of a 30-minute run
	soakRateMinShare = 0.9
	soakP99Limit     = time.Second
	soakAfterKill    = 90 * time.Second // p99 is not judged in these
	soakAfterRestart = 30 * time.Second
	soakCatchUpLimit = 30 * time.Second
)

// soakPoll is one reading of every node's Admin Status.
type soakPoll struct {
	TS    float64        `json:"t_s"`
	Nodes []soakNodePoll `json:"nodes"`
}

type soakNodePoll struct {
	ID uint64 `json:"id"`
	// Incarnation counts the node's restarts before this reading.
	Incarnation int       `json:"incarnation"`
	PID         int       `json:"pid"`
	Answered    bool      `json:"answered"`
	Role        string    `json:"role,omitempty"`
	Term        uint64    `json:"term,omitempty"`
	Leader      uint64    `json:"leader,omitempty"`
	Commit      uint64    `json:"commit,omitempty"`
	Applied     uint64    `json:"applied,omitempty"`
	RSSBytes    uint64    `json:"rss_bytes,omitempty"`
	GoHeapBytes uint64    `json:"go_heap_bytes,omitempty"`
	Stats       nodeStats `json:"stats"`
}

// soakRow is a row of the over-time table: a span of the run with each
// node's largest memory readings in it.
type soakRow struct {
	benchSpan
	Nodes  []soakRowNode `json:"nodes"`
	Events []string      `json:"events,omitempty"`
}

type soakRowNode struct {
	ID          uint64 `json:"id"`
	RSSBytes    uint64 `json:"max_rss_bytes"`
	GoHeapBytes uint64 `json:"max_go_heap_bytes"`
}

// soakNodeSummary is one node over the whole run; Stats add up the last
// reading of each of its processes.
type soakNodeSummary struct {
	ID             uint64    `json:"id"`
	Endpoint       string    `json:"endpoint"`
	Restarts       int       `json:"restarts"`
	MaxRSSBytes    uint64    `json:"max_rss_bytes"`
	MaxGoHeapBytes uint64    `json:"max_go_heap_bytes"`
	Stats          nodeStats `json:"stats"`
}

// soakTarget is one of the targets, judged.
type soakTarget struct {
	Name    string `json:"name"`
	Value   string `json:"value"`
	Pass    bool   `json:"pass"`
	Skipped bool   `json:"skipped,omitempty"` // nothing to judge it on
}

type soakConfig struct {
	Clients      int      `json:"clients"`
	Participants int      `json:"participants"`
	PayloadBytes int      `json:"payload_bytes"`
	DurationS    float64  `json:"duration_s"`
	Kill         bool     `json:"kill"`
	KillAtS      float64  `json:"kill_at_s"`
	DownS        float64  `json:"down_s"`
	PollS        float64  `json:"poll_s"`
	RowS         float64  `json:"row_s"`
	NodeFlags    []string `json:"node_flags"`
	MaxRSSBytes  uint64   `json:"max_rss_bytes"`
	GoMaxProcs   int      `json:"gomaxprocs"`
	CPUs         int      `json:"cpus"`
}

// soakReport is everything a soak measured; its JSON keys are a contract.
type soakReport struct {
	Config    soakConfig `json:"config"`
	Endpoints []string   `json:"endpoints"`
	DurationS float64    `json:"duration_s"`
	Committed int64      `json:"committed"`
	Aborted   int64      `json:"aborted"`
	Errors    int64      `json:"errors"`
	TxPerSec  float64    `json:"tx_per_sec"`
	P50Ms     float64    `json:"p50_ms"`
	P99Ms     float64    `json:"p99_ms"`
	P999Ms    float64    `json:"p999_ms"`
	MaxMs     float64    `json:"max_ms"`

	ErrorSamples map[string]int64  `json:"error_samples,omitempty"`
	Kill         *soakKill         `json:"kill,omitempty"`
	NodeExits    []string          `json:"unexpected_node_exits,omitempty"`
	Nodes        []soakNodeSummary `json:"nodes"`
	// LeaderChangesSeen counts changes of the leader (id or term) between
	// polls; LeaderChangesCounted adds up the nodes' own counters.
	LeaderChangesSeen    int    `json:"leader_changes_seen"`
	LeaderChangesCounted uint64 `json:"leader_changes_counted"`
	// RateWindowS is the length of the first and last windows compared.
	RateWindowS   float64 `json:"rate_window_s"`
	FirstRate     float64 `json:"first_window_tx_per_sec"`
	LastRate      float64 `json:"last_window_tx_per_sec"`
	MaxJudgedP99  float64 `json:"max_judged_p99_ms"`
	JudgedSeconds int     `json:"judged_seconds"`

	Rows    []soakRow     `json:"over_time"`
	Seconds []benchSecond `json:"per_second"`
	Polls   []soakPoll    `json:"polls"`
	Targets []soakTarget  `json:"targets"`
	Pass    bool          `json:"pass"`
}

// report assembles the run's report; the run's goroutines have ended.
func (r *soakRun) report() *soakReport {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rec.mu.Lock()
	h := r.rec.all
	rep := &soakReport{
		Config: soakConfig{
			Clients: r.f.clients, Participants: r.f.participants, PayloadBytes: r.f.payload,
			DurationS: r.f.duration.Seconds(), Kill: r.f.kill, KillAtS: r.f.killAt.Seconds(), DownS: r.f.down.Seconds(),
			PollS: r.f.poll.Seconds(), RowS: r.f.reportEvery.Seconds(), NodeFlags: append([]string{}, r.f.nodeFlags...),
			MaxRSSBytes: uint64(r.f.maxRSS), GoMaxProcs: runtime.GOMAXPROCS(0), CPUs: runtime.NumCPU(),
		},
		Endpoints: r.cluster.endpoints, DurationS: r.elapsed.Seconds(),
		Committed: r.rec.committed, Aborted: r.rec.aborted, Errors: r.rec.errors,
		P50Ms: micros(h.ValueAtQuantile(50)), P99Ms: micros(h.ValueAtQuantile(99)),
		P999Ms: micros(h.ValueAtQuantile(99.9)), MaxMs: micros(h.Max()),
		Seconds: slices.Clone(r.rec.series), Kill: r.kill, NodeExits: r.exits, Polls: r.polls,
	}
	if len(r.rec.errSamples) > 0 {
		rep.ErrorSamples = r.rec.errSamples
	}
	r.rec.mu.Unlock()
	if rep.DurationS > 0 {
		rep.TxPerSec = float64(rep.Committed+rep.Aborted) / rep.DurationS
	}
	rep.Nodes = nodeSummaries(r.polls, r.cluster.endpoints)
	rep.LeaderChangesSeen, rep.LeaderChangesCounted = leaderChanges(r.polls)
	rep.Rows = soakRows(r.spans, r.polls, r.kill)
	judge(rep, r.f)
	return rep
}

// rateWindow is the length of the first and last windows whose tx/s are
// compared: 5 minutes of a 30-minute run, the same share of a shorter one.
func rateWindow(d time.Duration) time.Duration {
	return min(soakRateWindow, max((d/6).Round(time.Second), time.Second))
}

// windowRate is the tx/s over the seconds that lie within [from, to].
func windowRate(secs []benchSecond, from, to float64) (float64, int) {
	var tx int64
	var span float64
	n := 0
	start := 0.0
	for _, s := range secs {
		if start >= from-1e-3 && s.EndS <= to+1e-3 {
			tx += s.Tx
			span += s.EndS - start
			n++
		}
		start = s.EndS
	}
	if span == 0 {
		return 0, 0
	}
	return float64(tx) / span, n
}

// interval is a stretch of the run in seconds.
type interval struct{ from, to float64 }

// maxP99Outside is the largest per-second p99 of the seconds that overlap
// none of the excluded intervals, and how many seconds that judged.
func maxP99Outside(secs []benchSecond, excluded []interval) (float64, int) {
	maxMs, n := 0.0, 0
	start := 0.0
next:
	for _, s := range secs {
		from := start
		start = s.EndS
		for _, x := range excluded {
			if from < x.to && s.EndS > x.from {
				continue next
			}
		}
		if s.Tx == 0 && s.Errors == 0 {
			continue
		}
		n++
		maxMs = max(maxMs, s.P99Ms)
	}
	return maxMs, n
}

// excludedIntervals are the seconds after the kill and after the restart
// in which p99 is not judged.
func excludedIntervals(k *soakKill) []interval {
	if k == nil || k.KilledAtS == 0 {
		return nil
	}
	out := []interval{{k.KilledAtS, k.KilledAtS + soakAfterKill.Seconds()}}
	if k.RestartedS > 0 {
		out = append(out, interval{k.RestartedS, k.RestartedS + soakAfterRestart.Seconds()})
	}
	return out
}

// leaderChanges counts, between consecutive polls that show a leader, the
// changes of its id or term; and adds up what the nodes' own counters
// grew by, per process, from its first reading that names a leader (a
// starting process counts the leader it finds).
func leaderChanges(polls []soakPoll) (seen int, counted uint64) {
	var curTerm, curLead uint64
	type proc struct {
		id          uint64
		incarnation int
	}
	first, last := map[proc]uint64{}, map[proc]uint64{}
	for _, p := range polls {
		var term, lead uint64
		for _, n := range p.Nodes {
			if !n.Answered {
				continue
			}
			if n.Role == "leader" && n.Term >= term {
				term, lead = n.Term, n.ID
			}
			if n.Leader != 0 {
				k := proc{n.ID, n.Incarnation}
				if _, ok := first[k]; !ok {
					first[k] = n.Stats.LeaderChanges
				}
				last[k] = n.Stats.LeaderChanges
			}
		}
		if lead == 0 {
			continue
		}
		if curLead != 0 && (term != curTerm || lead != curLead) {
			seen++
		}
		curTerm, curLead = term, lead
	}
	for k, v := range last {
		counted += v - min(first[k], v)
	}
	return seen, counted
}

// nodeSummaries are each node's peak memory and its counters, the last
// reading of each of its processes added up.
func nodeSummaries(polls []soakPoll, endpoints []string) []soakNodeSummary {
	out := make([]soakNodeSummary, len(endpoints))
	lastStats := make([]map[int]nodeStats, len(endpoints))
	for i := range out {
		out[i] = soakNodeSummary{ID: uint64(i + 1), Endpoint: endpoints[i]}
		lastStats[i] = map[int]nodeStats{}
	}
	for _, p := range polls {
		for _, n := range p.Nodes {
			i := int(n.ID - 1)
			if i < 0 || i >= len(out) || !n.Answered {
				continue
			}
			s := &out[i]
			s.Restarts = max(s.Restarts, n.Incarnation)
			s.MaxRSSBytes = max(s.MaxRSSBytes, n.RSSBytes)
			s.MaxGoHeapBytes = max(s.MaxGoHeapBytes, n.GoHeapBytes)
			lastStats[i][n.Incarnation] = n.Stats
		}
	}
	for i := range out {
		for _, st := range lastStats[i] {
			out[i].Stats = out[i].Stats.add(st)
		}
	}
	return out
}

func (s nodeStats) add(o nodeStats) nodeStats {
	return nodeStats{
		SnapshotsSent: s.SnapshotsSent + o.SnapshotsSent, SnapshotBytesSent: s.SnapshotBytesSent + o.SnapshotBytesSent,
		SnapshotSendSeconds: s.SnapshotSendSeconds + o.SnapshotSendSeconds,
		SnapshotsReceived:   s.SnapshotsReceived + o.SnapshotsReceived, SnapshotBytesReceived: s.SnapshotBytesReceived + o.SnapshotBytesReceived,
		SnapshotReceiveSeconds: s.SnapshotReceiveSeconds + o.SnapshotReceiveSeconds,
		Collects:               s.Collects + o.Collects, CollectedRecords: s.CollectedRecords + o.CollectedRecords,
		CollectSeconds: s.CollectSeconds + o.CollectSeconds, CollectMaxSeconds: max(s.CollectMaxSeconds, o.CollectMaxSeconds),
		LeaderChanges: s.LeaderChanges + o.LeaderChanges,
	}
}

// soakRows gives every span each node's largest readings among the polls
// in it (or the last one before it, when a span is shorter than a poll
// interval) and the kill's events.
func soakRows(spans []benchSpan, polls []soakPoll, k *soakKill) []soakRow {
	rows := make([]soakRow, 0, len(spans))
	for _, sp := range spans {
		row := soakRow{benchSpan: sp}
		var in []soakPoll
		for i, p := range polls {
			if p.TS > sp.StartS && p.TS <= sp.EndS {
				in = append(in, p)
			} else if p.TS <= sp.StartS && (i+1 == len(polls) || polls[i+1].TS > sp.EndS) {
				in = append(in, p)
			}
		}
		byID := map[uint64]*soakRowNode{}
		for _, p := range in {
			for _, n := range p.Nodes {
				rn, ok := byID[n.ID]
				if !ok {
					rn = &soakRowNode{ID: n.ID}
					byID[n.ID] = rn
				}
				rn.RSSBytes, rn.GoHeapBytes = max(rn.RSSBytes, n.RSSBytes), max(rn.GoHeapBytes, n.GoHeapBytes)
			}
		}
		for _, rn := range byID {
			row.Nodes = append(row.Nodes, *rn)
		}
		sort.Slice(row.Nodes, func(i, j int) bool { return row.Nodes[i].ID < row.Nodes[j].ID })
		row.Events = killEvents(k, sp.StartS, sp.EndS)
		rows = append(rows, row)
	}
	return rows
}

func killEvents(k *soakKill, from, to float64) []string {
	if k == nil {
		return nil
	}
	var ev []string
	in := func(t float64) bool { return t > 0 && t > from && t <= to }
	if in(k.KilledAtS) {
		ev = append(ev, fmt.Sprintf("n%d killed", k.Node))
	}
	if in(k.RestartedS) {
		ev = append(ev, fmt.Sprintf("n%d restarted", k.Node))
	}
	if in(k.CaughtUpAtS) {
		ev = append(ev, fmt.Sprintf("n%d caught up", k.Node))
	}
	return ev
}

// judge fills in the targets and whether all passed.
func judge(rep *soakReport, f soakFlags) {
	var maxRSS []string
	rssOK := len(rep.Nodes) > 0
	for _, n := range rep.Nodes {
		maxRSS = append(maxRSS, fmt.Sprintf("n%d %s", n.ID, mib(n.MaxRSSBytes)))
		rssOK = rssOK && n.MaxRSSBytes > 0 && n.MaxRSSBytes < uint64(f.maxRSS)
	}
	add := func(t soakTarget) { rep.Targets = append(rep.Targets, t) }
	add(soakTarget{Name: fmt.Sprintf("max RSS of every node < %v", f.maxRSS), Value: strings.Join(maxRSS, ", "), Pass: rssOK})

	w := rateWindow(f.duration)
	rep.RateWindowS = w.Seconds()
	end := 0.0
	if len(rep.Seconds) > 0 {
		end = rep.Seconds[len(rep.Seconds)-1].EndS
	}
	first, nf := windowRate(rep.Seconds, 0, w.Seconds())
	last, nl := windowRate(rep.Seconds, end-w.Seconds(), end)
	rep.FirstRate, rep.LastRate = first, last
	rate := soakTarget{Name: fmt.Sprintf("tx/s of the last %v ≥ %.0f%% of the first %v", w, soakRateMinShare*100, w)}
	switch {
	case nf == 0 || nl == 0 || first == 0:
		rate.Value = "no transactions in a window"
	default:
		rate.Value = fmt.Sprintf("%.0f vs %.0f tx/s (%.0f%%)", last, first, 100*last/first)
		rate.Pass = last >= soakRateMinShare*first
	}
	if w < soakRateWindow {
		rate.Name += fmt.Sprintf(" (windows scaled from 5m to a %v run)", f.duration)
	}
	add(rate)

	rep.MaxJudgedP99, rep.JudgedSeconds = maxP99Outside(rep.Seconds, excludedIntervals(rep.Kill))
	p99 := soakTarget{Name: fmt.Sprintf("per-second p99 ≤ %v outside %v after the kill and %v after the restart",
		soakP99Limit, soakAfterKill, soakAfterRestart)}
	if rep.JudgedSeconds == 0 {
		p99.Value, p99.Skipped, p99.Pass = "no second left to judge", true, true
	} else {
		p99.Value = fmt.Sprintf("max %.1f ms over %d seconds", rep.MaxJudgedP99, rep.JudgedSeconds)
		p99.Pass = rep.MaxJudgedP99 <= float64(soakP99Limit.Milliseconds())
	}
	add(p99)

	add(soakTarget{Name: "no leader change",
		Value: fmt.Sprintf("%d seen between polls, %d counted by the nodes", rep.LeaderChangesSeen, rep.LeaderChangesCounted),
		Pass:  rep.LeaderChangesSeen == 0 && rep.LeaderChangesCounted == 0})

	if f.kill {
		c := soakTarget{Name: fmt.Sprintf("restarted follower catches up ≤ %v", soakCatchUpLimit)}
		switch k := rep.Kill; {
		case k == nil || !k.CaughtUp:
			c.Value = "did not catch up"
			if k != nil && k.Error != "" {
				c.Value = k.Error
			}
		default:
			c.Value = fmt.Sprintf("%.1f s", k.CatchUpS)
			c.Pass = k.CatchUpS <= soakCatchUpLimit.Seconds()
		}
		add(c)
	}
	add(soakTarget{Name: "no node exited unexpectedly", Value: fmt.Sprintf("%d exits", len(rep.NodeExits)), Pass: len(rep.NodeExits) == 0})
	rep.Pass = true
	for _, t := range rep.Targets {
		rep.Pass = rep.Pass && t.Pass
	}
}

func printSoakReport(w io.Writer, rep *soakReport) error {
	if err := printSoakRows(w, rep); err != nil {
		return err
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k, format string, a ...any) { fmt.Fprintf(tw, "%s\t"+format+"\n", append([]any{k}, a...)...) }
	c := rep.Config
	row("load", "%d clients, %d participants/txn, payload %d B, %.0f s; GOMAXPROCS %d on %d CPUs",
		c.Clients, c.Participants, c.PayloadBytes, rep.DurationS, c.GoMaxProcs, c.CPUs)
	row("nodes", "%s  flags: %s", strings.Join(rep.Endpoints, ","), orNone(strings.Join(c.NodeFlags, " ")))
	row("transactions", "committed %d, aborted %d, errors %d; %.1f tx/s", rep.Committed, rep.Aborted, rep.Errors, rep.TxPerSec)
	row("latency", "p50 %.2f ms, p99 %.2f ms, p99.9 %.2f ms, max %.2f ms", rep.P50Ms, rep.P99Ms, rep.P999Ms, rep.MaxMs)
	if k := rep.Kill; k != nil && k.KilledAtS > 0 {
		s := fmt.Sprintf("node %d (pid %d) killed at %.1f s", k.Node, k.PID, k.KilledAtS)
		if k.RestartedS > 0 {
			s += fmt.Sprintf(", restarted at %.1f s (pid %d)", k.RestartedS, k.NewPID)
		}
		if k.CaughtUp {
			s += fmt.Sprintf(", applied the leader's commit at restart (%d) at %.1f s: caught up in %.1f s", k.TargetIndex, k.CaughtUpAtS, k.CatchUpS)
		}
		row("follower", "%s", s)
	}
	for _, n := range rep.Nodes {
		st := n.Stats
		row(fmt.Sprintf("node %d", n.ID), "max RSS %s, max Go heap %s, restarts %d, leader changes %d",
			mib(n.MaxRSSBytes), mib(n.MaxGoHeapBytes), n.Restarts, st.LeaderChanges)
		row("", "snapshots sent %d (%s, %.2f s), received %d (%s, %.2f s)",
			st.SnapshotsSent, mib(st.SnapshotBytesSent), st.SnapshotSendSeconds,
			st.SnapshotsReceived, mib(st.SnapshotBytesReceived), st.SnapshotReceiveSeconds)
		mean := 0.0
		if st.Collects > 0 {
			mean = 1000 * st.CollectSeconds / float64(st.Collects)
		}
		row("", "collects %d (%d records), mean %.1f ms, max %.1f ms",
			st.Collects, st.CollectedRecords, mean, 1000*st.CollectMaxSeconds)
	}
	for _, e := range rep.NodeExits {
		row("node exit", "%s", strings.SplitN(e, "\n", 2)[0])
	}
	msgs := make([]string, 0, len(rep.ErrorSamples))
	for m := range rep.ErrorSamples {
		msgs = append(msgs, m)
	}
	sort.Strings(msgs)
	for _, m := range msgs {
		row("error", "%d× %s", rep.ErrorSamples[m], m)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w, "\ntargets:")
	missed := 0
	for _, t := range rep.Targets {
		mark := "PASS"
		switch {
		case t.Skipped:
			mark = "SKIP"
		case !t.Pass:
			mark = "FAIL"
			missed++
		}
		fmt.Fprintf(w, "  %s  %s: %s\n", mark, t.Name, t.Value)
	}
	if missed == 0 {
		_, err := fmt.Fprintln(w, "result: PASS")
		return err
	}
	_, err := fmt.Fprintf(w, "result: FAIL (%d of %d targets missed)\n", missed, len(rep.Targets))
	return err
}

func orNone(s string) string {
	if s == "" {
		return "(defaults)"
	}
	return s
}

// printSoakRows prints the over-time table: a row per span.
func printSoakRows(w io.Writer, rep *soakReport) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	head := "end s\ttx/s\tp50 ms\tp99 ms\tp99.9 ms\terrors\t"
	for _, n := range rep.Nodes {
		head += fmt.Sprintf("n%d RSS\tn%d heap\t", n.ID, n.ID)
	}
	fmt.Fprintln(tw, head+"events\t")
	for _, r := range rep.Rows {
		line := fmt.Sprintf("%.0f\t%.0f\t%.1f\t%.1f\t%.1f\t%d\t", r.EndS, r.TxPerSec, r.P50Ms, r.P99Ms, r.P999Ms, r.Errors)
		for _, n := range r.Nodes {
			line += fmt.Sprintf("%.0f\t%.0f\t", mibf(n.RSSBytes), mibf(n.GoHeapBytes))
		}
		fmt.Fprintln(tw, line+strings.Join(r.Events, ", ")+"\t")
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "(rows of %.0f s; RSS and heap in MiB, the largest reading in the row)\n", rep.Config.RowS)
	return err
}

func mibf(b uint64) float64 { return float64(b) / (1 << 20) }
