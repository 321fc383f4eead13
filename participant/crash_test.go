package participant_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/decree-tx/decree/participant"
	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
	"github.com/decree-tx/decree/txlog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// crashDirEnv tells the test binary, re-executed by TestCrashAfterYes, to
// run TestCrashChild against the named directory.
const crashDirEnv = "PARTICIPANT_CRASH_CHILD_DIR"

const (
	crashSenders = 8   // concurrent Prepare senders
	crashAcks    = 100 // YES votes before the parent kills the child
)

// TestCrashChild is the child side of TestCrashAfterYes: it serves a
// participant on a local port, prints the address, and serves until
// killed.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashDirEnv)
	if dir == "" {
		t.Skip("run as a child process by TestCrashAfterYes")
	}
	log, err := txlog.OpenParticipantLog(dir, txlog.Options{})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	p, err := participant.New(&kvResource{}, participant.Options{Log: log, Coordinators: []string{"127.0.0.1:1"}})
	if err != nil {
		t.Fatalf("new: %v", err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	p.Register(s)
	go func() { _ = s.Serve(lis) }()
	fmt.Fprintf(os.Stdout, "listening %s\n", lis.Addr())
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	<-ctx.Done() // the parent kills the child long before
}

// TestCrashAfterYes sends Prepares to a child process over gRPC from
// several goroutines, SIGKILLs it right after the crashAcks-th YES, and
// checks that every acknowledged YES is in the log with the resource's
// staged writes, and that no Prepare survived in part.
func TestCrashAfterYes(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	dir := t.TempDir()
	cmd, addr := startCrashChild(t, dir)
	acked := sendUntilKilled(t, addr, cmd)
	_ = cmd.Wait() // reports the kill
	t.Logf("killed the child after %d YES votes", len(acked))

	log := openLog(t, dir)
	for id := range acked {
		rec, found, err := log.GetTxn(id)
		if err != nil || !found || rec.State != txlog.PStatePrepared {
			t.Fatalf("acknowledged YES for %s lost: %+v, %v, %v", id, rec, found, err)
		}
	}
	checkWholePrepares(t, log)
	p := newParticipant(t, &kvResource{}, participant.Options{Log: log})
	if n := len(p.InDoubt()); n < len(acked) {
		t.Fatalf("%d in doubt after restart, want at least %d", n, len(acked))
	}
}

// startCrashChild starts the child serving a participant in dir and
// returns it with its address.
func startCrashChild(t *testing.T, dir string) (*exec.Cmd, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	t.Cleanup(cancel)
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
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if addr, ok := strings.CutPrefix(sc.Text(), "listening "); ok {
			return cmd, addr
		}
	}
	_ = cmd.Wait()
	t.Fatalf("child exited without serving; stderr:\n%s", stderr.String())
	return nil, ""
}

// sendUntilKilled sends Prepares from crashSenders goroutines and SIGKILLs
// the child by pid as soon as crashAcks YES votes arrived. It returns the
// ids voted YES.
func sendUntilKilled(t *testing.T, addr string, cmd *exec.Cmd) map[string]bool {
	t.Helper()
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithAuthority("self:1"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := decreev1.NewParticipantClient(conn)
	var (
		mu     sync.Mutex
		acked  = map[string]bool{}
		killed bool
		wg     sync.WaitGroup
	)
	for g := range crashSenders {
		wg.Go(func() {
			for i := 0; ; i++ {
				id := tid(fmt.Sprintf("g%d-%04d", g, i))
				req := prepareReq(id, fmt.Sprintf("set %s=v", id), 1)
				resp, err := client.Prepare(context.Background(), req)
				if err != nil {
					return // the child is dead
				}
				if resp.GetVote() != yes {
					t.Errorf("prepare %s: %v", id, resp)
				}
				// A YES that arrives after the kill was acknowledged
				// too, and counts.
				mu.Lock()
				acked[id] = true
				if len(acked) >= crashAcks && !killed {
					if err := syscall.Kill(cmd.Process.Pid, syscall.SIGKILL); err != nil {
						t.Errorf("kill child: %v", err)
					}
					killed = true
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return acked
}

// checkWholePrepares checks that every prepared record in log came with its
// staged write and lock, and that no staged write came without its record.
func checkWholePrepares(t *testing.T, log *txlog.ParticipantLog) {
	t.Helper()
	records := 0
	_ = log.ScanTxns(func(rec *txlog.PTxn) bool {
		records++
		if userValue(t, log, "lock/"+rec.ID) != rec.ID || userValue(t, log, "pending/"+rec.ID) != rec.ID+"=v" {
			t.Errorf("record %s without its staged writes", rec.ID)
		}
		return true
	})
	pending := 0
	_ = log.Scan([]byte("pending/"), func(_, _ []byte) bool { pending++; return true })
	if pending != records {
		t.Fatalf("%d staged writes for %d records", pending, records)
	}
}
