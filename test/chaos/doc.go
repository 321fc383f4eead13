// Package chaos holds Decree's multi-process fault tests: a real 3-node
// coordinator cluster and 3 bank participants run a transfer workload while
// a seeded nemesis kills, pauses, partitions and slows them; a checker then
// audits every bank and coordinator and checks the recorded history for
// linearizability. Everything lives in _test.go files, so the harness never
// ships in a binary; the package is skipped unless asked for:
//
//	make chaos-short   # about 60 s of process-level faults (CI)
//	make chaos         # 5 minutes of every fault, partitions need root
//	go test ./test/chaos -run TestChaos -v -args -chaos -duration 90s -nemeses kill-leader,proxy-slow -seed 42
package chaos
