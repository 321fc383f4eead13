package twopc

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"

	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
)

// TestCoreData runs the protocol scenarios of testdata/core: each file is
// a script of events fed to one Core, with the actions each produces, so a
// scenario is read and reviewed as text, like etcd raft's interaction
// tests. The commands are described in coreEnv.handle.
//
// If a file fails after an intended change of the core, run
//
//	go test ./coordinator -run TestCoreData -rewrite
//
// and read the diff of testdata/core before committing it: the diff is
// the behaviour change.
func TestCoreData(t *testing.T) {
	datadriven.Walk(t, "testdata", func(t *testing.T, path string) {
		env := newCoreEnv(Config{Rand: noJitter})
		datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
			return env.handle(t, d)
		})
	})
}

// noJitter makes every retry wait its full delay.
func noJitter() float64 { return 0 }

// coreEnv holds the core under test and its clock. Time starts at the
// Unix epoch, so every time printed is an offset from the start of the
// script (or of its last config command).
type coreEnv struct {
	core  *Core
	start time.Time
	now   time.Time
	req   uint64 // the last client request number handed out
}

func newCoreEnv(cfg Config) *coreEnv {
	start := time.Unix(0, 0)
	return &coreEnv{core: New(cfg), start: start, now: start}
}

// handle runs one command. Every command takes at=<duration>, which first
// moves the clock to that offset from the start (never backwards). Feedback
// events take term=<n>, defaulting to the core's current term; a smaller
// one plays a late answer to an earlier leadership.
func (e *coreEnv) handle(t *testing.T, d *datadriven.TestData) string {
	if arg, ok := d.Arg("at"); ok {
		at := e.start.Add(e.duration(t, d, arg.SingleVal(t)))
		if at.Before(e.now) {
			d.Fatalf(t, "at=%s is before the clock (%s)", arg.SingleVal(t), e.since(e.now))
		}
		e.now = at
	}
	var ev Event
	switch d.Cmd {
	case "config":
		// A fresh core, not leader, with the clock back at 0. Durations
		// and limits left out take the core's defaults.
		//
		//	config parallel prepare-timeout=1s retry-min=50ms retry-max=200ms
		//	  finish-batch=2 finish-delay=20ms retention=24h collect-every=1m
		//	  rescan-every=30s max-in-flight=1 max-held-bytes=100
		//	  jitter=0.5
		//
		// jitter fixes the retries' Rand: a delay d waits d - jitter·d/2.
		// Left out, it is 0: every delay is d, the un-jittered schedule.
		*e = *newCoreEnv(e.config(t, d))
		return "ok"
	case "become-leader", "become-follower":
		//	become-leader term=2
		var term uint64
		d.ScanArgs(t, "term", &term)
		ev = LeadershipChanged{Leader: d.Cmd == "become-leader", Term: term}
	case "commit":
		// A client's commit of transaction t1 with one branch per
		// participant; each payload is "x" unless bytes=<n> gives every
		// branch n bytes. req numbers the waiting caller (default: the
		// next number). What the log holds for the id: staged (a Staged
		// record of the branches' participants), logged=<outcome> (a
		// decision, with reason=...), forgotten (older than the horizon).
		//
		//	commit t1 branches=(a,b) req=1 bytes=150 staged
		ev = e.clientCommit(t, d)
	case "outcome":
		// A client's outcome query, naming participants; what the log
		// holds as for commit (staged records name the participants).
		//
		//	outcome t1 participants=(a,b) req=3 logged=committed
		id := e.pos(t, d, 0)
		parts := e.list(d, "participants")
		ev = ClientOutcome{Req: e.nextReq(t, d), ID: id, Participants: parts, Logged: e.logged(t, d, parts)}
	case "load-failed":
		//	load-failed err=timeout
		ev = LoadFailed{Term: e.term(t, d), Err: e.text(d, "err")}
	case "vote":
		// A participant's vote: yes, no, read-only or committed (the
		// answer to a one-phase prepare). pid is the participant identity.
		//
		//	vote t1 a no reason=(no funds) pid=P term=1
		id, p := e.txnAndParticipant(t, d)
		ev = VoteReceived{ID: id, Participant: p, Term: e.term(t, d), Vote: parseVote(t, d, e.pos(t, d, 2)),
			Reason: e.text(d, "reason"), ParticipantID: e.text(d, "pid")}
	case "prepare-failed":
		// A prepare without a usable answer; refused: no participant
		// service answers at that address.
		//
		//	prepare-failed t1 b err=(connection refused) refused
		id, p := e.txnAndParticipant(t, d)
		ev = PrepareFailed{ID: id, Participant: p, Term: e.term(t, d), Err: e.text(d, "err"), Refused: d.HasArg("refused")}
	case "resolved":
		// A participant's answer to Resolve: prepared, committed or
		// aborted; or err=<text> for a failed call (refused: no
		// participant service answers there).
		//
		//	resolved t9 a prepared pid=P
		//	resolved t9 b err=unavailable
		id, p := e.txnAndParticipant(t, d)
		r := ParticipantResolved{ID: id, Participant: p, Term: e.term(t, d), Err: e.text(d, "err"), ParticipantID: e.text(d, "pid"),
			Refused: d.HasArg("refused")}
		if r.Err == "" {
			r.State = parseParticipantState(t, d, e.pos(t, d, 2))
		}
		ev = r
	case "staged-applied":
		// The Staged record applied; outcome=<committed|aborted> says a
		// decision had applied first.
		//
		//	staged-applied t1 outcome=aborted reason=(presumed abort)
		ev = StagedApplied{ID: e.pos(t, d, 0), Term: e.term(t, d), Outcome: e.outcome(t, d), Reason: e.text(d, "reason")}
	case "recover-staged":
		//	recover-staged t9 participants=(a,b)
		ev = RecoverStaged{ID: e.pos(t, d, 0), Participants: e.list(d, "participants")}
	case "decision-applied":
		// The applied outcome of a Decide: committed, aborted, or
		// undecided (a presumed abort that met a staged record). The
		// participants default to the transaction's in the core.
		//
		//	decision-applied t1 aborted reason=(presumed abort) participants=(a,b)
		id := e.pos(t, d, 0)
		ev = DecisionApplied{ID: id, Term: e.term(t, d), Outcome: parseOutcome(t, d, e.pos(t, d, 1)),
			Reason: e.text(d, "reason"), Participants: e.participants(t, d, id)}
	case "propose-failed":
		// A proposal that did not apply: a Decide (or Staged) of t1, or
		// a batch of Finished ids; forgotten: the log refused the id as
		// older than the retention horizon.
		//
		//	propose-failed t1 err=timeout
		//	propose-failed finished=(t1,t2)
		pf := ProposeFailed{Term: e.term(t, d), Finished: e.list(d, "finished"), Err: e.text(d, "err"), Forgotten: d.HasArg("forgotten")}
		if pf.Finished == nil {
			pf.ID = e.pos(t, d, 0)
		}
		ev = pf
	case "ack":
		//	ack t1 a
		id, p := e.txnAndParticipant(t, d)
		ev = Acked{ID: id, Participant: p, Term: e.term(t, d)}
	case "delivery-failed":
		//	delivery-failed t1 a err=unavailable
		id, p := e.txnAndParticipant(t, d)
		ev = DeliveryFailed{ID: id, Participant: p, Term: e.term(t, d), Err: e.text(d, "err")}
	case "recovered":
		// What a new leader's scan found, one record a line: applied,
		// unfinished decisions (decided-at is an offset from the start)
		// and staged transactions without a decision.
		//
		//	recovered term=2
		//	decided t9 committed a b decided-at=-1h
		//	staged t10 a b
		ev = e.recovered(t, d)
	case "collect-applied":
		//	collect-applied more
		ev = CollectApplied{Term: e.term(t, d), More: d.HasArg("more")}
	case "tick":
		// The core's timer: voting deadlines, retries, Finished batches,
		// collection and rescans fall due.
		//
		//	tick at=5s
		ev = Tick{}
	case "state":
		// The core's soft state: its role, admission counters, the
		// Finished queue and every transaction.
		return e.state()
	case "backlog":
		// The transactions in phase 2, as the leader's status shows them.
		return e.backlog()
	default:
		d.Fatalf(t, "unknown command %q", d.Cmd)
	}
	return e.step(ev)
}

