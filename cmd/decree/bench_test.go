package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/rs/zerolog"
)

// runBenchJSON runs `decree bench` with args plus --json and returns the
// decoded JSON.
func runBenchJSON(t *testing.T, args ...string) map[string]any {
	t.Helper()
	out := filepath.Join(t.TempDir(), "bench.json")
	var stdout, stderr bytes.Buffer
	if code := run(append(append([]string{"bench"}, args...), "--json", out), &stdout, &stderr); code != 0 {
		t.Fatalf("bench %v: exit %d\nstdout:\n%s\nstderr:\n%s", args, code, stdout.String(), stderr.String())
	}
	for _, want := range []string{"committed", "latency p99.9", "fsyncs/txn", "cpu s/txn"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, stdout.String())
		}
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var res map[string]any
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatalf("bad JSON: %v\n%s", err, b)
	}
	for _, k := range []string{"tx_per_sec", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms", "committed", "aborted", "errors",
		"clients", "participants", "duration_s", "cpu_s_per_tx", "fsyncs_per_tx", "coordinator_fsyncs_per_tx", "participant_fsyncs_per_tx", "gomaxprocs"} {
		if _, ok := res[k]; !ok {
			t.Errorf("JSON lacks key %q", k)
		}
	}
	return res
}

func num(t *testing.T, res map[string]any, k string) float64 {
	t.Helper()
	v, ok := res[k].(float64)
	if !ok {
		t.Fatalf("JSON key %q is %v, not a number", k, res[k])
	}
	return v
}

// checkSane checks what every successful run must show.
func checkSane(t *testing.T, res map[string]any, count float64) {
	t.Helper()
	if got := num(t, res, "committed") + num(t, res, "aborted"); got != count {
		t.Errorf("committed+aborted = %v, want %v", got, count)
	}
	if e := num(t, res, "errors"); e != 0 {
		t.Errorf("errors = %v, want 0 (samples: %v)", e, res["error_samples"])
	}
	if v := num(t, res, "tx_per_sec"); v <= 0 {
		t.Errorf("tx_per_sec = %v", v)
	}
	if v := num(t, res, "duration_s"); v <= 0 {
		t.Errorf("duration_s = %v", v)
	}
	prev := 0.0
	for _, k := range []string{"p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"} {
		v := num(t, res, k)
		if v <= 0 || v < prev || v > 60_000 {
			t.Errorf("%s = %v (previous percentile %v)", k, v, prev)
		}
		prev = v
	}
	if num(t, res, "committed") > 0 {
		// A decision is fsynced by a raft majority; every participant
		// syncs its vote.
		if v := num(t, res, "coordinator_fsyncs_per_tx"); v <= 0 || v > 20 {
			t.Errorf("coordinator_fsyncs_per_tx = %v", v)
		}
		if v := num(t, res, "participant_fsyncs_per_tx"); v < 1 || v > 20 {
			t.Errorf("participant_fsyncs_per_tx = %v", v)
		}
		if v, c := num(t, res, "fsyncs_per_tx"), num(t, res, "coordinator_fsyncs_per_tx")+num(t, res, "participant_fsyncs_per_tx"); v < c-1e-9 || v > c+1e-9 {
			t.Errorf("fsyncs_per_tx = %v, want coordinator + participant = %v", v, c)
		}
		if v := num(t, res, "cpu_s_per_tx"); v <= 0 || v > 10 {
			t.Errorf("cpu_s_per_tx = %v", v)
		}
	}
}

func TestBenchEmbedded(t *testing.T) {
	png := filepath.Join(t.TempDir(), "bench.png")
	res := runBenchJSON(t, "--embedded", "--count", "200", "--clients", "4", "--plot", png)
	checkSane(t, res, 200)
	if c := num(t, res, "committed"); c != 200 {
		t.Errorf("committed = %v, want 200", c)
	}
	if n := num(t, res, "clients"); n != 4 {
		t.Errorf("clients = %v, want 4", n)
	}
	b, err := os.ReadFile(png)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(b, []byte("\x89PNG\r\n\x1a\n")) || len(b) < 1000 {
		t.Errorf("plot is not a PNG image (%d bytes)", len(b))
	}
}

