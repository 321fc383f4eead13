package main

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"sort"
	"sync"
	"text/tabwriter"
	"time"

	hdrhistogram "github.com/HdrHistogram/hdrhistogram-go"
	"github.com/schollz/progressbar/v3"

	"github.com/decree-tx/decree/coordinator/client"
)

// Latencies are recorded in microseconds, from 1 µs to 10 minutes, to
// three significant digits.
const (
	latencyMaxMicros = int64(10 * time.Minute / time.Microsecond)
	maxErrorSamples  = 5
)

// recorder collects the outcome and latency of every transaction, overall
// and per second of the run.
type recorder struct {
	mu                         sync.Mutex
	t0                         time.Time
	all, win                   *hdrhistogram.Histogram
	committed, aborted, errors int64
	winStart                   time.Time
	winErrors                  int64
	series                     []benchSecond
	errSamples                 map[string]int64
	// span, when tracked, accumulates the closed seconds since the last
	// rotateSpan: longer windows (a soak's minutes) with exact quantiles.
	span       *hdrhistogram.Histogram
	spanStart  time.Time
	spanErrors int64
}

// benchSecond is one window (a second, the last one maybe shorter) of the
// run; latencies of the transactions that ended in it.
type benchSecond struct {
	EndS     float64 `json:"t_s"`
	Tx       int64   `json:"tx"`
	TxPerSec float64 `json:"tx_per_sec"`
	Errors   int64   `json:"errors"`
	P50Ms    float64 `json:"p50_ms"`
	P99Ms    float64 `json:"p99_ms"`
	P999Ms   float64 `json:"p999_ms"`
	MaxMs    float64 `json:"max_ms"`
}

func newRecorder() *recorder {
	return &recorder{
		all:        hdrhistogram.New(1, latencyMaxMicros, 3),
		win:        hdrhistogram.New(1, latencyMaxMicros, 3),
		errSamples: map[string]int64{},
	}
}

func (r *recorder) start(t time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.t0, r.winStart = t, t
}

// record counts one transaction. Committed and aborted ones are decided
// and their latency recorded; an error (no outcome) is only counted.
func (r *recorder) record(state client.State, lat time.Duration, err error) {
	us := min(max(lat.Microseconds(), 1), latencyMaxMicros)
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case err == nil && state == client.StateCommitted:
		r.committed++
	case err == nil && state == client.StateAborted:
		r.aborted++
	default:
		r.errors++
		r.winErrors++
		if err == nil {
			err = fmt.Errorf("outcome %s", state)
		}
		if _, ok := r.errSamples[err.Error()]; ok || len(r.errSamples) < maxErrorSamples {
			r.errSamples[err.Error()]++
		}
		return
	}
	r.all.RecordValue(us)
	r.win.RecordValue(us)
}

// rotate closes the current window at now and returns it.
func (r *recorder) rotate(now time.Time) benchSecond {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := benchSecond{
		EndS:   now.Sub(r.t0).Seconds(),
		Tx:     r.win.TotalCount(),
		Errors: r.winErrors,
		P50Ms:  micros(r.win.ValueAtQuantile(50)),
		P99Ms:  micros(r.win.ValueAtQuantile(99)),
		P999Ms: micros(r.win.ValueAtQuantile(99.9)),
		MaxMs:  micros(r.win.Max()),
	}
	if r.span != nil {
		r.span.Merge(r.win)
		r.spanErrors += r.winErrors
	}
	if d := now.Sub(r.winStart).Seconds(); d > 0 {
		s.TxPerSec = float64(s.Tx) / d
	}
	if now.After(r.winStart) {
		r.series = append(r.series, s)
	}
	r.win.Reset()
	r.winErrors = 0
	r.winStart = now
	return s
}

// trackSpans makes the recorder accumulate spans for rotateSpan.
func (r *recorder) trackSpans() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.span = hdrhistogram.New(1, latencyMaxMicros, 3)
	r.spanStart = r.t0
}