// step feeds one event to the core at the current time and prints the
// actions it produced, one a line.
func (e *coreEnv) step(ev Event) string {
	actions := e.core.Step(e.now, ev)
	if len(actions) == 0 {
		return "ok"
	}
	var b strings.Builder
	for _, a := range actions {
		b.WriteString(e.action(a))
		b.WriteByte('\n')
	}
	return b.String()
}

// action prints an action: its String, completed with what a proposal's
// String leaves out (its term), and with times as offsets from the start.
// An action this file does not know prints as its String.
func (e *coreEnv) action(a Action) string {
	switch a := a.(type) {
	case ProposeDecide:
		s := fmt.Sprintf("propose decide %s %s [%s] (term %d", a.ID, OutcomeWord(a.Outcome), strings.Join(a.Participants, " "), a.Term)
		if a.Presumed {
			s += ", presumed"
		}
		s += ")"
		if a.Reason != "" {
			s += ": " + a.Reason
		}
		return s
	case ProposeStaged:
		return fmt.Sprintf("propose staged %s [%s] (term %d)", a.ID, strings.Join(a.Participants, " "), a.Term)
	case ProposeFinished:
		return fmt.Sprintf("propose finished %s (term %d)", strings.Join(a.IDs, " "), a.Term)
	case ProposeCollect:
		return fmt.Sprintf("propose collect before %s (term %d)", e.since(time.Unix(0, a.Before)), a.Term)
	default:
		return a.String()
	}
}

