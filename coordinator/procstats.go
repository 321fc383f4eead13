package coordinator

import (
	"bufio"
	"bytes"
	"os"
	"runtime/metrics"
	"strconv"
	"syscall"
	"time"

	decreev1 "github.com/decree-tx/decree/proto/decree/v1"
)

// processCPUSeconds is this process's user+system CPU time so far, or 0
// when the OS does not tell.
func processCPUSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// processRSSBytes is this process's resident memory: VmRSS from
// /proc/self/status, else the peak resident size getrusage reports (Linux
// and BSDs count it in KiB), else 0.
func processRSSBytes() uint64 {
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

func goHeapBytes() uint64 {
	s := []metrics.Sample{{Name: heapObjectsMetric}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
}

func nodeStatsToProto(s NodeStats) *decreev1.NodeStats {
	return &decreev1.NodeStats{
		SnapshotsSent:          s.SnapshotsSent,
		SnapshotBytesSent:      s.SnapshotBytesSent,
		SnapshotSendSeconds:    s.SnapshotSendTime.Seconds(),
		SnapshotsReceived:      s.SnapshotsReceived,
		SnapshotBytesReceived:  s.SnapshotBytesReceived,
		SnapshotReceiveSeconds: s.SnapshotReceiveTime.Seconds(),
		Collects:               s.Collects,
		CollectedRecords:       s.CollectedRecords,
		CollectSeconds:         s.CollectTime.Seconds(),
		CollectMaxSeconds:      s.CollectMaxTime.Seconds(),
		LeaderChanges:          s.LeaderChanges,
	}
}
