package coordinator

// Three more kinds of behaviour the simulated world produces, each checked:
//
//   - Bad clients: in some seeds, clients now and then send a malformed
//     request (README.md's table "What a node does with bad input") to a
//     random node through the real entry points. Each must be refused with
//     InvalidArgument where it arrived, at once, and nothing may be decided
//     or prepared for its id.
//   - An overloaded leader: in some seeds the core's admission limits are
//     small, so concurrent clients are refused with ResourceExhausted and
//     retry. A refused transaction must have started nothing: no prepare
//     for it leaves the node that refused it until a new request for it
//     arrives there.
//   - A participant from an older SDK: in some seeds one participant serves
//     only the unary methods. Its Calls streams fail with Unimplemented,
//     the production mux falls back to unary calls, and every invariant
//     must still hold; only that participant may get unary calls.
//
// What these actors draw comes from a random stream of their own, so the
// rest of a seed's schedule does not shift with them (the overloaded leader
// and the old participant do change what happens, by design).

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/decree-tx/decree/coordinator/internal/partcall"
	"github.com/decree-tx/decree/coordinator/internal/twopc"
	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
	"github.com/decree-tx/decree/txlog"
)

// The request limits of every simulated node: small, so that bad clients
// can exceed them cheaply, and above what a correct client sends (at most
// three branches; payloads "set <id>=<i>" of 42 bytes).
const (
	simMaxBranches = 4
	simMaxPayload  = 64
)

// actorPlan is what a seed's new actors do.
type actorPlan struct {
	// bad is the chance that a client sends a malformed request before
	// each transaction; 0 in half the seeds.
	bad float64
	// maxInFlight and maxHeldBytes are the core's admission limits; 0:
	// the defaults (no overload).
	maxInFlight  int
	maxHeldBytes int64
	// oldSDK is the index of the participant that serves only the unary
	// methods; -1: none.
	oldSDK int
}

func (p actorPlan) String() string {
	var s []string
	if p.bad > 0 {
		s = append(s, fmt.Sprintf("bad clients %.2f", p.bad))
	}
	if p.maxInFlight > 0 {
		s = append(s, fmt.Sprintf("admission limits %d in flight, %d bytes held", p.maxInFlight, p.maxHeldBytes))
	}
	if p.oldSDK >= 0 {
		s = append(s, fmt.Sprintf("p%d serves unary calls only", p.oldSDK+1))
	}
	if len(s) == 0 {
		return ""
	}
	return ", " + strings.Join(s, ", ")
}

// actorState is the world's record of the new actors.
type actorState struct {
	rng *rand.Rand
	// bad holds the ids of malformed requests, with their kind: none may
	// ever be prepared or decided.
	bad     map[string]string
	nextBad int
	// unary counts the unary calls each participant got.
	unary map[string]int
}

// drawActors draws the seed's actor plan from a stream of its own.
func (w *world) drawActors() actorPlan {
	w.actors = actorState{
		rng: rand.New(rand.NewPCG(w.seed^0x616374, 0x6f7273)), bad: map[string]string{}, unary: map[string]int{},
	}
	r := w.actors.rng
	p := actorPlan{bad: []float64{0, 0, 0.05, 0.2}[r.IntN(4)], oldSDK: -1}
	if r.IntN(3) == 0 {
		p.maxInFlight = 1 + r.IntN(3)
		p.maxHeldBytes = int64(50 + r.IntN(150))
	}
	if r.IntN(3) == 0 {
		p.oldSDK = r.IntN(3)
	}
	return p
}

// setupActors marks the old participant, once the participants exist.
func (w *world) setupActors() {
	if i := w.plan.actors.oldSDK; i >= 0 && i < len(w.parts) {
		w.parts[i].oldSDK = true
	}
}

// --- Bad clients ---

// badRequest is one malformed request: its kind, the id it carries (for
// the checks), and how to send it to a node's Driver.
type badRequest struct {
	kind  string
	id    string
	serve func(d *Driver, done func(error))
}

