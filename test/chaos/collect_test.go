package chaos

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/decree-tx/decree/coordinator"
	"github.com/decree-tx/decree/coordinator/client"
	"github.com/decree-tx/decree/txlog"
)

// quietResult is the state of the system when the harness stopped waiting
// for it to settle.
type quietResult struct {
	Quiet bool `json:"quiet"`
	// After is how long after the last heal (or the workload's end, if
	// later) it took to settle, or how long the harness waited.
	After        time.Duration `json:"after_ns"`
	Undecided    []string      `json:"undecided,omitempty"`  // coordinators: in voting
	Unfinished   []string      `json:"unfinished,omitempty"` // coordinators: decided, phase 2 not acknowledged
	Reservations int           `json:"reservations"`
	ReservedBy   []string      `json:"reserved_by,omitempty"`
	InDoubt      int           `json:"in_doubt"`
	LastErr      string        `json:"last_err,omitempty"`
}

// awaitQuiet polls the coordinators and the banks until nothing is
// undecided, unfinished, reserved or in doubt, or until deadline.
func awaitQuiet(ctx context.Context, c *cluster, since, deadline time.Time) quietResult {
	var q quietResult
	check := func() bool {
		q = quietResult{}
		lctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		und, err := c.admin.List(lctx, client.FilterUndecided, 0)
		if err != nil {
			q.LastErr = err.Error()
			return false
		}
		unf, err := c.admin.List(lctx, client.FilterUnfinished, 0)
		if err != nil {
			q.LastErr = err.Error()
			return false
		}
		for _, t := range und {
			q.Undecided = append(q.Undecided, t.ID)
		}
		for _, t := range unf {
			q.Unfinished = append(q.Unfinished, t.ID)
		}
		for i := range c.banks {
			r, err := c.balances(ctx, i)
			if err != nil {
				q.LastErr = err.Error()
				return false
			}
			q.Reservations += int(r.GetReservations())
			q.InDoubt += int(r.GetInDoubt())
			for _, a := range r.GetAccounts() {
				if a.GetReservedBy() != "" {
					q.ReservedBy = append(q.ReservedBy, a.GetReservedBy())
				}
			}
		}
		return len(q.Undecided) == 0 && len(q.Unfinished) == 0 && q.Reservations == 0 && q.InDoubt == 0
	}
	err := poll(ctx, time.Until(deadline), 100*time.Millisecond, check)
	q.Quiet = err == nil
	q.After = time.Since(since)
	return q
}

// awaitConverged polls until every coordinator answers with the same
// commit and applied index twice in a row, so that their stores can be
// compared after they stop.
func awaitConverged(ctx context.Context, c *cluster, d time.Duration) (string, error) {
	var prev, line string
	err := poll(ctx, d, 200*time.Millisecond, func() bool {
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		st := c.admin.Status(sctx)
		line = statusLine(st)
		for _, n := range st {
			if n.Err != nil || n.Applied != st[0].Applied || n.Commit != st[0].Commit || n.Applied != n.Commit {
				prev = ""
				return false
			}
		}
		same := prev == line
		prev = line
		return same
	})
	return line, err
}

// bankFinal is what one bank holds at the end: its balances (read over
// gRPC while it ran) and every transaction's state in its participant log
// (read from disk after it stopped).
type bankFinal struct {
	Addr         string
	Balances     map[string]int64
	Reservations int
	InDoubt      int
	Txns         map[string]txlog.PState
	// Times holds, per transaction this bank prepared, when it prepared
	// and decided it (unix ns, the bank's clock; 0 when it did not).
	Times map[string][2]int64
}

func readBalances(ctx context.Context, c *cluster) (map[string]*bankFinal, error) {
	out := map[string]*bankFinal{}
	for i, b := range c.banks {
		r, err := c.balances(ctx, i)
		if err != nil {
			return nil, fmt.Errorf("balances of %s: %w", b.name, err)
		}
		f := &bankFinal{Addr: b.addr, Balances: map[string]int64{}, Reservations: int(r.GetReservations()), InDoubt: int(r.GetInDoubt())}
		for _, a := range r.GetAccounts() {
			f.Balances[a.GetName()] = a.GetBalance()
		}
		out[b.addr] = f
	}
	return out, nil
}

// readParticipantLogs opens each stopped bank's participant log and reads
// every transaction's state.
func readParticipantLogs(c *cluster, finals map[string]*bankFinal) error {
	for _, b := range c.banks {
		l, err := txlog.OpenParticipantLog(b.dataDir, txlog.Options{})
		if err != nil {
			return fmt.Errorf("open the log of %s: %w", b.name, err)
		}
		txns := map[string]txlog.PState{}
		times := map[string][2]int64{}
		err = l.ScanTxns(func(t *txlog.PTxn) bool {
			txns[t.ID] = t.State
			if t.PreparedAt != 0 {
				times[t.ID] = [2]int64{t.PreparedAt, t.DecidedAt}
			}
			return true
		})
		if cerr := l.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("scan the log of %s: %w", b.name, err)
		}
		finals[b.addr].Txns, finals[b.addr].Times = txns, times
	}
	return nil
}

// nodeFinal is one coordinator's transaction-record table, read from its
// stopped data dir.
type nodeFinal struct {
	ID      uint64
	Applied uint64
	Records map[string]*txlog.Record
}

func readCoordinatorStores(c *cluster) ([]*nodeFinal, error) {
	peers, err := coordinator.ParsePeers(c.peersFlag)
	if err != nil {
		return nil, err
	}
	cid := coordinator.ClusterID("decree", peers)
	var out []*nodeFinal
	for _, m := range c.coords {
		s, err := txlog.Open(m.dataDir, txlog.Identity{ClusterID: cid, NodeID: m.id}, txlog.Options{})
		if err != nil {
			return nil, fmt.Errorf("open the store of %s: %w", m.name, err)
		}
		n := &nodeFinal{ID: m.id, Applied: s.Applied(), Records: map[string]*txlog.Record{}}
		err = s.ScanRecords(func(r *txlog.Record) bool {
			n.Records[r.ID] = r
			return true
		})
		if cerr := s.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return nil, fmt.Errorf("scan the records of %s: %w", m.name, err)
		}
		out = append(out, n)
	}
	slices.SortFunc(out, func(a, b *nodeFinal) int { return int(a.ID) - int(b.ID) })
	return out, nil
}
