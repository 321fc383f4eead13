package participant_test

import (
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/decree-tx/decree/participant"
	"github.com/decree-tx/decree/txlog"
)

// TestAcknowledgedStepsSurviveCrash answers calls, then opens a simulated
// crash that keeps only synced data: the acknowledged last step (a YES,
// READ_ONLY, outcome, tombstone or raised term) must be there. The step
// under test comes last, because a later synced write would make an
// unsynced one durable too.
func TestAcknowledgedStepsSurviveCrash(t *testing.T) {
	prepare := step{op: "prepare", id: "t", payload: "set a=1", term: 1, vote: yes}
	cases := map[string]struct {
		steps []step
		state txlog.PState
		term  uint64
		data  map[string]string
	}{
		"yes":          {steps: []step{prepare}, state: txlog.PStatePrepared, term: 1, data: map[string]string{"lock/a": tid("t"), "pending/" + tid("t"): "a=1"}},
		"raised term":  {steps: []step{prepare, {op: "resolve", id: "t", term: 9, state: sPrepared}}, state: txlog.PStatePrepared, term: 9},
		"commit":       {steps: []step{prepare, {op: "commit", id: "t", term: 1}}, state: txlog.PStateCommitted, term: 1, data: map[string]string{"data/a": "1", "lock/a": ""}},
		"abort":        {steps: []step{prepare, {op: "abort", id: "t", term: 1}}, state: txlog.PStateAborted, term: 1, data: map[string]string{"lock/a": ""}},
		"abort before": {steps: []step{{op: "abort", id: "t", term: 2}}, state: txlog.PStateAborted, term: 2},
		"resolve":      {steps: []step{{op: "resolve", id: "t", term: 2, state: sAborted}}, state: txlog.PStateAborted, term: 2},
		"read only":    {steps: []step{{op: "prepare", id: "t", payload: "ro", vote: readOnly}}, state: txlog.PStateReadOnly},
		"one phase":    {steps: []step{{op: "prepare1p", id: "t", payload: "set a=1", vote: committed}}, state: txlog.PStateCommitted, data: map[string]string{"data/a": "1"}},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			fs := vfs.NewCrashableMem()
			log, err := txlog.OpenParticipantLog("db", txlog.Options{FS: fs})
			if err != nil {
				t.Fatal(err)
			}
			p := newParticipant(t, &kvResource{}, participant.Options{Log: log})
			for _, s := range tc.steps {
				s.run(t, p.Server())
			}
			crashed := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0})
			p.Stop()
			_ = log.Close()

			log, err = txlog.OpenParticipantLog("db", txlog.Options{FS: crashed})
			if err != nil {
				t.Fatal(err)
			}
			defer log.Close()
			rec, found, err := log.GetTxn(tid("t"))
			if err != nil || !found || rec.State != tc.state || rec.Term != tc.term {
				t.Fatalf("after crash: %+v, %v, %v; want %v at term %d", rec, found, err, tc.state, tc.term)
			}
			for key, val := range tc.data {
				if got := userValue(t, log, key); got != val {
					t.Errorf("%s after crash = %q, want %q", key, got, val)
				}
			}
		})
	}
}
