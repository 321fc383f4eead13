package coordinator

import (
	"testing"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// FuzzRaftMessage feeds arbitrary bytes, as a peer's stream delivers them
// (the stream's sender and one marshalled raftpb.Message), to a follower
// restarted from the prepared disk. Whatever the bytes, the node must not
// panic or stop, and while its term is unchanged it must still follow the
// leader's next append. The committed corpus (testdata/fuzz/FuzzRaftMessage)
// holds the inputs that crashed nodes before raft input was checked.
//
//	go test -run xxx -fuzz FuzzRaftMessage -fuzztime 3m ./coordinator/
func FuzzRaftMessage(f *testing.F) {
	seed := newFollower(f, nil)
	for _, m := range []*raftpb.Message{seed.heartbeat(), seed.appendNext(raftpb.EntryNormal, testBatch("x"))} {
		data, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint64(fixLeader), data)
	}
	f.Fuzz(func(t *testing.T, sender uint64, data []byte) {
		var m raftpb.Message
		if err := proto.Unmarshal(data, &m); err != nil {
			return // the stream refuses undecodable messages (InvalidArgument)
		}
		fol := newFollower(t, nil)
		if fol.node.admitFromStream(sender, &m) {
			if err := fol.deliver(&m); err != nil {
				t.Fatalf("follower stopped on %v: %v", &m, err)
			}
		}
		st := fol.node.rn.BasicStatus()
		if st.HardState.GetTerm() != fol.disk.term || st.RaftState != raft.StateFollower {
			return // a (valid) message moved it on; the leader's old append is stale
		}
		if st.Lead != raft.None && st.Lead != fixLeader {
			return
		}
		fol.stillFollows(t)
	})
}