func TestBenchAbortRatio(t *testing.T) {
	svg := filepath.Join(t.TempDir(), "bench.svg")
	res := runBenchJSON(t, "--embedded", "--count", "200", "--clients", "4", "--participants", "3", "--abort-ratio", "0.5", "--plot", svg)
	checkSane(t, res, 200)
	if c, a := num(t, res, "committed"), num(t, res, "aborted"); c == 0 || a == 0 {
		t.Errorf("committed %v, aborted %v: want both above 0 at --abort-ratio 0.5", c, a)
	}
	b, err := os.ReadFile(svg)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte("<svg")) {
		t.Errorf("plot is not an SVG image (%d bytes)", len(b))
	}
}

// TestBenchEndpoints drives a cluster the bench did not start, and reads
// its CPU and fsyncs over the Admin service.
func TestBenchEndpoints(t *testing.T) {
	cl, err := startEmbeddedCluster(t.TempDir(), true, zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cl.stop(); err != nil {
			t.Error(err)
		}
	})
	res := runBenchJSON(t, "--endpoints", strings.Join(cl.endpoints, ","), "--count", "100", "--clients", "2", "--participants", "1")
	checkSane(t, res, 100)
	procs, _ := res["cpu_by_process"].([]any)
	if len(procs) != 1+len(cl.endpoints) {
		t.Fatalf("cpu_by_process has %d entries, want the bench and %d nodes: %v", len(procs), len(cl.endpoints), procs)
	}
	// The nodes live in this test process, so each reports its CPU.
	for _, p := range procs[1:] {
		if cpu := p.(map[string]any)["cpu_s"].(float64); cpu <= 0 {
			t.Errorf("node cpu_s = %v, want > 0: %v", cpu, p)
		}
	}
}

// TestBenchBadFlags: bad invocations exit 2 with a one-line reason.
func TestBenchBadFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "--endpoints or --embedded is required"},
		{[]string{"--embedded", "--endpoints", "127.0.0.1:1"}, "exclude each other"},
		{[]string{"--embedded", "--clients", "0"}, "--clients"},
		{[]string{"--embedded", "--participants", "0"}, "--participants"},
		{[]string{"--embedded", "--abort-ratio", "2"}, "--abort-ratio"},
		{[]string{"--embedded", "--abort-ratio", "NaN"}, "--abort-ratio"},
		{[]string{"--embedded", "--duration", "0", "--count", "0"}, "--duration or --count"},
		{[]string{"--embedded", "--duration", "0"}, "--duration or --count"},
		{[]string{"--embedded", "--count", "-1"}, "--count"},
		{[]string{"--embedded", "--payload", "-1"}, "--payload"},
		{[]string{"--embedded", "--plot", "out.jpg"}, "--plot"},
		{[]string{"--embedded", "--clients", "many"}, "invalid value"},
		{[]string{"--endpoints", ","}, "--endpoints is required"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := run(append([]string{"bench"}, tc.args...), &stdout, &stderr); code != 2 {
				t.Fatalf("exit %d, want 2; stderr %q", code, stderr.String())
			}
			msg := stderr.String()
			if !strings.Contains(msg, tc.want) || strings.Count(strings.TrimSpace(msg), "\n") != 0 {
				t.Fatalf("want one line mentioning %q, got %q", tc.want, msg)
			}
		})
	}
}

// TestBenchVotesNo: the abort share is about the ratio asked for, and a
// transaction's participants (and repeats) agree.
func TestBenchVotesNo(t *testing.T) {
	const n = 20000
	for _, ratio := range []float64{0, 0.1, 0.5, 1} {
		no := 0
		for range n {
			id := uuid.Must(uuid.NewV7()).String()
			v := votesNo(id, ratio)
			if v != votesNo(id, ratio) {
				t.Fatalf("votesNo(%s) is not deterministic", id)
			}
			if v {
				no++
			}
		}
		if got := float64(no) / n; got < ratio-0.02 || got > ratio+0.02 {
			t.Errorf("ratio %v: %v of votes were NO", ratio, got)
		}
	}
}

// The bench process gets a P per store it hosts on top of the CPUs, unless
// the user chose GOMAXPROCS.
func TestBenchProcs(t *testing.T) {
	cpus := runtime.NumCPU()
	for _, c := range []struct {
		f       benchFlags
		userSet bool
		want    int
	}{
		{benchFlags{embedded: true, participants: 2}, false, cpus + 5},
		{benchFlags{participants: 3}, false, cpus + 3},
		{benchFlags{embedded: true, participants: 2}, true, runtime.GOMAXPROCS(0)},
	} {
		if got := benchProcs(c.f, c.userSet); got != c.want {
			t.Errorf("benchProcs(%+v, user set %v) = %d, want %d", c.f, c.userSet, got, c.want)
		}
	}
}
