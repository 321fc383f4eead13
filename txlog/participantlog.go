package txlog

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"
	"github.com/rs/zerolog"
)

// Key layout of a participant log (a database of its own, never shared with
// a coordinator Store):
//
//	m/participant   format stamp, one version byte
//	m/participant-id  the participant's identity, a random UUID
//	p/txn/<id>      marshalled PTxn
//	u/<key>         the user resource's data, key as the user wrote it
var (
	participantStampKey = []byte("m/participant")
	participantIDKey    = []byte("m/participant-id")
	ptxnPrefix          = []byte("p/txn/")
	userPrefix          = []byte("u/")
)

// participantLogV1 is the format version stamped into a new participant log.
const participantLogV1 = 1

// errLogClosed is returned by operations on a closed ParticipantLog.
var errLogClosed = errors.New("txlog: participant log is closed")

// ParticipantLog is a participant's durable store: the SDK's per-transaction
// records (PTxn) and a keyspace for the user resource's data, so that a
// resource's changes and the record of the vote or outcome they belong to
// commit atomically in one batch. Its methods are safe for concurrent use;
// concurrent synced commits share fsyncs through Pebble's commit pipeline.
type ParticipantLog struct {
	db   *pebble.DB
	lock *pebble.Lock
	log  zerolog.Logger
	id   string

	// closeMu makes Close wait for operations in flight and makes later
	// ones fail cleanly. Operations hold it shared, so they never
	// serialise one another.
	closeMu sync.RWMutex
	closed  bool
	syncs   atomic.Uint64
	// recent holds the records of the newest ids, for GetTxn (recent.go).
	recent recentCache[PTxn]
}

// OpenParticipantLog opens or creates a participant log in dir. If the
// directory is in use, the error wraps ErrLocked. A coordinator data
// directory is refused.
func OpenParticipantLog(dir string, opts Options) (*ParticipantLog, error) {
	d, err := openLocked(dir, opts)
	if err != nil {
		return nil, err
	}
	l := &ParticipantLog{db: d.db, lock: d.lock, log: opts.Logger.With().Str("component", "participantlog").Logger()}
	if err := l.load(d); err != nil {
		d.close()
		return nil, err
	}
	l.log.Info().Str("dir", dir).Str("participant_id", l.id).Msg("opened participant log")
	return l, nil
}

// load checks the stamp and identity of the log, creating them in a new
// one, and writes the identity file if it is missing (new logs, and logs of
// earlier versions). The file comes after the synced stamp, so a crash
// between the two is completed by the next open.
func (l *ParticipantLog) load(d *disk) error {
	if err := d.refuseForeign(kindParticipant); err != nil {
		return err
	}
	if err := l.checkStamp(d); err != nil {
		return err
	}
	if err := l.loadID(); err != nil {
		return err
	}
	if d.hasFile && d.file.ParticipantID != l.id {
		return fmt.Errorf("%w: %s: identity file says participant %s, database %s",
			ErrCorrupt, d.dir, d.file.ParticipantID, l.id)
	}
	l.recent.clone = (*PTxn).clone
	if err := l.recent.reset(l.db, ptxnPrefix, UnmarshalPTxn); err != nil {
		return err
	}
	return d.writeFile(diskIdentity{Kind: kindParticipant, ParticipantID: l.id})
}

// checkStamp stamps a new directory (synced) or checks the stamp of an
// existing one.
func (l *ParticipantLog) checkStamp(d *disk) error {
	val, found, err := getCopy(l.db, participantStampKey)
	if err != nil {
		return fmt.Errorf("read participant log stamp: %w", err)
	}
	if !found {
		if err := d.refuseUnstamped(kindParticipant); err != nil {
			return err
		}
		// The stamp and the identity of a new log are born together.
		id, err := newParticipantID()
		if err != nil {
			return fmt.Errorf("create participant id: %w", err)
		}
		b := l.db.NewBatch()
		defer b.Close()
		_ = b.Set(participantStampKey, []byte{participantLogV1}, nil)
		_ = b.Set(participantIDKey, []byte(id), nil)
		if err := b.Commit(pebble.Sync); err != nil {
			return fmt.Errorf("write participant log stamp: %w", err)
		}
		l.syncs.Add(1)
		return nil
	}
	if _, found, err := getCopy(l.db, identityKey); err != nil {
		return fmt.Errorf("read identity: %w", err)
	} else if found {
		return fmt.Errorf("%w: %s holds %s, not %s", ErrIdentityMismatch, d.dir, kindCoordinator, kindParticipant)
	}
	if !bytes.Equal(val, []byte{participantLogV1}) {
		return fmt.Errorf("open participant log: unsupported format stamp %x in %s", val, d.dir)
	}
	return nil
}

