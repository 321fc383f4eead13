// Package txlog is the durable storage of a coordinator node. It keeps, in a
// single Pebble database:
//
//   - the Raft log, hard state and latest snapshot, exposed through the
//     raft.Storage interface (see Store.Save, Store.CreateSnapshot and
//     Store.Compact);
//   - the tables of the replicated state machine (the "state keyspace"),
//     including the transaction-record table, written through StateBatch and
//     Store.CommitState together with the applied index they correspond to.
//
// Key layout:
//
//	m/identity          cluster id and node id the directory belongs to
//	r/hs                marshalled raftpb.HardState
//	r/snap              marshalled raftpb.Snapshot (metadata and data)
//	r/e/<index>         marshalled raftpb.Entry, index as 8-byte big endian
//	s/applied           applied index, 8-byte big endian
//	s/<key>             state machine data, e.g. the coordinator's s/horizon;
//	                    all of it sorts before s/txn/
//	s/fin/<t><id>       index of finished records, t = 8 bytes big endian
//	                    with the sign bit flipped (int64 order): the later
//	                    of FinishedAt and the id's UUIDv7 time; empty value
//	s/index-version     8-byte big endian 2 once both indexes are complete
//	s/open/<id>         index of records not finished; empty value
//	s/txn/<id>          records: the last table, so a new (UUIDv7) id sorts
//	                    after every key on disk (see index.go)
//
// Durability rules: Pebble is the source of truth and every mutation of the
// Raft log that Raft relies on (Save, CreateSnapshot) is a single synced
// batch. The state keyspace is written without syncing, because it can always
// be re-derived by replaying the durable log above the stored applied index.
// An in-memory raft.MemoryStorage mirrors the durable log so that Raft's reads
// never touch the disk.
//
// Damaged, lost and foreign data (both kinds of store): beside Pebble's
// files, DECREE-IDENTITY records which kind of store the directory holds and
// its identity, so a directory that once held a store never looks new and a
// coordinator never adopts a participant's directory (ErrIdentityMismatch).
// Damage in Pebble's last WAL before data that had been synced, which Pebble
// itself would take for a torn write, and recovered Raft state that no Save
// could produce, are refused at open with ErrCorrupt (see verifyWAL and
// Store.checkRecovered).
//
// The package also holds a participant's store, ParticipantLog: a separate
// Pebble database with the participant SDK's per-transaction records (PTxn,
// under p/txn/<id>) and the user resource's keys (under u/), written
// together in one batch so that a resource's changes commit atomically with
// the record of the vote or outcome they belong to. See participantlog.go
// for its key layout.
//
// The package knows nothing of the network or of the wire protocol.
package txlog