// maybeBad has the client send a malformed request, at the seed's rate.
func (c *simClient) maybeBad() {
	w := c.w
	if p := w.plan.actors.bad; p == 0 || w.actors.rng.Float64() >= p {
		return
	}
	r := w.actors.rng
	b := w.badRequest()
	w.actors.bad[b.id] = b.kind
	w.faults[b.kind]++
	n := w.nodes[r.IntN(len(w.nodes))]
	w.tracef("%s sends n%d a malformed request (%s, id %q)", c.name, n.id, b.kind, b.id)
	if w.cut[[2]string{c.name, n.name}] {
		return
	}
	w.at(200*time.Microsecond+time.Duration(r.Int64N(int64(w.plan.maxDelay))), func() {
		if w.cut[[2]string{c.name, n.name}] || !n.up {
			return
		}
		n.run(n.inc, func() {
			answered := false
			b.serve(n.drv, func(err error) {
				answered = true
				err = n.drv.statusOf(context.Background(), err)
				if status.Code(err) != codes.InvalidArgument {
					w.violate("n%d answered a malformed request (%s, id %q) with %v, not InvalidArgument", n.id, b.kind, b.id, err)
				}
			})
			if !answered {
				w.violate("n%d did not refuse a malformed request (%s, id %q) where it arrived", n.id, b.kind, b.id)
			}
		})
	})
}

// badRequest draws one malformed request.
func (w *world) badRequest() badRequest {
	r := w.actors.rng
	id := w.badID()
	good := []string{w.parts[0].addr, w.parts[1].addr, w.parts[2].addr}
	r.Shuffle(len(good), func(i, j int) { good[i], good[j] = good[j], good[i] })
	commit := func(kind, id string, parts []string, payloads ...string) badRequest {
		req := &decreev1.CommitRequest{TxnId: id}
		for i, p := range parts {
			pl := "set " + id + "=0"
			if i < len(payloads) {
				pl = payloads[i]
			}
			req.Branches = append(req.Branches, &decreev1.Branch{Participant: p, Payload: []byte(pl)})
		}
		return badRequest{kind: kind, id: id, serve: func(d *Driver, done func(error)) {
			d.serveCommit(context.Background(), req, func(_ *decreev1.CommitResponse, err error) { done(err) })
		}}
	}
	outcome := func(kind, id string, parts []string) badRequest {
		req := &decreev1.OutcomeRequest{TxnId: id, Participants: parts}
		return badRequest{kind: kind, id: id, serve: func(d *Driver, done func(error)) {
			d.serveOutcome(context.Background(), req, func(_ *decreev1.OutcomeResponse, err error) { done(err) })
		}}
	}
	badAddrs := []string{"p1", "p1:", ":1", "p1:0", "p1:65536", "p1:x", "p\x00:1", "p 1:1", "p1:1\n", "p\x7f:1"}
	switch r.IntN(8) {
	case 0:
		bad := w.malformedID(id)
		if r.IntN(2) == 0 {
			return commit("bad-id", bad, good[:1+r.IntN(3)])
		}
		return outcome("bad-id", bad, good[:r.IntN(4)])
	case 1:
		return commit("bad-no-branches", id, nil)
	case 2:
		parts := append(good, "p4:1", "p5:1", "p6:1", "p7:1")[:simMaxBranches+1+r.IntN(3)]
		return commit("bad-too-many-branches", id, parts)
	case 3:
		parts := good[:1+r.IntN(3)]
		payloads := make([]string, len(parts))
		for i := range payloads {
			payloads[i] = "set " + id + "=0"
		}
		payloads[r.IntN(len(parts))] = "set " + id + "=" + strings.Repeat("x", simMaxPayload+r.IntN(100))
		return commit("bad-payload", id, parts, payloads...)
	case 4:
		parts := good[:1+r.IntN(3)]
		parts = append(parts, parts[r.IntN(len(parts))])
		r.Shuffle(len(parts), func(i, j int) { parts[i], parts[j] = parts[j], parts[i] })
		return commit("bad-duplicate-participant", id, parts)
	case 5:
		parts := good[:1+r.IntN(3)]
		parts[r.IntN(len(parts))] = badAddrs[r.IntN(len(badAddrs))]
		return commit("bad-address", id, parts)
	case 6:
		f := decreev1.TxnFilter(5 + r.IntN(1000))
		if r.IntN(4) == 0 {
			f = decreev1.TxnFilter(-1 - r.IntN(1000))
		}
		return badRequest{kind: "bad-list-filter", id: fmt.Sprintf("(list filter %d)", f), serve: func(d *Driver, done func(error)) {
			d.serveList(context.Background(), &decreev1.ListTransactionsRequest{Filter: f}, func(_ *decreev1.ListTransactionsResponse, err error) { done(err) })
		}}
	default:
		var parts []string
		switch r.IntN(3) {
		case 0:
			parts = append(good[:1+r.IntN(3)], good[0])
		case 1:
			parts = append(good[:r.IntN(3)], badAddrs[r.IntN(len(badAddrs))])
		default:
			parts = append(good, "p4:1", "p5:1", "p6:1")
		}
		return outcome("bad-outcome-participants", id, parts)
	}
}

