package txlog

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// writeEntries saves entries 1..n, each with its own synced Save, into a
// store in dir, and closes it.
func writeEntries(t *testing.T, dir string, n uint64) {
	t.Helper()
	s, err := Open(dir, testID, Options{})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	for i := uint64(1); i <= n; i++ {
		mustSave(t, s, hardState(1, 1, i), []*raftpb.Entry{entry(1, i)}, nil)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
}

// walPath returns the store's single WAL.
func walPath(t *testing.T, dir string) string {
	t.Helper()
	logs, _ := filepath.Glob(filepath.Join(dir, "*.log"))
	if len(logs) != 1 {
		t.Fatalf("wal files in %s: %v, want one", dir, logs)
	}
	return logs[0]
}

// flipBytes inverts n bytes of the file at path starting at off (from the
// end when off is negative).
func flipBytes(t *testing.T, path string, off, n int) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if off < 0 {
		off += len(data)
	}
	for i := off; i < off+n; i++ {
		data[i] ^= 0xff
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestOpenRefusesDamagedWAL flips bytes in the middle, or at the start, of
// the WAL of a store whose every entry was synced: the open must fail
// rather than serve the prefix before the damage.
func TestOpenRefusesDamagedWAL(t *testing.T) {
	for name, at := range map[string]func(size int) int{
		"middle": func(size int) int { return size / 2 },
		"header": func(int) int { return 0 },
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			writeEntries(t, dir, 20)
			wal := walPath(t, dir)
			st, err := os.Stat(wal)
			if err != nil {
				t.Fatal(err)
			}
			flipBytes(t, wal, at(int(st.Size())), 4)
			s, err := Open(dir, testID, Options{})
			if err == nil {
				last, _ := s.LastIndex()
				_ = s.Close()
				t.Fatalf("opened a damaged store serving %d of 20 entries", last)
			}
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("open: %v, want ErrCorrupt", err)
			}
			t.Log(err)
		})
	}
}

// TestOpenToleratesTornTail cuts the last write short, as a crash during
// it can: the store opens without it.
func TestOpenToleratesTornTail(t *testing.T) {
	dir := t.TempDir()
	writeEntries(t, dir, 20)
	wal := walPath(t, dir)
	st, err := os.Stat(wal)
	if err != nil {
		t.Fatal(err)
	}
	// Past the close's empty trailer chunk and into the last entry.
	if err := os.Truncate(wal, st.Size()-walSyncHeader-30); err != nil {
		t.Fatal(err)
	}
	s := openStore(t, dir, nil)
	if last, _ := s.LastIndex(); last != 19 {
		t.Fatalf("last index %d after a torn last write, want 19", last)
	}
}

// TestOpenRefusesLostWAL removes the WAL, which holds all of a young
// store's data: the directory must not look new.
func TestOpenRefusesLostWAL(t *testing.T) {
	dir := t.TempDir()
	writeEntries(t, dir, 20)
	if err := os.Remove(walPath(t, dir)); err != nil {
		t.Fatal(err)
	}
	_, err := Open(dir, testID, Options{})
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("open without the wal: %v, want ErrCorrupt", err)
	}
	t.Log(err)
}

