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
	"sync"
	"syscall"
	"time"
)

// soakCluster runs real `decree start` processes on 127.0.0.1, each logging
// to a file in its directory. The soak's kill schedule starts and kills
// them while its poller reads their state.
type soakCluster struct {
	bin       string
	dir       string
	peers     string
	extra     []string // flags for every node
	endpoints []string
	nodes     []*soakProc
}

// soakProc is one node and its current process.
type soakProc struct {
	id      uint64
	addr    string
	dataDir string
	logPath string

	mu       sync.Mutex
	cmd      *exec.Cmd     // nil while the node is down
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
	exited := make(chan struct{})
	n.mu.Lock()
	n.cmd, n.exited, n.waitErr = cmd, exited, nil
	n.mu.Unlock()
	go func() {
		err := cmd.Wait()
		n.mu.Lock()
		if n.cmd == cmd {
			n.waitErr = err
		}
		n.mu.Unlock()
		close(exited)
	}()
	return nil
}

// procState is a node's process as the poller sees it.
type procState struct {
	pid      int // 0 while the node is down
	restarts int
	// exitErr is set when the current process exited on its own.
	exitErr error
}

func (n *soakProc) state() procState {
	n.mu.Lock()
	defer n.mu.Unlock()
	st := procState{restarts: n.restarts}
	if n.cmd == nil {
		return st
	}
	st.pid = n.cmd.Process.Pid
	select {
	case <-n.exited:
		st.exitErr = n.waitErr
		if st.exitErr == nil {
			st.exitErr = errors.New("exit status 0")
		}
	default:
	}
	return st
}

// pid is the process id of n's current process, 0 while it is down.
func (n *soakProc) pid() int { return n.state().pid }

// kill sends SIGKILL to n's process (by its PID) and waits until it is gone.
func (c *soakCluster) kill(n *soakProc) error {
	n.mu.Lock()
	cmd, exited := n.cmd, n.exited
	n.cmd = nil // from now on the node is down, not exited on its own
	n.mu.Unlock()
	if cmd == nil {
		return fmt.Errorf("node %d is not running", n.id)
	}
	err := cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		return fmt.Errorf("node %d (pid %d) still running 10s after SIGKILL", n.id, cmd.Process.Pid)
	}
	if err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("kill node %d: %w", n.id, err)
	}
	return nil
}

func (c *soakCluster) restart(n *soakProc) error {
	n.mu.Lock()
	running := n.cmd != nil
	if !running {
		n.restarts++
	}
	n.mu.Unlock()
	if running {
		return fmt.Errorf("node %d is still running", n.id)
	}
	return c.start(n)
}

// stop ends every process: SIGTERM, then SIGKILL to those still running
// after grace. It returns an error naming a node that had exited on its
// own with a failure before.
func (c *soakCluster) stop(grace time.Duration) error {
	var errs []error
	type proc struct {
		cmd    *exec.Cmd
		exited chan struct{}
	}
	var procs []proc
	for _, n := range c.nodes {
		if st := n.state(); st.exitErr != nil {
			errs = append(errs, fmt.Errorf("node %d exited during the run: %w (log: %s)", n.id, st.exitErr, n.logPath))
		}
		n.mu.Lock()
		if n.cmd != nil {
			procs = append(procs, proc{n.cmd, n.exited})
			_ = n.cmd.Process.Signal(syscall.SIGTERM)
		}
		n.cmd = nil
		n.mu.Unlock()
	}
	deadline := time.After(grace)
	for _, p := range procs {
		select {
		case <-p.exited:
		case <-deadline:
			_ = p.cmd.Process.Signal(syscall.SIGKILL)
			<-p.exited
		}
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