// rotateSpan closes the current span at the end of the last closed second
// (call rotate first) and returns it.
func (r *recorder) rotateSpan() benchSpan {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := benchSpan{
		StartS: r.spanStart.Sub(r.t0).Seconds(), EndS: r.winStart.Sub(r.t0).Seconds(),
		Tx: r.span.TotalCount(), Errors: r.spanErrors,
		P50Ms: micros(r.span.ValueAtQuantile(50)), P99Ms: micros(r.span.ValueAtQuantile(99)),
		P999Ms: micros(r.span.ValueAtQuantile(99.9)), MaxMs: micros(r.span.Max()),
	}
	if d := s.EndS - s.StartS; d > 0 {
		s.TxPerSec = float64(s.Tx) / d
	}
	r.span.Reset()
	r.spanErrors = 0
	r.spanStart = r.winStart
	return s
}

// benchSpan is a window of several seconds (a soak's minute).
type benchSpan struct {
	StartS   float64 `json:"start_s"`
	EndS     float64 `json:"end_s"`
	Tx       int64   `json:"tx"`
	TxPerSec float64 `json:"tx_per_sec"`
	Errors   int64   `json:"errors"`
	P50Ms    float64 `json:"p50_ms"`
	P99Ms    float64 `json:"p99_ms"`
	P999Ms   float64 `json:"p999_ms"`
	MaxMs    float64 `json:"max_ms"`
}

func (r *recorder) done() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.committed + r.aborted + r.errors
}

func (r *recorder) totals() (committed, aborted, errors int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.committed, r.aborted, r.errors
}

func micros(us int64) float64 { return float64(us) / 1000 }

// progress shows the run live on stderr: a progress bar on a terminal,
// else a line per second.
type progress struct {
	w        io.Writer
	bar      *progressbar.ProgressBar
	count    int64
	duration time.Duration
	start    time.Time
}

