package coordinator

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/rs/zerolog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/decree-tx/decree/coordinator/internal/twopc"
	"github.com/decree-tx/decree/participant"
	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
	"github.com/decree-tx/decree/txlog"
)

// simPart is one participant process: the real SDK over a participant log
// on a crashable in-memory file system.
type simPart struct {
	w         *world
	name      string
	addr      string
	fs        *vfs.MemFS
	log       *txlog.ParticipantLog
	p         *participant.Participant
	svc       decreev1.ParticipantServer
	up        bool
	inc       int
	lastAsked int
	// The cluster's answers to this participant's outcome queries, and
	// the queries in flight (simOutcomes).
	answers map[string]decreev1.TxnState
	asking  map[string]time.Time // when the query in flight was sent
	// oldSDK: the participant serves only the unary methods, not Calls
	// (sim_clients_test.go).
	oldSDK bool
}

func (sp *simPart) boot() {
	w := sp.w
	log, err := txlog.OpenParticipantLog("part", txlog.Options{FS: sp.fs, Logger: zerolog.Nop()})
	if err != nil {
		w.violate("%s: reopen log: %v", sp.addr, err)
		return
	}
	p, err := participant.New(simResource{}, participant.Options{
		Log: log, Outcomes: simOutcomes{sp}, Clock: simClock{w},
		Rand: w.rng.Float64, InDoubtTimeout: 300 * time.Millisecond,
		RetryMin: 50 * time.Millisecond, RetryMax: 400 * time.Millisecond, Logger: zerolog.Nop(),
	})
	if err != nil {
		w.violate("%s: start participant: %v", sp.addr, err)
		return
	}
	sp.log, sp.p, sp.svc, sp.up = log, p, p.Service(), true
	sp.answers, sp.asking = map[string]decreev1.TxnState{}, map[string]time.Time{}
	sp.inc++
	w.tracef("%s booted, %d in doubt", sp.addr, len(p.InDoubt()))
	sp.checkRecovered()
}

// checkRecovered: every outcome acknowledged before a crash is still there,
// and nothing committed that the cluster did not decide.
func (sp *simPart) checkRecovered() {
	w := sp.w
	for _, id := range sortedKeys(w.acked[sp.addr]) {
		want := w.acked[sp.addr][id]
		rec, ok, err := sp.log.GetTxn(id)
		if err != nil || !ok || rec.State != want {
			got := "nothing"
			if ok {
				got = rec.State.String()
			}
			w.violate("%s acknowledged %s as %s, but after a crash holds %s", sp.addr, id, want, got)
			return
		}
	}
	_ = sp.log.ScanTxns(func(t *txlog.PTxn) bool {
		w.observe(sp, t.ID)
		return len(w.violations) == 0
	})
}

func (sp *simPart) crash() {
	if !sp.up {
		return
	}
	clone := sp.fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0})
	sp.shutdown()
	sp.fs = clone
}

func (sp *simPart) shutdown() {
	if !sp.up {
		return
	}
	sp.p.Stop()
	_ = sp.log.Close()
	sp.up, sp.p, sp.svc, sp.log = false, nil, nil, nil
	sp.inc++
}

// recover runs one round of the SDK's own recovery.
func (sp *simPart) recover() {
	before := sp.p.InDoubt()
	if len(before) == 0 {
		return
	}
	sp.p.ResolveDue(context.Background())
	for _, t := range before {
		sp.w.observe(sp, t.ID)
	}
}

// simOutcomes answers a participant's outcome queries through a reachable
// leader's real Outcome service. Its answer arrives after the query
// returns, so the query says "ask again" and a later one gets the answer.
type simOutcomes struct{ sp *simPart }

