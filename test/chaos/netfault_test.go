package chaos

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/rs/zerolog"
)

// firewall cuts links between members with iptables DROP rules in a chain
// of its own, jumped to from OUTPUT. Every member runs under its own group
// id, so a rule names the sender by `-m owner --gid-owner` and the receiver
// by its loopback IP: on lo every connection's source address is 127.0.0.1,
// so addresses alone cannot tell who is talking. A member's dialled
// connections carry all it sends (raft streams, forwarded calls, prepares,
// outcome queries), so dropping a sender's packets to an IP cuts that
// direction completely.
type firewall struct {
	chain string
	log   zerolog.Logger

	mu     sync.Mutex
	rules  [][]string
	closed bool
}

const chainPrefix = "DCHAOS-"

// firewallUsable says why iptables partitions cannot run here, or "".
func firewallUsable() string {
	if os.Geteuid() != 0 {
		return "not running as root"
	}
	if _, err := exec.LookPath("iptables"); err != nil {
		return "iptables is not installed (apt-get install -y iptables)"
	}
	if out, err := exec.Command("iptables", "-w", "10", "-S", "OUTPUT").CombinedOutput(); err != nil {
		return fmt.Sprintf("iptables does not work: %v: %s", err, strings.TrimSpace(string(out)))
	}
	return ""
}

// newFirewall sweeps chains left by dead runs, then creates this run's
// chain and jumps to it first thing in OUTPUT.
func newFirewall(log zerolog.Logger) (*firewall, error) {
	sweepStaleChains(log)
	f := &firewall{chain: chainPrefix + strconv.Itoa(os.Getpid()), log: log}
	if err := iptables("-N", f.chain); err != nil {
		return nil, err
	}
	if err := iptables("-I", "OUTPUT", "1", "-j", f.chain); err != nil {
		_ = iptables("-X", f.chain)
		return nil, err
	}
	return f, nil
}

// sweepStaleChains removes the chains of runs whose process is gone (a run
// killed by a test timeout cannot run its cleanup).
func sweepStaleChains(log zerolog.Logger) {
	out, err := exec.Command("iptables", "-w", "10", "-S").Output()
	if err != nil {
		return
	}
	for line := range strings.SplitSeq(string(out), "\n") {
		name, ok := strings.CutPrefix(line, "-N "+chainPrefix)
		if !ok {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(name))
		if err != nil || pid == os.Getpid() {
			continue
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
			continue // a live run owns it
		}
		chain := chainPrefix + strconv.Itoa(pid)
		log.Warn().Str("chain", chain).Msg("removing the iptables chain of a dead chaos run")
		_ = iptables("-D", "OUTPUT", "-j", chain)
		_ = iptables("-F", chain)
		_ = iptables("-X", chain)
	}
}

func iptables(args ...string) error {
	out, err := exec.Command("iptables", append([]string{"-w", "10"}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("iptables %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// isolate cuts every link between a member of a and a member of b, both
// ways.
func (f *firewall) isolate(a, b []*member) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return errors.New("firewall is closed")
	}
	for _, x := range a {
		for _, y := range b {
			for _, pair := range [][2]*member{{x, y}, {y, x}} {
				rule := []string{f.chain, "-m", "owner", "--gid-owner", strconv.Itoa(int(pair[0].proc.gid)),
					"-d", pair[1].ip + "/32", "-j", "DROP"}
				if err := iptables(append([]string{"-A"}, rule...)...); err != nil {
					return err
				}
				f.rules = append(f.rules, rule)
			}
		}
	}
	return nil
}

// heal removes every rule.
func (f *firewall) heal() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil
	}
	f.rules = nil
	return iptables("-F", f.chain)
}

// close removes the chain and its jump. It is idempotent and is called on
// every way out of the test: cleanup, panic, signal.
func (f *firewall) close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil
	}
	f.closed = true
	return errors.Join(iptables("-D", "OUTPUT", "-j", f.chain), iptables("-F", f.chain), iptables("-X", f.chain))
}

// linkProxy is a toxiproxy in front of one coordinator's peer port: every
// node (and every client that follows a leader hint) reaches that node
// through it. A fault adds toxics once; the heal replaces the whole proxy
// with a fresh one on the same address rather than removing toxics:
// toxiproxy's toxic removal waits for each link's pipeline to drain and can
// block forever on a busy link, so a wedged old proxy is abandoned instead
// (its connections are closed, which the nodes see as a network flap).
type linkProxy struct {
	srv      *toxiproxy.ApiServer
	listen   string // fixed after the first start
	upstream string
	log      zerolog.Logger

	mu sync.Mutex
	p  *toxiproxy.Proxy
	n  int
}