// state prints the core's soft state. It reads the core's fields: it is
// the one place here that knows them.
func (e *coreEnv) state() string {
	c := e.core
	var b strings.Builder
	if c.leader {
		fmt.Fprintf(&b, "leader, term %d", c.term)
	} else {
		fmt.Fprintf(&b, "follower, term %d", c.term)
	}
	fmt.Fprintf(&b, "; %d in flight, %d payload bytes held\n", c.inFlight, c.heldBytes)
	if len(c.finishing) > 0 {
		fmt.Fprintf(&b, "finishing %s since %s\n", strings.Join(c.finishing, " "), e.since(c.finishSince))
	}
	for _, id := range c.sortedIDs() {
		e.txnState(&b, c.txns[id])
	}
	return b.String()
}

func (e *coreEnv) txnState(b *strings.Builder, t *coreTxn) {
	phase := map[txnPhase]string{phaseVoting: "voting", phaseResolving: "resolving", phaseRecovering: "recovering",
		phaseSettling: "settling", phaseDeciding: "deciding", phaseDelivering: "delivering"}[t.phase]
	if phase == "" {
		phase = fmt.Sprintf("phase(%d)", t.phase)
	}
	fmt.Fprintf(b, "%s: %s [%s]", t.id, phase, strings.Join(t.participants, " "))
	for _, f := range []struct {
		name string
		on   bool
	}{{"one-phase", t.onePhase}, {"parallel", t.parallel}, {"staged", t.staged}, {"presumed", t.presumed}, {"replied", t.replied}} {
		if f.on {
			b.WriteString(" " + f.name)
		}
	}
	b.WriteByte('\n')
	line := func(format string, args ...any) { fmt.Fprintf(b, "  "+format+"\n", args...) }
	switch t.phase {
	case phaseVoting:
		line("deadline %s", e.since(t.deadline))
	case phaseDeciding:
		line("proposed %s%s", OutcomeWord(t.proposed), reasonSuffix(t.reason))
	case phaseDelivering:
		line("outcome %s%s; decided at %s, %d sends", OutcomeWord(t.outcome), reasonSuffix(t.reason), e.since(t.decidedAt), t.sends)
	}
	if s := perParticipant(t.participants, t.votes, func(v decreev1.Vote) string { return enumWord(v.String(), "VOTE_") }); s != "" {
		line("votes %s", s)
	}
	if s := perParticipant(t.participants, t.resolved, func(st decreev1.ParticipantState) string {
		return enumWord(st.String(), "PARTICIPANT_STATE_")
	}); s != "" {
		line("resolved %s", s)
	}
	if t.failure != "" {
		line("failure: %s", t.failure)
	}
	if t.retry.armed {
		line("retry at %s (backoff %s)", e.since(t.retry.due), e.core.retry.Base(t.retry.attempts))
	}
	if len(t.waiters) > 0 {
		reqs := make([]string, len(t.waiters))
		for i, r := range t.waiters {
			reqs[i] = strconv.FormatUint(r, 10)
		}
		line("waiters %s", strings.Join(reqs, " "))
	}
	for _, p := range t.participants {
		dl, ok := t.deliveries[p]
		if !ok {
			continue
		}
		switch dl.state {
		case deliveryInFlight:
			line("%s: in flight", p)
		case deliveryWaiting:
			line("%s: retry at %s (backoff %s)", p, e.since(dl.retry.due), e.core.retry.Base(dl.retry.attempts))
		case deliveryAcked:
			line("%s: acked", p)
		}
	}
}

