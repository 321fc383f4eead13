package chaos

import (
	"context"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/decree-tx/decree/coordinator/client"
	"github.com/decree-tx/decree/examples/bank"
)

// Results of an operation in the history.
const (
	resCommitted = "committed"
	resAborted   = "aborted"
	resUnknown   = "unknown" // the call died without a definitive outcome
)

// Operation kinds.
const (
	opCommit  = "commit"
	opOutcome = "outcome"
)

// op is one client call in the history: when it started and ended (ns
// since the run's start) and what it returned.
type op struct {
	ID     string `json:"id"`
	Kind   string `json:"op"`
	Proc   int    `json:"proc"`
	Call   int64  `json:"call_ns"`
	Return int64  `json:"return_ns"`
	Result string `json:"result"`
	Reason string `json:"reason,omitempty"`
	Err    string `json:"err,omitempty"`
	// Tag says why the call was made: "" (the transfer), "dup" (the same
	// id committed again after it returned), "dup-concurrent", "read" (an
	// outcome read while the workload runs), "resolve" (after the run, for
	// an unknown outcome).
	Tag string `json:"tag,omitempty"`
}

// transfer is what a transaction id does.
type transfer struct {
	ID     string          `json:"id"`
	From   bank.AccountRef `json:"from"`
	To     bank.AccountRef `json:"to"`
	Amount int64           `json:"amount"`
}

func (t transfer) bankTransfer() bank.Transfer {
	return bank.Transfer{From: t.From, To: t.To, Amount: t.Amount}
}

// banks returns the distinct banks the transfer touches.
func (t transfer) banks() []string {
	if t.From.Bank == t.To.Bank {
		return []string{t.From.Bank}
	}
	return []string{t.From.Bank, t.To.Bank}
}

// history records every transfer and every call.
type history struct {
	t0 time.Time

	mu        sync.Mutex
	ops       []op
	transfers map[string]transfer
	order     []string // transfer ids in creation order
}

func newHistory(t0 time.Time) *history {
	return &history{t0: t0, transfers: map[string]transfer{}}
}

func (h *history) now() int64 { return int64(time.Since(h.t0)) }

func (h *history) addTransfer(t transfer) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.transfers[t.ID] = t
	h.order = append(h.order, t.ID)
}

func (h *history) add(o op) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ops = append(h.ops, o)
}

func (h *history) snapshot() ([]op, map[string]transfer, []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	ts := make(map[string]transfer, len(h.transfers))
	for k, v := range h.transfers {
		ts[k] = v
	}
	return append([]op(nil), h.ops...), ts, append([]string(nil), h.order...)
}

// workloadConfig shapes the transfer workload.
type workloadConfig struct {
	banks       []string
	accounts    int
	maxAmount   int64
	workers     int
	readers     int
	readEvery   time.Duration
	callTimeout time.Duration
	seed        uint64
}

// workload runs random transfers and outcome reads through the Go client,
// recording each call. It keeps the set of transactions in flight so that
// the nemesis can say how many each fault caught, and so that readers can
// ask about transactions still being decided.
type workload struct {
	cfg workloadConfig
	cl  *client.Client
	h   *history

	mu       sync.Mutex
	inflight []string            // ids whose transfer call is running
	index    map[string]int      // id -> position in inflight
	parts    map[string][]string // id -> participants, while in flight or recent
	recent   []string            // ring of recently finished ids
	next     int

	harnessErrors atomic.Int64 // calls that failed for a reason other than an unknown outcome
	lastErr       atomic.Value
}

func newWorkload(cfg workloadConfig, cl *client.Client, h *history) *workload {
	return &workload{cfg: cfg, cl: cl, h: h, index: map[string]int{}, parts: map[string][]string{},
		recent: make([]string, 0, 1024)}
}

// inFlight is the number of transfers being committed right now.
func (w *workload) inFlight() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.inflight)
}

func (w *workload) inFlightIDs() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.inflight...)
}

// run starts the workers and readers and returns when ctx ends and every
// call in flight has returned (each call has its own deadline).
func (w *workload) run(ctx context.Context) {
	var wg sync.WaitGroup
	for i := range w.cfg.workers {
		rng := rand.New(rand.NewPCG(w.cfg.seed, uint64(100+i)))
		wg.Go(func() { w.worker(ctx, i, rng) })
	}
	for i := range w.cfg.readers {
		rng := rand.New(rand.NewPCG(w.cfg.seed, uint64(200+i)))
		wg.Go(func() { w.reader(ctx, 500+i, rng) })
	}
	wg.Wait()
}

// maxTransfersPerWorker bounds a worker's loop whatever the duration.
const maxTransfersPerWorker = 5_000_000

func (w *workload) worker(ctx context.Context, proc int, rng *rand.Rand) {
	for range maxTransfersPerWorker {
		if ctx.Err() != nil {
			return
		}
		t := w.randomTransfer(rng)
		t.ID = newTxnID(rng)
		w.h.addTransfer(t)
		txn := t.bankTransfer().Txn(t.ID)
		w.track(t.ID, t.banks())
		if rng.Float64() < 0.02 {
			// The same id sent twice at once: the cluster must run it once.
			var dup sync.WaitGroup
			dup.Go(func() { w.commit(proc+1000, txn, "dup-concurrent") })
			w.commit(proc, txn, "")
			dup.Wait()
		} else {
			w.commit(proc, txn, "")
		}
		w.untrack(t.ID)
		if rng.Float64() < 0.03 {
			w.commit(proc, txn, "dup") // a retry after the answer: same outcome, applied once
		}
	}
}

