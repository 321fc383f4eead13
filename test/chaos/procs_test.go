package chaos

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"
)

// proc is one real child process the test started: a `decree start` or a
// `bank server`. It is signalled only through its own PID, and it can be
// started again with the same arguments after it died.
type proc struct {
	name    string
	bin     string
	args    []string
	logPath string
	// gid, when non-zero, is the process's group id: the firewall tells
	// the nodes' packets apart by it (iptables -m owner --gid-owner).
	gid uint32
	log zerolog.Logger

	mu         sync.Mutex
	cmd        *exec.Cmd
	done       chan struct{} // closed when the running process has exited
	expectExit bool          // set before we kill or stop it
	paused     bool
	starts     int
	crashes    []string // exits nobody asked for
}

// start runs the process. Its output is appended to logPath, so the log of
// a node survives its restarts.
func (p *proc) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		select {
		case <-p.done:
		default:
			return fmt.Errorf("%s is already running (pid %d)", p.name, p.cmd.Process.Pid)
		}
	}
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close() // the child holds its own descriptor
	cmd := exec.Command(p.bin, p.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Pdeathsig: if the test process dies without cleaning up, its
	// children die with it instead of holding ports and data dirs.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if p.gid != 0 {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(os.Getuid()), Gid: p.gid, NoSetGroups: true}
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	done := make(chan struct{})
	p.cmd, p.done, p.expectExit, p.paused = cmd, done, false, false
	p.starts++
	go p.wait(cmd, done)
	p.log.Debug().Str("proc", p.name).Int("pid", cmd.Process.Pid).Msg("started")
	return nil
}

func (p *proc) wait(cmd *exec.Cmd, done chan struct{}) {
	err := cmd.Wait()
	p.mu.Lock()
	if !p.expectExit {
		msg := fmt.Sprintf("%s (pid %d) exited on its own: %v", p.name, cmd.Process.Pid, err)
		p.crashes = append(p.crashes, msg)
		p.log.Error().Str("proc", p.name).Err(err).Msg("process exited unexpectedly")
	}
	p.mu.Unlock()
	close(done)
}

// pid returns the running process's id, or 0.
func (p *proc) pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.exited() {
		return 0
	}
	return p.cmd.Process.Pid
}

// exited reports whether the last started process has exited. p.mu held.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *proc) running() bool { return p.pid() != 0 }

// signal sends sig to the running process by its PID.
func (p *proc) signal(sig syscall.Signal, expectExit bool) (chan struct{}, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.exited() {
		return nil, fmt.Errorf("%s is not running", p.name)
	}
	if expectExit {
		p.expectExit = true
	}
	if err := p.cmd.Process.Signal(sig); err != nil {
		return nil, fmt.Errorf("signal %v to %s (pid %d): %w", sig, p.name, p.cmd.Process.Pid, err)
	}
	switch sig {
	case syscall.SIGSTOP:
		p.paused = true
	case syscall.SIGCONT:
		p.paused = false
	}
	return p.done, nil
}

// kill sends SIGKILL and waits for the process to be reaped.
func (p *proc) kill() error {
	done, err := p.signal(syscall.SIGKILL, true)
	if err != nil {
		return err
	}
	return awaitExit(p.name, done, 10*time.Second)
}

func (p *proc) pause() error {
	_, err := p.signal(syscall.SIGSTOP, false)
	return err
}

func (p *proc) resume() error {
	_, err := p.signal(syscall.SIGCONT, false)
	return err
}

// stop asks the process to stop (SIGTERM) and kills it when it has not
// exited within grace. It reports whether the stop was clean.
func (p *proc) stop(grace time.Duration) (clean bool, err error) {
	p.mu.Lock()
	paused := p.paused
	p.mu.Unlock()
	if paused {
		_ = p.resume()
	}
	done, err := p.signal(syscall.SIGTERM, true)
	if err != nil {
		return false, err
	}
	if awaitExit(p.name, done, grace) == nil {
		return true, nil
	}
	p.log.Warn().Str("proc", p.name).Dur("grace", grace).Msg("did not stop on SIGTERM; killing it")
	return false, p.kill()
}

// crashed returns the exits nobody asked for.
func (p *proc) crashed() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.crashes...)
}

func awaitExit(name string, done chan struct{}, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
		return nil
	case <-t.C:
		return errors.New(name + " did not exit in time")
	}
}
