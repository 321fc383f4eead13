package txlog

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"go.etcd.io/raft/v3/raftpb"
)

// crashDirEnv tells the test binary, re-executed by TestCrashKill, to run
// TestCrashChild against the named directory.
const crashDirEnv = "TXLOG_CRASH_CHILD_DIR"

const (
	crashAcks       = 200     // acknowledgements before the parent kills the child
	crashMaxEntries = 100_000 // the child stops by itself if never killed
)

// TestCrashChild is the child side of TestCrashKill: it saves one entry per
// Save and acknowledges each on stdout once Save has returned.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashDirEnv)
	if dir == "" {
		t.Skip("run as a child process by TestCrashKill")
	}
	s, err := Open(dir, testID, Options{})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	for n := uint64(1); n <= crashMaxEntries; n++ {
		if err := s.Save(hardState(1, 1, n), []*raftpb.Entry{entry(1, n)}, nil); err != nil {
			t.Fatalf("save %d: %v", n, err)
		}
		if _, err := fmt.Fprintf(os.Stdout, "acked %d\n", n); err != nil {
			return // the parent is gone
		}
	}
}

// TestCrashKill kills a child process that is saving entries and checks
// that every entry it acknowledged survived.
func TestCrashKill(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestCrashChild$")
	cmd.Env = append(os.Environ(), crashDirEnv+"="+dir)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start child: %v", err)
	}

	acked, killed := readAcks(t, stdout, dir, cmd)
	_ = cmd.Wait() // reports the kill
	if !killed {
		t.Fatalf("child stopped after %d acks without being killed; stderr:\n%s", acked, stderr.String())
	}
	t.Logf("killed child after it acknowledged %d entries", acked)

	s := openStore(t, dir, nil)
	last, _ := s.LastIndex()
	if last < acked {
		t.Fatalf("last index %d < last acknowledged %d", last, acked)
	}
	checkLog(t, s, 1, last, entryRange(1, 1, acked+1))
	if hs, _, _ := s.InitialState(); hs.GetCommit() < acked {
		t.Fatalf("hard state commit %d < last acknowledged %d", hs.GetCommit(), acked)
	}
}

// readAcks reads the child's acknowledgements until its stdout closes,
// killing it once crashAcks arrived. Acknowledgements still in the pipe
// after the kill count too. While the child runs, it checks that the
// directory lock excludes other processes.
func readAcks(t *testing.T, stdout io.Reader, dir string, cmd *exec.Cmd) (acked uint64, killed bool) {
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		var n uint64
		if _, err := fmt.Sscanf(sc.Text(), "acked %d", &n); err != nil {
			continue
		}
		if n != acked+1 {
			t.Errorf("ack %d after %d", n, acked)
		}
		acked = n
		if acked == 1 {
			if _, err := Open(dir, testID, Options{}); !errors.Is(err, ErrLocked) {
				t.Errorf("open while the child runs: %v, want ErrLocked", err)
			}
		}
		if acked == crashAcks {
			if err := cmd.Process.Kill(); err != nil {
				t.Fatalf("kill child: %v", err)
			}
			killed = true
		}
	}
	return acked, killed
}

// TestCrashCloneKeepsSyncedWritesAndAtomicState opens stores from simulated
// crashes that keep all synced data and a random part of the rest.
func TestCrashCloneKeepsSyncedWritesAndAtomicState(t *testing.T) {
	cfgs := []vfs.CrashCloneCfg{{UnsyncedDataPercent: 0}, {UnsyncedDataPercent: 100, RNG: rand.New(rand.NewPCG(0, 0))}}
	for seed := range uint64(10) {
		cfgs = append(cfgs, vfs.CrashCloneCfg{UnsyncedDataPercent: 50, RNG: rand.New(rand.NewPCG(seed, 1))})
	}
	seen := map[uint64]int{}
	for i, cfg := range cfgs {
		applied := crashAndRecover(t, cfg)
		if cfg.UnsyncedDataPercent == 0 && applied != 5 {
			t.Fatalf("case %d: only synced data kept, applied = %d, want 5", i, applied)
		}
		seen[applied]++
	}
	t.Logf("recovered applied indexes: %v", seen)
}

// crashAndRecover writes a synced log, a state commit made durable by a
// later synced Save, and two unsynced state commits, the last one larger
// than a WAL block so that Pebble writes part of it (and all of the one
// before, unless its flusher lags) to the file without syncing. It then
// opens a crash clone, checks that the log is intact and that the state
// matches the applied index, and returns the applied index.
func crashAndRecover(t *testing.T, cfg vfs.CrashCloneCfg) uint64 {
	fs := vfs.NewCrashableMem()
	s, err := Open("db", testID, Options{FS: fs})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	mustSave(t, s, hardState(1, 1, 5), entryRange(1, 1, 6), nil)
	commitRecords(t, s, 5, crashRecords(1, 6, OutcomeCommitted)...)
	mustSave(t, s, hardState(1, 1, 11), entryRange(1, 6, 12), nil)
	commitRecords(t, s, 10, append(crashRecords(1, 2, OutcomeAborted), crashRecords(6, 11, OutcomeCommitted)...)...)
	b := s.NewStateBatch()
	b.Set([]byte("big"), bytes.Repeat([]byte{'x'}, 100<<10))
	if err := s.CommitState(b, 11); err != nil {
		t.Fatalf("commit state: %v", err)
	}

	crashed := fs.CrashClone(cfg)
	if err := s.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	c := openStore(t, "db", crashed)
	checkLog(t, c, 1, 11, entryRange(1, 1, 12))
	checkHardState(t, c, hardState(1, 1, 11))
	checkCrashState(t, c)
	return c.Applied()
}

// checkCrashState checks that c's records and big value are those of its
// applied index.
func checkCrashState(t *testing.T, c *Store) {
	t.Helper()
	at10 := append(crashRecords(1, 2, OutcomeAborted), crashRecords(2, 11, OutcomeCommitted)...)
	want, ok := map[uint64][]*Record{5: crashRecords(1, 6, OutcomeCommitted), 10: at10, 11: at10}[c.Applied()]
	if !ok {
		t.Fatalf("applied = %d, want 5, 10 or 11", c.Applied())
	}
	if got := allRecords(t, c); !slices.EqualFunc(got, want, recordEqual) {
		t.Fatalf("applied %d with records %+v, want %+v", c.Applied(), got, want)
	}
	if _, found, _ := c.GetState([]byte("big")); found != (c.Applied() == 11) {
		t.Fatalf("applied %d, big value present: %v", c.Applied(), found)
	}
}

// crashRecords returns the records t<i> for i in [lo, hi).
func crashRecords(lo, hi int, o Outcome) []*Record {
	var recs []*Record
	for i := lo; i < hi; i++ {
		recs = append(recs, record(fmt.Sprintf("t%02d", i), o))
	}
	return recs
}