func (e *coreEnv) backlog() string {
	txns := e.core.Phase2Backlog()
	if len(txns) == 0 {
		return "empty"
	}
	var b strings.Builder
	for _, t := range txns {
		fmt.Fprintf(&b, "%s: age %s, %d sends\n", t.ID, t.Age, t.Sends)
	}
	return b.String()
}

func (e *coreEnv) since(at time.Time) string { return at.Sub(e.start).String() }

func reasonSuffix(reason string) string {
	if reason == "" {
		return ""
	}
	return ": " + reason
}

// perParticipant prints a per-participant map in the transaction's
// participant order: "a=yes b=no".
func perParticipant[V any](parts []string, m map[string]V, word func(V) string) string {
	var out []string
	for _, p := range parts {
		if v, ok := m[p]; ok {
			out = append(out, p+"="+word(v))
		}
	}
	return strings.Join(out, " ")
}

// enumWord turns a proto enum name into the word the files use:
// VOTE_READ_ONLY is read-only.
func enumWord(name, prefix string) string {
	return strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(name, prefix)), "_", "-")
}

// enumValue is the inverse of enumWord.
func enumValue(t *testing.T, d *datadriven.TestData, values map[string]int32, prefix, word string) int32 {
	v, ok := values[prefix+strings.ReplaceAll(strings.ToUpper(word), "-", "_")]
	if !ok {
		d.Fatalf(t, "unknown %s%q", strings.ToLower(prefix), word)
	}
	return v
}

func parseVote(t *testing.T, d *datadriven.TestData, word string) decreev1.Vote {
	return decreev1.Vote(enumValue(t, d, decreev1.Vote_value, "VOTE_", word))
}

func parseParticipantState(t *testing.T, d *datadriven.TestData, word string) decreev1.ParticipantState {
	return decreev1.ParticipantState(enumValue(t, d, decreev1.ParticipantState_value, "PARTICIPANT_STATE_", word))
}

// parseOutcome reads committed, aborted or undecided (the printed words).
func parseOutcome(t *testing.T, d *datadriven.TestData, word string) decreev1.Outcome {
	for _, o := range []decreev1.Outcome{decreev1.Outcome_OUTCOME_COMMITTED, decreev1.Outcome_OUTCOME_ABORTED, decreev1.Outcome_OUTCOME_UNSPECIFIED} {
		if OutcomeWord(o) == word {
			return o
		}
	}
	d.Fatalf(t, "unknown outcome %q (committed, aborted or undecided)", word)
	return 0
}

func (e *coreEnv) config(t *testing.T, d *datadriven.TestData) Config {
	cfg := Config{Rand: noJitter}
	durations := map[string]*time.Duration{"prepare-timeout": &cfg.PrepareTimeout, "retry-min": &cfg.RetryMin,
		"retry-max": &cfg.RetryMax, "finish-delay": &cfg.FinishDelay, "retention": &cfg.Retention,
		"collect-every": &cfg.CollectEvery, "rescan-every": &cfg.RescanEvery}
	for _, arg := range d.CmdArgs {
		switch {
		case durations[arg.Key] != nil:
			*durations[arg.Key] = e.duration(t, d, arg.SingleVal(t))
		case arg.Key == "parallel":
			cfg.ParallelCommit = true
		case arg.Key == "finish-batch":
			arg.Scan(t, 0, &cfg.FinishBatch)
		case arg.Key == "max-in-flight":
			arg.Scan(t, 0, &cfg.MaxInFlight)
		case arg.Key == "max-held-bytes":
			arg.Scan(t, 0, &cfg.MaxHeldBytes)
		case arg.Key == "jitter":
			var r float64
			arg.Scan(t, 0, &r)
			if r < 0 || r >= 1 {
				d.Fatalf(t, "config: jitter=%v is not in [0, 1)", r)
			}
			cfg.Rand = func() float64 { return r }
		default:
			d.Fatalf(t, "config: unknown argument %q", arg.Key)
		}
	}
	return cfg
}

// nextReq is the req argument, or the next request number.
func (e *coreEnv) nextReq(t *testing.T, d *datadriven.TestData) uint64 {
	var req uint64
	if !d.MaybeScanArgs(t, "req", &req) {
		req = e.req + 1
	}
	e.req = max(e.req, req)
	return req
}

