package coordinator

import "github.com/decree-tx/decree/coordinator/internal/twopc"

// The 2PC core is the package internal/twopc; these are the names of it
// that configuring a node needs.

// CoreConfig configures the 2PC core (DriverConfig.Core).
type CoreConfig = twopc.Config

// Defaults of CoreConfig's fields.
const (
	DefaultPrepareTimeout = twopc.DefaultPrepareTimeout
	DefaultRetryMin       = twopc.DefaultRetryMin
	DefaultRetryMax       = twopc.DefaultRetryMax
	DefaultFinishBatch    = twopc.DefaultFinishBatch
	DefaultFinishDelay    = twopc.DefaultFinishDelay
	DefaultRetention      = twopc.DefaultRetention
	DefaultCollectEvery   = twopc.DefaultCollectEvery
	DefaultRescanEvery    = twopc.DefaultRescanEvery
	DefaultMaxInFlight    = twopc.DefaultMaxInFlight
	DefaultMaxHeldBytes   = twopc.DefaultMaxHeldBytes
)
