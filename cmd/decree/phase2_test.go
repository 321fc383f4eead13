package main

import (
	"strings"
	"testing"
	"time"

	"github.com/decree-tx/decree/coordinator/client"
)

func TestStatusTableShowsThePhase2Backlog(t *testing.T) {
	var b strings.Builder
	rows := []statusRow{
		{ID: 1, Endpoint: "a", Role: "leader", Phase2Backlog: 11000, Phase2OldestAgeSeconds: 65.4},
		{ID: 2, Endpoint: "b", Role: "follower"},
	}
	if err := printStatusTable(&b, rows); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(b.String(), "\n")
	if !strings.HasSuffix(strings.TrimSpace(lines[0]), "PHASE2") || !strings.HasSuffix(lines[1], "11000 (oldest 1m5s)") ||
		!strings.HasSuffix(lines[2], "  0") {
		t.Fatalf("table:\n%s", b.String())
	}
}

func TestUnfinishedRowsShowAgeAndSends(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	rows := txnRows([]client.TxnInfo{
		{ID: "x", DecidedAt: now.Add(-90 * time.Second), DecisionSends: 7},
		{ID: "y", DecidedAt: now.Add(-time.Hour), Finished: true},
	}, now)
	if rows[0].AgeSeconds != 90 || rows[0].DecisionSends != 7 || rows[1].AgeSeconds != 0 {
		t.Fatalf("rows %+v", rows)
	}
	var b strings.Builder
	if err := printUnfinishedTable(&b, rows[:1]); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "AGE") || !strings.Contains(b.String(), "1m30s  7") {
		t.Fatalf("table:\n%s", b.String())
	}
}
