package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// soakCluster runs real `decree start` processes on 127.0.0.1, each logging
// to a file in its directory. Only the soak's own goroutine calls it.
type soakCluster struct {
	bin       string
	dir       string
	peers     string
	extra     []string // flags for every node
	endpoints []string
	nodes     []*soakProc
}

// soakProc is one node: its process while it runs, nil while it is down.
type soakProc struct {
	id       uint64
	addr     string
	dataDir  string
	logPath  string
	cmd      *exec.Cmd
	exited   chan struct{} // closed when cmd has been waited for
	waitErr  error
	restarts int
}

// freeLoopbackAddrs finds n free ports on 127.0.0.1. They are released
// before the nodes bind them; another process taking one in between makes
// that node fail to start, and the soak report it.
func freeLoopbackAddrs(n int) ([]string, error) {
	var addrs []string
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		addrs = append(addrs, l.Addr().String())
		defer l.Close()
	}
	return addrs, nil
}

func startSoakCluster(bin, dir string, size int, extra []string) (_ *soakCluster, err error) {
	addrs, err := freeLoopbackAddrs(size)
	if err != nil {
		return nil, err
	}
	c := &soakCluster{bin: bin, dir: dir, extra: extra, endpoints: addrs}
	defer func() {
		if err != nil {
			c.stop(5 * time.Second)
		}
	}()
	var peers []string
	for i, a := range addrs {
		id := uint64(i + 1)
		peers = append(peers, fmt.Sprintf("%d=%s", id, a))
		ndir := filepath.Join(dir, "node"+strconv.FormatUint(id, 10))
		c.nodes = append(c.nodes, &soakProc{id: id, addr: a, dataDir: filepath.Join(ndir, "data"), logPath: filepath.Join(ndir, "node.log")})
		if err := os.MkdirAll(ndir, 0o755); err != nil {
			return nil, fmt.Errorf("create node dir: %w", err)
		}
	}
	c.peers = strings.Join(peers, ",")
	for _, n := range c.nodes {
		if err := c.start(n); err != nil {
			return nil, err
		}
	}
	return c, nil
}

func (c *soakCluster) node(id uint64) *soakProc { return c.nodes[id-1] }

// start runs n's process, with the same flags every time.
func (c *soakCluster) start(n *soakProc) error {
	args := append([]string{"start", "--id", strconv.FormatUint(n.id, 10), "--peers", c.peers,
		"--data-dir", n.dataDir, "--log-level", "warn"}, c.extra...)
	cmd := exec.Command(c.bin, args...)
	logf, err := os.OpenFile(n.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open node log: %w", err)
	}
	defer logf.Close() // the child has its own descriptor
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = childProcAttr()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start node %d: %w", n.id, err)
	}
	n.cmd, n.exited, n.waitErr = cmd, make(chan struct{}), nil
	go func(exited chan struct{}) {
		n.waitErr = cmd.Wait()
		close(exited)
	}(n.exited)
	return nil
}

// running reports whether n's process is up (started and not exited).
func (n *soakProc) running() bool {
	if n.cmd == nil {
		return false
	}
	select {
	case <-n.exited:
		return false
	default:
		return true
	}
}

// pid is the process id of n's current process, 0 while it is down.
func (n *soakProc) pid() int {
	if n.cmd == nil {
		return 0
	}
	return n.cmd.Process.Pid
}

// kill sends SIGKILL to n's process (by its PID) and waits until it is gone.
func (c *soakCluster) kill(n *soakProc) error {
	if n.cmd == nil {
		return fmt.Errorf("node %d is not running", n.id)
	}
	err := n.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-n.exited:
	case <-time.After(10 * time.Second):
		return fmt.Errorf("node %d (pid %d) still running 10s after SIGKILL", n.id, n.pid())
	}
	n.cmd = nil
	if err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("kill node %d: %w", n.id, err)
	}
	return nil
}

func (c *soakCluster) restart(n *soakProc) error {
	if n.cmd != nil {
		return fmt.Errorf("node %d is still running", n.id)
	}
	n.restarts++
	return c.start(n)
}

// stop ends every process: SIGTERM, then SIGKILL to those still running
// after grace. It returns an error naming a node that had exited on its
// own with a failure before.
func (c *soakCluster) stop(grace time.Duration) error {
	var errs []error
	for _, n := range c.nodes {
		if n.cmd == nil {
			continue
		}
		if !n.running() && n.waitErr != nil {
			errs = append(errs, fmt.Errorf("node %d exited during the run: %w (log: %s)", n.id, n.waitErr, n.logPath))
		}
		_ = n.cmd.Process.Signal(syscall.SIGTERM)
	}
	deadline := time.After(grace)
	for _, n := range c.nodes {
		if n.cmd == nil {
			continue
		}
		select {
		case <-n.exited:
		case <-deadline:
			_ = n.cmd.Process.Signal(syscall.SIGKILL)
			<-n.exited
		}
		n.cmd = nil
	}
	return errors.Join(errs...)
}

// logTail is the end of n's log, for an error message.
func (n *soakProc) logTail(max int) string {
	b, err := os.ReadFile(n.logPath)
	if err != nil {
		return ""
	}
	return tail(string(b), max)
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
