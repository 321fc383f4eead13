package twopc

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// New panics on an invalid Config, as etcd raft's newRaft does: the
// Driver validates what it is given and returns the error instead.
func TestNewPanicsOnAnInvalidConfig(t *testing.T) {
	defer func() {
		if r := recover(); r == nil || !strings.Contains(fmt.Sprint(r), "RetryMin") {
			t.Fatalf("New with RetryMin > RetryMax: recovered %v, want a panic naming RetryMin", r)
		}
	}()
	New(Config{RetryMin: time.Hour, RetryMax: time.Second})
}

func TestEnsureDefaults(t *testing.T) {
	c := Config{PrepareTimeout: time.Second}.EnsureDefaults()
	if c.PrepareTimeout != time.Second || c.RetryMin != DefaultRetryMin || c.MaxInFlight != DefaultMaxInFlight || c.Rand == nil {
		t.Fatalf("EnsureDefaults = %+v: a set field must stay, zero fields take the defaults", c)
	}
}
