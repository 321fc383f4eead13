package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/decree-tx/decree/coordinator/client"
)

// coordinators runs a local cluster of real `decree start` processes.
type coordinators struct {
	bin   string
	dir   string
	addrs []string // node i+1 listens on addrs[i]
	peers string
	procs map[uint64]*exec.Cmd
}

// findDecree locates the decree binary: the flag, next to this program, or
// on PATH.
func findDecree(flagValue string) (string, error) {
	if flagValue != "" {
		return flagValue, nil
	}
	if self, err := os.Executable(); err == nil {
		if p := filepath.Join(filepath.Dir(self), "decree"); isFile(p) {
			return p, nil
		}
	}
	if p, err := exec.LookPath("decree"); err == nil {
		return p, nil
	}
	return "", usagef("cannot find the decree binary: run 'make build' or pass --decree")
}

func isFile(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}

// freeAddrs reserves n loopback ports and releases them for the caller.
func freeAddrs(n int) ([]string, error) {
	var out []string
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		out = append(out, l.Addr().String())
		defer l.Close()
	}
	return out, nil
}

func startCoordinators(bin, dir string, n int) (*coordinators, error) {
	addrs, err := freeAddrs(n)
	if err != nil {
		return nil, err
	}
	var parts []string
	for i, a := range addrs {
		parts = append(parts, fmt.Sprintf("%d=%s", i+1, a))
	}
	c := &coordinators{bin: bin, dir: dir, addrs: addrs, peers: strings.Join(parts, ","), procs: map[uint64]*exec.Cmd{}}
	for id := range uint64(n) {
		if err := c.start(id + 1); err != nil {
			c.stopAll()
			return nil, err
		}
	}
	return c, nil
}

func (c *coordinators) start(id uint64) error {
	logPath := filepath.Join(c.dir, fmt.Sprintf("decree-%d.log", id))
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(c.bin, "start", "--id", fmt.Sprint(id), "--listen", c.addrs[id-1], "--peers", c.peers,
		"--data-dir", filepath.Join(c.dir, fmt.Sprintf("node-%d", id)))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start coordinator %d: %w", id, err)
	}
	c.procs[id] = cmd
	return nil
}

// kill sends SIGKILL to a node this program started, by its PID.
func (c *coordinators) kill(id uint64) {
	if cmd, ok := c.procs[id]; ok {
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
		delete(c.procs, id)
	}
}

// stopAll asks every node to stop (SIGTERM), then kills stragglers.
func (c *coordinators) stopAll() {
	for _, cmd := range c.procs {
		_ = cmd.Process.Signal(syscall.SIGTERM)
	}
	for id, cmd := range c.procs {
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Signal(syscall.SIGKILL)
			<-done
		}
		delete(c.procs, id)
	}
}

// awaitLeader polls until the nodes agree on a leader other than not.
func awaitLeader(ctx context.Context, cl *client.Client, not uint64) (client.NodeStatus, error) {
	for {
		sctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		lead, ok := client.Leader(cl.Status(sctx))
		cancel()
		if ok && lead.ID != not {
			return lead, nil
		}
		select {
		case <-ctx.Done():
			return client.NodeStatus{}, fmt.Errorf("no leader: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}
