package bank

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	bankv1 "github.com/decree-tx/decree/proto/bank/v1"
	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// unreachableCoordinator is a coordinator endpoint nothing listens on; with
// testInDoubtTimeout and no Start, it is never asked.
const (
	unreachableCoordinator = "127.0.0.1:1"
	testInDoubtTimeout     = time.Hour
)

// testBank is a bank Server served on a loopback gRPC server.
type testBank struct {
	t    *testing.T
	name string
	dir  string
	srv  *Server
	addr string
	part decreev1.ParticipantClient
	bank bankv1.BankClient

	stopOnce sync.Once
	stopFn   func()
}

func testLogger(t *testing.T) zerolog.Logger {
	return zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
}

// startBank starts bank name on dir, seeding accounts of initial each on
// first start. It stops at the end of the test.
func startBank(t *testing.T, name, dir string, accounts int, initial int64) *testBank {
	t.Helper()
	srv, err := NewServer(ServerOptions{
		Name: name, Dir: dir, Coordinators: []string{unreachableCoordinator},
		Accounts: accounts, InitialBalance: initial,
		InDoubtTimeout: testInDoubtTimeout, Logger: testLogger(t),
	})
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	g := grpc.NewServer()
	srv.Register(g)
	go func() { _ = g.Serve(lis) }()
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	b := &testBank{
		t: t, name: name, dir: dir, srv: srv, addr: lis.Addr().String(),
		part: decreev1.NewParticipantClient(cc), bank: bankv1.NewBankClient(cc),
	}
	b.stopFn = func() {
		_ = cc.Close()
		g.GracefulStop()
		if err := srv.Close(); err != nil {
			t.Errorf("close %s: %v", name, err)
		}
	}
	t.Cleanup(b.stop)
	return b
}

// stop stops serving and closes the server; later calls do nothing.
func (b *testBank) stop() { b.stopOnce.Do(b.stopFn) }

// restart stops the bank and starts it again on the same directory.
func (b *testBank) restart() *testBank {
	b.t.Helper()
	b.stop()
	return startBank(b.t, b.name, b.dir, 0, 0)
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// prepare sends a two-phase Prepare of legs as txn id.
func (b *testBank) prepare(id string, legs ...Leg) *decreev1.PrepareResponse {
	b.t.Helper()
	return b.prepareRaw(id, EncodeLegs(legs), false)
}

func (b *testBank) prepareRaw(id string, payload []byte, onePhase bool) *decreev1.PrepareResponse {
	b.t.Helper()
	resp, err := b.tryPrepare(id, payload, onePhase)
	if err != nil {
		b.t.Fatal(err)
	}
	return resp
}

// tryPrepare sends a Prepare; it may run outside the test's goroutine.
func (b *testBank) tryPrepare(id string, payload []byte, onePhase bool) (*decreev1.PrepareResponse, error) {
	id = txnID(id)
	resp, err := b.part.Prepare(testCtx(b.t), &decreev1.PrepareRequest{
		TxnId: id, Payload: payload, Participants: []string{b.addr}, OnePhase: onePhase, Term: 1,
	})
	if err != nil {
		return nil, fmt.Errorf("prepare %s: %w", id, err)
	}
	return resp, nil
}

func (b *testBank) commit(id string) {
	b.t.Helper()
	if err := b.tryDecide(id, true); err != nil {
		b.t.Fatal(err)
	}
}

func (b *testBank) abort(id string) {
	b.t.Helper()
	if err := b.tryDecide(id, false); err != nil {
		b.t.Fatal(err)
	}
}

// tryDecide sends a Commit or an Abort; it may run outside the test's
// goroutine.
func (b *testBank) tryDecide(id string, commit bool) error {
	id = txnID(id)
	req := &decreev1.DecisionRequest{TxnId: id, Term: 1}
	var err error
	if commit {
		_, err = b.part.Commit(testCtx(b.t), req)
	} else {
		_, err = b.part.Abort(testCtx(b.t), req)
	}
	if err != nil {
		return fmt.Errorf("decide %s (commit %v): %w", id, commit, err)
	}
	return nil
}

// balances reads the bank's Balances over gRPC.
func (b *testBank) balances() *bankv1.BalancesResponse {
	b.t.Helper()
	resp, err := b.bank.Balances(testCtx(b.t), &bankv1.BalancesRequest{})
	if err != nil {
		b.t.Fatalf("balances: %v", err)
	}
	return resp
}

// account returns one account of the bank's Balances.
func (b *testBank) account(name string) *bankv1.Account {
	b.t.Helper()
	for _, a := range b.balances().GetAccounts() {
		if a.GetName() == name {
			return a
		}
	}
	b.t.Fatalf("no account %s", name)
	return nil
}

// userKey reads a committed key of the bank's keyspace.
func (b *testBank) userKey(key []byte) (string, bool) {
	b.t.Helper()
	v, found, err := b.srv.plog.Get(key)
	if err != nil {
		b.t.Fatalf("get %s: %v", key, err)
	}
	return string(v), found
}

// wantVote fails unless resp carries vote (and, for a NO, reason).
func wantVote(t *testing.T, resp *decreev1.PrepareResponse, vote decreev1.Vote, reason string) {
	t.Helper()
	if resp.GetVote() != vote || resp.GetReason() != reason {
		t.Fatalf("vote %v %q, want %v %q", resp.GetVote(), resp.GetReason(), vote, reason)
	}
}

func debit(account string, amount int64) Leg  { return Leg{Account: account, Delta: -amount} }
func credit(account string, amount int64) Leg { return Leg{Account: account, Delta: amount} }

// txnID turns a test's transaction name into the UUIDv7 the participant
// SDK requires, the same for the same name.
func txnID(name string) string {
	h := sha256.Sum256([]byte(name))
	h[6] = h[6]&0x0f | 0x70
	h[8] = h[8]&0x3f | 0x80
	x := hex.EncodeToString(h[:16])
	return x[0:8] + "-" + x[8:12] + "-" + x[12:16] + "-" + x[16:20] + "-" + x[20:32]
}
