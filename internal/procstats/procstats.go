// Package procstats reads this process's resource use from the operating
// system and the Go runtime: CPU time, resident memory and the Go heap,
// cheaply enough for a status call.
package procstats

import (
	"bufio"
	"bytes"
	"os"
	"runtime/metrics"
	"strconv"
	"syscall"
	"time"
)

// CPUSeconds is this process's user+system CPU time so far, or 0
// when the OS does not tell.
func CPUSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// RSSBytes is this process's resident memory: VmRSS from
// /proc/self/status, else the peak resident size getrusage reports (Linux
// and BSDs count it in KiB), else 0.
func RSSBytes() uint64 {
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		if v, ok := parseVmRSS(b); ok {
			return v
		}
	}
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil || ru.Maxrss < 0 {
		return 0
	}
	return uint64(ru.Maxrss) << 10
}

// parseVmRSS finds the "VmRSS:  1234 kB" line of /proc/self/status.
func parseVmRSS(status []byte) (uint64, bool) {
	sc := bufio.NewScanner(bytes.NewReader(status))
	for sc.Scan() {
		rest, ok := bytes.CutPrefix(sc.Bytes(), []byte("VmRSS:"))
		if !ok {
			continue
		}
		f := bytes.Fields(rest)
		if len(f) != 2 || string(f[1]) != "kB" {
			return 0, false
		}
		kb, err := strconv.ParseUint(string(f[0]), 10, 64)
		if err != nil {
			return 0, false
		}
		return kb << 10, true
	}
	return 0, false
}

// heapObjectsMetric is the Go heap held by objects, live or not yet swept.
// runtime/metrics reads it without stopping the world (ReadMemStats would).
const heapObjectsMetric = "/memory/classes/heap/objects:bytes"

// GoHeapBytes is the Go heap held by objects, live or not yet swept.
func GoHeapBytes() uint64 {
	s := []metrics.Sample{{Name: heapObjectsMetric}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
}
