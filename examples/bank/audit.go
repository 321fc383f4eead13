package bank

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	bankv1 "github.com/decree-tx/decree/proto/bank/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// AuditReport is what Audit found.
type AuditReport struct {
	// Banks and Accounts count what was read.
	Banks, Accounts int
	// Total is the sum of every balance; Expected is what it should be.
	Total, Expected int64
	// Negative lists the accounts with a negative balance, as bank/account.
	Negative []string
	// Reservations counts the reserved accounts; InDoubt the transactions
	// in doubt at some bank.
	Reservations int
	InDoubt      int
	// OK is set when no problem was found.
	OK bool
	// Problems describes every failed check.
	Problems []string
}

// Audit reads every bank's Balances over gRPC and checks that the total is
// expected, that no balance is negative, that no reservation is left and
// that nothing is in doubt. Run it once the system is quiet (AwaitQuiet).
// A bank that cannot be read is an error, not a finding. The connections
// are insecure unless dial says otherwise.
func Audit(ctx context.Context, banks []string, expected int64, dial ...grpc.DialOption) (AuditReport, error) {
	if len(banks) == 0 {
		return AuditReport{}, errors.New("audit: no banks")
	}
	conns, err := dialBanks(banks, dial)
	if err != nil {
		return AuditReport{}, fmt.Errorf("audit: %w", err)
	}
	defer closeAll(conns)
	snaps, err := readAll(ctx, banks, conns)
	if err != nil {
		return AuditReport{}, fmt.Errorf("audit: %w", err)
	}
	return audit(snaps, expected), nil
}

// audit checks the banks' snapshots.
func audit(snaps []*bankv1.BalancesResponse, expected int64) AuditReport {
	r := AuditReport{Banks: len(snaps), Expected: expected}
	for _, s := range snaps {
		r.Accounts += len(s.GetAccounts())
		r.Total += s.GetTotal()
		r.Reservations += int(s.GetReservations())
		r.InDoubt += int(s.GetInDoubt())
		for _, a := range s.GetAccounts() {
			if a.GetBalance() < 0 {
				r.Negative = append(r.Negative, s.GetBank()+"/"+a.GetName())
			}
		}
		r.Problems = append(r.Problems, bankProblems(s)...)
	}
	if r.Total != expected {
		r.Problems = append(r.Problems, fmt.Sprintf("total %d, expected %d (off by %+d)", r.Total, expected, r.Total-expected))
	}
	r.OK = len(r.Problems) == 0
	return r
}

// bankProblems describes what is wrong at one bank.
func bankProblems(s *bankv1.BalancesResponse) []string {
	var problems []string
	for _, a := range s.GetAccounts() {
		if a.GetBalance() < 0 {
			problems = append(problems, fmt.Sprintf("bank %s: account %s has negative balance %d", s.GetBank(), a.GetName(), a.GetBalance()))
		}
	}
	if n := s.GetReservations(); n > 0 {
		problems = append(problems, fmt.Sprintf("bank %s: %d reservations left%s", s.GetBank(), n, holders(s)))
	}
	if n := s.GetInDoubt(); n > 0 {
		problems = append(problems, fmt.Sprintf("bank %s: %d transactions in doubt", s.GetBank(), n))
	}
	return problems
}

// holders lists up to a few reserved accounts and their holders.
func holders(s *bankv1.BalancesResponse) string {
	const most = 3
	var held []string
	for _, a := range s.GetAccounts() {
		if a.GetReservedBy() != "" && len(held) < most {
			held = append(held, a.GetName()+" by "+a.GetReservedBy())
		}
	}
	if len(held) == 0 {
		return ""
	}
	return " (" + strings.Join(held, ", ") + ")"
}

// String is a short human report ending with "money conserved: yes" when
// every check passed, "money conserved: no" otherwise.
func (r AuditReport) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "banks: %d, accounts: %d\n", r.Banks, r.Accounts)
	fmt.Fprintf(&b, "total: %d, expected: %d\n", r.Total, r.Expected)
	fmt.Fprintf(&b, "negative balances: %d, reservations: %d, in doubt: %d\n", len(r.Negative), r.Reservations, r.InDoubt)
	for _, p := range r.Problems {
		fmt.Fprintf(&b, "problem: %s\n", p)
	}
	verdict := "no"
	if r.OK {
		verdict = "yes"
	}
	fmt.Fprintf(&b, "money conserved: %s", verdict)
	return b.String()
}

// AwaitQuiet polls every bank's Balances, every poll, until no bank holds a
// reservation or an in-doubt transaction, or ctx ends. A bank that cannot
// be read counts as not quiet.
func AwaitQuiet(ctx context.Context, banks []string, poll time.Duration) error {
	if poll <= 0 {
		poll = 100 * time.Millisecond
	}
	conns, err := dialBanks(banks, nil)
	if err != nil {
		return fmt.Errorf("await quiet: %w", err)
	}
	defer closeAll(conns)
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		busy := quiet(ctx, banks, conns)
		if busy == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("await quiet: %w (last: %w)", ctx.Err(), busy)
		case <-t.C:
		}
	}
}

// quiet returns nil when every bank is quiet, otherwise why one is not.
func quiet(ctx context.Context, banks []string, conns []*grpc.ClientConn) error {
	snaps, err := readAll(ctx, banks, conns)
	if err != nil {
		return err
	}
	for _, s := range snaps {
		if s.GetReservations() > 0 || s.GetInDoubt() > 0 {
			return fmt.Errorf("bank %s: %d reservations, %d in doubt", s.GetBank(), s.GetReservations(), s.GetInDoubt())
		}
	}
	return nil
}

// dialBanks makes one client connection per bank, insecure unless dial
// says otherwise.
func dialBanks(banks []string, dial []grpc.DialOption) ([]*grpc.ClientConn, error) {
	opts := append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, dial...)
	conns := make([]*grpc.ClientConn, 0, len(banks))
	for _, addr := range banks {
		cc, err := grpc.NewClient(addr, opts...)
		if err != nil {
			closeAll(conns)
			return nil, fmt.Errorf("dial bank %s: %w", addr, err)
		}
		conns = append(conns, cc)
	}
	return conns, nil
}

func closeAll(conns []*grpc.ClientConn) {
	for _, cc := range conns {
		_ = cc.Close()
	}
}

// readAll reads every bank's Balances.
func readAll(ctx context.Context, banks []string, conns []*grpc.ClientConn) ([]*bankv1.BalancesResponse, error) {
	snaps := make([]*bankv1.BalancesResponse, len(conns))
	for i, cc := range conns {
		s, err := bankv1.NewBankClient(cc).Balances(ctx, &bankv1.BalancesRequest{})
		if err != nil {
			return nil, fmt.Errorf("balances of bank %s: %w", banks[i], err)
		}
		snaps[i] = s
	}
	return snaps, nil
}
