package participant_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/decree-tx/decree/participant"
	"github.com/decree-tx/decree/txlog"
)

// BenchmarkPrepare measures YES votes sent in parallel: each is one synced
// batch holding the vote record and the resource's staged writes.
// Concurrent votes share fsyncs through Pebble's group commit; fsyncs/op
// reports how many WAL fsyncs a vote cost on average.
func BenchmarkPrepare(b *testing.B) {
	fs := &walSyncCounter{FS: vfs.Default}
	log, err := txlog.OpenParticipantLog(b.TempDir(), txlog.Options{FS: fs})
	if err != nil {
		b.Fatal(err)
	}
	defer log.Close()
	p := newParticipant(b, &kvResource{}, participant.Options{Log: log})
	srv := p.Server()
	var seq atomic.Uint64
	syncs, commits := fs.syncs.Load(), log.SyncCount()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			id := tid(fmt.Sprintf("tx-%d", seq.Add(1)))
			resp, err := srv.Prepare(context.Background(), prepareReq(id, "set "+id+"=v", 1))
			if err != nil || resp.GetVote() != yes {
				b.Errorf("prepare %s: %v %v", id, resp, err)
				return
			}
		}
	})
	b.StopTimer()
	n := float64(seq.Load())
	b.ReportMetric(float64(fs.syncs.Load()-syncs)/n, "fsyncs/op")
	b.ReportMetric(float64(log.SyncCount()-commits)/n, "synced-commits/op")
}

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
