package bank

import (
	"errors"
	"reflect"
	"testing"

	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
)

func TestAccountName(t *testing.T) {
	for i, want := range map[int]string{0: "acct-0000", 7: "acct-0007", 1234: "acct-1234", 12345: "acct-12345"} {
		if got := AccountName(i); got != want {
			t.Errorf("AccountName(%d) = %q, want %q", i, got, want)
		}
	}
}

func TestTransferValidate(t *testing.T) {
	good := Transfer{From: AccountRef{"b1:1", "x"}, To: AccountRef{"b2:1", "x"}, Amount: 1}
	if err := good.Validate(); err != nil {
		t.Fatalf("valid transfer refused: %v", err)
	}
	for name, mutate := range map[string]func(*Transfer){
		"zero amount":     func(t *Transfer) { t.Amount = 0 },
		"negative amount": func(t *Transfer) { t.Amount = -5 },
		"no from bank":    func(t *Transfer) { t.From.Bank = "" },
		"no to bank":      func(t *Transfer) { t.To.Bank = "" },
		"no from account": func(t *Transfer) { t.From.Account = "" },
		"no to account":   func(t *Transfer) { t.To.Account = "" },
		"same account":    func(t *Transfer) { t.To = t.From },
		"long account":    func(t *Transfer) { t.To.Account = string(make([]byte, maxAccountLen+1)) },
	} {
		tr := good
		mutate(&tr)
		if err := tr.Validate(); !errors.Is(err, ErrInvalidTransfer) {
			t.Errorf("%s: Validate = %v, want ErrInvalidTransfer", name, err)
		}
	}
}

func TestCrossBankTxnHasOneBranchPerBank(t *testing.T) {
	tr := Transfer{From: AccountRef{"b1:1", "x"}, To: AccountRef{"b2:1", "y"}, Amount: 42}
	txn := tr.Txn("id-1")
	if txn.ID != "id-1" || len(txn.Branches) != 2 {
		t.Fatalf("txn %+v, want id-1 with 2 branches", txn)
	}
	for i, want := range []struct {
		bank string
		legs []Leg
	}{{"b1:1", []Leg{{"x", -42}}}, {"b2:1", []Leg{{"y", 42}}}} {
		br := txn.Branches[i]
		legs, err := DecodeLegs(br.Payload)
		if err != nil || br.Participant != want.bank || !reflect.DeepEqual(legs, want.legs) {
			t.Errorf("branch %d = %s %v (%v), want %s %v", i, br.Participant, legs, err, want.bank, want.legs)
		}
	}
}

func TestSameBankTxnIsOneBranch(t *testing.T) {
	tr := Transfer{From: AccountRef{"b1:1", "x"}, To: AccountRef{"b1:1", "y"}, Amount: 42}
	txn := tr.Txn("id-1")
	if len(txn.Branches) != 1 || txn.Branches[0].Participant != "b1:1" {
		t.Fatalf("txn %+v, want one branch at b1:1", txn)
	}
	legs, err := DecodeLegs(txn.Branches[0].Payload)
	if want := []Leg{{"x", -42}, {"y", 42}}; err != nil || !reflect.DeepEqual(legs, want) {
		t.Fatalf("legs %v (%v), want %v", legs, err, want)
	}
}

// A same-bank transfer commits in one phase at its bank.
func TestSameBankTransferCommitsInOnePhase(t *testing.T) {
	b := startBank(t, "b", t.TempDir(), 2, 100)
	txn := Transfer{From: AccountRef{b.addr, a0}, To: AccountRef{b.addr, a1}, Amount: 25}.Txn("t1")
	resp := b.prepareRaw(txn.ID, txn.Branches[0].Payload, true)
	wantVote(t, resp, decreev1.Vote_VOTE_COMMITTED, "")
	if x, y := b.account(a0), b.account(a1); x.GetBalance() != 75 || y.GetBalance() != 125 {
		t.Fatalf("balances %d and %d, want 75 and 125", x.GetBalance(), y.GetBalance())
	}
	assertReleased(t, b, "t1", a0, a1)
	// The release is on disk: the accounts are free for the next transfer.
	next := Transfer{From: AccountRef{b.addr, a1}, To: AccountRef{b.addr, a0}, Amount: 125}.Txn("t2")
	wantVote(t, b.prepareRaw(next.ID, next.Branches[0].Payload, true), decreev1.Vote_VOTE_COMMITTED, "")
	if x, y := b.account(a0), b.account(a1); x.GetBalance() != 200 || y.GetBalance() != 0 {
		t.Fatalf("balances %d and %d, want 200 and 0", x.GetBalance(), y.GetBalance())
	}
}

// A cross-bank transfer prepares at both banks and commits at both.
func TestCrossBankTransferCommits(t *testing.T) {
	b1 := startBank(t, "b1", t.TempDir(), 2, 100)
	b2 := startBank(t, "b2", t.TempDir(), 2, 100)
	banks := map[string]*testBank{b1.addr: b1, b2.addr: b2}
	txn := Transfer{From: AccountRef{b1.addr, a0}, To: AccountRef{b2.addr, a1}, Amount: 60}.Txn("t1")
	for _, br := range txn.Branches {
		wantVote(t, banks[br.Participant].prepareRaw(txn.ID, br.Payload, false), decreev1.Vote_VOTE_YES, "")
	}
	b1.commit("t1")
	b2.commit("t1")
	if x, y := b1.account(a0).GetBalance(), b2.account(a1).GetBalance(); x != 40 || y != 160 {
		t.Fatalf("balances %d at b1 and %d at b2, want 40 and 160", x, y)
	}
	if total := b1.balances().GetTotal() + b2.balances().GetTotal(); total != 400 {
		t.Fatalf("total %d, want 400", total)
	}
}
