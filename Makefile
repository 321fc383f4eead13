# Decree build and test entry points. Everything here installs what it needs
# through the Go module proxy; protoc (for `make proto`) from Debian.
GO        ?= go
# A recipe that pipes (the simulation's summary) must fail when the test
# fails, not when grep does.
SHELL       := /bin/bash
.SHELLFLAGS := -o pipefail -c
BIN       := bin
PROTOC_GEN_GO_VERSION      := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
GOBIN_DIR := $(shell $(GO) env GOPATH)/bin
TEST_TIMEOUT ?= 12m

.PHONY: all build test test-short fuzz-short demo sim proto lint vet fmt-check clean

all: build

## build: static release binaries into ./bin (CGO off: static, pure-Go zstd)
build:
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/ ./cmd/... ./examples/bank/cmd/...

## demo: a local 3-node cluster, 3 banks, 30s of transfers, a leader kill, an audit
## (DEMO_FLAGS="--duration 10s --workers 32" to change it; see bin/bank demo -h)
DEMO_FLAGS ?=
demo: build
	$(BIN)/bank demo --decree $(BIN)/decree $(DEMO_FLAGS)

## test: the whole suite with the race detector, then the tests too slow
## under it (a two-million-record snapshot transfer) and 500 simulation
## seeds (single-goroutine; fast without -race)
SIM_TEST_SEEDS ?= 500
test:
	$(GO) vet ./...
	$(GO) test -race -timeout $(TEST_TIMEOUT) -count=1 ./...
	$(GO) test -count=1 -run 'TestSnapshotTransferBoundedMemory' ./coordinator
	$(GO) test -count=1 -run 'TestSimulation$$' -v ./coordinator -args -sim.seeds=$(SIM_TEST_SEEDS) | grep -E '^(---|ok|FAIL|PASS)|seeds \(|FAILED'

## sim: deterministic simulation. SEED=N replays one seed and prints its
## trace hash (TRACE=1 prints the trace); otherwise SEEDS seeds from FIRST,
## in parallel across cores (VERIFY=1 runs each twice to check determinism)
SEEDS ?= 10000
FIRST ?= 1
sim:
ifdef SEED
	$(GO) test -count=1 -run 'TestSimulation$$' -v ./coordinator -args -sim.seed=$(SEED) $(if $(TRACE),-sim.trace)
else
	$(GO) test -count=1 -timeout 120m -run 'TestSimulation$$' -v ./coordinator -args -sim.seeds=$(SEEDS) -sim.first=$(FIRST) $(if $(VERIFY),-sim.verify)
endif

## fuzz-short: every fuzz target in the repository for FUZZTIME each, starting
## from its committed seed corpus (testdata/fuzz/<target>). `go test -fuzz`
## takes one target per run, so they are found with `go test -list` in each
## package that has any, and run one by one
FUZZTIME ?= 10s
fuzz-short:
	@set -e; for dir in $$(grep -rl --include='*_test.go' '^func Fuzz' . | xargs -n1 dirname | sort -u); do \
		for target in $$($(GO) test -list '^Fuzz' $$dir | grep '^Fuzz'); do \
			echo "== fuzz $$dir $$target ($(FUZZTIME))"; \
			$(GO) test -run '^$$' -fuzz "^$$target\$$" -fuzztime $(FUZZTIME) $$dir; \
		done; \
	done

## test-short: skip the slow multi-process tests
test-short:
	$(GO) test -race -short -count=1 ./...

## chaos: 5 minutes of seeded faults on a real 3-node cluster and 3 banks:
## kills, pauses, iptables partitions (need root; skipped with a message
## otherwise) and a slow/lossy fault proxy; then a full audit and a
## linearizability check (CHAOS_FLAGS="-seed N" replays a schedule)
CHAOS_FLAGS ?=
.PHONY: chaos chaos-short
chaos:
	$(GO) test ./test/chaos -run 'TestChaos$$' -count=1 -v -timeout 20m -args -chaos -duration 5m -nemeses all $(CHAOS_FLAGS)

## chaos-short: about 60 s of process-level faults (kill -9, SIGSTOP); what CI runs
chaos-short:
	$(GO) test ./test/chaos -run 'TestChaos$$' -count=1 -v -timeout 10m -args -chaos -duration 60s -nemeses process $(CHAOS_FLAGS)

## soak: 3 real node processes, 256 clients and 2 null participants for
## 30 minutes, a follower killed with kill -9 for 60 s at a third of the run;
## per-minute table and PASS/FAIL per target (SOAK_FLAGS="--duration 5m
## --json soak.json --plot soak.png"; see bin/decree soak -h)
SOAK_FLAGS ?=
.PHONY: soak
soak: build
	$(BIN)/decree soak $(SOAK_FLAGS)

## proto: regenerate the committed protobuf code
proto:
	@command -v protoc >/dev/null || { echo "protoc missing: apt-get install -y protobuf-compiler" >&2; exit 1; }
	GOBIN=$(GOBIN_DIR) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	GOBIN=$(GOBIN_DIR) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	PATH="$(GOBIN_DIR):$$PATH" protoc -I proto \
		--go_out=. --go_opt=module=github.com/decree-tx/decree \
		--go-grpc_out=. --go-grpc_opt=module=github.com/decree-tx/decree \
		proto/decree/v1/*.proto proto/bank/v1/*.proto

## lint: formatting and vet
lint: fmt-check vet

vet:
	$(GO) vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

clean:
	rm -rf $(BIN)
