package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/mattn/go-isatty"

	"github.com/decree-tx/decree/examples/bank/workload"
)

// progress prints a live line once a second: rewritten in place on a
// terminal, one line per second otherwise (CI logs).
type progress struct {
	w      io.Writer
	stats  *workload.Stats
	extra  func(context.Context) string
	tty    bool
	mu     sync.Mutex
	last   workload.Snapshot
	cancel context.CancelFunc
	done   chan struct{}
}

func newProgress(w io.Writer, s *workload.Stats, extra func(context.Context) string) *progress {
	f, ok := w.(*os.File)
	return &progress{w: w, stats: s, extra: extra, tty: ok && isatty.IsTerminal(f.Fd()), done: make(chan struct{})}
}

func (p *progress) run(ctx context.Context) {
	ctx, p.cancel = context.WithCancel(ctx)
	defer close(p.done)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			if p.tty {
				fmt.Fprintln(p.w)
			}
			return
		case <-t.C:
			p.print(ctx)
		}
	}
}

func (p *progress) stop() {
	if p.cancel != nil {
		p.cancel()
		<-p.done
	}
}

// println prints a message between progress lines.
func (p *progress) println(format string, a ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.tty {
		fmt.Fprint(p.w, "\r\033[K")
	}
	fmt.Fprintf(p.w, format+"\n", a...)
}

func (p *progress) print(ctx context.Context) {
	now := time.Now()
	s := p.stats.Snapshot(now)
	p.mu.Lock()
	prev := p.last
	p.last = s
	p.mu.Unlock()
	rate := float64(s.Committed+s.AbortedTotal()-prev.Committed-prev.AbortedTotal()) / max((s.Elapsed-prev.Elapsed).Seconds(), 1e-3)
	line := fmt.Sprintf("[%5.1fs] %6.0f tx/s | committed %d | aborted %d | errors %d | p50 %v p99 %v",
		s.Elapsed.Seconds(), rate, s.Committed, s.AbortedTotal(), s.Errors, round(s.P50), round(s.P99))
	if x := p.extra(ctx); x != "" {
		line += " | " + x
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.tty {
		fmt.Fprint(p.w, "\r\033[K"+line)
		return
	}
	fmt.Fprintln(p.w, line)
}

func round(d time.Duration) time.Duration {
	switch {
	case d >= time.Second:
		return d.Round(10 * time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond)
	default:
		return d.Round(time.Microsecond)
	}
}

// formatSummary is the workload part of a final report.
func formatSummary(s workload.Snapshot) string {
	var b strings.Builder
	fmt.Fprintf(&b, "  transfers committed   %d\n", s.Committed)
	fmt.Fprintf(&b, "  transfers aborted     %d", s.AbortedTotal())
	if s.AbortedTotal() > 0 {
		fmt.Fprintf(&b, "  (%s)", s.AbortSummary())
	}
	fmt.Fprintf(&b, "\n  errors                %d", s.Errors)
	if s.LastError != "" {
		fmt.Fprintf(&b, "  (last: %s)", s.LastError)
	}
	fmt.Fprintf(&b, "\n  throughput            %.0f tx/s over %.1fs\n", s.Throughput(), s.Elapsed.Seconds())
	fmt.Fprintf(&b, "  latency               p50 %v  p90 %v  p99 %v  p99.9 %v  max %v",
		round(s.P50), round(s.P90), round(s.P99), round(s.P999), round(s.Max))
	return b.String()
}