// loadID reads the participant's identity, creating it (synced) in a new
// log or in one written before identities existed.
func (l *ParticipantLog) loadID() error {
	val, found, err := getCopy(l.db, participantIDKey)
	if err != nil {
		return fmt.Errorf("read participant id: %w", err)
	}
	if found {
		if len(val) == 0 || len(val) > maxParticipantIDLen {
			return fmt.Errorf("%w: participant id of %d bytes", ErrCorrupt, len(val))
		}
		l.id = string(val)
		return nil
	}
	id, err := newParticipantID()
	if err != nil {
		return fmt.Errorf("create participant id: %w", err)
	}
	if err := l.db.Set(participantIDKey, []byte(id), pebble.Sync); err != nil {
		return fmt.Errorf("write participant id: %w", err)
	}
	l.syncs.Add(1)
	l.id = id
	return nil
}

// newParticipantID returns a random (version 4) UUID. It comes from the
// operating system's generator, not an injected one: two logs must never
// share it, whatever a test or simulation seeds.
func newParticipantID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:], nil
}

// ID returns the participant's identity: created with the log, durable,
// and the same under every address the participant is reached by, so a
// coordinator can tell two spellings of one participant apart from two
// participants.
func (l *ParticipantLog) ID() string { return l.id }

// Close closes the database and releases the directory lock. It waits for
// operations in flight; later ones fail.
func (l *ParticipantLog) Close() error {
	l.closeMu.Lock()
	defer l.closeMu.Unlock()
	if l.closed {
		return errLogClosed
	}
	l.closed = true
	return errors.Join(l.db.Close(), l.lock.Close())
}

// acquire takes the shared side of closeMu; release undoes it. It fails once
// the log is closed.
func (l *ParticipantLog) acquire() error {
	l.closeMu.RLock()
	if l.closed {
		l.closeMu.RUnlock()
		return errLogClosed
	}
	return nil
}

func (l *ParticipantLog) release() { l.closeMu.RUnlock() }

// SyncCount returns how many synced commits this log has made, including
// the stamp of a new directory. Concurrent commits may share one fsync, so
// this is an upper bound on the fsyncs issued.
func (l *ParticipantLog) SyncCount() uint64 {
	return l.syncs.Load()
}

// Commit writes b atomically and durably (synced) and releases it. b must not
// be used afterwards, whether or not Commit succeeds.
func (l *ParticipantLog) Commit(b *PBatch) error {
	return l.commit(b, pebble.Sync)
}

// CommitUnsynced writes b atomically without waiting for it to reach the
// disk and releases it. A crash may lose it; Pebble's log is a prefix, so
// any later synced commit makes it durable too.
func (l *ParticipantLog) CommitUnsynced(b *PBatch) error {
	return l.commit(b, pebble.NoSync)
}

func (l *ParticipantLog) commit(b *PBatch, opts *pebble.WriteOptions) error {
	defer b.Discard()
	if b.log != l || b.batch == nil {
		return errors.New("commit participant batch: batch is used up or belongs to another log")
	}
	if err := l.acquire(); err != nil {
		return fmt.Errorf("commit participant batch: %w", err)
	}
	defer l.release()
	seq := l.recent.begin(b.txns)
	if err := b.batch.Commit(opts); err != nil {
		l.recent.end(b.txns, seq, false)
		return fmt.Errorf("commit participant batch: %w", err)
	}
	l.recent.end(b.txns, seq, true)
	if opts == pebble.Sync {
		l.syncs.Add(1)
	}
	return nil
}

