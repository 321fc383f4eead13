package txlog

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"
)

// pcrashDirEnv tells the test binary, re-executed by
// TestParticipantLogCrashKill, to run TestParticipantLogCrashChild against
// the named directory.
const pcrashDirEnv = "TXLOG_PCRASH_CHILD_DIR"

// TestParticipantLogCrashChild is the child side of
// TestParticipantLogCrashKill: it commits one batch (a prepared record and
// two user keys) at a time and acknowledges each on stdout once Commit has
// returned.
func TestParticipantLogCrashChild(t *testing.T) {
	dir := os.Getenv(pcrashDirEnv)
	if dir == "" {
		t.Skip("run as a child process by TestParticipantLogCrashKill")
	}
	l, err := OpenParticipantLog(dir, Options{})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	for n := range crashMaxEntries {
		if err := l.Commit(crashBatch(l, n, 64)); err != nil {
			t.Fatalf("commit %d: %v", n, err)
		}
		if _, err := fmt.Fprintf(os.Stdout, "acked %d\n", n+1); err != nil {
			return // the parent is gone
		}
	}
}

// TestParticipantLogCrashKill kills a child process that is committing
// batches and checks that every batch it acknowledged survived whole (batch
// n-1 is acknowledged as "acked n").
func TestParticipantLogCrashKill(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestParticipantLogCrashChild$")
	cmd.Env = append(os.Environ(), pcrashDirEnv+"="+dir)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start child: %v", err)
	}
	// readAcks also checks that the directory lock keeps other processes
	// out while the child runs.
	acked, killed := readAcks(t, stdout, dir, cmd)
	_ = cmd.Wait()
	if !killed {
		t.Fatalf("child stopped after %d acks without being killed; stderr:\n%s", acked, stderr.String())
	}
	t.Logf("killed child after it acknowledged %d commits", acked)
	l := openPLog(t, dir, nil)
	if kept := checkCrashBatches(t, l, int(acked)+2); kept < int(acked) {
		t.Fatalf("%d commits survived, %d were acknowledged", kept, acked)
	}
}
