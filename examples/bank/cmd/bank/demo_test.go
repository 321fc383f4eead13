package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestDemoSurvivesLeaderKill runs a short demo with real decree processes,
// kills the leader halfway and expects a clean audit.
func TestDemoSurvivesLeaderKill(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process demo")
	}
	bin := filepath.Join(t.TempDir(), "decree")
	build := exec.Command("go", "build", "-o", bin, "github.com/decree-tx/decree/cmd/decree")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build decree: %v\n%s", err, out)
	}
	var stdout, stderr bytes.Buffer
	code := run([]string{"demo", "--decree", bin, "--duration", "6s", "--workers", "8", "--accounts", "20"}, &stdout, &stderr)
	out := stdout.String()
	if code != 0 {
		t.Fatalf("demo exited %d\nstdout:\n%s\nstderr:\n%s", code, out, stderr.String())
	}
	for _, want := range []string{"killed the coordinator leader", "took over as leader", "money conserved: yes", "leader failover       killed node"} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
}

func TestBankBadFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "usage"},
		{[]string{"nope"}, "unknown command"},
		{[]string{"demo", "--duration", "0s"}, "must be positive"},
		{[]string{"demo", "--decree", "/no/such/decree", "extra"}, "unexpected argument"},
		{[]string{"audit", "--banks", "127.0.0.1:1"}, "--expected is required"},
		{[]string{"server", "--name", "x"}, "are required"},
		{[]string{"workload", "--coordinators", "127.0.0.1:1"}, "--banks is required"},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(tc.args, &stdout, &stderr); code != 2 {
			t.Errorf("%v: exit %d, want 2", tc.args, code)
		}
		if !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("%v: stderr %q lacks %q", tc.args, stderr.String(), tc.want)
		}
	}
}
