package chaos

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/decree-tx/decree/coordinator/client"
	bankv1 "github.com/decree-tx/decree/proto/bank/v1"
)

// binaries are the programs under test, built for this run.
type binaries struct{ decree, bank string }

// buildBinaries builds decree and bank with CGO_ENABLED=0 into dir, from
// the module this test lives in.
func buildBinaries(ctx context.Context, dir string) (binaries, error) {
	root, err := moduleRoot(ctx)
	if err != nil {
		return binaries{}, err
	}
	b := binaries{decree: filepath.Join(dir, "decree"), bank: filepath.Join(dir, "bank")}
	for out, pkg := range map[string]string{b.decree: "./cmd/decree", b.bank: "./examples/bank/cmd/bank"} {
		cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", out, pkg)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if msg, err := cmd.CombinedOutput(); err != nil {
			return binaries{}, fmt.Errorf("go build %s: %w\n%s", pkg, err, msg)
		}
	}
	return b, nil
}

func moduleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("not inside the decree module")
	}
	return filepath.Dir(mod), nil
}

// member is one node of the system under test: a coordinator or a bank.
// Each has its own loopback IP (127.0.0.1x for coordinators, 127.0.0.2x for
// banks) and, when the firewall is in use, its own group id.
type member struct {
	name string
	kind string // "coordinator" or "bank"
	id   uint64 // coordinators: the raft id
	ip   string
	addr string // where it listens, ip:port
	// peerAddr is the address the other coordinators dial: addr, or the
	// fault proxy in front of it.
	peerAddr string
	dataDir  string
	proc     *proc
}

// clusterConfig shapes the system under test.
type clusterConfig struct {
	dir         string
	bins        binaries
	accounts    int
	initial     int64
	gidBase     uint32 // 0: do not set group ids
	proxiedNode uint64 // coordinator with a fault proxy in front of its peer port; 0: none
	log         zerolog.Logger
}

// cluster is 3 decree nodes and 3 bank servers on loopback.
type cluster struct {
	cfg       clusterConfig
	coords    []*member // coords[i] has raft id i+1
	banks     []*member
	peersFlag string
	endpoints []string // coordinators' client endpoints (their real addresses)
	bankAddrs []string
	proxy     *linkProxy
	admin     *client.Client // status and list queries of the harness itself
	bankConns []*grpc.ClientConn
}

const clusterSize = 3

