package bank

import (
	"errors"
	"fmt"

	"github.com/decree-tx/decree/coordinator/client"
)

// ErrInvalidTransfer is wrapped by the errors of Transfer.Validate.
var ErrInvalidTransfer = errors.New("invalid transfer")

// AccountRef names an account at a bank.
type AccountRef struct {
	// Bank is the bank participant's gRPC address, host:port.
	Bank string
	// Account is the account's name at that bank.
	Account string
}

func (a AccountRef) String() string { return a.Bank + "/" + a.Account }

// A Transfer moves Amount from one account to another, possibly at another
// bank.
type Transfer struct {
	From, To AccountRef
	Amount   int64
}

// Validate checks that the amount is positive, that every field is set and
// that the two accounts differ.
func (t Transfer) Validate() error {
	switch {
	case t.Amount <= 0:
		return fmt.Errorf("%w: amount %d is not positive", ErrInvalidTransfer, t.Amount)
	case t.From.Bank == "" || t.To.Bank == "":
		return fmt.Errorf("%w: empty bank", ErrInvalidTransfer)
	case t.From.Account == "" || t.To.Account == "":
		return fmt.Errorf("%w: empty account", ErrInvalidTransfer)
	case len(t.From.Account) > maxAccountLen || len(t.To.Account) > maxAccountLen:
		return fmt.Errorf("%w: account name longer than %d bytes", ErrInvalidTransfer, maxAccountLen)
	case t.From == t.To:
		return fmt.Errorf("%w: from and to are the same account %s", ErrInvalidTransfer, t.From)
	}
	return nil
}

// Txn builds the client transaction with the given id: one branch per
// bank. A transfer within one bank is a single branch holding both legs, so
// the coordinator may commit it in one phase.
func (t Transfer) Txn(id string) client.Txn {
	debit := Leg{Account: t.From.Account, Delta: -t.Amount}
	credit := Leg{Account: t.To.Account, Delta: t.Amount}
	if t.From.Bank == t.To.Bank {
		return client.Txn{ID: id, Branches: []client.Branch{
			{Participant: t.From.Bank, Payload: EncodeLegs([]Leg{debit, credit})},
		}}
	}
	return client.Txn{ID: id, Branches: []client.Branch{
		{Participant: t.From.Bank, Payload: EncodeLegs([]Leg{debit})},
		{Participant: t.To.Bank, Payload: EncodeLegs([]Leg{credit})},
	}}
}

// AccountName returns the name of the i-th account of a seeded bank, such
// as "acct-0007".
func AccountName(i int) string {
	return fmt.Sprintf("acct-%04d", i)
}
