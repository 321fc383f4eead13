package partcall

import (
	"testing"
	"time"

	"github.com/decree-tx/decree/internal/testpoll"
)

// waitFor polls cond until it holds, failing t after d.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	testpoll.Until(t, d, what, cond)
}
