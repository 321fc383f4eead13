package txlog

import (
	"strings"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// walSyncCounter is a filesystem that counts the fsyncs of Pebble's
// write-ahead log files.
type walSyncCounter struct {
	vfs.FS
	syncs atomic.Uint64
}

func (fs *walSyncCounter) Create(name string, c vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.Create(name, c)
	return fs.wrap(name, f), err
}

func (fs *walSyncCounter) ReuseForWrite(oldname, newname string, c vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.ReuseForWrite(oldname, newname, c)
	return fs.wrap(newname, f), err
}

func (fs *walSyncCounter) wrap(name string, f vfs.File) vfs.File {
	if f == nil || !strings.HasSuffix(name, ".log") {
		return f
	}
	return &countedFile{File: f, syncs: &fs.syncs}
}

type countedFile struct {
	vfs.File
	syncs *atomic.Uint64
}

func (f *countedFile) Sync() error {
	f.syncs.Add(1)
	return f.File.Sync()
}

func (f *countedFile) SyncData() error {
	f.syncs.Add(1)
	return f.File.SyncData()
}