func (o simOutcomes) Outcome(_ context.Context, id string, parts []string) (decreev1.TxnState, error) {
	sp := o.sp
	w := sp.w
	if st, ok := sp.answers[id]; ok {
		return st, nil
	}
	sp.lastAsked++
	for k := range w.nodes {
		n := w.nodes[(sp.lastAsked+k)%len(w.nodes)]
		if !n.up || n.paused || w.cut[[2]string{sp.name, n.name}] || w.cut[[2]string{n.name, sp.name}] || !n.leader {
			continue
		}
		// One query in flight at a time; one that got no answer (its node
		// crashed, the message was lost) is sent again after a while.
		if at, ok := sp.asking[id]; !ok || w.now.Sub(at) >= simCallTimeout {
			sp.asking[id] = w.now
			inc, pinc := n.inc, sp.inc
			w.at(time.Millisecond, func() {
				n.run(inc, func() {
					n.drv.serveOutcome(context.Background(), &decreev1.OutcomeRequest{TxnId: id, Participants: parts}, func(resp *decreev1.OutcomeResponse, err error) {
						if sp.inc != pinc {
							return // the participant restarted meanwhile
						}
						delete(sp.asking, id)
						if err != nil {
							return
						}
						switch st := resp.GetState(); st {
						case decreev1.TxnState_TXN_STATE_FORGOTTEN:
							w.noteForgotten(n, id, sp.addr)
							sp.answers[id] = st
						case decreev1.TxnState_TXN_STATE_COMMITTED, decreev1.TxnState_TXN_STATE_ABORTED:
							w.noteDecision(id, outcomeOfState(st), fmt.Sprintf("n%d answered %s", n.id, sp.addr))
							sp.answers[id] = st
						}
					})
				})
			})
		}
		return 0, errSimInProgress
	}
	return 0, errSimNotLeader
}

func outcomeOfState(st decreev1.TxnState) decreev1.Outcome {
	switch st {
	case decreev1.TxnState_TXN_STATE_COMMITTED:
		return decreev1.Outcome_OUTCOME_COMMITTED
	case decreev1.TxnState_TXN_STATE_ABORTED:
		return decreev1.Outcome_OUTCOME_ABORTED
	default:
		return decreev1.Outcome_OUTCOME_UNSPECIFIED
	}
}

type simClock struct{ w *world }

func (c simClock) Now() time.Time                       { return c.w.now }
func (c simClock) After(time.Duration) <-chan time.Time { return nil }
func (c simClock) NewTicker(time.Duration) (<-chan time.Time, func()) {
	panic("the simulated participant does not tick")
}

// simResource stages "set k=v" and applies it on commit; "no" votes NO and
// "ro" votes READ_ONLY.
type simResource struct{}

func (simResource) Prepare(_ context.Context, txn participant.Txn, w participant.Writer) (participant.Vote, string, error) {
	switch p := string(txn.Payload); {
	case p == "no":
		return participant.VoteNo, "refused", nil
	case p == "ro":
		return participant.VoteReadOnly, "", nil
	case strings.HasPrefix(p, "set "):
		w.Set([]byte("pending/"+txn.ID), []byte(strings.TrimPrefix(p, "set ")))
		return participant.VoteYes, "", nil
	default:
		return 0, "", fmt.Errorf("bad payload %q", p)
	}
}

func (simResource) Commit(_ context.Context, id string, w participant.Writer) error {
	kv, ok, err := w.Get([]byte("pending/" + id))
	if err != nil || !ok {
		return fmt.Errorf("commit %s: nothing pending", id)
	}
	k, v, _ := strings.Cut(string(kv), "=")
	if _, done, _ := w.Get([]byte("data/" + k)); done {
		return fmt.Errorf("commit %s: %s applied twice", id, k)
	}
	w.Set([]byte("data/"+k), []byte(v))
	w.Delete([]byte("pending/" + id))
	return nil
}

func (simResource) Abort(_ context.Context, id string, w participant.Writer) error {
	w.Delete([]byte("pending/" + id))
	return nil
}

// simClient runs transactions one after another: Commit at a random node,
// retried on errors; after its patience runs out it gives up on Commit and
// asks Outcome until it gets a definitive answer.
type simClient struct {
	w       *world
	name    string
	txn     *simTxn
	asking  bool // gave up on Commit; asking Outcome
	attempt int
	done    bool
}