// badID is a fresh, well-formed UUIDv7 for a malformed request: its fourth
// group starts with b, so it never collides with a transaction's (newTxn's
// start with 8).
func (w *world) badID() string {
	w.actors.nextBad++
	ms, n := w.now.UnixMilli(), w.actors.nextBad
	return fmt.Sprintf("%08x-%04x-7%03x-b%03x-%012x", uint32(ms>>16), uint16(ms), w.seed&0xfff, n&0xfff, n)
}

// malformedID spoils a good id: empty, not hex, not canonical (no hyphens,
// braces, a hyphen moved, a URN), not version 7, not RFC 9562's variant,
// or with a control character.
func (w *world) malformedID(id string) string {
	r := w.actors.rng
	switch r.IntN(9) {
	case 0:
		return ""
	case 1:
		return "not-a-uuid"
	case 2:
		return strings.ReplaceAll(id, "-", "")
	case 3:
		return "{" + id + "}"
	case 4:
		return id[:7] + "-" + id[7:8] + id[9:] // the first hyphen one place early
	case 5:
		return "urn:uuid:" + id
	case 6:
		return id[:14] + "4" + id[15:] // UUIDv4
	case 7:
		return id[:19] + "c" + id[20:] // variant 110
	default:
		i := r.IntN(len(id))
		return id[:i] + "\x01" + id[i+1:]
	}
}

// checkNotBad fails the run if the id of a malformed request was decided
// or prepared.
func (w *world) checkNotBad(id, what string) {
	if kind, ok := w.actors.bad[id]; ok {
		w.violate("%s for %s, the id of a malformed request (%s) that was refused", what, id, kind)
	}
}

// --- An overloaded leader ---

// onAction sees every action of sn's core. A transaction refused for
// overload is watched: no prepare for it may leave sn until a later
// request for it reaches sn (noteAsked).
func (sn *simNode) onAction(a twopc.Action) {
	r, ok := a.(twopc.Reply)
	if !ok || !errors.Is(r.Err, twopc.ErrOverloaded) {
		return
	}
	sn.w.fault("overloaded", "n%d refuses %s: %v", sn.id, r.ID, r.Err)
	if sn.askedReq[r.ID] <= r.Req {
		sn.refused[r.ID] = r.Req
	}
}

// noteAsked: a request for id reaches sn's core (the Driver reads its
// record just before it submits the request, which takes the next request
// number).
func (sn *simNode) noteAsked(id string) {
	if sn.drv == nil {
		return
	}
	sn.askedReq[id] = sn.drv.nextReq.Load() + 1
	delete(sn.refused, id)
}

// --- A participant from an older SDK ---

// leaving checks a call as it leaves sn, by stream or unary: a prepare of
// a transaction older than the retention horizon, refused for overload
// with no request since, or of a malformed request's id, is a violation;
// a decision is noted.
func (c simCalls) leaving(call *decreev1.Call) {
	sn, w := c.sn, c.sn.w
	if p := call.GetPrepare(); p != nil {
		id := p.GetTxnId()
		if isForgotten(id, sn.node.horizon.Load()) {
			w.violate("n%d prepares %s, older than its retention horizon: a forgotten transaction must never be voted again", sn.id, id)
		}
		if req, ok := sn.refused[id]; ok {
			w.violate("n%d prepares %s, which it refused for overload (request %d) and was not asked again", sn.id, id, req)
		}
		w.checkNotBad(id, fmt.Sprintf("n%d prepares", sn.id))
	}
	if k, ok := call.GetKind().(*decreev1.Call_Commit); ok {
		w.noteDecision(k.Commit.GetTxnId(), decreev1.Outcome_OUTCOME_COMMITTED, fmt.Sprintf("n%d delivering", sn.id))
	} else if k, ok := call.GetKind().(*decreev1.Call_Abort); ok {
		w.noteDecision(k.Abort.GetTxnId(), decreev1.Outcome_OUTCOME_ABORTED, fmt.Sprintf("n%d delivering", sn.id))
	}
}