// GetTxn reads the record of transaction id.
func (l *ParticipantLog) GetTxn(id string) (*PTxn, bool, error) {
	if err := l.acquire(); err != nil {
		return nil, false, fmt.Errorf("get txn %q: %w", id, err)
	}
	defer l.release()
	if t, found, ok := l.recent.lookup(id); ok {
		return t, found, nil
	}
	return getTxn(l.db, id)
}

// ScanTxns calls fn for every record in id order until fn returns false.
func (l *ParticipantLog) ScanTxns(fn func(*PTxn) bool) error {
	if err := l.acquire(); err != nil {
		return fmt.Errorf("scan txns: %w", err)
	}
	defer l.release()
	err := scanPrefix(l.db, ptxnPrefix, func(key, val []byte) (bool, error) {
		t, err := UnmarshalPTxn(val)
		if err != nil {
			return false, fmt.Errorf("key %q: %w", key, err)
		}
		return fn(t), nil
	})
	if err != nil {
		return fmt.Errorf("scan txns: %w", err)
	}
	return nil
}

// Get reads a committed user key.
func (l *ParticipantLog) Get(key []byte) ([]byte, bool, error) {
	if err := l.acquire(); err != nil {
		return nil, false, fmt.Errorf("get %q: %w", key, err)
	}
	defer l.release()
	return getUser(l.db, key)
}

// Scan calls fn for every committed user key starting with prefix, in key
// order, until fn returns false. fn gets copies it may keep.
func (l *ParticipantLog) Scan(prefix []byte, fn func(key, value []byte) bool) error {
	if err := l.acquire(); err != nil {
		return fmt.Errorf("scan %q: %w", prefix, err)
	}
	defer l.release()
	return scanUser(l.db, prefix, fn)
}

// NewSnapshot returns a consistent, read-only view of the user keys as of
// now. The caller must Close it.
func (l *ParticipantLog) NewSnapshot() (*PSnapshot, error) {
	if err := l.acquire(); err != nil {
		return nil, fmt.Errorf("new snapshot: %w", err)
	}
	defer l.release()
	return &PSnapshot{snap: l.db.NewSnapshot()}, nil
}

// PSnapshot is a point-in-time view of a participant log's user keys. It
// must be closed before the log is.
type PSnapshot struct {
	snap *pebble.Snapshot
}

// Get reads a user key as of the snapshot.
func (s *PSnapshot) Get(key []byte) ([]byte, bool, error) {
	return getUser(s.snap, key)
}

// Scan calls fn for every user key starting with prefix as of the snapshot,
// in key order, until fn returns false. fn gets copies it may keep.
func (s *PSnapshot) Scan(prefix []byte, fn func(key, value []byte) bool) error {
	return scanUser(s.snap, prefix, fn)
}

// Close releases the snapshot.
func (s *PSnapshot) Close() error {
	return s.snap.Close()
}

// PBatch collects the writes of one participant step: user keys and
// transaction records. Its reads see its own writes over the committed
// data. It is not safe for concurrent use.
type PBatch struct {
	log    *ParticipantLog
	batch  *pebble.Batch
	writes int
	// txns lists the record writes, for the log's cache of recent
	// records (recent.go).
	txns []recentOp[PTxn]
	// key and val are scratch space for the record writes: the Pebble
	// batch copies what it is given.
	key, val []byte
}

// NewBatch returns an empty indexed batch for Commit.
func (l *ParticipantLog) NewBatch() *PBatch {
	return &PBatch{log: l, batch: l.db.NewIndexedBatch()}
}

// Get reads a user key, from the batch's own writes first.
func (b *PBatch) Get(key []byte) ([]byte, bool, error) {
	return getUser(b.open(), key)
}

// Scan calls fn for every user key starting with prefix, as the batch sees
// them, in key order, until fn returns false. fn gets copies it may keep.
func (b *PBatch) Scan(prefix []byte, fn func(key, value []byte) bool) error {
	return scanUser(b.open(), prefix, fn)
}

// Set writes a user key.
func (b *PBatch) Set(key, value []byte) {
	_ = b.open().Set(userKey(key), value, nil) // fails only on a closed batch
	b.writes++
}