func (c *simClient) next() {
	w := c.w
	if !w.now.Before(w.activeEnd) {
		c.done, c.txn = true, nil
		return
	}
	if w.rng.Float64() < simListEvery {
		c.listUnfinished()
	}
	if len(w.told) > 0 && w.rng.Float64() < simLateDuplicates {
		c.lateDuplicate()
	}
	c.maybeBad()
	c.txn, c.asking = w.newTxn(), false
	w.tracef("%s begins %s %v %v", c.name, c.txn.id, c.txn.parts, c.txn.payloads)
	txn := c.txn
	patience := time.Duration(50+w.rng.IntN(1500)) * time.Millisecond
	w.at(patience, func() {
		if c.txn == txn && !c.asking {
			c.asking = true
			w.fault("client-give-up", "%s stops waiting for %s and asks its outcome", c.name, txn.id)
		}
	})
	c.issue()
}

func (c *simClient) issue() {
	w := c.w
	c.attempt++
	attempt, txn := c.attempt, c.txn
	n := w.nodes[w.rng.IntN(len(w.nodes))]
	answer := func(st decreev1.TxnState, reason string, err error) {
		if err != nil {
			// What the gRPC handler answers the client.
			err = n.drv.statusOf(context.Background(), err)
		}
		if st == decreev1.TxnState_TXN_STATE_FORGOTTEN || status.Code(err) == codes.FailedPrecondition {
			w.noteForgotten(n, txn.id, c.name)
			st, err = decreev1.TxnState_TXN_STATE_FORGOTTEN, nil
		}
		w.send(n.name, c.name, func() { c.answer(txn, attempt, st, reason, err) }, nil)
	}
	asking := c.asking
	w.send(c.name, n.name, func() {
		if !n.up {
			w.send(n.name, c.name, func() { c.answer(txn, attempt, 0, "", errSimRefused) }, nil)
			return
		}
		n.run(n.inc, func() {
			if asking {
				req := txn.outcomeRequest()
				if len(req.Participants) > 1 && w.rng.Float64() < simPartialQueries {
					// An operator's `decree txn outcome` naming only
					// one of the participants.
					req.Participants = []string{req.Participants[w.rng.IntN(len(req.Participants))]}
					w.fault("partial-outcome-query", "%s asks the outcome of %s naming only %s", c.name, txn.id, req.Participants[0])
				}
				n.drv.serveOutcome(context.Background(), req, func(r *decreev1.OutcomeResponse, err error) {
					answer(r.GetState(), r.GetReason(), err)
				})
				return
			}
			n.drv.serveCommit(context.Background(), txn.commitRequest(), func(r *decreev1.CommitResponse, err error) {
				answer(r.GetState(), r.GetReason(), err)
			})
		})
	}, nil)
	w.at(simCallTimeout+100*time.Millisecond, func() {
		if c.txn == txn && c.attempt == attempt {
			c.issue()
		}
	})
}

// simPartialQueries is how often a client that asks a transaction's
// outcome names only one of its participants, as an operator may: the
// cluster must never decide a transaction by such a list (a staged one is
// decided by all its participants' votes).
const simPartialQueries = 0.25

// simLateDuplicates is how often a client's network delivers, late, a
// copy of one of its earlier Commit requests.
const simLateDuplicates = 0.2

// lateDuplicate sends the Commit of an earlier, answered transaction again,
// as a network that duplicates a request and delivers the copy late would
// (or a client retrying from a stale queue). The answer must agree with
// the decision; an id older than the retention horizon must be refused,
// never voted again.
func (c *simClient) lateDuplicate() {
	w := c.w
	told := sortedKeys(w.told)
	t := w.txns[told[w.rng.IntN(len(told))]]
	n := w.nodes[w.rng.IntN(len(w.nodes))]
	w.tracef("%s: a late copy of the commit of %s reaches n%d", c.name, t.id, n.id)
	w.send(c.name, n.name, func() {
		if !n.up {
			return
		}
		n.run(n.inc, func() {
			n.drv.serveCommit(context.Background(), t.commitRequest(), func(r *decreev1.CommitResponse, err error) {
				switch {
				case errors.Is(err, twopc.ErrForgotten):
					w.noteForgotten(n, t.id, c.name)
				case err == nil:
					w.noteTold(t.id, outcomeOfState(r.GetState()))
				}
			})
		})
	}, nil)
}

