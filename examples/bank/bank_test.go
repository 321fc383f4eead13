package bank

import (
	"fmt"
	"maps"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
)

var (
	a0, a1, a2 = AccountName(0), AccountName(1), AccountName(2)
	yes        = decreev1.Vote_VOTE_YES
	no         = decreev1.Vote_VOTE_NO
)

func TestNewServerSeedsAccountsOnce(t *testing.T) {
	b := startBank(t, "b", t.TempDir(), 3, 100)
	got := b.balances()
	if got.GetBank() != "b" || len(got.GetAccounts()) != 3 || got.GetTotal() != 300 {
		t.Fatalf("balances %v, want bank b with 3 accounts totalling 300", got)
	}
	for i, a := range got.GetAccounts() {
		if a.GetName() != AccountName(i) || a.GetBalance() != 100 || a.GetReservedBy() != "" {
			t.Errorf("account %d = %v, want %s holding 100", i, a, AccountName(i))
		}
	}
	b.prepare("t1", debit(a0, 40), credit(a1, 40))
	b.commit("t1")
	b.stop()
	again, err := NewServer(ServerOptions{
		Name: "b", Dir: b.dir, Coordinators: []string{unreachableCoordinator},
		Accounts: 5, InitialBalance: 7, Logger: testLogger(t),
	})
	if err != nil {
		t.Fatalf("NewServer again: %v", err)
	}
	defer again.Close()
	resp, err := again.Balances()
	if err != nil {
		t.Fatalf("Balances: %v", err)
	}
	if len(resp.GetAccounts()) != 3 || resp.GetAccounts()[0].GetBalance() != 60 || resp.GetTotal() != 300 {
		t.Fatalf("after restart %v, want the 3 accounts kept, acct-0000 at 60", resp)
	}
}

func TestNewServerRejectsBadOptions(t *testing.T) {
	good := ServerOptions{Name: "b", Dir: t.TempDir(), Coordinators: []string{unreachableCoordinator}}
	for name, mutate := range map[string]func(*ServerOptions){
		"no name":          func(o *ServerOptions) { o.Name = "" },
		"no dir":           func(o *ServerOptions) { o.Dir = "" },
		"negative count":   func(o *ServerOptions) { o.Accounts = -1 },
		"negative balance": func(o *ServerOptions) { o.InitialBalance = -1 },
		"overflow":         func(o *ServerOptions) { o.Accounts, o.InitialBalance = 3, 1<<62 },
		"no coordinators":  func(o *ServerOptions) { o.Coordinators = nil },
	} {
		t.Run(name, func(t *testing.T) {
			o := good
			mutate(&o)
			if s, err := NewServer(o); err == nil {
				s.Close()
				t.Fatal("NewServer accepted bad options")
			}
		})
	}
	// A refused option must not leave the directory locked.
	s, err := NewServer(good)
	if err != nil {
		t.Fatalf("NewServer with good options after refusals: %v", err)
	}
	s.Close()
}

func TestPrepareReservesAccounts(t *testing.T) {
	b := startBank(t, "b", t.TempDir(), 3, 100)
	wantVote(t, b.prepare("t1", debit(a0, 30), credit(a1, 30)), yes, "")
	for _, acct := range []string{a0, a1} {
		if holder, _ := b.userKey(lockKey(acct)); holder != txnID("t1") {
			t.Errorf("lock of %s = %q, want t1", acct, holder)
		}
		if got := b.account(acct).GetReservedBy(); got != txnID("t1") {
			t.Errorf("%s reserved by %q, want t1", acct, got)
		}
	}
	pending, found := b.userKey(pendingKey(txnID("t1")))
	if !found || pending != string(EncodeLegs([]Leg{debit(a0, 30), credit(a1, 30)})) {
		t.Errorf("pending legs of t1 = %q (found %v), want the payload", pending, found)
	}
	got := b.balances()
	if got.GetReservations() != 2 || got.GetInDoubt() != 1 || got.GetTotal() != 300 {
		t.Errorf("balances: %d reservations, %d in doubt, total %d; want 2, 1, 300 (unchanged until commit)",
			got.GetReservations(), got.GetInDoubt(), got.GetTotal())
	}
	if b.account(a0).GetBalance() != 100 {
		t.Error("prepare changed a balance")
	}
}

func TestPrepareVotesNo(t *testing.T) {
	b := startBank(t, "b", t.TempDir(), 3, 100)
	wantVote(t, b.prepare("hold", debit(a2, 1)), yes, "")
	for _, tc := range []struct {
		name   string
		legs   []Leg
		reason string
	}{
		{"insufficient funds", []Leg{debit(a0, 101), credit(a1, 101)}, ReasonInsufficientFunds},
		{"unknown debit", []Leg{debit("nobody", 1), credit(a1, 1)}, ReasonUnknownAccount},
		{"unknown credit", []Leg{credit("nobody", 1)}, ReasonUnknownAccount},
		{"busy debit", []Leg{debit(a2, 1), credit(a0, 1)}, ReasonAccountBusy},
		{"busy credit", []Leg{debit(a0, 1), credit(a2, 1)}, ReasonAccountBusy},
		{"unknown before busy", []Leg{debit(a2, 1), credit("nobody", 1)}, ReasonUnknownAccount},
		{"overflow", []Leg{credit(a0, 1<<63-1)}, ReasonBalanceOverflow},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantVote(t, b.prepare("t-"+tc.name, tc.legs...), no, tc.reason)
		})
	}
	got := b.balances()
	if got.GetReservations() != 1 || got.GetTotal() != 300 || got.GetInDoubt() != 1 {
		t.Errorf("NO votes changed the state: %v", got)
	}
	if _, found := b.userKey(lockKey(a0)); found {
		t.Error("a NO vote left a lock")
	}
}