// freePort reserves a free TCP port on ip and releases it for the caller.
func freePort(ip string) (string, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return "", fmt.Errorf("listen on %s (the whole 127/8 should route to lo): %w", ip, err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// newCluster lays out the members, starts the fault proxy if asked, and
// starts every process. It waits until a leader is elected and every bank
// answers.
func newCluster(ctx context.Context, cfg clusterConfig) (*cluster, error) {
	c := &cluster{cfg: cfg}
	var peers []string
	for i := range clusterSize {
		id := uint64(i + 1)
		ip := fmt.Sprintf("127.0.0.%d", 11+i)
		addr, err := freePort(ip)
		if err != nil {
			return nil, err
		}
		m := &member{name: fmt.Sprintf("decree-%d", id), kind: "coordinator", id: id, ip: ip, addr: addr, peerAddr: addr,
			dataDir: filepath.Join(cfg.dir, "data", fmt.Sprintf("decree-%d", id))}
		if id == cfg.proxiedNode {
			p, err := newLinkProxy(net.JoinHostPort(ip, "0"), addr, cfg.log)
			if err != nil {
				return nil, err
			}
			c.proxy = p
			m.peerAddr = p.addr()
		}
		c.coords = append(c.coords, m)
		c.endpoints = append(c.endpoints, addr)
		peers = append(peers, fmt.Sprintf("%d=%s", id, m.peerAddr))
	}
	c.peersFlag = strings.Join(peers, ",")
	for i := range clusterSize {
		ip := fmt.Sprintf("127.0.0.%d", 21+i)
		addr, err := freePort(ip)
		if err != nil {
			return nil, err
		}
		c.banks = append(c.banks, &member{name: fmt.Sprintf("bank-%d", i+1), kind: "bank", ip: ip, addr: addr, peerAddr: addr,
			dataDir: filepath.Join(cfg.dir, "data", fmt.Sprintf("bank-%d", i+1))})
		c.bankAddrs = append(c.bankAddrs, addr)
	}
	for i, m := range c.all() {
		m.proc = c.newProc(m, i)
	}
	var err error
	if c.admin, err = client.Dial(c.endpoints, client.Options{}); err != nil {
		return nil, err
	}
	for _, addr := range c.bankAddrs {
		cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return nil, err
		}
		c.bankConns = append(c.bankConns, cc)
	}
	for _, m := range c.all() {
		if err := m.proc.start(); err != nil {
			return c, err
		}
	}
	if _, err := c.leader(ctx, 30*time.Second); err != nil {
		return c, err
	}
	for _, b := range c.banks {
		if err := c.awaitBank(ctx, b, 30*time.Second); err != nil {
			return c, err
		}
	}
	return c, nil
}

func (c *cluster) newProc(m *member, i int) *proc {
	p := &proc{name: m.name, logPath: filepath.Join(c.cfg.dir, "logs", m.name+".log"), log: c.cfg.log}
	if c.cfg.gidBase != 0 {
		p.gid = c.cfg.gidBase + uint32(i)
	}
	if m.kind == "coordinator" {
		p.bin = c.cfg.bins.decree
		p.args = []string{"start", "--id", fmt.Sprint(m.id), "--peers", c.peersFlag, "--listen", m.addr,
			"--data-dir", m.dataDir, "--prepare-timeout", "2s", "--log-level", "info", "--log-format", "json"}
		if *flagParallel {
			p.args = append(p.args, "--parallel-commit")
		}
		return p
	}
	p.bin = c.cfg.bins.bank
	p.args = []string{"server", "--name", m.name, "--listen", m.addr, "--data-dir", m.dataDir,
		"--coordinators", strings.Join(c.endpoints, ","), "--accounts", fmt.Sprint(c.cfg.accounts),
		"--initial-balance", fmt.Sprint(c.cfg.initial), "--log-level", "info"}
	return p
}

func (c *cluster) all() []*member { return append(append([]*member(nil), c.coords...), c.banks...) }

func (c *cluster) bankIndex(m *member) int {
	for i, b := range c.banks {
		if b == m {
			return i
		}
	}
	return -1
}

// leader polls the nodes until they agree on a leader, at most for d.
func (c *cluster) leader(ctx context.Context, d time.Duration) (*member, error) {
	var last []client.NodeStatus
	err := poll(ctx, d, 50*time.Millisecond, func() bool {
		sctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		defer cancel()
		last = c.admin.Status(sctx)
		lead, ok := client.Leader(last)
		return ok && lead.ID >= 1 && lead.ID <= clusterSize
	})
	if err != nil {
		return nil, fmt.Errorf("no agreed leader within %v: %w (last status: %s)", d, err, statusLine(last))
	}
	lead, _ := client.Leader(last)
	return c.coords[lead.ID-1], nil
}

func statusLine(st []client.NodeStatus) string {
	var parts []string
	for _, n := range st {
		if n.Err != nil {
			parts = append(parts, n.Endpoint+"=unreachable")
			continue
		}
		parts = append(parts, fmt.Sprintf("%d=%s/term%d/leader%d/applied%d", n.ID, n.Role, n.Term, n.Leader, n.Applied))
	}
	return strings.Join(parts, " ")
}

// balances reads one bank's Balances.
func (c *cluster) balances(ctx context.Context, i int) (*bankv1.BalancesResponse, error) {
	cctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	return bankv1.NewBankClient(c.bankConns[i]).Balances(cctx, &bankv1.BalancesRequest{})
}

func (c *cluster) awaitBank(ctx context.Context, b *member, d time.Duration) error {
	i := c.bankIndex(b)
	var last error
	err := poll(ctx, d, 50*time.Millisecond, func() bool {
		_, last = c.balances(ctx, i)
		return last == nil
	})
	if err != nil {
		return fmt.Errorf("%s does not answer within %v: %w (last: %v)", b.name, d, err, last)
	}
	return nil
}

// awaitListening polls until m accepts TCP connections.
func awaitListening(ctx context.Context, m *member, d time.Duration) error {
	return poll(ctx, d, 20*time.Millisecond, func() bool {
		conn, err := net.DialTimeout("tcp", m.addr, 200*time.Millisecond)
		if err == nil {
			conn.Close()
		}
		return err == nil
	})
}

// restart starts a dead member again and waits until it listens.
func (c *cluster) restart(ctx context.Context, m *member) error {
	if err := m.proc.start(); err != nil {
		return err
	}
	return awaitListening(ctx, m, 20*time.Second)
}

// stopAll stops every process (SIGTERM, then SIGKILL) and reports the ones
// that did not stop cleanly.
func (c *cluster) stopAll(members []*member, grace time.Duration) []string {
	type res struct {
		name  string
		clean bool
		err   error
	}
	ch := make(chan res, len(members))
	for _, m := range members {
		go func() {
			if !m.proc.running() {
				ch <- res{m.name, true, nil}
				return
			}
			clean, err := m.proc.stop(grace)
			ch <- res{m.name, clean, err}
		}()
	}
	var unclean []string
	for range members {
		r := <-ch
		if !r.clean || r.err != nil {
			unclean = append(unclean, fmt.Sprintf("%s (err %v)", r.name, r.err))
		}
	}
	return unclean
}

// killAll is the emergency teardown: SIGKILL to every process still
// running, by its PID.
func (c *cluster) killAll() {
	for _, m := range c.all() {
		if m.proc != nil && m.proc.running() {
			_ = m.proc.resume()
			_ = m.proc.kill()
		}
	}
}

func (c *cluster) close() {
	c.killAll()
	if c.admin != nil {
		_ = c.admin.Close()
	}
	for _, cc := range c.bankConns {
		_ = cc.Close()
	}
	if c.proxy != nil {
		c.proxy.close()
	}
}

func (c *cluster) crashes() []string {
	var out []string
	for _, m := range c.all() {
		out = append(out, m.proc.crashed()...)
	}
	return out
}

// poll calls cond every interval until it holds, d passes or ctx ends. The
// number of attempts is bounded by d/interval (+1).
func poll(ctx context.Context, d, interval time.Duration, cond func() bool) error {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for range int(d/interval) + 2 {
		if cond() {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			return context.DeadlineExceeded
		case <-tick.C:
		}
	}
	return context.DeadlineExceeded
}
