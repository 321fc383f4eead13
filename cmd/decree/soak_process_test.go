package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// soakStartLine is the line decree soak prints once its nodes run.
var soakStartLine = regexp.MustCompile(`soak: nodes \S+ \(pids (\d+) (\d+) (\d+)\), logs in (\S+)`)

// TestSoakBinary runs a short `decree soak` of the real binary and checks
// that it ran and measured: the series, the follower's kill, restart and
// catch-up, the plot, and that it left no process and no directory
// behind. It judges no target: a loaded 2-core machine may miss them.
func TestSoakBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("runs real processes for 20 s")
	}
	bin := decreeBinary(t)
	dir := t.TempDir()
	jsonPath, plotPath := filepath.Join(dir, "soak.json"), filepath.Join(dir, "soak.png")
	cmd := exec.Command(bin, "soak", "--duration", "20s", "--down", "4s", "--clients", "8", "--poll", "1s",
		"--report-every", "5s", "--fail-on-miss=false", "--json", jsonPath, "--plot", plotPath)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := runWithin(t, cmd, 2*time.Minute); err != nil {
		t.Fatalf("decree soak: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	m := soakStartLine.FindStringSubmatch(stderr.String())
	if m == nil {
		t.Fatalf("stderr lacks the nodes line:\n%s", stderr.String())
	}
	for _, want := range []string{"end s", "tx/s", "p99.9 ms", "n1 RSS", "n3 heap", "targets:", "catches up", "result: "} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, stdout.String())
		}
	}
	var rep soakReport
	b, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatalf("bad JSON: %v", err)
	}
	checkSoakReport(t, &rep)
	if png, err := os.ReadFile(plotPath); err != nil || !bytes.HasPrefix(png, []byte("\x89PNG")) {
		t.Errorf("plot is not a PNG (%v)", err)
	}
	pids := []int{rep.Kill.PID, rep.Kill.NewPID}
	for _, s := range m[1:4] {
		pid, _ := strconv.Atoi(s)
		pids = append(pids, pid)
	}
	checkGone(t, pids, m[4])
}

func checkSoakReport(t *testing.T, rep *soakReport) {
	t.Helper()
	if rep.Committed == 0 || len(rep.Seconds) < 15 || len(rep.Rows) < 3 {
		t.Fatalf("committed %d, %d seconds, %d rows: want transactions, >= 15 seconds, >= 3 rows",
			rep.Committed, len(rep.Seconds), len(rep.Rows))
	}
	for _, r := range rep.Rows {
		if len(r.Nodes) != 3 {
			t.Fatalf("row %+v lacks a node's memory", r)
		}
	}
	k := rep.Kill
	switch {
	case k == nil || k.Error != "":
		t.Fatalf("kill: %+v", k)
	case k.PID == 0 || k.NewPID == 0 || k.NewPID == k.PID:
		t.Fatalf("kill: pid %d, then %d: want two processes", k.PID, k.NewPID)
	case k.RestartedS < k.KilledAtS+4 || !k.CaughtUp || k.CaughtUpAtS < k.RestartedS || k.TargetIndex == 0:
		t.Fatalf("kill: %+v: want a restart 4 s after the kill and a catch-up after it", k)
	}
	var restarted, answered int
	for _, p := range rep.Polls {
		for _, n := range p.Nodes {
			if n.ID == k.Node && n.Incarnation == 1 && n.Answered {
				restarted++
			}
			if n.Answered && n.RSSBytes > 0 && n.GoHeapBytes > 0 {
				answered++
			}
		}
	}
	if restarted == 0 || answered < 30 {
		t.Fatalf("polls: %d readings of the restarted node, %d with memory figures", restarted, answered)
	}
	if len(rep.Targets) != 6 {
		t.Fatalf("%d targets, want 6: %+v", len(rep.Targets), rep.Targets)
	}
}

// checkGone checks that no process of pids is alive and dir is removed.
func checkGone(t *testing.T, pids []int, dir string) {
	t.Helper()
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("process %d: kill -0 answered %v, want no such process", pid, err)
		}
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temp dir %s: %v, want removed", dir, err)
	}
}

// TestSoakInterrupt interrupts a soak (as Ctrl-C does) once its nodes run:
// it reports the run so far and stops every node.
func TestSoakInterrupt(t *testing.T) {
	if testing.Short() {
		t.Skip("runs real processes")
	}
	cmd := exec.Command(decreeBinary(t), "soak", "--duration", "10m", "--clients", "4", "--fail-on-miss=false")
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	errPipe, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(errPipe)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var log strings.Builder
	// Wait for the nodes, then for some load: the first progress line
	// comes 10 s in.
	next := func(what string, match func(string) bool) {
		t.Helper()
		deadline := time.After(time.Minute)
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("soak ended before %s:\n%s", what, log.String())
				}
				log.WriteString(l + "\n")
				if match(l) {
					return
				}
			case <-deadline:
				t.Fatalf("no %s within a minute:\n%s", what, log.String())
			}
		}
	}
	var m []string
	next("nodes line", func(l string) bool { m = soakStartLine.FindStringSubmatch(l); return m != nil })
	next("progress line", func(l string) bool { return strings.Contains(l, "tx/s") })
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	go func() {
		for range lines { // keep the pipe flowing
		}
	}()
	if err := waitWithin(cmd, time.Minute); err != nil {
		t.Fatalf("after SIGINT: %v\n%s", err, log.String())
	}
	if !strings.Contains(stdout.String(), "result: ") || !strings.Contains(stdout.String(), "committed") {
		t.Fatalf("no report after the interrupt:\n%s", stdout.String())
	}
	var pids []int
	for _, s := range m[1:4] {
		pid, _ := strconv.Atoi(s)
		pids = append(pids, pid)
	}
	checkGone(t, pids, m[4])
}

func runWithin(t *testing.T, cmd *exec.Cmd, d time.Duration) error {
	t.Helper()
	if err := cmd.Start(); err != nil {
		return err
	}
	return waitWithin(cmd, d)
}

// waitWithin waits for cmd, killing it after d.
func waitWithin(cmd *exec.Cmd, d time.Duration) error {
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		cmd.Process.Kill()
		<-done
		return errors.New("still running after " + d.String())
	}
}
