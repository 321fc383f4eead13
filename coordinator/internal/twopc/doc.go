// Package twopc is the deterministic two-phase-commit core of a
// coordinator's leader: events in (a client's Commit or Outcome with what
// the decision log holds for it, votes, applied decisions, acknowledgements,
// leadership changes, ticks), actions out (prepare, propose, deliver,
// reply). It holds every protocol decision: commit admission, voting and
// its deadline, one-phase resolution, parallel commit and the recovery of
// staged transactions, outcome queries and presumed abort, phase-2
// delivery with backoff, Finished batching and garbage collection.
//
// Like etcd's raft.Step, it has no goroutines, clock, network, disk or
// logger: time arrives with each Step, and its output is data. The
// coordinator's Driver feeds it and carries its actions out; the
// simulation drives the same Driver. TestPureCoreImports (layout_test.go)
// keeps its imports to the standard library, proto enums and this
// module's internal helpers.
//
// Its protocol scenarios are text files in testdata, run by TestCoreData
// (-rewrite rewrites their expected output).
package twopc
