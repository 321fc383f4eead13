package txlog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/rs/zerolog"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

var (
	// ErrLocked reports that the data directory is in use by another
	// process or by another open Store in this process.
	ErrLocked = errors.New("txlog: data directory is locked by another store")
	// ErrIdentityMismatch reports that the data directory belongs to a
	// different cluster or node.
	ErrIdentityMismatch = errors.New("txlog: data directory belongs to another cluster or node")
	// errClosed is returned by Close on a closed Store.
	errClosed = errors.New("txlog: store is closed")
)

// Identity names the cluster and node a data directory belongs to.
type Identity struct {
	ClusterID, NodeID uint64
}

// Options configures Open.
type Options struct {
	// FS is the filesystem; nil means vfs.Default. Tests pass vfs.NewMem()
	// or vfs.NewCrashableMem().
	FS vfs.FS
	// Logger receives Pebble's log output and the store's own; the zero
	// value discards it.
	Logger zerolog.Logger
	// CacheSize is the Pebble block cache size in bytes; 0 means
	// DefaultCacheSize.
	CacheSize int64
	// StagingFileSize is the size at which a snapshot being received
	// starts a new staging SSTable; 0 means DefaultStagingFileSize.
	StagingFileSize uint64
	// MemTableSize is the size of one Pebble memtable in bytes; 0 means
	// DefaultMemTableSize.
	MemTableSize uint64
}

// Store is the durable storage of one node. It implements raft.Storage. Its
// methods are safe for concurrent use (except InitialState, which Raft calls
// once at start, and Close); mutations are serialised.
type Store struct {
	db       *pebble.DB
	lock     *pebble.Lock
	log      zerolog.Logger
	dir      string
	fs       vfs.FS
	identity Identity

	stagingFileSize uint64
	stagings        atomic.Uint64 // names staging directories
	// pending holds the staged state of at most one received snapshot,
	// keyed by its index, until raft installs it. Guarded by mu.
	pending map[uint64]*stagedState

	// mu serialises mutations so that Pebble and mem change in the same
	// order and snapshot installation cannot interleave with state commits.
	mu sync.Mutex
	// mem mirrors the durable Raft log and serves raft.Storage reads. It is
	// only changed after the corresponding Pebble write succeeded. It is a
	// named field rather than embedded so that its non-durable mutators
	// (Append, SetHardState, ...) are not part of Store's API.
	mem *raft.MemoryStorage
	// snapMeta is the metadata of mem's snapshot, kept to avoid copying
	// the snapshot data just to read its index. Guarded by mu.
	snapMeta *raftpb.SnapshotMetadata
	// recent holds the records of the newest ids, for GetRecord.
	recent recentCache[Record]
	// applied caches s/applied.
	applied atomic.Uint64
	syncs   atomic.Uint64
	closed  atomic.Bool
}

var _ raft.Storage = (*Store)(nil)

// Open opens or creates the store in dir. A new directory is stamped with
// id; an existing one must carry the same id, otherwise the error wraps
// ErrIdentityMismatch. If the directory is in use, the error wraps ErrLocked.
func Open(dir string, id Identity, opts Options) (*Store, error) {
	d, err := openLocked(dir, opts)
	if err != nil {
		return nil, err
	}
	s := &Store{db: d.db, lock: d.lock, log: opts.Logger, dir: dir, fs: d.fs, identity: id,
		stagingFileSize: opts.StagingFileSize, pending: make(map[uint64]*stagedState)}
	if s.stagingFileSize == 0 {
		s.stagingFileSize = DefaultStagingFileSize
	}
	if err := s.load(d, id); err != nil {
		// The load error is the one worth reporting.
		d.close()
		return nil, err
	}
	return s, nil
}

// openLocked takes dir's lock (ErrLocked if another process or store holds
// it), reads its identity file, checks its last WAL (ErrCorrupt, see
// verifyWAL) and opens Pebble there; on failure nothing stays held.
func openLocked(dir string, opts Options) (*disk, error) {
	fsys := opts.FS
	if fsys == nil {
		fsys = vfs.Default
	}
	lock, err := lockDir(dir, fsys)
	if err != nil {
		return nil, err
	}
	d := &disk{lock: lock, fs: fsys, dir: dir}
	if d.db, err = openChecked(d, opts); err != nil {
		_ = lock.Close()
		return nil, err
	}
	return d, nil
}