func (w *workload) commit(proc int, txn client.Txn, tag string) {
	ctx, cancel := context.WithTimeout(context.Background(), w.cfg.callTimeout)
	defer cancel()
	o := op{ID: txn.ID, Kind: opCommit, Proc: proc, Tag: tag, Call: w.h.now()}
	res, err := w.cl.Commit(ctx, txn)
	o.Return = w.h.now()
	w.result(&o, res, err)
	w.h.add(o)
}

// result fills o's result from a client answer.
func (w *workload) result(o *op, res client.Result, err error) {
	switch {
	case err == nil && res.State == client.StateCommitted:
		o.Result = resCommitted
	case err == nil && res.State == client.StateAborted:
		o.Result, o.Reason = resAborted, res.Reason
	default:
		o.Result = resUnknown
		if err != nil {
			o.Err = err.Error()
		}
		if err == nil || !errors.Is(err, client.ErrOutcomeUnknown) {
			w.harnessErrors.Add(1)
			w.lastErr.Store(o.Err + " state " + res.State.String())
		}
	}
}

// reader asks for the outcome of a random transaction now and then: mostly
// one that just finished, sometimes one still in flight (which may settle
// it: an outcome query presumes abort when nothing was decided).
func (w *workload) reader(ctx context.Context, proc int, rng *rand.Rand) {
	tick := time.NewTicker(w.cfg.readEvery)
	defer tick.Stop()
	for range maxTransfersPerWorker {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		id, parts, ok := w.pick(rng)
		if !ok {
			continue
		}
		w.read(proc, id, parts, 3*time.Second, "read")
	}
}

// read asks for id's outcome and records the call.
func (w *workload) read(proc int, id string, parts []string, timeout time.Duration, tag string) op {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	o := op{ID: id, Kind: opOutcome, Proc: proc, Tag: tag, Call: w.h.now()}
	res, err := w.cl.Outcome(ctx, id, parts...)
	o.Return = w.h.now()
	w.result(&o, res, err)
	w.h.add(o)
	return o
}

func (w *workload) pick(rng *rand.Rand) (string, []string, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	var id string
	switch {
	case len(w.inflight) > 0 && rng.Float64() < 0.2:
		id = w.inflight[rng.IntN(len(w.inflight))]
	case len(w.recent) > 0:
		id = w.recent[rng.IntN(len(w.recent))]
	default:
		return "", nil, false
	}
	return id, w.parts[id], true
}

func (w *workload) track(id string, parts []string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.index[id] = len(w.inflight)
	w.inflight = append(w.inflight, id)
	w.parts[id] = parts
}

func (w *workload) untrack(id string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	i := w.index[id]
	last := w.inflight[len(w.inflight)-1]
	w.inflight[i] = last
	w.index[last] = i
	w.inflight = w.inflight[:len(w.inflight)-1]
	delete(w.index, id)
	if len(w.recent) < cap(w.recent) {
		w.recent = append(w.recent, id)
		return
	}
	delete(w.parts, w.recent[w.next])
	w.recent[w.next] = id
	w.next = (w.next + 1) % len(w.recent)
}

func (w *workload) randomTransfer(rng *rand.Rand) transfer {
	pick := func() bank.AccountRef {
		return bank.AccountRef{Bank: w.cfg.banks[rng.IntN(len(w.cfg.banks))], Account: bank.AccountName(rng.IntN(w.cfg.accounts))}
	}
	from, to := pick(), pick()
	for i := 0; to == from && i < 100; i++ {
		to = pick()
	}
	return transfer{From: from, To: to, Amount: 1 + rng.Int64N(w.cfg.maxAmount)}
}

// newTxnID mints a UUIDv7 whose random bits come from the run's seed.
func newTxnID(rng *rand.Rand) string {
	var u uuid.UUID
	binary.BigEndian.PutUint64(u[0:8], rng.Uint64())
	binary.BigEndian.PutUint64(u[8:16], rng.Uint64())
	ms := uint64(time.Now().UnixMilli())
	u[0], u[1], u[2], u[3], u[4], u[5] = byte(ms>>40), byte(ms>>32), byte(ms>>24), byte(ms>>16), byte(ms>>8), byte(ms)
	u[6] = (u[6] & 0x0f) | 0x70 // version 7
	u[8] = (u[8] & 0x3f) | 0x80 // RFC 4122 variant
	return u.String()
}

// resolveUnknown asks, after the run, for the outcome of every transfer
// whose every commit call died unknown, and records the answers.
func (w *workload) resolveUnknown(ops []op, ts map[string]transfer, timeout time.Duration) (resolved map[string]op) {
	known := map[string]bool{}
	unknown := map[string]bool{}
	for _, o := range ops {
		if o.Kind != opCommit {
			continue
		}
		if o.Result == resUnknown {
			unknown[o.ID] = true
		} else {
			known[o.ID] = true
		}
	}
	resolved = map[string]op{}
	var mu sync.Mutex
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for id := range unknown {
		if known[id] {
			continue
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			o := w.read(900, id, ts[id].banks(), timeout, "resolve")
			mu.Lock()
			resolved[id] = o
			mu.Unlock()
		})
	}
	wg.Wait()
	return resolved
}
