package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestBadFlags: each bad invocation exits non-zero with a one-line reason.
func TestBadFlags(t *testing.T) {
	dir := t.TempDir()
	peers := "1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003"
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no command", nil, "usage"},
		{"unknown command", []string{"frobnicate"}, "unknown command"},
		{"duplicate ids", []string{"start", "--id", "1", "--data-dir", dir, "--peers", "1=127.0.0.1:7001,1=127.0.0.1:7002"}, "appears twice"},
		{"id missing from peers", []string{"start", "--id", "4", "--data-dir", dir, "--peers", peers}, "not among the peers"},
		{"bad address", []string{"start", "--id", "1", "--data-dir", dir, "--peers", "1=localhost,2=127.0.0.1:7002"}, "missing port"},
		{"no id", []string{"start", "--data-dir", dir, "--peers", peers}, "--id is required"},
		{"no data dir", []string{"start", "--id", "1", "--peers", peers}, "--data-dir is required"},
		{"unknown flag", []string{"start", "--bogus"}, "flag provided but not defined"},
		{"stray argument", []string{"status", "--endpoints", "127.0.0.1:1", "extra"}, "unexpected argument"},
		{"status without endpoints", []string{"status"}, "--endpoints is required"},
		{"one node twice in peers", []string{"start", "--id", "1", "--data-dir", dir, "--peers", "1=127.0.0.1:7001,2=localhost:7001"}, "share address"},
		{"no connections", []string{"start", "--id", "1", "--data-dir", dir, "--peers", peers, "--max-connections", "0"}, "--max-connections"},
		{"too few connections for the peers", []string{"start", "--id", "1", "--data-dir", dir, "--peers", peers, "--max-connections", "3"}, "twice the peers"},
		{"no streams", []string{"start", "--id", "1", "--data-dir", dir, "--peers", peers, "--max-streams", "0"}, "--max-streams"},
		{"no transactions in flight", []string{"start", "--id", "1", "--data-dir", dir, "--peers", peers, "--max-in-flight", "0"}, "--max-in-flight"},
		{"bad cache size", []string{"start", "--id", "1", "--data-dir", dir, "--peers", peers, "--cache-size", "32MB"}, "not a size in bytes"},
		{"tiny cache", []string{"start", "--id", "1", "--data-dir", dir, "--peers", peers, "--cache-size", "4096"}, "--cache-size must be between"},
		{"huge memtable", []string{"start", "--id", "1", "--data-dir", dir, "--peers", peers, "--memtable-size", "4GiB"}, "--memtable-size must be between"},
		{"starved go memory", []string{"start", "--id", "1", "--data-dir", dir, "--peers", peers, "--go-memory-limit", "1MiB"}, "--go-memory-limit must be 0"},
		{"bad log level", []string{"start", "--id", "1", "--data-dir", dir, "--peers", peers, "--log-level", "loud"}, "--log-level"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(tc.args, &stdout, &stderr)
			if code == 0 {
				t.Fatalf("exit 0, want non-zero")
			}
			msg := stderr.String()
			if !strings.Contains(msg, tc.want) {
				t.Fatalf("stderr %q does not mention %q", msg, tc.want)
			}
			if tc.args != nil && tc.name != "unknown command" && strings.Count(strings.TrimSpace(msg), "\n") != 0 {
				t.Fatalf("want a one-line reason, got %q", msg)
			}
		})
	}
}
