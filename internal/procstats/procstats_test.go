package procstats

import (
	"runtime"
	"testing"
)

func TestParseVmRSS(t *testing.T) {
	for _, c := range []struct {
		in   string
		want uint64
		ok   bool
	}{
		{"Name:\tdecree\nVmPeak:\t  900 kB\nVmRSS:\t   26112 kB\nRssAnon:\t 1 kB\n", 26112 << 10, true},
		{"Name:\tdecree\n", 0, false},
		{"VmRSS:\t12 MB\n", 0, false},
		{"VmRSS:\tlots kB\n", 0, false},
	} {
		got, ok := parseVmRSS([]byte(c.in))
		if got != c.want || ok != c.ok {
			t.Errorf("parseVmRSS(%q) = %d, %v; want %d, %v", c.in, got, ok, c.want, c.ok)
		}
	}
}

// TestProcessMemory reads this test process's own memory: both figures are
// positive, and a live allocation shows in the Go heap.
func TestProcessMemory(t *testing.T) {
	if rss := RSSBytes(); rss < 1<<20 {
		t.Fatalf("rss %d bytes, want at least 1 MiB", rss)
	}
	// Collect first: garbage that other tests' goroutines left, freed
	// by a collection between the two readings, would hide the growth.
	runtime.GC()
	before := GoHeapBytes()
	buf := make([]byte, 64<<20)
	buf[len(buf)-1] = 1
	after := GoHeapBytes()
	if after < before+32<<20 {
		t.Fatalf("go heap %d -> %d bytes after a live 64 MiB allocation", before, after)
	}
	_ = buf[len(buf)-1]
}