func (t *simTxn) commitRequest() *decreev1.CommitRequest {
	req := &decreev1.CommitRequest{TxnId: t.id}
	for i, p := range t.parts {
		req.Branches = append(req.Branches, &decreev1.Branch{Participant: p, Payload: []byte(t.payloads[i])})
	}
	return req
}

func (t *simTxn) outcomeRequest() *decreev1.OutcomeRequest {
	return &decreev1.OutcomeRequest{TxnId: t.id, Participants: t.parts}
}

// simListEvery is how often a client lists the unfinished transactions
// instead of starting one, at a node that may forward it to the leader.
const simListEvery = 0.05

// listUnfinished asks a node for the unfinished transactions: every
// decided one listed must agree with the world's decisions.
func (c *simClient) listUnfinished() {
	w := c.w
	n := w.nodes[w.rng.IntN(len(w.nodes))]
	w.send(c.name, n.name, func() {
		if !n.up {
			return
		}
		n.run(n.inc, func() {
			req := &decreev1.ListTransactionsRequest{Filter: decreev1.TxnFilter_TXN_FILTER_UNFINISHED}
			n.drv.serveList(context.Background(), req, func(r *decreev1.ListTransactionsResponse, err error) {
				for _, t := range r.GetTxns() {
					w.noteDecision(t.GetTxnId(), outcomeOfState(t.GetState()), fmt.Sprintf("listed by n%d", n.id))
				}
			})
		})
	}, nil)
}

func (t *simTxn) branches() []twopc.BranchSpec {
	bs := make([]twopc.BranchSpec, len(t.parts))
	for i, p := range t.parts {
		bs[i] = twopc.BranchSpec{Participant: p, Payload: []byte(t.payloads[i])}
	}
	return bs
}

func (c *simClient) answer(txn *simTxn, attempt int, st decreev1.TxnState, reason string, err error) {
	w := c.w
	o := outcomeOfState(st)
	if c.txn != txn {
		// A late answer to a finished transaction must still agree.
		if err == nil && st != decreev1.TxnState_TXN_STATE_FORGOTTEN {
			w.noteTold(txn.id, o)
		}
		return
	}
	if err != nil && attempt != c.attempt {
		return // a newer attempt is in flight; one retry chain per client
	}
	if st == decreev1.TxnState_TXN_STATE_FORGOTTEN {
		// A definitive answer: the transaction is older than the
		// retention horizon. The client learns no outcome.
		c.txn = nil
		w.at(time.Duration(w.rng.IntN(20))*time.Millisecond, c.next)
		return
	}
	if err != nil {
		w.at(time.Duration(5+w.rng.IntN(30))*time.Millisecond, func() {
			if c.txn == txn {
				c.issue()
			}
		})
		return
	}
	w.noteTold(txn.id, o)
	c.txn = nil
	w.at(time.Duration(w.rng.IntN(20))*time.Millisecond, c.next)
}

// newTxn draws a transaction over 1 to 3 participants (one-phase with 1).
func (w *world) newTxn() *simTxn {
	w.nextTxn++
	ms := w.now.UnixMilli()
	id := fmt.Sprintf("%08x-%04x-7%03x-8%03x-%012x", uint32(ms>>16), uint16(ms), w.seed&0xfff, w.nextTxn&0xfff, w.nextTxn)
	k := 1 + w.rng.IntN(len(w.parts))
	order := w.rng.Perm(len(w.parts))
	t := &simTxn{id: id}
	for _, i := range order[:k] {
		payload := fmt.Sprintf("set %s=%d", id, i)
		switch r := w.rng.Float64(); {
		case r < w.plan.noPct:
			payload = "no"
		case r < w.plan.noPct+w.plan.readOnlyPct:
			payload = "ro"
		}
		t.parts = append(t.parts, w.parts[i].addr)
		t.payloads = append(t.payloads, payload)
	}
	w.txns[id] = t
	return t
}