// openChecked reads d's identity file and opens Pebble after checking its
// WAL.
func openChecked(d *disk, opts Options) (*pebble.DB, error) {
	var err error
	if d.file, d.hasFile, err = readIdentityFile(d.fs, d.dir); err != nil {
		return nil, err
	}
	fresh, err := isEmptyDir(d.fs, d.dir)
	if err != nil {
		return nil, err
	}
	if err := verifyWAL(d.fs, d.dir); err != nil {
		return nil, err
	}
	db, err := openPebble(d.dir, d.fs, d.lock, opts)
	if err != nil {
		return nil, fmt.Errorf("open pebble in %s: %w", d.dir, err)
	}
	if !fresh {
		return db, nil
	}
	// A new database's first WAL is created before its format version is
	// raised to FormatNewest, so it lacks the synced offsets verifyWAL
	// needs; reopening starts a WAL that has them before anything is
	// written.
	if err := db.Close(); err != nil {
		return nil, fmt.Errorf("close new pebble in %s: %w", d.dir, err)
	}
	if db, err = openPebble(d.dir, d.fs, d.lock, opts); err != nil {
		return nil, fmt.Errorf("reopen pebble in %s: %w", d.dir, err)
	}
	return db, nil
}

// isEmptyDir reports whether dir holds nothing but Pebble's lock file.
func isEmptyDir(fsys vfs.FS, dir string) (bool, error) {
	names, err := fsys.List(dir)
	if err != nil {
		return false, fmt.Errorf("list %s: %w", dir, err)
	}
	for _, n := range names {
		if n != "LOCK" {
			return false, nil
		}
	}
	return true, nil
}

// lockDir takes Pebble's directory lock before Pebble opens, so that a lock
// conflict can be told apart from other open failures.
func lockDir(dir string, fsys vfs.FS) (*pebble.Lock, error) {
	if err := fsys.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create data directory: %w", err)
	}
	lock, err := pebble.LockDirectory(dir, fsys)
	if err == nil {
		return lock, nil
	}
	// Failing to create the lock file is a *fs.PathError (permissions, a
	// read-only disk, ...); failing to take the lock on the created file
	// is not.
	if _, ok := errors.AsType[*fs.PathError](err); ok {
		return nil, fmt.Errorf("lock data directory %s: %w", dir, err)
	}
	return nil, fmt.Errorf("%w: %s: %w", ErrLocked, dir, err)
}

func openPebble(dir string, fsys vfs.FS, lock *pebble.Lock, opts Options) (*pebble.DB, error) {
	size := opts.CacheSize
	if size <= 0 {
		size = DefaultCacheSize
	}
	memtable := opts.MemTableSize
	if memtable == 0 {
		memtable = DefaultMemTableSize
	}
	cache := pebble.NewCache(size)
	defer cache.Unref() // the DB holds its own reference
	o := &pebble.Options{
		FS:           fsys,
		Lock:         lock,
		Cache:        cache,
		MemTableSize: memtable,
		// At most two memtables (one filling, one flushing): under a
		// write burst writes wait for the flush rather than memory grow.
		MemTableStopWritesThreshold: 2,
		Logger:                      pebbleLogger{log: opts.Logger},
		FormatMajorVersion:          pebble.FormatNewest,
	}
	o.Levels[0].FilterPolicy = bloom.FilterPolicy(bloomBitsPerKey)
	return pebble.Open(dir, o)
}

// bloomBitsPerKey sizes the bloom filter every level has (L1 and below
// inherit L0's): 10 bits a key give about a 1% false-positive rate, as in
// CockroachDB. Most point reads here are misses: the Commit handler and the
// apply of Staged or Decide look up an id that is new. Without filters each
// miss reads an index and a data block of every level that overlaps the
// key, and as the record table grows those reads leave the 32 MiB block
// cache for the disk: in a soak a leader spent 28% of its CPU in them after
// 90 seconds. Filters are built at flush and compaction, and into the
// SSTables of a received snapshot (Stager uses the L0 writer options).
const bloomBitsPerKey = 10

// load checks or writes the identity, then rebuilds the in-memory state
// from Pebble.
func (s *Store) load(d *disk, id Identity) error {
	dir := d.dir
	if err := s.checkIdentity(d, id); err != nil {
		return err
	}
	// Staged snapshot state from before a restart was never installed (an
	// installed one is inside Pebble): the leader will send it again.
	if err := s.fs.RemoveAll(s.fs.PathJoin(dir, stagingDir)); err != nil {
		return fmt.Errorf("remove staged snapshot state: %w", err)
	}
	if err := s.ensureIndex(); err != nil {
		return err
	}
	s.recent.clone = (*Record).clone
	if err := s.recent.reset(s.db, stateKey(recordPrefix), UnmarshalRecord); err != nil {
		return err
	}
	applied, err := s.loadApplied()
	if err != nil {
		return err
	}
	s.applied.Store(applied)
	if s.mem, err = s.loadMirror(); err != nil {
		return fmt.Errorf("load raft log from %s: %w", dir, err)
	}
	snap, _ := s.mem.Snapshot()
	s.snapMeta = snap.GetMetadata()
	first, _ := s.mem.FirstIndex()
	last, _ := s.mem.LastIndex()
	if err := s.checkRecovered(last); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrCorrupt, dir, err)
	}
	s.log.Info().Str("dir", dir).Uint64("applied", applied).
		Uint64("first_index", first).Uint64("last_index", last).Msg("opened store")
	return nil
}