func TestPrepareExactBalanceVotesYes(t *testing.T) {
	b := startBank(t, "b", t.TempDir(), 2, 100)
	wantVote(t, b.prepare("t1", debit(a0, 100), credit(a1, 100)), yes, "")
	b.commit("t1")
	if got := b.account(a0).GetBalance(); got != 0 {
		t.Fatalf("balance %d, want 0", got)
	}
	wantVote(t, b.prepare("t2", debit(a0, 1)), no, ReasonInsufficientFunds)
}

func TestPrepareBadPayload(t *testing.T) {
	b := startBank(t, "b", t.TempDir(), 2, 100)
	for name, payload := range map[string][]byte{
		"garbage":   []byte("hello"),
		"no legs":   EncodeLegs(nil),
		"duplicate": EncodeLegs([]Leg{debit(a0, 1), credit(a0, 1)}),
	} {
		resp := b.prepareRaw("t-"+name, payload, false)
		if resp.GetVote() != no || !strings.HasPrefix(resp.GetReason(), "bad payload: ") {
			t.Errorf("%s: vote %v %q, want NO with bad payload", name, resp.GetVote(), resp.GetReason())
		}
	}
}

func TestCommitAppliesAndReleases(t *testing.T) {
	b := startBank(t, "b", t.TempDir(), 3, 100)
	wantVote(t, b.prepare("t1", debit(a0, 30), credit(a1, 30)), yes, "")
	b.commit("t1")
	if x, y := b.account(a0), b.account(a1); x.GetBalance() != 70 || y.GetBalance() != 130 {
		t.Fatalf("balances %d and %d, want 70 and 130", x.GetBalance(), y.GetBalance())
	}
	assertReleased(t, b, "t1", a0, a1)
	// The accounts can be reserved again at once, at their new balances.
	wantVote(t, b.prepare("t2", debit(a0, 71)), no, ReasonInsufficientFunds)
	wantVote(t, b.prepare("t3", debit(a0, 70), credit(a1, 70)), yes, "")
}

func TestAbortReleases(t *testing.T) {
	b := startBank(t, "b", t.TempDir(), 3, 100)
	wantVote(t, b.prepare("t1", debit(a0, 30), credit(a1, 30)), yes, "")
	b.abort("t1")
	if x, y := b.account(a0), b.account(a1); x.GetBalance() != 100 || y.GetBalance() != 100 {
		t.Fatalf("balances %d and %d after abort, want 100 and 100", x.GetBalance(), y.GetBalance())
	}
	assertReleased(t, b, "t1", a0, a1)
	wantVote(t, b.prepare("t2", debit(a0, 100), credit(a1, 100)), yes, "")
}

// assertReleased checks that txn holds none of accounts, durably or in
// Balances, and left no pending legs or in-doubt record.
func assertReleased(t *testing.T, b *testBank, txn string, accounts ...string) {
	t.Helper()
	for _, acct := range accounts {
		if holder, found := b.userKey(lockKey(acct)); found {
			t.Errorf("%s still locked by %q", acct, holder)
		}
	}
	if _, found := b.userKey(pendingKey(txn)); found {
		t.Errorf("pending legs of %s left behind", txn)
	}
	if got := b.balances(); got.GetReservations() != 0 || got.GetInDoubt() != 0 {
		t.Errorf("%d reservations and %d in doubt left", got.GetReservations(), got.GetInDoubt())
	}
}

func TestDuplicateCallsAreIdempotent(t *testing.T) {
	b := startBank(t, "b", t.TempDir(), 3, 100)
	wantVote(t, b.prepare("t1", debit(a0, 30), credit(a1, 30)), yes, "")
	wantVote(t, b.prepare("t1", debit(a0, 30), credit(a1, 30)), yes, "")
	if got := b.balances().GetReservations(); got != 2 {
		t.Fatalf("%d reservations after a repeated prepare, want 2", got)
	}
	b.commit("t1")
	b.commit("t1")
	wantVote(t, b.prepare("t1", debit(a0, 30), credit(a1, 30)), yes, "")
	if x, y := b.account(a0), b.account(a1); x.GetBalance() != 70 || y.GetBalance() != 130 {
		t.Fatalf("balances %d and %d after repeated calls, want 70 and 130 (applied once)", x.GetBalance(), y.GetBalance())
	}
	wantVote(t, b.prepare("t2", debit(a0, 10)), yes, "")
	b.abort("t2")
	b.abort("t2")
	wantVote(t, b.prepare("t2", debit(a0, 10)), no, "aborted")
	b.abort("never-prepared")
	assertReleased(t, b, "t2", a0, a1, a2)
	if got := b.balances().GetTotal(); got != 300 {
		t.Fatalf("total %d, want 300", got)
	}
}

