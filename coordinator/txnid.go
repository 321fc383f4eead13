package coordinator

import (
	"errors"

	"github.com/decree-tx/decree/txnspec"
)

// ErrForgotten marks a transaction id older than the retention horizon that
// has no record: its outcome, if it had one, was collected.
var ErrForgotten = errors.New("transaction is older than the retention horizon")

// isForgotten reports whether id was minted before the retention horizon
// (unix nanos). Ids that do not parse are never forgotten; they were
// refused at the door.
func isForgotten(id string, horizon int64) bool {
	if horizon == 0 {
		return false
	}
	t, err := txnspec.ParseID(id)
	return err == nil && t.UnixNano() < horizon
}
