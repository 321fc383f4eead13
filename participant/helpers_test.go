package participant_test

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/decree-tx/decree/internal/clock"
	"github.com/decree-tx/decree/participant"
	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
	"github.com/decree-tx/decree/txlog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// kvResource is a test resource holding a key-value map. A payload
// "set k=v" votes YES after locking k ("lock/k" = txn id) and staging the
// write ("pending/<id>" = "k=v"); Commit applies it to "data/k" and Abort
// drops it. A payload "no <reason>" writes a scratch key and votes NO; "ro"
// votes READ_ONLY after writing a scratch key; "err" fails.
type kvResource struct {
	prepares, commits, aborts atomic.Int64
	failCommit                atomic.Bool
}

var _ participant.Resource = (*kvResource)(nil)

func (r *kvResource) Prepare(_ context.Context, txn participant.Txn, w participant.Writer) (participant.Vote, string, error) {
	r.prepares.Add(1)
	op, arg, _ := strings.Cut(string(txn.Payload), " ")
	switch op {
	case "no":
		w.Set([]byte("scratch/"+txn.ID), []byte("x"))
		return participant.VoteNo, arg, nil
	case "ro":
		w.Set([]byte("scratch/"+txn.ID), []byte("x"))
		return participant.VoteReadOnly, "", nil
	case "set":
		return r.prepareSet(txn.ID, arg, w)
	default:
		return 0, "", fmt.Errorf("bad payload %q", txn.Payload)
	}
}

func (r *kvResource) prepareSet(id, kv string, w participant.Writer) (participant.Vote, string, error) {
	k, _, ok := strings.Cut(kv, "=")
	if !ok {
		return 0, "", fmt.Errorf("bad set %q", kv)
	}
	holder, locked, err := w.Get([]byte("lock/" + k))
	if err != nil {
		return 0, "", err
	}
	if locked && string(holder) != id {
		return participant.VoteNo, "key " + k + " is locked", nil
	}
	w.Set([]byte("lock/"+k), []byte(id))
	w.Set([]byte("pending/"+id), []byte(kv))
	return participant.VoteYes, "", nil
}

func (r *kvResource) Commit(_ context.Context, id string, w participant.Writer) error {
	r.commits.Add(1)
	if r.failCommit.Load() {
		return errors.New("disk on fire")
	}
	k, v, err := r.pending(id, w)
	if err != nil {
		return err
	}
	w.Set([]byte("data/"+k), []byte(v))
	return nil
}

func (r *kvResource) Abort(_ context.Context, id string, w participant.Writer) error {
	r.aborts.Add(1)
	_, _, err := r.pending(id, w)
	return err
}

// pending reads and removes id's staged write and lock.
func (r *kvResource) pending(id string, w participant.Writer) (k, v string, err error) {
	kv, found, err := w.Get([]byte("pending/" + id))
	if err != nil || !found {
		return "", "", fmt.Errorf("no pending write for %s (found %v): %w", id, found, err)
	}
	k, v, _ = strings.Cut(string(kv), "=")
	w.Delete([]byte("pending/" + id))
	w.Delete([]byte("lock/" + k))
	return k, v, nil
}

// newFakeClock returns a manually advanced clock.
func newFakeClock() *clock.Fake {
	return clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
}

// waitFor polls cond until it holds, failing the test after a deadline.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

