package txlog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// identityFile is written beside Pebble's files when a store is created.
// Pebble keeps the same identity (m/identity or m/participant-id) inside the
// database; the file is the witness that the directory once held a store, so
// that a database which lost its contents (a removed or damaged WAL) is
// refused instead of looking like a new, empty one, and it records which
// kind of store the directory is, so a coordinator never adopts a
// participant's directory or the other way round.
const identityFile = "DECREE-IDENTITY"

// storeKind is what a data directory holds.
type storeKind uint8

const (
	kindCoordinator storeKind = 1
	kindParticipant storeKind = 2
)

func (k storeKind) String() string {
	switch k {
	case kindCoordinator:
		return "a coordinator node store"
	case kindParticipant:
		return "a participant log"
	}
	return fmt.Sprintf("an unknown kind of store (%d)", uint8(k))
}

// diskIdentity is the content of the identity file.
type diskIdentity struct {
	Kind storeKind
	// Node is set for kindCoordinator.
	Node Identity
	// ParticipantID is set for kindParticipant.
	ParticipantID string
}

// identityMagic starts the file; identityV1 is its format version.
var identityMagic = []byte("DCRID")

const identityV1 = 1

// maxParticipantIDLen bounds the id a file may carry (a UUID is 36 bytes).
const maxParticipantIDLen = 255

// marshal encodes d: magic, version, kind, the kind's fields, and a CRC-32C
// of everything before it.
func (d diskIdentity) marshal() []byte {
	b := append(append([]byte(nil), identityMagic...), identityV1, byte(d.Kind))
	switch d.Kind {
	case kindCoordinator:
		b = binary.BigEndian.AppendUint64(b, d.Node.ClusterID)
		b = binary.BigEndian.AppendUint64(b, d.Node.NodeID)
	case kindParticipant:
		b = append(b, byte(len(d.ParticipantID)))
		b = append(b, d.ParticipantID...)
	}
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

// unmarshalDiskIdentity decodes what marshal wrote.
func unmarshalDiskIdentity(b []byte) (diskIdentity, error) {
	const head = 5 + 2 // magic, version, kind
	if len(b) < head+4 || string(b[:5]) != string(identityMagic) {
		return diskIdentity{}, errors.New("not a decree identity file")
	}
	body, sum := b[:len(b)-4], binary.BigEndian.Uint32(b[len(b)-4:])
	if crc32.Checksum(body, castagnoli) != sum {
		return diskIdentity{}, errors.New("identity file checksum mismatch")
	}
	if body[5] != identityV1 {
		return diskIdentity{}, fmt.Errorf("unsupported identity file version %d", body[5])
	}
	d := diskIdentity{Kind: storeKind(body[6])}
	rest := body[head:]
	switch d.Kind {
	case kindCoordinator:
		if len(rest) != 16 {
			return diskIdentity{}, fmt.Errorf("coordinator identity of %d bytes, want 16", len(rest))
		}
		d.Node = Identity{ClusterID: binary.BigEndian.Uint64(rest), NodeID: binary.BigEndian.Uint64(rest[8:])}
	case kindParticipant:
		if len(rest) < 1 || len(rest) != 1+int(rest[0]) || rest[0] == 0 {
			return diskIdentity{}, errors.New("malformed participant identity")
		}
		d.ParticipantID = string(rest[1:])
	default:
		return diskIdentity{}, fmt.Errorf("unknown store kind %d", body[6])
	}
	return d, nil
}

// readIdentityFile returns the identity file of dir, if there is one. A
// file that cannot be decoded wraps ErrCorrupt.
func readIdentityFile(fsys vfs.FS, dir string) (diskIdentity, bool, error) {
	path := fsys.PathJoin(dir, identityFile)
	f, err := fsys.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return diskIdentity{}, false, nil
	}
	if err != nil {
		return diskIdentity{}, false, fmt.Errorf("open %s: %w", path, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 1024))
	if err != nil {
		return diskIdentity{}, false, fmt.Errorf("read %s: %w", path, err)
	}
	d, err := unmarshalDiskIdentity(b)
	if err != nil {
		return diskIdentity{}, false, fmt.Errorf("%w: %s: %w", ErrCorrupt, path, err)
	}
	return d, true, nil
}

// writeIdentityFile writes d durably: a synced temporary file renamed into
// place, then the directory synced, so a crash leaves either no file or the
// whole one.
func writeIdentityFile(fsys vfs.FS, dir string, d diskIdentity) error {
	path := fsys.PathJoin(dir, identityFile)
	tmp := path + ".tmp"
	f, err := fsys.Create(tmp, vfs.WriteCategoryUnspecified)
	if err != nil {
		return fmt.Errorf("create %s: %w", tmp, err)
	}
	_, err = f.Write(d.marshal())
	if err == nil {
		err = f.Sync()
	}
	if err = errors.Join(err, f.Close()); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := fsys.Rename(tmp, path); err != nil {
		return fmt.Errorf("rename %s: %w", tmp, err)
	}
	dirf, err := fsys.OpenDir(dir)
	if err != nil {
		return fmt.Errorf("open %s: %w", dir, err)
	}
	if err = errors.Join(dirf.Sync(), dirf.Close()); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// disk is an opened data directory: Pebble, its lock, and the identity
// file found there before anything was written.
type disk struct {
	db      *pebble.DB
	lock    *pebble.Lock
	fs      vfs.FS
	dir     string
	file    diskIdentity
	hasFile bool
}

// close releases the database and the lock.
func (d *disk) close() {
	_ = d.db.Close()
	_ = d.lock.Close()
}

// writeFile writes the identity file unless it is there already.
func (d *disk) writeFile(id diskIdentity) error {
	if d.hasFile {
		return nil
	}
	if err := writeIdentityFile(d.fs, d.dir, id); err != nil {
		return err
	}
	d.file, d.hasFile = id, true
	return nil
}

// refuseForeign fails if the identity file says dir holds another kind of
// store than want.
func (d *disk) refuseForeign(want storeKind) error {
	if d.hasFile && d.file.Kind != want {
		return fmt.Errorf("%w: %s holds %s, not %s", ErrIdentityMismatch, d.dir, d.file.Kind, want)
	}
	return nil
}

// refuseUnstamped is called when the database holds no identity of kind:
// the directory is refused if it held a store once (its identity file is
// there, so the database lost data) or holds other data; otherwise it is
// new.
func (d *disk) refuseUnstamped(kind storeKind) error {
	if d.hasFile {
		return fmt.Errorf("%w: %s has the identity file of %s but its database has lost that identity: "+
			"its data is damaged or lost (restore it or replace this member)", ErrCorrupt, d.dir, d.file.Kind)
	}
	other := participantStampKey
	if kind == kindParticipant {
		other = identityKey
	}
	if _, found, err := getCopy(d.db, other); err != nil {
		return fmt.Errorf("read identity: %w", err)
	} else if found {
		return fmt.Errorf("%w: %s holds %s, not %s", ErrIdentityMismatch, d.dir, otherKind(kind), kind)
	}
	it, err := d.db.NewIter(nil)
	if err != nil {
		return err
	}
	defer it.Close()
	if it.First() {
		return fmt.Errorf("%w: %s holds data but no store identity: refusing to adopt it as %s",
			ErrIdentityMismatch, d.dir, kind)
	}
	return it.Error()
}

func otherKind(k storeKind) storeKind {
	if k == kindCoordinator {
		return kindParticipant
	}
	return kindCoordinator
}