// checkRecovered checks what every state this store ever had satisfies, so
// that damage the WAL check cannot see (in SSTables, or a WAL written
// without synced offsets by an earlier version) is refused with a clear
// error instead of a panic inside raft or a node serving a state it never
// had. Each Save writes its entries and hard state in one batch, so:
//   - the commit index is within the stored log (raft panics otherwise);
//   - the snapshot's descriptor names the snapshot's own index and this
//     cluster.
//
// Contiguity of the stored entries is checked while loading them.
func (s *Store) checkRecovered(last uint64) error {
	hs, _, _ := s.mem.InitialState()
	if c := hs.GetCommit(); c > last {
		return fmt.Errorf("commit index %d is beyond the last stored entry %d", c, last)
	}
	if s.snapMeta.GetIndex() == 0 {
		return nil
	}
	snap, _ := s.mem.Snapshot()
	d, err := UnmarshalSnapshotDescriptor(snap.GetData())
	if err != nil {
		return err
	}
	if d.Index != s.snapMeta.GetIndex() || d.ClusterID != s.identity.ClusterID {
		return fmt.Errorf("snapshot at %d describes index %d of cluster %d", s.snapMeta.GetIndex(), d.Index, d.ClusterID)
	}
	return nil
}

// checkIdentity stamps a new directory with id or verifies the stored one.
// The stamp is synced into Pebble before the identity file is written, so a
// crash between the two leaves a stamped database without a file, which the
// next open completes (as it does for directories of earlier versions).
func (s *Store) checkIdentity(d *disk, id Identity) error {
	dir := d.dir
	if err := d.refuseForeign(kindCoordinator); err != nil {
		return err
	}
	file := diskIdentity{Kind: kindCoordinator, Node: id}
	val, found, err := s.get(identityKey)
	if err != nil {
		return fmt.Errorf("read identity: %w", err)
	}
	if !found {
		if err := d.refuseUnstamped(kindCoordinator); err != nil {
			return err
		}
		if err := s.db.Set(identityKey, encodeIdentity(id), pebble.Sync); err != nil {
			return fmt.Errorf("write identity: %w", err)
		}
		s.syncs.Add(1)
		return d.writeFile(file)
	}
	got, err := decodeIdentity(val)
	if err != nil {
		return fmt.Errorf("%w: read identity in %s: %w", ErrCorrupt, dir, err)
	}
	if got != id {
		return fmt.Errorf("%w: %s holds cluster %d node %d, expected cluster %d node %d",
			ErrIdentityMismatch, dir, got.ClusterID, got.NodeID, id.ClusterID, id.NodeID)
	}
	if d.hasFile && d.file.Node != got {
		return fmt.Errorf("%w: %s: identity file says cluster %d node %d, database cluster %d node %d",
			ErrCorrupt, dir, d.file.Node.ClusterID, d.file.Node.NodeID, got.ClusterID, got.NodeID)
	}
	return d.writeFile(file)
}

// encodeIdentity is the value of identityKey.
func encodeIdentity(id Identity) []byte {
	return binary.BigEndian.AppendUint64(encodeUint64(id.ClusterID), id.NodeID)
}

// decodeIdentity decodes the value of identityKey.
func decodeIdentity(val []byte) (Identity, error) {
	if len(val) != 16 {
		return Identity{}, fmt.Errorf("corrupt identity value of %d bytes", len(val))
	}
	return Identity{ClusterID: binary.BigEndian.Uint64(val), NodeID: binary.BigEndian.Uint64(val[8:])}, nil
}

func (s *Store) loadApplied() (uint64, error) {
	val, found, err := s.get(appliedKey)
	if err != nil || !found {
		return 0, err
	}
	if len(val) != 8 {
		return 0, fmt.Errorf("read applied index: corrupt value of %d bytes", len(val))
	}
	return binary.BigEndian.Uint64(val), nil
}

// get reads a key, returning a copy of its value.
func (s *Store) get(key []byte) ([]byte, bool, error) {
	val, closer, err := s.db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	defer closer.Close()
	return append([]byte(nil), val...), true, nil
}

// Close closes the database and releases the directory lock.
func (s *Store) Close() error {
	if s.closed.Swap(true) {
		return errClosed
	}
	err := s.db.Close()
	return errors.Join(err, s.lock.Close())
}

// SyncCount returns how many synced batches this Store has committed,
// including the identity stamp of a new directory. Tests use it to count
// fsyncs per Raft Ready.
func (s *Store) SyncCount() uint64 {
	return s.syncs.Load()
}