func TestOpenRefusesForeignDirectory(t *testing.T) {
	t.Run("coordinator on participant log", func(t *testing.T) {
		dir := t.TempDir()
		l, err := OpenParticipantLog(dir, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		_, err = Open(dir, testID, Options{})
		if !errors.Is(err, ErrIdentityMismatch) || !strings.Contains(err.Error(), "participant log") {
			t.Fatalf("open: %v, want ErrIdentityMismatch naming a participant log", err)
		}
		t.Log(err)
		// The same from a participant log of an earlier version, without
		// the identity file.
		if err := os.Remove(filepath.Join(dir, identityFile)); err != nil {
			t.Fatal(err)
		}
		if _, err = Open(dir, testID, Options{}); !errors.Is(err, ErrIdentityMismatch) {
			t.Fatalf("open without identity file: %v, want ErrIdentityMismatch", err)
		}
	})
	t.Run("participant on coordinator store", func(t *testing.T) {
		dir := t.TempDir()
		writeEntries(t, dir, 1)
		_, err := OpenParticipantLog(dir, Options{})
		if !errors.Is(err, ErrIdentityMismatch) || !strings.Contains(err.Error(), "coordinator") {
			t.Fatalf("open: %v, want ErrIdentityMismatch naming a coordinator store", err)
		}
		t.Log(err)
	})
	t.Run("unknown pebble data", func(t *testing.T) {
		dir := t.TempDir()
		db, err := pebble.Open(dir, &pebble.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if err := db.Set([]byte("k"), []byte("v"), pebble.Sync); err != nil {
			t.Fatal(err)
		}
		if err := db.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := Open(dir, testID, Options{}); !errors.Is(err, ErrIdentityMismatch) {
			t.Fatalf("coordinator open: %v, want ErrIdentityMismatch", err)
		}
		_, err = OpenParticipantLog(dir, Options{})
		if !errors.Is(err, ErrIdentityMismatch) {
			t.Fatalf("participant open: %v, want ErrIdentityMismatch", err)
		}
		t.Log(err)
	})
}

// TestOpenUpgradesStoreWithoutIdentityFile opens a store as an earlier
// version left it (identity inside Pebble only): it opens with its data
// and gains the file, which then protects it.
func TestOpenUpgradesStoreWithoutIdentityFile(t *testing.T) {
	dir := t.TempDir()
	writeEntries(t, dir, 5)
	path := filepath.Join(dir, identityFile)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	s := openStore(t, dir, nil)
	if last, _ := s.LastIndex(); last != 5 {
		t.Fatalf("last index %d after upgrade, want 5", last)
	}
	got, ok, err := readIdentityFile(vfs.Default, dir)
	if err != nil || !ok || got != (diskIdentity{Kind: kindCoordinator, Node: testID}) {
		t.Fatalf("identity file after upgrade: %+v %v %v", got, ok, err)
	}
}

func TestOpenRefusesDamagedIdentityFile(t *testing.T) {
	dir := t.TempDir()
	writeEntries(t, dir, 1)
	flipBytes(t, filepath.Join(dir, identityFile), 8, 1)
	if _, err := Open(dir, testID, Options{}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("open: %v, want ErrCorrupt", err)
	}
}

// TestParticipantLogRefusesLostWAL: a participant log whose WAL is gone
// must not come back as a new participant with a new identity.
func TestParticipantLogRefusesLostWAL(t *testing.T) {
	dir := t.TempDir()
	l, err := OpenParticipantLog(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(walPath(t, dir)); err != nil {
		t.Fatal(err)
	}
	_, err = OpenParticipantLog(dir, Options{})
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("open without the wal: %v, want ErrCorrupt", err)
	}
}

// TestOpenRefusesInconsistentState writes states no Save can produce (as
// damage outside the WAL could leave): the open fails with ErrCorrupt, not
// with a panic inside raft later.
func TestOpenRefusesInconsistentState(t *testing.T) {
	for name, damage := range map[string]func(s *Store) error{
		"commit beyond log": func(s *Store) error {
			return setProtoDirect(s, hardStateKey, hardState(1, 1, 50))
		},
		"snapshot descriptor of another index": func(s *Store) error {
			snap := &raftpb.Snapshot{
				Data:     SnapshotDescriptor{ClusterID: testID.ClusterID, Index: 2}.Marshal(),
				Metadata: &raftpb.SnapshotMetadata{Index: new(uint64(3)), Term: new(uint64(1))},
			}
			return setProtoDirect(s, snapshotKey, snap)
		},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			writeEntries(t, dir, 5)
			s := openStore(t, dir, nil)
			if err := damage(s); err != nil {
				t.Fatal(err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			_, err := Open(dir, testID, Options{})
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("open: %v, want ErrCorrupt", err)
			}
			t.Log(err)
		})
	}
}

func setProtoDirect(s *Store, key []byte, m proto.Message) error {
	b := s.db.NewBatch()
	defer b.Close()
	if err := setProto(b, key, m); err != nil {
		return err
	}
	return b.Commit(pebble.Sync)
}

// TestWALCheckAcrossBlocks writes a WAL of several 32 KiB blocks: the
// intact WAL opens, and damage in its first block, before synced data in
// the same and later blocks, is refused.
func TestWALCheckAcrossBlocks(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, testID, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := uint64(1); i <= 1200; i++ {
		e := entry(1, i)
		e.Data = bytes.Repeat([]byte{byte(i)}, int(i*7%150))
		mustSave(t, s, hardState(1, 1, i), []*raftpb.Entry{e}, nil)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(walPath(t, dir)); err != nil || st.Size() < 4*walBlockSize {
		t.Fatalf("wal too small for the test: %v %v", st, err)
	}
	damaged := filepath.Join(t.TempDir(), "copy")
	if err := os.CopyFS(damaged, os.DirFS(dir)); err != nil {
		t.Fatal(err)
	}
	flipBytes(t, walPath(t, damaged), walBlockSize/2, 4)
	if _, err := Open(damaged, testID, Options{}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("open: %v, want ErrCorrupt", err)
	}
	s = openStore(t, dir, nil)
	if last, _ := s.LastIndex(); last != 1200 {
		t.Fatalf("last index %d, want 1200", last)
	}
}

// syncChunk encodes a full WAL-sync chunk as Pebble writes it.
func syncChunk(logNum uint32, synced uint64, payload []byte) []byte {
	c := make([]byte, walSyncHeader+len(payload))
	binary.LittleEndian.PutUint16(c[4:], uint16(len(payload)))
	c[6] = walFirstSync
	binary.LittleEndian.PutUint32(c[7:], logNum)
	binary.LittleEndian.PutUint64(c[11:], synced)
	copy(c[walSyncHeader:], payload)
	sum := crc32.Checksum(c[6:], castagnoli)
	binary.LittleEndian.PutUint32(c, (sum>>15|sum<<17)+0xa282ead8)
	return c
}

// TestWALBlockPadding: a block ending in fewer zero bytes than a chunk
// header is padding, skipped as Pebble skips it; the same bytes not zero
// are damage before synced data.
func TestWALBlockPadding(t *testing.T) {
	const pad = 12
	wal := syncChunk(7, 0, bytes.Repeat([]byte{1}, walBlockSize-pad-walSyncHeader))
	wal = append(wal, make([]byte, pad)...)
	wal = append(wal, syncChunk(7, walBlockSize, []byte("next"))...)
	if off, bad := findSyncedDamage(wal, 7); bad || walValidPrefix(wal, 7) != len(wal) {
		t.Fatalf("padded wal reported damaged at %d (valid prefix %d of %d)", off, walValidPrefix(wal, 7), len(wal))
	}
	wal[walBlockSize-pad+3] = 1
	if off, bad := findSyncedDamage(wal, 7); !bad || off != walBlockSize-pad {
		t.Fatalf("damaged padding: damaged %v at %d, want at %d", bad, off, walBlockSize-pad)
	}
	// Another log's chunk (a recycled file's old contents) proves nothing.
	if _, bad := findSyncedDamage(wal, 8); bad {
		t.Fatal("damage reported from another log's chunks")
	}
}