func TestRestartKeepsReservations(t *testing.T) {
	b := startBank(t, "b", t.TempDir(), 3, 100)
	wantVote(t, b.prepare("t1", debit(a0, 30), credit(a1, 30)), yes, "")
	b = b.restart()
	b.srv.bank.mu.Lock()
	restored := maps.Clone(b.srv.bank.reserved)
	b.srv.bank.mu.Unlock()
	if want := (reservations{a0: {txn: txnID("t1")}, a1: {txn: txnID("t1")}}); !maps.Equal(restored, want) {
		t.Fatalf("restored table %v, want %v", restored, want)
	}
	got := b.balances()
	if got.GetReservations() != 2 || got.GetInDoubt() != 1 || b.account(a0).GetReservedBy() != txnID("t1") {
		t.Fatalf("after restart %v, want t1's 2 reservations in doubt", got)
	}
	wantVote(t, b.prepare("t2", debit(a0, 1), credit(a2, 1)), no, ReasonAccountBusy)
	wantVote(t, b.prepare("t3", debit(a2, 1), credit(a1, 1)), no, ReasonAccountBusy)
	b.commit("t1")
	if x, y := b.account(a0), b.account(a1); x.GetBalance() != 70 || y.GetBalance() != 130 {
		t.Fatalf("balances %d and %d after commit, want 70 and 130", x.GetBalance(), y.GetBalance())
	}
	assertReleased(t, b, "t1", a0, a1)
	wantVote(t, b.prepare("t4", debit(a0, 70), credit(a1, 70)), yes, "")
}

func TestConcurrentPreparesOnOneAccount(t *testing.T) {
	b := startBank(t, "b", t.TempDir(), 40, 100)
	const n = 32
	votes := make([]*decreev1.PrepareResponse, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			// Every transaction debits acct-0000 and credits an account of
			// its own.
			legs := []Leg{debit(a0, 10), credit(AccountName(i+1), 10)}
			v, err := b.tryPrepare(fmt.Sprintf("t%d", i), EncodeLegs(legs), false)
			if err != nil {
				t.Error(err)
			}
			votes[i] = v
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	winner := ""
	for i, v := range votes {
		switch {
		case v.GetVote() == yes && winner == "":
			winner = fmt.Sprintf("t%d", i)
		case v.GetVote() == yes:
			t.Errorf("t%d voted YES as well as %s", i, winner)
		case v.GetReason() != ReasonAccountBusy:
			t.Errorf("t%d: vote %v %q, want NO %q", i, v.GetVote(), v.GetReason(), ReasonAccountBusy)
		}
	}
	if winner == "" {
		t.Fatal("no transaction voted YES")
	}
	if got := b.account(a0).GetReservedBy(); got != txnID(winner) {
		t.Fatalf("acct-0000 reserved by %q, want %s", got, winner)
	}
	if got := b.balances().GetReservations(); got != 2 {
		t.Fatalf("%d reservations, want the winner's 2", got)
	}
}

// TestConcurrentTransfersConserveMoney runs rounds of concurrent transfers
// between few accounts, committing or aborting every YES at once, so that
// releases race with new prepares.
func TestConcurrentTransfersConserveMoney(t *testing.T) {
	b := startBank(t, "b", t.TempDir(), 4, 50)
	const workers, rounds = 8, 40
	var wg sync.WaitGroup
	var committed atomic.Int64
	for w := range workers {
		wg.Go(func() {
			for r := range rounds {
				if err := transferOnce(b, w, r, &committed); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if committed.Load() == 0 {
		t.Fatal("no transfer committed")
	}
	got := b.balances()
	if got.GetTotal() != 200 || got.GetReservations() != 0 || got.GetInDoubt() != 0 {
		t.Fatalf("after the rounds: %v, want total 200 and nothing held", got)
	}
	for _, a := range got.GetAccounts() {
		if a.GetBalance() < 0 {
			t.Errorf("%s has negative balance %d", a.GetName(), a.GetBalance())
		}
	}
}

// transferOnce prepares worker w's transfer of round r and, on YES, aborts
// it every third round and commits it otherwise.
func transferOnce(b *testBank, w, r int, committed *atomic.Int64) error {
	id := fmt.Sprintf("w%d-r%d", w, r)
	from, to := AccountName((w+r)%4), AccountName((w+r+1)%4)
	v, err := b.tryPrepare(id, EncodeLegs([]Leg{debit(from, 30), credit(to, 30)}), false)
	if err != nil || v.GetVote() != yes {
		return err
	}
	if r%3 == 0 {
		return b.tryDecide(id, false)
	}
	committed.Add(1)
	return b.tryDecide(id, true)
}