func newLinkProxy(listen, upstream string, log zerolog.Logger) (*linkProxy, error) {
	plog := log.With().Str("component", "toxiproxy").Logger().Level(zerolog.Disabled)
	l := &linkProxy{srv: toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), plog), listen: listen, upstream: upstream, log: log}
	if err := l.fresh(); err != nil {
		return nil, err
	}
	return l, nil
}

// fresh stops the current proxy, if any, and starts a new one without
// toxics on the same address.
func (l *linkProxy) fresh() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if old := l.p; old != nil {
		// Stop closes the listener at once, then waits for the accept
		// loop, which a wedged toxic collection can block: give it a
		// moment, then abandon it.
		stopped := make(chan struct{})
		go func() { old.Stop(); close(stopped) }()
		t := time.NewTimer(3 * time.Second)
		select {
		case <-stopped:
		case <-t.C:
			l.log.Warn().Msg("the old fault proxy is wedged; abandoning it")
		}
		t.Stop()
	}
	var last error
	err := poll(context.Background(), 5*time.Second, 50*time.Millisecond, func() bool {
		l.n++
		p := toxiproxy.NewProxy(l.srv, fmt.Sprintf("peer-%d", l.n), l.listen, l.upstream)
		if last = p.Start(); last != nil {
			return false // the old listener may still be closing
		}
		l.p, l.listen = p, p.Listen
		return true
	})
	if err != nil {
		return fmt.Errorf("start fault proxy on %s: %w (last: %v)", l.listen, err, last)
	}
	return nil
}

// addr is where the proxy listens.
func (l *linkProxy) addr() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.listen
}

// addToxics adds toxics to the current proxy. Adding one interrupts every
// link's pipeline, which can wedge on a busy link: after 3 s the proxy is
// replaced and the toxics go onto the fresh one.
func (l *linkProxy) addToxics(toxics ...string) error {
	for attempt := range 2 {
		l.mu.Lock()
		p := l.p
		l.mu.Unlock()
		done := make(chan error, 1)
		go func() {
			var errs []error
			for _, js := range toxics {
				_, err := p.Toxics.AddToxicJson(strings.NewReader(js))
				errs = append(errs, err)
			}
			done <- errors.Join(errs...)
		}()
		t := time.NewTimer(3 * time.Second)
		select {
		case err := <-done:
			t.Stop()
			return err
		case <-t.C:
			l.log.Warn().Int("attempt", attempt).Msg("adding toxics wedged; replacing the proxy")
			if err := l.fresh(); err != nil {
				return err
			}
		}
	}
	return errors.New("could not add toxics to the fault proxy")
}

func toxic(name, typ, stream string, toxicity float64, attrs string) string {
	return fmt.Sprintf(`{"name":%q,"type":%q,"stream":%q,"toxicity":%g,"attributes":%s}`, name, typ, stream, toxicity, attrs)
}

// slow delays both directions by latency±jitter.
func (l *linkProxy) slow(latency, jitter time.Duration) error {
	attrs := fmt.Sprintf(`{"latency":%d,"jitter":%d}`, latency.Milliseconds(), jitter.Milliseconds())
	return l.addToxics(toxic("slow-up", "latency", "upstream", 1, attrs), toxic("slow-down", "latency", "downstream", 1, attrs))
}

// lossy adds jitter, and black-holes about a third of the connections in
// each direction: all their data is dropped until, after hole, the proxy
// closes them. TCP cannot retransmit what the proxy swallowed, so a node
// sees stalls and broken streams, as under heavy loss, and each
// reconnection rolls the dice again.
func (l *linkProxy) lossy(hole time.Duration) error {
	attrs := fmt.Sprintf(`{"timeout":%d}`, hole.Milliseconds())
	return l.addToxics(
		toxic("jitter-up", "latency", "upstream", 1, `{"latency":10,"jitter":10}`),
		toxic("jitter-down", "latency", "downstream", 1, `{"latency":10,"jitter":10}`),
		toxic("loss-up", "timeout", "upstream", 0.35, attrs),
		toxic("loss-down", "timeout", "downstream", 0.35, attrs))
}

// clear heals: a fresh proxy without toxics.
func (l *linkProxy) clear() error { return l.fresh() }

func (l *linkProxy) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.p != nil {
		l.p.Stop()
		l.p = nil
	}
}

// sleepCtx waits d (a schedule interval, not a condition) and reports
// whether ctx is still live.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
