package main

import "testing"

func TestParseByteSize(t *testing.T) {
	for in, want := range map[string]uint64{
		"0": 0, "4096": 4096, "64MiB": 64 << 20, "64 MiB": 64 << 20, "1GiB": 1 << 30, "512KiB": 512 << 10, "100B": 100,
	} {
		if got, err := parseByteSize(in); err != nil || got != want {
			t.Errorf("parseByteSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "MiB", "-1", "1.5GiB", "64MB", "12k", "17179869184GiB"} {
		if got, err := parseByteSize(in); err == nil {
			t.Errorf("parseByteSize(%q) = %d, want an error", in, got)
		}
	}
	for v, want := range map[byteSize]string{0: "0", 32 << 20: "32MiB", 1 << 30: "1GiB", 1536: "1536", 3 << 10: "3KiB"} {
		if got := v.String(); got != want {
			t.Errorf("byteSize(%d).String() = %q, want %q", uint64(v), got, want)
		}
	}
}
