package coordinator

import (
	"context"
	"sync"
	"time"

	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
	"github.com/decree-tx/decree/txlog"
)

// decisionLog is what the Driver needs of the replicated decision log: its
// raft status, proposing and reading through raft, and the applied
// records. A *Node provides it in production (nodeLog); the simulation
// provides its own, so that the Driver it runs is the production one.
//
// Propose and ReadIndex are asynchronous: done runs exactly once, on any
// goroutine, with the result or why there is none (at the latest after
// timeout). It must not block.
type decisionLog interface {
	ID() uint64
	Status() Status
	// Done is closed when the log has stopped.
	Done() <-chan struct{}
	// PeerAddr is the address of cluster member id, if it is one.
	PeerAddr(id uint64) (string, bool)
	Propose(cmd *decreev1.Command, timeout time.Duration, done func(Result, error))
	ReadIndex(timeout time.Duration, done func(error))
	Record(id string) (*txlog.Record, bool, error)
	ScanRecords(fn func(*txlog.Record) bool) error
	ScanUnfinished(fn func(*txlog.Record) bool) error
	// Horizon is the retention horizon in unix nanoseconds: ids older
	// than it may have had records, now collected (0: none collected).
	Horizon() int64
}

// nodeLog is the decisionLog of a Node: each proposal and read waits on a
// goroutine of its own, which ends with the call; ctx (the Driver's)
// cancels them all, and wg counts them.
type nodeLog struct {
	n   *Node
	ctx context.Context
	wg  *sync.WaitGroup
}

func (l nodeLog) ID() uint64     { return l.n.ID() }
func (l nodeLog) Status() Status { return l.n.Status() }
func (l nodeLog) Horizon() int64 { return l.n.horizon.Load() }

func (l nodeLog) Done() <-chan struct{} { return l.n.Done() }

func (l nodeLog) PeerAddr(id uint64) (string, bool) {
	addr, ok := l.n.cfg.Peers[id]
	return addr, ok
}

func (l nodeLog) Record(id string) (*txlog.Record, bool, error) { return l.n.Record(id) }

func (l nodeLog) ScanRecords(fn func(*txlog.Record) bool) error { return l.n.store.ScanRecords(fn) }

func (l nodeLog) ScanUnfinished(fn func(*txlog.Record) bool) error {
	return l.n.store.ScanUnfinished(fn)
}

func (l nodeLog) Propose(cmd *decreev1.Command, timeout time.Duration, done func(Result, error)) {
	l.wg.Go(func() {
		ctx, cancel := context.WithTimeout(l.ctx, timeout)
		defer cancel()
		res, err := l.n.Propose(ctx, cmd)
		if err == nil && res.Err != nil {
			err = res.Err
		}
		done(res, err)
	})
}

func (l nodeLog) ReadIndex(timeout time.Duration, done func(error)) {
	l.wg.Go(func() {
		ctx, cancel := context.WithTimeout(l.ctx, timeout)
		defer cancel()
		done(l.n.ReadIndex(ctx))
	})
}