// openLog opens a participant log in dir, closed when the test ends unless
// the test did.
func openLog(t testing.TB, dir string) *txlog.ParticipantLog {
	t.Helper()
	l, err := txlog.OpenParticipantLog(dir, txlog.Options{})
	if err != nil {
		t.Fatalf("open participant log: %v", err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l
}

// newParticipant returns a participant over log, stopped when the test
// ends. Options left zero get test defaults.
func newParticipant(t testing.TB, r participant.Resource, opts participant.Options) *participant.Participant {
	t.Helper()
	if opts.Coordinators == nil {
		opts.Coordinators = []string{unreachableAddr(t)}
	}
	if opts.Clock == nil {
		opts.Clock = newFakeClock()
	}
	p, err := participant.New(r, opts)
	if err != nil {
		t.Fatalf("new participant: %v", err)
	}
	t.Cleanup(p.Stop)
	return p
}

// unreachableAddr returns a local address nothing listens on.
func unreachableAddr(t testing.TB) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	_ = lis.Close()
	return addr
}

// fakeCoordinator answers Outcome from a script: the state for each id,
// TXN_STATE_UNDECIDED for ids not in it.
type fakeCoordinator struct {
	decreev1.UnimplementedCoordinatorServer
	mu       sync.Mutex
	outcomes map[string]decreev1.TxnState
	queries  []*decreev1.OutcomeRequest
}

func (c *fakeCoordinator) Outcome(_ context.Context, req *decreev1.OutcomeRequest) (*decreev1.OutcomeResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.queries = append(c.queries, req)
	state, ok := c.outcomes[req.GetTxnId()]
	if !ok {
		state = decreev1.TxnState_TXN_STATE_UNDECIDED
	}
	return &decreev1.OutcomeResponse{TxnId: req.GetTxnId(), State: state}, nil
}

// script sets the outcome of the transaction named id (see tid).
func (c *fakeCoordinator) script(id string, s decreev1.TxnState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.outcomes[tid(id)] = s
}

// query returns the i-th query received.
func (c *fakeCoordinator) query(i int) *decreev1.OutcomeRequest {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.queries[i]
}

// queried returns how many times id was asked about.
func (c *fakeCoordinator) queried(id string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, q := range c.queries {
		if q.GetTxnId() == id {
			n++
		}
	}
	return n
}

// serveCoordinator serves c on a local port until the test ends.
func serveCoordinator(t testing.TB, c *fakeCoordinator) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	decreev1.RegisterCoordinatorServer(s, c)
	go func() { _ = s.Serve(lis) }()
	t.Cleanup(s.Stop)
	return lis.Addr().String()
}

func prepareReq(id, payload string, term uint64, participants ...string) *decreev1.PrepareRequest {
	if participants == nil {
		participants = []string{"self:1", "other:1"}
	}
	return &decreev1.PrepareRequest{TxnId: id, Payload: []byte(payload), Participants: participants, Term: term}
}

func codeOf(err error) codes.Code {
	return status.Code(err)
}

// userValue reads a committed user key ("" if absent).
func userValue(t testing.TB, l *txlog.ParticipantLog, key string) string {
	t.Helper()
	v, _, err := l.Get([]byte(key))
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	return string(v)
}

// inDoubtIDs returns the names (see tid) of the ids p holds in doubt.
func inDoubtIDs(p *participant.Participant) []string {
	var ids []string
	for _, d := range p.InDoubt() {
		ids = append(ids, name(d.ID))
	}
	return ids
}

// tid turns a test's short transaction name (up to 14 bytes) into a valid
// id, a UUIDv7 that carries the name's bytes, so that ids sort as their
// names do and name(tid(n)) == n.
func tid(n string) string {
	if len(n) > 14 {
		panic("tid: name longer than 14 bytes: " + n)
	}
	var nb [14]byte
	copy(nb[:], n)
	var u [16]byte
	copy(u[0:6], nb[0:6])
	u[6], u[7] = 0x70, nb[6]
	u[8] = 0x80
	copy(u[9:16], nb[7:14])
	h := hex.EncodeToString(u[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// name is the inverse of tid; an id tid did not make is returned as is.
func name(id string) string {
	u, err := hex.DecodeString(strings.ReplaceAll(id, "-", ""))
	if err != nil || len(u) != 16 || u[6] != 0x70 || u[8] != 0x80 {
		return id
	}
	nb := append(append(append([]byte{}, u[0:6]...), u[7]), u[9:16]...)
	return strings.TrimRight(string(nb), "\x00")
}

// serveParticipant serves p on a local port until the test ends and
// returns a client that reaches it under the name as (the :authority a
// coordinator dialling that name sends).
func serveParticipant(t testing.TB, p *participant.Participant, as string) decreev1.ParticipantClient {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	p.Register(s)
	go func() { _ = s.Serve(lis) }()
	t.Cleanup(s.Stop)
	conn, err := grpc.NewClient("passthrough:///"+lis.Addr().String(),
		grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithAuthority(as))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return decreev1.NewParticipantClient(conn)
}
