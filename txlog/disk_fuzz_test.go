package txlog

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"io"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// Fuzz targets for the decoders of bytes this package reads from disk. Each
// has a committed seed corpus under testdata/fuzz/<target>; run one with
//
//	go test -run xxx -fuzz FuzzUnmarshalDiskIdentity -fuzztime 60s ./txlog/

func FuzzUnmarshalSnapshotDescriptor(f *testing.F) {
	f.Add(SnapshotDescriptor{ClusterID: 0xc1, Index: 42}.Marshal())
	f.Add(SnapshotDescriptor{}.Marshal())
	f.Add([]byte{1, 2, 3})
	f.Add([]byte{snapshotDescV2, 0x80})
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := UnmarshalSnapshotDescriptor(b)
		if err != nil {
			return
		}
		if got := d.Marshal(); !bytes.Equal(got, b) {
			t.Fatalf("re-encoding %x gives %x", b, got)
		}
	})
}

// FuzzUnmarshalDiskIdentity decodes identity files. With fixCRC the last
// four bytes are replaced by the body's checksum, so that the fuzzer reaches
// the fields behind it.
func FuzzUnmarshalDiskIdentity(f *testing.F) {
	f.Add(diskIdentity{Kind: kindCoordinator, Node: Identity{ClusterID: 0xc1, NodeID: 3}}.marshal(), false)
	f.Add(diskIdentity{Kind: kindParticipant, ParticipantID: "0f0e8c4e-3c4b-4d57-9f0e-7a1b2c3d4e5f"}.marshal(), false)
	f.Add([]byte("DCRID\x01\x02\x05abcde...."), true)
	f.Add([]byte{}, false)
	f.Fuzz(func(t *testing.T, b []byte, fixCRC bool) {
		if fixCRC && len(b) >= 4 {
			b = binary.BigEndian.AppendUint32(b[:len(b)-4:len(b)-4], crc32.Checksum(b[:len(b)-4], castagnoli))
		}
		d, err := unmarshalDiskIdentity(b)
		if err != nil {
			return
		}
		if got := d.marshal(); !bytes.Equal(got, b) {
			t.Fatalf("re-encoding %x gives %x", b, got)
		}
	})
}

func FuzzDecodeIdentity(f *testing.F) {
	f.Add(encodeIdentity(testID))
	f.Add([]byte{1, 2})
	f.Fuzz(func(t *testing.T, b []byte) {
		id, err := decodeIdentity(b)
		if err != nil {
			return
		}
		if got := encodeIdentity(id); !bytes.Equal(got, b) {
			t.Fatalf("re-encoding %x gives %x", b, got)
		}
	})
}

// FuzzDecodeEntry decodes a stored log entry from its key and value; what
// decodes must survive re-encoding unchanged.
func FuzzDecodeEntry(f *testing.F) {
	e := entry(2, 7)
	val, err := proto.Marshal(e)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(entryKey(7), val)
	f.Add(entryKey(8), val)
	f.Add([]byte("r/e/"), []byte{})
	f.Fuzz(func(t *testing.T, key, val []byte) {
		e, err := decodeEntry(key, val)
		if err != nil {
			return
		}
		b, err := proto.Marshal(e)
		if err != nil {
			t.Fatalf("re-marshal entry: %v", err)
		}
		again, err := decodeEntry(entryKey(e.GetIndex()), b)
		if err != nil || !proto.Equal(again, e) {
			t.Fatalf("re-decoding entry %v: %v, %v", e, again, err)
		}
	})
}

// FuzzBuildMirror rebuilds the raft log mirror from a stored snapshot and
// hard state (arbitrary bytes, as Pebble returns them) and a contiguous run
// of entries (as loadEntries guarantees): it must fail cleanly or produce a
// mirror whose bounds hold the entries.
func FuzzBuildMirror(f *testing.F) {
	snap, _ := proto.Marshal(&raftpb.Snapshot{
		Data:     SnapshotDescriptor{ClusterID: 1, Index: 5}.Marshal(),
		Metadata: &raftpb.SnapshotMetadata{Index: new(uint64(5)), Term: new(uint64(1)), ConfState: &raftpb.ConfState{Voters: []uint64{1}}},
	})
	hs, _ := proto.Marshal(hardState(1, 1, 6))
	f.Add(snap, hs, uint64(3), uint8(5))
	f.Add(snap, hs, uint64(6), uint8(2))
	f.Add([]byte{}, []byte{}, uint64(1), uint8(0))
	f.Fuzz(func(t *testing.T, snapB, hsB []byte, first uint64, n uint8) {
		snap, hs := &raftpb.Snapshot{}, &raftpb.HardState{}
		if proto.Unmarshal(snapB, snap) != nil || proto.Unmarshal(hsB, hs) != nil {
			return
		}
		if first == 0 || first > 1<<62 {
			return
		}
		ents := entryRange(1, first, first+uint64(n))
		mem, err := buildMirror(snap, hs, ents)
		if err != nil {
			return
		}
		last, _ := mem.LastIndex()
		if n > 0 && last < ents[len(ents)-1].GetIndex() {
			t.Fatalf("mirror ends at %d, before the last stored entry %d", last, ents[len(ents)-1].GetIndex())
		}
	})
}

// FuzzFindSyncedDamage scans arbitrary bytes as a WAL: it must not panic,
// and a WAL whose chunks are all valid is never called damaged.
func FuzzFindSyncedDamage(f *testing.F) {
	wal, num := sampleWAL(f)
	f.Add(wal, num)
	damaged := bytes.Clone(wal)
	damaged[len(damaged)/2] ^= 0xff
	f.Add(damaged, num)
	f.Add([]byte{}, uint32(1))
	f.Fuzz(func(t *testing.T, data []byte, logNum uint32) {
		off, bad := findSyncedDamage(data, logNum)
		if bad && walValidPrefix(data, logNum) == len(data) {
			t.Fatalf("intact wal reported damaged at %d", off)
		}
		if bad && (off < 0 || off >= len(data)) {
			t.Fatalf("damage offset %d outside a %d-byte wal", off, len(data))
		}
	})
}

// sampleWAL returns the last WAL of a small store on an in-memory
// filesystem, and its log number.
func sampleWAL(tb testing.TB) ([]byte, uint32) {
	tb.Helper()
	fsys := vfs.NewMem()
	s := openStore(tb, "db", fsys)
	for i := uint64(1); i <= 3; i++ {
		mustSave(tb, s, hardState(1, 1, i), entryRange(1, i, i+1), nil)
	}
	if err := s.Close(); err != nil {
		tb.Fatal(err)
	}
	name, num, ok, err := lastWAL(fsys, "db")
	if err != nil || !ok {
		tb.Fatalf("no wal: %v", err)
	}
	file, err := fsys.Open(fsys.PathJoin("db", name))
	if err != nil {
		tb.Fatal(err)
	}
	defer file.Close()
	data, err := io.ReadAll(file)
	if err != nil {
		tb.Fatal(err)
	}
	if binary.LittleEndian.Uint32(data[7:]) != num {
		tb.Fatalf("wal %s does not start with a chunk of log %d", name, num)
	}
	return data, num
}
