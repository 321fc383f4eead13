package backoff

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

const ms = time.Millisecond

func TestBaseDoublesToMax(t *testing.T) {
	p := Policy{Min: 50 * ms, Max: 1000 * ms}
	want := []time.Duration{50 * ms, 100 * ms, 200 * ms, 400 * ms, 800 * ms, 1000 * ms, 1000 * ms}
	for i, w := range want {
		if got := p.Base(i + 1); got != w {
			t.Errorf("Base(%d) = %v, want %v", i+1, got, w)
		}
		if got := p.Delay(i + 1); got != w {
			t.Errorf("Delay(%d) without Rand = %v, want %v", i+1, got, w)
		}
	}
	if got := p.Base(0); got != 50*ms {
		t.Errorf("Base(0) = %v, want Min", got)
	}
	if got := p.Base(math.MaxInt); got != 1000*ms {
		t.Errorf("Base(MaxInt) = %v, want Max", got)
	}
}

func TestMaxBelowMinIsMin(t *testing.T) {
	p := Policy{Min: time.Second, Max: 10 * ms}
	for n := 1; n < 4; n++ {
		if got := p.Base(n); got != time.Second {
			t.Errorf("Base(%d) = %v, want %v", n, got, time.Second)
		}
	}
}

// Every jittered delay lies in (d/2, d]: d itself at Rand 0, and just over
// d/2 as Rand nears 1.
func TestJitterRange(t *testing.T) {
	for _, tc := range []struct {
		r    float64
		want time.Duration
	}{
		{0, 100 * ms},
		{0.5, 75 * ms},
		{math.Nextafter(1, 0), 50*ms + 1},
	} {
		p := Policy{Min: 100 * ms, Max: time.Second, Rand: func() float64 { return tc.r }}
		if got := p.Delay(1); got != tc.want {
			t.Errorf("Rand %v: Delay(1) = %v, want %v", tc.r, got, tc.want)
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	p := Policy{Min: 3 * ms, Max: 5 * time.Second, Rand: rng.Float64}
	for n := 1; n < 20; n++ {
		d := p.Base(n)
		for range 200 {
			if got := p.Delay(n); got <= d/2 || got > d {
				t.Fatalf("Delay(%d) = %v, outside (%v, %v]", n, got, d/2, d)
			}
		}
	}
	// A tiny delay still stays in range.
	one := Policy{Min: 1, Max: 1, Rand: func() float64 { return math.Nextafter(1, 0) }}
	if got := one.Delay(1); got != 1 {
		t.Errorf("Delay of 1ns = %v, want 1ns", got)
	}
}

// The same source gives the same schedule.
func TestDeterministicGivenSource(t *testing.T) {
	run := func() []time.Duration {
		rng := rand.New(rand.NewPCG(42, 7))
		b := Backoff{Policy: Policy{Min: 10 * ms, Max: time.Second, Rand: rng.Float64}}
		var out []time.Duration
		for range 12 {
			out = append(out, b.Next())
		}
		return out
	}
	a, b := run(), run()
	distinct := map[time.Duration]bool{}
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("delay %d: %v then %v", i, a[i], b[i])
		}
		distinct[a[i]] = true
	}
	if len(distinct) < 6 {
		t.Fatalf("schedule %v barely jittered", a)
	}
}

func TestBackoffNextAndReset(t *testing.T) {
	b := Backoff{Policy: Policy{Min: 10 * ms, Max: 40 * ms}}
	for _, w := range []time.Duration{10 * ms, 20 * ms, 40 * ms, 40 * ms} {
		if got := b.Next(); got != w {
			t.Fatalf("Next = %v, want %v", got, w)
		}
	}
	b.Reset()
	if got := b.Next(); got != 10*ms {
		t.Fatalf("Next after Reset = %v, want %v", got, 10*ms)
	}
}
