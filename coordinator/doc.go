// Package coordinator runs one node of a Decree coordinator cluster.
//
// A Node owns a raft group member (go.etcd.io/raft/v3 RawNode), its durable
// storage (txlog.Store) and the replicated transaction-record state machine.
// A single goroutine drives raft through the Ready contract:
//
//  1. persist hard state, entries and any snapshot in one synced batch;
//  2. only then send the Ready's messages to peers;
//  3. apply committed entries to the state machine in one batch that also
//     records the applied index;
//  4. hand results to waiting proposers, only after step 3;
//  5. Advance.
//
// Peers talk over gRPC streams (PeerTransport and RaftService). Callers
// propose commands with Node.Propose and wait for the applied result, and
// make linearizable reads with Node.ReadIndex.
package coordinator
