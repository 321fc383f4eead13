package bank

import (
	"context"
	"errors"
	"net"
	"slices"
	"strings"
	"testing"
	"time"
)

// twoBanks starts two banks of 3 accounts holding 100 each.
func twoBanks(t *testing.T) (b1, b2 *testBank, addrs []string) {
	b1 = startBank(t, "b1", t.TempDir(), 3, 100)
	b2 = startBank(t, "b2", t.TempDir(), 3, 100)
	return b1, b2, []string{b1.addr, b2.addr}
}

func TestAuditPassesOnGoodState(t *testing.T) {
	b1, b2, addrs := twoBanks(t)
	wantVote(t, b1.prepare("t1", debit(a0, 70)), yes, "")
	wantVote(t, b2.prepare("t1", credit(a2, 70)), yes, "")
	b1.commit("t1")
	b2.commit("t1")
	r, err := Audit(testCtx(t), addrs, 600)
	if err != nil {
		t.Fatalf("Audit: %v", err)
	}
	want := AuditReport{Banks: 2, Accounts: 6, Total: 600, Expected: 600, OK: true}
	if !equalReports(r, want) {
		t.Fatalf("report %+v, want %+v", r, want)
	}
	if s := r.String(); !strings.HasSuffix(s, "money conserved: yes") {
		t.Fatalf("report text does not end with the verdict yes:\n%s", s)
	}
}

func equalReports(a, b AuditReport) bool {
	return a.Banks == b.Banks && a.Accounts == b.Accounts && a.Total == b.Total && a.Expected == b.Expected &&
		slices.Equal(a.Negative, b.Negative) && a.Reservations == b.Reservations && a.InDoubt == b.InDoubt &&
		a.OK == b.OK && len(a.Problems) == len(b.Problems)
}

func TestAuditDetectsWrongTotal(t *testing.T) {
	_, _, addrs := twoBanks(t)
	r, err := Audit(testCtx(t), addrs, 601)
	if err != nil {
		t.Fatalf("Audit: %v", err)
	}
	if r.OK || r.Total != 600 || len(r.Problems) != 1 || !strings.Contains(r.Problems[0], "total 600, expected 601") {
		t.Fatalf("report %+v, want a failed total check", r)
	}
	if s := r.String(); !strings.HasSuffix(s, "money conserved: no") {
		t.Fatalf("report text does not end with the verdict no:\n%s", s)
	}
}

func TestAuditDetectsNegativeBalance(t *testing.T) {
	b1, _, addrs := twoBanks(t)
	// Break the bank on purpose: move 150 out of an account holding 100.
	w := b1.srv.plog.NewBatch()
	w.Set(acctKey(a0), encodeBalance(-50))
	w.Set(acctKey(a1), encodeBalance(250))
	if err := b1.srv.plog.Commit(w); err != nil {
		t.Fatalf("commit: %v", err)
	}
	r, err := Audit(testCtx(t), addrs, 600)
	if err != nil {
		t.Fatalf("Audit: %v", err)
	}
	if r.OK || r.Total != 600 || !slices.Equal(r.Negative, []string{"b1/" + a0}) || len(r.Problems) != 1 {
		t.Fatalf("report %+v, want one negative balance at b1/%s", r, a0)
	}
	if !strings.HasSuffix(r.String(), "money conserved: no") {
		t.Fatalf("report text:\n%s", r)
	}
}

func TestAuditDetectsLeftoverReservation(t *testing.T) {
	_, b2, addrs := twoBanks(t)
	wantVote(t, b2.prepare("t1", debit(a1, 10), credit(a2, 10)), yes, "")
	r, err := Audit(testCtx(t), addrs, 600)
	if err != nil {
		t.Fatalf("Audit: %v", err)
	}
	if r.OK || r.Reservations != 2 || r.InDoubt != 1 || len(r.Problems) != 2 {
		t.Fatalf("report %+v, want 2 reservations and 1 in doubt found", r)
	}
	if !strings.Contains(strings.Join(r.Problems, "\n"), "by "+txnID("t1")) {
		t.Fatalf("problems %q do not name the holder t1", r.Problems)
	}
}

func TestAuditFailsOnUnreachableBank(t *testing.T) {
	_, _, addrs := twoBanks(t)
	if _, err := Audit(testCtx(t), append(addrs, deadAddr(t)), 600); err == nil {
		t.Fatal("Audit of an unreachable bank succeeded")
	}
	if _, err := Audit(testCtx(t), nil, 0); err == nil {
		t.Fatal("Audit of no banks succeeded")
	}
}

// deadAddr returns a loopback address nothing listens on.
func deadAddr(t *testing.T) string {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	addr := lis.Addr().String()
	lis.Close()
	return addr
}

func TestAwaitQuiet(t *testing.T) {
	b1, _, addrs := twoBanks(t)
	if err := AwaitQuiet(testCtx(t), addrs, time.Millisecond); err != nil {
		t.Fatalf("AwaitQuiet on quiet banks: %v", err)
	}
	wantVote(t, b1.prepare("t1", debit(a0, 10)), yes, "")
	short, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if err := AwaitQuiet(short, addrs, time.Millisecond); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("AwaitQuiet with a reservation held = %v, want DeadlineExceeded", err)
	}
	done := make(chan error, 1)
	go func() { done <- AwaitQuiet(testCtx(t), addrs, time.Millisecond) }()
	b1.abort("t1")
	if err := <-done; err != nil {
		t.Fatalf("AwaitQuiet after the abort: %v", err)
	}
}
