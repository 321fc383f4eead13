// Package coordinator runs one node of a Decree coordinator cluster.
//
// A node is three layers, each behind a small interface so that the
// deterministic simulation runs the same code with only the network, the
// disks and time simulated:
//
//   - The Node (node.go, loop.go) owns a raft group member
//     (go.etcd.io/raft/v3 RawNode), its durable storage (txlog.Store) and
//     the replicated decision log (fsm.go). One goroutine drives raft
//     through the Ready contract: persist hard state, entries and any
//     snapshot in one synced batch; only then send the Ready's messages;
//     apply committed entries in one batch that records the applied index;
//     hand results to waiting proposers after that; Advance. Every peer
//     message is checked before raft sees it (raftcheck.go). Peers talk
//     over gRPC streams (peerTransport, raftService; snapshot.go streams
//     state to a lagging follower).
//   - The Driver (driver.go) runs the 2PC core, internal/twopc, on the
//     leader: it feeds it events on one goroutine and carries out its
//     actions through its edges: the decision log (decisionLog: propose and
//     read through raft; nodeLog wraps a Node), participant calls
//     (internal/partcall) and forwarding to the leader (leaderLink). The
//     core makes every protocol decision.
//   - The services (service.go, grpc.go, health.go) translate gRPC to the
//     Driver's serve methods and back: Coordinator (Commit, Outcome,
//     ListTransactions), Admin status and gRPC health.
//
// Ordering and ownership: only the Node's loop touches raft and applies;
// only the Driver's loop touches the core; the services and the edges talk
// to them through channels and callbacks, never by sharing state.
package coordinator
