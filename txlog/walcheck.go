package txlog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"strconv"
	"strings"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// ErrCorrupt reports that a data directory's contents are damaged or partly
// lost: serving from it could forget writes that were acknowledged as
// durable, so it is refused rather than repaired.
var ErrCorrupt = errors.New("txlog: data directory is damaged or has lost data")

// Pebble's WAL wire format (github.com/cockroachdb/pebble/v2/record), which
// is part of its on-disk format and cannot change under us: 32 KiB blocks of
// chunks that never straddle a block; a chunk is checksum (4, masked CRC-32C
// of everything after the length field), length (2), encoding (1), then for
// the recyclable encodings the log number (4) and for the WAL-sync encodings
// also the offset up to which the log was synced when the chunk was written
// (8).
const (
	walBlockSize        = 32 << 10
	walLegacyHeader     = 7
	walRecyclableHeader = 11
	walSyncHeader       = 19
	walFirstRecyclable  = 5
	walFirstSync        = 9
	walLastSync         = 12
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// verifyWAL makes Pebble's WAL recovery strict for the last WAL, the only
// one whose damaged tail Pebble tolerates.
//
// Pebble replays the last WAL up to its first invalid chunk and treats what
// follows as a write torn by a crash, unless a valid chunk in a LATER 32 KiB
// block says (by its synced offset) that the invalid one had been synced.
// Damage inside the last block, which holds a young store's whole log, is
// therefore always taken for a torn write: the store silently opens at an
// older, self-consistent prefix, forgetting synced Raft entries and votes.
// No check on the recovered state can see that, since every prefix of the
// WAL is a state the store once had.
//
// So before Pebble opens, this scans the rest of the last WAL, at every byte
// offset, for a valid chunk of the same log whose synced offset lies beyond
// the first invalid chunk. Finding one proves that bytes which had been
// synced were later damaged: the open fails with ErrCorrupt. What remains
// tolerated is exactly what a crash can produce: an invalid tail after the
// last sync (Pebble writes with the WAL-sync chunk format, FormatNewest).
// Older WALs are replayed strictly by Pebble itself.
func verifyWAL(fsys vfs.FS, dir string) error {
	name, num, ok, err := lastWAL(fsys, dir)
	if err != nil || !ok {
		return err
	}
	path := fsys.PathJoin(dir, name)
	f, err := fsys.Open(path)
	if err != nil {
		return fmt.Errorf("open wal %s: %w", path, err)
	}
	data, err := io.ReadAll(f)
	_ = f.Close()
	if err != nil {
		return fmt.Errorf("read wal %s: %w", path, err)
	}
	if off, bad := findSyncedDamage(data, num); bad {
		return fmt.Errorf("%w: wal %s is damaged at offset %d, before data that had been synced", ErrCorrupt, path, off)
	}
	return nil
}

// lastWAL returns the file name and number of the highest-numbered WAL in
// dir. New WALs, recycled ones included, always get a higher number.
func lastWAL(fsys vfs.FS, dir string) (string, uint32, bool, error) {
	names, err := fsys.List(dir)
	if err != nil {
		return "", 0, false, fmt.Errorf("list %s: %w", dir, err)
	}
	var best string
	var bestNum uint64
	for _, n := range names {
		base, ok := strings.CutSuffix(n, ".log")
		if !ok {
			continue
		}
		v, err := strconv.ParseUint(base, 10, 64)
		if err != nil {
			continue
		}
		if best == "" || v > bestNum {
			best, bestNum = n, v
		}
	}
	// The chunk headers hold the low 32 bits of the log number.
	return best, uint32(bestNum), best != "", nil
}

// findSyncedDamage walks the chunks of a WAL to its first invalid one and
// reports whether a later valid chunk claims an offset past it was synced.
func findSyncedDamage(data []byte, logNum uint32) (int, bool) {
	end := walValidPrefix(data, logNum)
	if end >= len(data) {
		return 0, false
	}
	for p := end + 1; p+walSyncHeader <= len(data); p++ {
		if n, ok := parseChunk(data, p, logNum); ok && n.sync && n.syncedOffset > uint64(end) {
			return end, true
		}
	}
	return 0, false
}

// walValidPrefix returns the offset of the first position where a chunk is
// expected but none is valid, or len(data).
func walValidPrefix(data []byte, logNum uint32) int {
	p := 0
	for p < len(data) {
		blockEnd := (p/walBlockSize + 1) * walBlockSize
		if blockEnd-p < walSyncHeader && isZero(data[p:min(blockEnd, len(data))]) {
			// The writer zero-fills the end of a block too short for a
			// header; Pebble's reader skips it the same way.
			p = blockEnd
			continue
		}
		c, ok := parseChunk(data, p, logNum)
		if !ok {
			return p
		}
		p = c.end
	}
	return len(data)
}

type walChunk struct {
	end          int
	sync         bool
	syncedOffset uint64
}

// parseChunk decodes the chunk at p if it is a valid one of log logNum.
func parseChunk(data []byte, p int, logNum uint32) (walChunk, bool) {
	blockEnd := min((p/walBlockSize+1)*walBlockSize, len(data))
	if p+walLegacyHeader > blockEnd {
		return walChunk{}, false
	}
	enc := data[p+6]
	header := walLegacyHeader
	switch {
	case enc == 0 || enc > walLastSync:
		return walChunk{}, false
	case enc >= walFirstSync:
		header = walSyncHeader
	case enc >= walFirstRecyclable:
		header = walRecyclableHeader
	}
	if p+header > blockEnd {
		return walChunk{}, false
	}
	if header > walLegacyHeader && binary.LittleEndian.Uint32(data[p+7:]) != logNum {
		return walChunk{}, false
	}
	end := p + header + int(binary.LittleEndian.Uint16(data[p+4:]))
	if end > blockEnd {
		return walChunk{}, false
	}
	c := crc32.Checksum(data[p+6:end], castagnoli)
	if binary.LittleEndian.Uint32(data[p:]) != (c>>15|c<<17)+0xa282ead8 {
		return walChunk{}, false
	}
	chunk := walChunk{end: end, sync: header == walSyncHeader}
	if chunk.sync {
		chunk.syncedOffset = binary.LittleEndian.Uint64(data[p+11:])
	}
	return chunk, true
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