// logged reads what the log holds for a request's id: staged,
// logged=<outcome> reason=..., or forgotten.
func (e *coreEnv) logged(t *testing.T, d *datadriven.TestData, parts []string) Logged {
	var l Logged
	switch {
	case d.HasArg("staged"):
		l = Logged{Found: true, Participants: parts}
	case d.HasArg("logged"):
		var o string
		d.ScanArgs(t, "logged", &o)
		l = Logged{Found: true, Outcome: parseOutcome(t, d, o), Reason: e.text(d, "reason"), Participants: parts}
	}
	l.Forgotten = d.HasArg("forgotten")
	return l
}

func (e *coreEnv) clientCommit(t *testing.T, d *datadriven.TestData) ClientCommit {
	cc := ClientCommit{ID: e.pos(t, d, 0), Req: e.nextReq(t, d)}
	payload := []byte("x")
	if arg, ok := d.Arg("bytes"); ok {
		var n int
		arg.Scan(t, 0, &n)
		payload = make([]byte, n)
	}
	parts := e.list(d, "branches")
	for _, p := range parts {
		cc.Branches = append(cc.Branches, BranchSpec{Participant: p, Payload: payload})
	}
	cc.Logged = e.logged(t, d, parts)
	return cc
}

func (e *coreEnv) recovered(t *testing.T, d *datadriven.TestData) Recovered {
	r := Recovered{Term: e.term(t, d)}
	for _, l := range strings.Split(d.Input, "\n") {
		f := strings.Fields(l)
		if len(f) == 0 {
			continue
		}
		switch {
		case f[0] == "decided" && len(f) >= 4:
			rt := RecoveredTxn{ID: f[1], Outcome: parseOutcome(t, d, f[2])}
			for _, p := range f[3:] {
				if at, ok := strings.CutPrefix(p, "decided-at="); ok {
					rt.DecidedAt = e.start.Add(e.duration(t, d, at)).UnixNano()
					continue
				}
				rt.Participants = append(rt.Participants, p)
			}
			r.Txns = append(r.Txns, rt)
		case f[0] == "staged" && len(f) >= 3:
			r.Staged = append(r.Staged, RecoveredTxn{ID: f[1], Participants: f[2:]})
		default:
			d.Fatalf(t, "recovered: cannot read %q (decided <id> <outcome> <participants...> or staged <id> <participants...>)", l)
		}
	}
	return r
}

// pos returns the i-th argument without a value: the positional
// arguments (transaction id, participant, vote...) come first.
func (e *coreEnv) pos(t *testing.T, d *datadriven.TestData, i int) string {
	if i >= len(d.CmdArgs) || len(d.CmdArgs[i].Vals) > 0 {
		d.Fatalf(t, "%s: argument %d missing", d.Cmd, i+1)
	}
	return d.CmdArgs[i].Key
}

func (e *coreEnv) txnAndParticipant(t *testing.T, d *datadriven.TestData) (string, string) {
	return e.pos(t, d, 0), e.pos(t, d, 1)
}

// text returns a free-text argument; spaces need parentheses:
// reason=(no funds).
func (e *coreEnv) text(d *datadriven.TestData, key string) string {
	arg, ok := d.Arg(key)
	if !ok {
		return ""
	}
	return strings.Join(arg.Vals, ", ")
}

func (e *coreEnv) list(d *datadriven.TestData, key string) []string {
	arg, ok := d.Arg(key)
	if !ok {
		return nil
	}
	return slices.Clone(arg.Vals)
}

func (e *coreEnv) term(t *testing.T, d *datadriven.TestData) uint64 {
	var term uint64
	if d.MaybeScanArgs(t, "term", &term) {
		return term
	}
	_, term = e.core.IsLeader()
	return term
}

func (e *coreEnv) outcome(t *testing.T, d *datadriven.TestData) decreev1.Outcome {
	arg, ok := d.Arg("outcome")
	if !ok {
		return decreev1.Outcome_OUTCOME_UNSPECIFIED
	}
	return parseOutcome(t, d, arg.SingleVal(t))
}

// participants returns participants=(...), or the participants of the
// core's transaction id: an applied Decide names those it was proposed with.
func (e *coreEnv) participants(t *testing.T, d *datadriven.TestData, id string) []string {
	if ps := e.list(d, "participants"); ps != nil {
		return ps
	}
	if txn, ok := e.core.txns[id]; ok {
		return slices.Clone(txn.participants)
	}
	return nil
}

func (e *coreEnv) duration(t *testing.T, d *datadriven.TestData, s string) time.Duration {
	v, err := time.ParseDuration(s)
	if err != nil {
		d.Fatalf(t, "%s: %v", d.Cmd, err)
	}
	return v
}
