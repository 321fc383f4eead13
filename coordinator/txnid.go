package coordinator

import (
	"errors"
	"time"

	"github.com/decree-tx/decree/txlog"
)

// ErrForgotten marks a transaction id older than the retention horizon that
// has no record: its outcome, if it had one, was collected.
var ErrForgotten = errors.New("transaction is older than the retention horizon")

// parseTxnID checks that id is a UUIDv7 in canonical text form and returns
// the millisecond timestamp it carries. Ids must be time-ordered so that an
// old id without a record can be told apart (FORGOTTEN) from a new one
// (presumed aborted).
func parseTxnID(id string) (time.Time, error) { return txlog.ParseTxnID(id) }

// isForgotten reports whether id was minted before the retention horizon
// (unix nanos). Ids that do not parse are never forgotten; they were
// refused at the door.
func isForgotten(id string, horizon int64) bool {
	if horizon == 0 {
		return false
	}
	t, err := parseTxnID(id)
	return err == nil && t.UnixNano() < horizon
}