// unimplemented ends a Calls stream to a participant that does not serve
// it, as gRPC does: the stream opened, and its first reply is the status
// Unimplemented.
func (s *simStream) unimplemented() {
	sn, w := s.c.sn, s.c.sn.w
	w.faults["calls-unimplemented"]++
	s.transmit(s.p.name, sn.name, &s.toNode, func() {
		sn.run(s.c.inc, func() {
			if s.err == nil {
				s.err = status.Error(codes.Unimplemented, "unknown method Calls for service decree.v1.Participant")
			}
		})
	})
}

// simUnary is a participant's unary methods as a node reaches them over
// the simulated network. The stepped mux makes a unary call and takes its
// answer at once, so the call and its answer travel without delay; a
// participant that is down, a cut link or a lost message fail it with
// Unavailable (the request or the answer lost, the participant may have
// served it).
type simUnary struct {
	c simCalls
	p *simPart
}

var _ partcall.UnaryParticipant = simUnary{}

func (u simUnary) call(c *decreev1.Call) (*decreev1.Reply, error) {
	sn, w, p := u.c.sn, u.c.sn.w, u.p
	if !p.oldSDK {
		w.violate("n%d makes a unary call to %s, which serves Calls", sn.id, p.addr)
	}
	u.c.leaving(c)
	lost := func() bool { return w.faultsOn && w.rng.Float64() < w.plan.drop }
	if !p.up || w.cut[[2]string{sn.name, p.name}] || lost() {
		return nil, status.Errorf(codes.Unavailable, "sim: %s cannot be reached", p.addr)
	}
	w.faults["unary-call"]++
	w.actors.unary[p.addr]++
	r, err := p.serve(c)
	if !p.up || w.cut[[2]string{p.name, sn.name}] || lost() {
		return nil, status.Errorf(codes.Unavailable, "sim: the answer of %s was lost", p.addr)
	}
	return r, err
}

func (u simUnary) Prepare(_ context.Context, req *decreev1.PrepareRequest) (*decreev1.PrepareResponse, error) {
	r, err := u.call(&decreev1.Call{Kind: &decreev1.Call_Prepare{Prepare: req}})
	return r.GetPrepare(), err
}

func (u simUnary) Commit(_ context.Context, req *decreev1.DecisionRequest) (*decreev1.DecisionResponse, error) {
	r, err := u.call(&decreev1.Call{Kind: &decreev1.Call_Commit{Commit: req}})
	return r.GetDecision(), err
}

func (u simUnary) Abort(_ context.Context, req *decreev1.DecisionRequest) (*decreev1.DecisionResponse, error) {
	r, err := u.call(&decreev1.Call{Kind: &decreev1.Call_Abort{Abort: req}})
	return r.GetDecision(), err
}

func (u simUnary) Resolve(_ context.Context, req *decreev1.ResolveRequest) (*decreev1.ResolveResponse, error) {
	r, err := u.call(&decreev1.Call{Kind: &decreev1.Call_Resolve{Resolve: req}})
	return r.GetResolve(), err
}

// checkActors, after quiescence: no malformed request's id is held by a
// replica or a participant, and a participant from an older SDK that holds
// transactions got them by unary calls.
func (w *world) checkActors(table map[string]*txlog.Record) {
	for _, id := range sortedKeys(w.actors.bad) {
		if _, ok := table[id]; ok {
			w.violate("the replicas hold %s, the id of a malformed request (%s)", id, w.actors.bad[id])
			return
		}
		for _, p := range w.parts {
			if _, ok, _ := p.log.GetTxn(id); ok {
				w.violate("%s holds %s, the id of a malformed request (%s)", p.addr, id, w.actors.bad[id])
				return
			}
		}
	}
	for _, p := range w.parts {
		if p.oldSDK && len(w.partState[p.addr]) > 0 && w.actors.unary[p.addr] == 0 {
			w.violate("%s serves only unary calls and holds %d transactions, but got no unary call", p.addr, len(w.partState[p.addr]))
		}
	}
}
