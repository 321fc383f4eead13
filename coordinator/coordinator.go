package coordinator

import (
	"errors"
	"fmt"

	"google.golang.org/grpc"

	"github.com/decree-tx/decree/txlog"
)

// Coordinator is one whole node: the raft Node and the 2PC Driver on it.
type Coordinator struct {
	Node   *Node
	Driver *Driver
}

// New starts a coordinator node on store, configured by cfg: the raft node
// with its peer transport, then the driver on it. The driver takes the
// node's Clock and Dial where cfg.Driver sets none, and logs through the
// node's Logger. The caller
// serves it (Register) and stops it (Stop); store stays the caller's.
func New(cfg Config, store *txlog.Store) (*Coordinator, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("coordinator config: %w", err)
	}
	dcfg := cfg.Driver
	if dcfg.Clock == nil {
		dcfg.Clock = cfg.Clock
	}
	if dcfg.Dial == nil {
		dcfg.Dial = cfg.Dial
	}
	dcfg.Logger = cfg.Logger // one root logger per node
	node, err := NewNode(cfg, store, nil)
	if err != nil {
		return nil, err
	}
	drv, err := NewDriver(node, dcfg)
	if err != nil {
		return nil, errors.Join(err, node.Stop())
	}
	return &Coordinator{Node: node, Driver: drv}, nil
}

// Register adds the node's gRPC services to s: Coordinator, Raft and Admin.
func (c *Coordinator) Register(s *grpc.Server) {
	c.Node.Register(s)
	c.Driver.Register(s)
}

// Stop stops the driver, then the node, and returns the node's error.
func (c *Coordinator) Stop() error {
	c.Driver.Stop()
	return c.Node.Stop()
}
