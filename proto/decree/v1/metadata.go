package decreev1

// This file is written by hand: gRPC metadata keys are part of the wire
// protocol but have no place in a .proto file. Every side that reads or
// writes one (the coordinator's services, the Go client) takes it from here.

// LeaderHintKey is the gRPC metadata key in which a coordinator node names
// the leader's host:port: in the response header when it forwarded the
// call to the leader, in the trailer when it answers Unavailable. A client
// sends its next call there directly.
const LeaderHintKey = "decree-leader"