func newProgress(w io.Writer, f benchFlags, start time.Time) *progress {
	p := &progress{w: w, count: f.count, duration: f.duration, start: start}
	if !isTerminal(w) {
		return p
	}
	total := f.count
	if total == 0 {
		total = max(int64(f.duration/time.Second), 1)
	}
	opts := []progressbar.Option{
		progressbar.OptionSetWriter(w),
		progressbar.OptionSetWidth(30),
		progressbar.OptionShowCount(),
		progressbar.OptionThrottle(100 * time.Millisecond),
		progressbar.OptionSetDescription("starting"),
		progressbar.OptionSetPredictTime(false),
		progressbar.OptionShowElapsedTimeOnFinish(),
	}
	if f.count == 0 {
		opts = append(opts, progressbar.OptionSetItsString("s"))
	}
	p.bar = progressbar.NewOptions64(total, opts...)
	return p
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// loop updates the bar often and closes a window every second, until done
// is closed.
func (p *progress) loop(rec *recorder, done <-chan struct{}) {
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	sec := time.NewTicker(time.Second)
	defer sec.Stop()
	for {
		select {
		case <-done:
			return
		case <-tick.C:
			p.setBar(rec)
		case now := <-sec.C:
			s := rec.rotate(now)
			committed, aborted, errors := rec.totals()
			line := fmt.Sprintf("%6.0f tx/s  errors %d  p99 %.2f ms", s.TxPerSec, errors, s.P99Ms)
			if p.bar != nil {
				p.bar.Describe(line)
				continue
			}
			fmt.Fprintf(p.w, "%5.0fs  committed %d  aborted %d  %s\n", s.EndS, committed, aborted, line)
		}
	}
}

func (p *progress) setBar(rec *recorder) {
	if p.bar == nil {
		return
	}
	if p.count > 0 {
		p.bar.Set64(rec.done())
	} else {
		p.bar.Set64(int64(time.Since(p.start) / time.Second))
	}
}

func (p *progress) finish(rec *recorder, elapsed time.Duration) {
	if p.bar != nil {
		p.setBar(rec)
		p.bar.Finish()
		fmt.Fprintln(p.w)
	}
	fmt.Fprintf(p.w, "done: %d transactions in %.2f s\n", rec.done(), elapsed.Seconds())
}

// finish closes the last (partial) window.
func (r *recorder) finish(now time.Time) { r.rotate(now) }

// benchResult is a run's outcome; its JSON keys are a contract.
type benchResult struct {
	Mode            string   `json:"mode"`
	Endpoints       []string `json:"endpoints"`
	Clients         int      `json:"clients"`
	Participants    int      `json:"participants"`
	PayloadBytes    int      `json:"payload_bytes"`
	AbortRatio      float64  `json:"abort_ratio"`
	GoMaxProcs      int      `json:"gomaxprocs"`
	DurationS       float64  `json:"duration_s"`
	Committed       int64    `json:"committed"`
	Aborted         int64    `json:"aborted"`
	Errors          int64    `json:"errors"`
	TxPerSec        float64  `json:"tx_per_sec"`
	CommittedPerSec float64  `json:"committed_per_sec"`

	MeanMs float64 `json:"mean_ms"`
	P50Ms  float64 `json:"p50_ms"`
	P90Ms  float64 `json:"p90_ms"`
	P99Ms  float64 `json:"p99_ms"`
	P999Ms float64 `json:"p999_ms"`
	MaxMs  float64 `json:"max_ms"`

	// Per committed transaction.
	CPUSecondsPerTx        float64      `json:"cpu_s_per_tx"`
	CPUByProcess           []processCPU `json:"cpu_by_process"`
	FsyncsPerTx            float64      `json:"fsyncs_per_tx"`
	CoordinatorFsyncsPerTx float64      `json:"coordinator_fsyncs_per_tx"`
	ParticipantFsyncsPerTx float64      `json:"participant_fsyncs_per_tx"`
	CoordinatorFsyncs      uint64       `json:"coordinator_fsyncs"`
	ParticipantFsyncs      uint64       `json:"participant_fsyncs"`

	ErrorSamples   map[string]int64 `json:"error_samples,omitempty"`
	LatencyPerSecs []benchSecond    `json:"latency_over_time"`

	hist *hdrhistogram.Histogram
}

// processCPU is the CPU one Decree process spent on the run.
type processCPU struct {
	Process    string  `json:"process"`
	CPUSeconds float64 `json:"cpu_s"`
	PerTx      float64 `json:"cpu_s_per_tx"`
}

func summarize(f benchFlags, endpoints []string, embedded bool, rec *recorder, elapsed time.Duration, before, after counters) *benchResult {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	h := rec.all
	res := &benchResult{
		Mode: "endpoints", Endpoints: endpoints, Clients: f.clients, Participants: f.participants,
		PayloadBytes: f.payload, AbortRatio: f.abortRatio, DurationS: elapsed.Seconds(),
		Committed: rec.committed, Aborted: rec.aborted, Errors: rec.errors,
		MeanMs: h.Mean() / 1000,
		P50Ms:  micros(h.ValueAtQuantile(50)), P90Ms: micros(h.ValueAtQuantile(90)),
		P99Ms: micros(h.ValueAtQuantile(99)), P999Ms: micros(h.ValueAtQuantile(99.9)),
		MaxMs:          micros(h.Max()),
		LatencyPerSecs: rec.series,
		hist:           h,
	}
	if len(rec.errSamples) > 0 {
		res.ErrorSamples = rec.errSamples
	}
	if embedded {
		res.Mode = "embedded"
	}
	if s := elapsed.Seconds(); s > 0 {
		res.TxPerSec = float64(res.Committed+res.Aborted) / s
		res.CommittedPerSec = float64(res.Committed) / s
	}
	perTx := func(v float64) float64 {
		if res.Committed == 0 {
			return 0
		}
		return v / float64(res.Committed)
	}
	self := after.selfCPU - before.selfCPU
	what := fmt.Sprintf("decree bench (participants: %d, clients: %d)", f.participants, f.clients)
	if embedded {
		what = fmt.Sprintf("decree bench (coordinators: 3, participants: %d, clients: %d)", f.participants, f.clients)
	}
	res.CPUByProcess = append(res.CPUByProcess, processCPU{Process: what, CPUSeconds: self, PerTx: perTx(self)})
	total := self
	for i, a := range after.nodes {
		b := before.nodes[i]
		if !a.ok || !b.ok || a.id != b.id {
			continue
		}
		res.CoordinatorFsyncs += a.fsyncs - b.fsyncs
		if embedded { // the nodes are this process: counted above
			continue
		}
		cpu := a.cpu - b.cpu
		total += cpu
		res.CPUByProcess = append(res.CPUByProcess, processCPU{
			Process: fmt.Sprintf("decree node %d (%s)", a.id, a.endpoint), CPUSeconds: cpu, PerTx: perTx(cpu),
		})
	}
	res.CPUSecondsPerTx = perTx(total)
	res.ParticipantFsyncs = after.partSyncs - before.partSyncs
	res.CoordinatorFsyncsPerTx = perTx(float64(res.CoordinatorFsyncs))
	res.ParticipantFsyncsPerTx = perTx(float64(res.ParticipantFsyncs))
	res.FsyncsPerTx = perTx(float64(res.CoordinatorFsyncs + res.ParticipantFsyncs))
	return res
}

func printBenchTable(w io.Writer, r *benchResult) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	mode := "embedded: 3 coordinator nodes in this process"
	if r.Mode != "embedded" {
		mode = fmt.Sprintf("%d coordinator endpoints", len(r.Endpoints))
	}
	row := func(k, format string, a ...any) { fmt.Fprintf(tw, "%s\t"+format+"\n", append([]any{k}, a...)...) }
	row("cluster", "%s", mode)
	row("load", "clients %d, participants/txn %d, payload %d B, abort ratio %g", r.Clients, r.Participants, r.PayloadBytes, r.AbortRatio)
	row("process", "GOMAXPROCS %d on %d CPUs", r.GoMaxProcs, runtime.NumCPU())
	row("duration", "%.2f s", r.DurationS)
	row("committed", "%d", r.Committed)
	row("aborted", "%d", r.Aborted)
	row("errors", "%d", r.Errors)
	row("tx/s", "%.1f  (committed %.1f/s)", r.TxPerSec, r.CommittedPerSec)
	row("latency p50", "%.3f ms", r.P50Ms)
	row("latency p90", "%.3f ms", r.P90Ms)
	row("latency p99", "%.3f ms", r.P99Ms)
	row("latency p99.9", "%.3f ms", r.P999Ms)
	row("latency max", "%.3f ms", r.MaxMs)
	row("cpu s/txn", "%.6f  (all Decree processes, per committed txn)", r.CPUSecondsPerTx)
	for _, p := range r.CPUByProcess {
		row("", "%.6f  %s, %.2f cpu-s", p.PerTx, p.Process, p.CPUSeconds)
	}
	row("fsyncs/txn", "%.2f  (coordinators %.2f, participants %.2f; per committed txn)",
		r.FsyncsPerTx, r.CoordinatorFsyncsPerTx, r.ParticipantFsyncsPerTx)
	row("", "coordinators: synced raft batches of all nodes; participants: synced log commits (group commit may share one fsync)")
	if len(r.ErrorSamples) > 0 {
		msgs := make([]string, 0, len(r.ErrorSamples))
		for m := range r.ErrorSamples {
			msgs = append(msgs, m)
		}
		sort.Strings(msgs)
		for _, m := range msgs {
			row("error", "%d× %s", r.ErrorSamples[m], m)
		}
	}
	return tw.Flush()
}
