// Package testpoll waits in tests for a condition to hold, polling with a
// deadline: the one way tests here wait for something, never a sleep of a
// guessed length.
package testpoll

import (
	"testing"
	"time"
)

// Every is how often Until checks its condition.
const Every = 5 * time.Millisecond

// Until polls cond every Every until it holds, failing t after d or when
// t's context ends; what names the condition in the failure.
func Until(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	UntilEvery(t, d, Every, what, cond)
}

// UntilEvery is Until polling every interval: a condition that costs
// calls to other processes is polled less often, so that the polling does
// not slow what it waits for.
func UntilEvery(t testing.TB, d, interval time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		select {
		case <-time.After(interval):
		case <-t.Context().Done():
			t.Fatal("test context done")
		}
	}
}
