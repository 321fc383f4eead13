// Package partcall carries a coordinator leader's calls to participants:
// Prepare, Commit, Abort and Resolve. Each participant has one long-lived
// Calls stream over which concurrent calls are batched, with unary calls
// for a participant that does not serve Calls; every call ends exactly
// once, with the reply, the participant's error or its own deadline.
//
// The Mux runs in production on goroutines over gRPC (New), or stepped on
// its owner's goroutine over any Transport (NewStepped), which is how the
// deterministic simulation runs the same link logic. It knows nothing of
// the 2PC protocol: the Driver turns the core's actions into calls and
// their ends into events.
package partcall
