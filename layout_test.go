// Package decree_test holds repository-wide checks.
package decree_test

import (
	"os/exec"
	"strings"
	"testing"
)

// allowed maps each top-level room of DESIGN.md's layout to the rooms of
// this module it may import. Third-party imports are not checked here.
var allowed = map[string][]string{
	"proto":              {},
	"txlog":              {"txnspec"},
	"txnspec":            {},
	"internal":           {},
	"coordinator":        {"txlog", "proto", "txnspec", "internal", "coordinator/internal/twopc"},
	"coordinator/client": {"proto", "txnspec", "internal"},
	// The 2PC core is pure: see TestPureCoreImports.
	"coordinator/internal/twopc": {"proto", "internal"},
	"participant":                {"txlog", "proto", "txnspec", "internal"},
	"cmd":                        {"*"},
	"examples/bank":              {"coordinator/client", "participant", "txlog", "proto"},
	"test/chaos":                 {"coordinator/client", "participant", "proto", "examples/bank"},
}

const module = "github.com/decree-tx/decree"

// TestLayoutImports fails when a package imports a room of this module that
// DESIGN.md's layout forbids (for example participant importing coordinator
// internals, or txlog importing gRPC code from proto). Only production
// imports are checked: tests may wire rooms together (the simulation runs
// the coordinator and the participant SDK side by side).
func TestLayoutImports(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}} {{join .Imports " "}}`, "./...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	checked := 0
	for line := range strings.SplitSeq(strings.TrimSpace(string(out)), "\n") {
		fields := strings.Fields(line)
		pkg := strings.TrimPrefix(fields[0], module+"/")
		if pkg == module {
			continue
		}
		room := roomOf(pkg)
		if room == "" {
			t.Errorf("package %s is in no room of the layout", pkg)
			continue
		}
		for _, imp := range fields[1:] {
			if !strings.HasPrefix(imp, module+"/") {
				continue
			}
			target := roomOf(strings.TrimPrefix(imp, module+"/"))
			if target == room || mayImport(room, target) {
				continue
			}
			t.Errorf("%s imports %s: room %q may not import room %q", pkg, imp, room, target)
		}
		checked++
	}
	if checked == 0 {
		t.Fatal("no packages checked")
	}
}

// TestPureCoreImports keeps the 2PC core deterministic and free of I/O: it
// imports the standard library, the protocol's enums and this module's
// small internal helpers, nothing else (no gRPC, no raft, no storage, no
// logging).
func TestPureCoreImports(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", `{{join .Imports " "}}`, "./coordinator/internal/twopc").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	imports := strings.Fields(string(out))
	if len(imports) == 0 {
		t.Fatal("no imports listed")
	}
	for _, imp := range imports {
		std := !strings.Contains(strings.Split(imp, "/")[0], ".")
		if std || strings.HasPrefix(imp, module+"/proto/") || strings.HasPrefix(imp, module+"/internal/") {
			continue
		}
		t.Errorf("the 2PC core imports %s: it may import only the standard library, proto and internal", imp)
	}
}

// roomOf returns the longest layout room containing pkg.
func roomOf(pkg string) string {
	best := ""
	for room := range allowed {
		if (pkg == room || strings.HasPrefix(pkg, room+"/")) && len(room) > len(best) {
			best = room
		}
	}
	return best
}

func mayImport(from, to string) bool {
	for _, a := range allowed[from] {
		if a == "*" || a == to {
			return true
		}
	}
	return false
}

func TestRoomOf(t *testing.T) {
	for pkg, want := range map[string]string{
		"coordinator":            "coordinator",
		"coordinator/client":     "coordinator/client",
		"coordinator/client/x":   "coordinator/client",
		"proto/decree/v1":        "proto",
		"internal/clock":         "internal",
		"examples/bank/cmd/bank": "examples/bank",
		"util":                   "",
	} {
		if got := roomOf(pkg); got != want {
			t.Errorf("roomOf(%q) = %q, want %q", pkg, got, want)
		}
	}
	if mayImport("participant", "coordinator") {
		t.Error("participant must not import coordinator")
	}
	if !mayImport("cmd", "coordinator") {
		t.Error("cmd may import coordinator")
	}
}
