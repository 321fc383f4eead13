package coordinator

import (
	"github.com/decree-tx/decree/txnspec"
)

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
