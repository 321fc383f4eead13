package participant

import (
	"context"
	"errors"
	"testing"
	"time"
)

// A call's context behaves as context.WithDeadline's: the earlier deadline,
// Done closed and Err set together at the deadline or when the stream's
// context ends, whether or not Done was asked for first.
func TestCallContext(t *testing.T) {
	t.Run("deadline passes, Err first", func(t *testing.T) {
		c := newCallContext(context.Background(), time.Now().Add(-time.Millisecond))
		defer c.release()
		if err := c.Err(); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Err = %v, want DeadlineExceeded", err)
		}
		select {
		case <-c.Done():
		default:
			t.Fatal("Err is set but Done is open")
		}
	})
	t.Run("deadline passes, Done first", func(t *testing.T) {
		c := newCallContext(context.Background(), time.Now().Add(20*time.Millisecond))
		defer c.release()
		if err := c.Err(); err != nil {
			t.Fatalf("Err = %v before the deadline", err)
		}
		select {
		case <-c.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("Done still open long after the deadline")
		}
		if err := c.Err(); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Err = %v, want DeadlineExceeded", err)
		}
	})
	t.Run("stream ends", func(t *testing.T) {
		parent, cancel := context.WithCancel(context.Background())
		c := newCallContext(parent, time.Now().Add(time.Hour))
		defer c.release()
		cancel()
		if err := c.Err(); !errors.Is(err, context.Canceled) {
			t.Fatalf("Err = %v, want Canceled", err)
		}
		<-c.Done()
	})
	t.Run("call over", func(t *testing.T) {
		c := newCallContext(context.Background(), time.Now().Add(time.Hour))
		c.release()
		if err := c.Err(); !errors.Is(err, context.Canceled) {
			t.Fatalf("Err = %v after the call, want Canceled", err)
		}
		<-c.Done()
		started := newCallContext(context.Background(), time.Now().Add(time.Hour))
		done := started.Done()
		started.release()
		<-done
	})
	t.Run("earlier deadline and values", func(t *testing.T) {
		type key struct{}
		early := time.Now().Add(time.Minute)
		parent, cancel := context.WithDeadline(context.WithValue(context.Background(), key{}, "v"), early)
		defer cancel()
		c := newCallContext(parent, early.Add(time.Hour))
		defer c.release()
		if d, ok := c.Deadline(); !ok || !d.Equal(early) {
			t.Fatalf("Deadline = %v, %v; want the stream's %v", d, ok, early)
		}
		if c2 := newCallContext(parent, early.Add(-time.Second)); func() time.Time { d, _ := c2.Deadline(); return d }() != early.Add(-time.Second) {
			t.Fatal("Deadline is not the call's earlier one")
		}
		if c.Value(key{}) != "v" {
			t.Fatal("the stream's values are lost")
		}
	})
}