// Delete removes a user key.
func (b *PBatch) Delete(key []byte) {
	_ = b.open().Delete(userKey(key), nil)
	b.writes++
}

// UserWrites returns how many Set and Delete calls the batch holds.
func (b *PBatch) UserWrites() int {
	return b.writes
}

// PutTxn writes t's record. It panics on an undefined state.
func (b *PBatch) PutTxn(t *PTxn) {
	if !t.State.valid() {
		panic(fmt.Sprintf("txlog: PutTxn with undefined state %v", t.State))
	}
	b.key = append(append(b.key[:0], ptxnPrefix...), t.ID...)
	b.val = t.appendMarshal(b.val[:0])
	_ = b.open().Set(b.key, b.val, nil)
	b.txns = append(b.txns, recentOp[PTxn]{id: t.ID, rec: t.clone()})
}

// DeleteTxn removes the record of transaction id.
func (b *PBatch) DeleteTxn(id string) {
	_ = b.open().Delete(ptxnKey(id), nil)
	b.txns = append(b.txns, recentOp[PTxn]{id: id})
}

// Discard releases a batch that will not be committed. It is a no-op on a
// batch already committed or discarded.
func (b *PBatch) Discard() {
	// Pebble recycles closed batches, so closing one twice would corrupt
	// another user's batch.
	if b.batch != nil {
		_ = b.batch.Close()
		b.batch = nil
	}
}

func (b *PBatch) open() *pebble.Batch {
	if b.batch == nil {
		panic("txlog: use of a committed or discarded PBatch")
	}
	return b.batch
}

func ptxnKey(id string) []byte {
	return append(bytes.Clone(ptxnPrefix), id...)
}

func userKey(key []byte) []byte {
	return append(append(make([]byte, 0, len(userPrefix)+len(key)), userPrefix...), key...)
}

func getTxn(r pebble.Reader, id string) (*PTxn, bool, error) {
	val, found, err := getCopy(r, ptxnKey(id))
	if err != nil || !found {
		return nil, false, wrapErr(err, "get txn %q", id)
	}
	t, err := UnmarshalPTxn(val)
	if err != nil {
		return nil, false, fmt.Errorf("get txn %q: %w", id, err)
	}
	return t, true, nil
}

func getUser(r pebble.Reader, key []byte) ([]byte, bool, error) {
	val, found, err := getCopy(r, userKey(key))
	return val, found, wrapErr(err, "get %q", key)
}

func scanUser(r pebble.Reader, prefix []byte, fn func(key, value []byte) bool) error {
	err := scanPrefix(r, userKey(prefix), func(key, val []byte) (bool, error) {
		return fn(bytes.Clone(key[len(userPrefix):]), bytes.Clone(val)), nil
	})
	return wrapErr(err, "scan %q", prefix)
}

// getCopy reads key from r, returning a copy of its value.
func getCopy(r pebble.Reader, key []byte) ([]byte, bool, error) {
	val, closer, err := r.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	defer closer.Close()
	return bytes.Clone(val), true, nil
}

// scanPrefix calls fn for every key of r starting with prefix until fn
// returns false or an error. The slices fn gets are valid during the call.
func scanPrefix(r pebble.Reader, prefix []byte, fn func(key, val []byte) (bool, error)) error {
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: upperBound(prefix)})
	if err != nil {
		return err
	}
	for it.First(); it.Valid(); it.Next() {
		more, err := fn(it.Key(), it.Value())
		if err != nil {
			return errors.Join(err, it.Close())
		}
		if !more {
			break
		}
	}
	return errors.Join(it.Error(), it.Close())
}

// upperBound returns the first key after every key that starts with
// prefix: prefix with its trailing 0xff bytes dropped and its last byte
// incremented. Every prefix used here starts with a letter, so the result
// is never empty.
func upperBound(prefix []byte) []byte {
	end := bytes.Clone(prefix)
	for len(end) > 0 && end[len(end)-1] == 0xff {
		end = end[:len(end)-1]
	}
	end[len(end)-1]++
	return end
}

// wrapErr wraps a non-nil err with a formatted context.
func wrapErr(err error, format string, args ...any) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf(format+": %w", append(args, err)...)
}
