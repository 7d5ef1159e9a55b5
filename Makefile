# caddy-affinity: `make demo` and `make test` are the quick start.
GO      ?= go
CADDY   := bin/caddy
# make bench's Caddy: bin/caddy plus bench/selecttimer, which times each
# policy's selections inside the loaded server.
BENCH_CADDY := bin/caddy-bench
SOURCES := $(shell find . -name '*.go' -not -path './bin/*' -not -path './bench/*') go.mod go.sum

# The integration tests and the demo share one Caddy build.
export AFFINITY_CADDY := $(CURDIR)/$(CADDY)

.PHONY: demo test caddy deps vet fmt-check unit bench bench-go soak fuzz clean

## demo: build Caddy with the plugin and run examples/demo/Caddyfile
demo: $(CADDY)
	@echo "Try: curl -si -c jar -b jar localhost:8080/   (insert mode)"
	@echo "     curl -si -c jar -b jar localhost:8081/   (rewrite mode)"
	$(CADDY) run --config examples/demo/Caddyfile --adapter caddyfile

## test: vet, formatting, and every test (unit, fuzz seeds, integration) with -race
test: $(CADDY) deps vet fmt-check
	@# Allocation counts are meaningless under -race: their tests run without it.
	$(GO) test -count=1 -run 'Allocations$$' ./affinity/ ./cookie/ ./ipaffinity/ ./l4/ ./internal/caddyutil/
	$(GO) test -race -count=1 -timeout 20m ./...
	@# The benchmark's own code is two more modules.
	cd bench && $(GO) vet ./... && $(GO) test -count=1 ./...
	cd bench/selecttimer && $(GO) vet ./... && $(GO) test -race -count=1 ./...

## caddy: build bin/caddy through xcaddy's Go package
caddy: $(CADDY)
$(CADDY): $(SOURCES)
	$(GO) run ./integration/buildcaddy -o $(CADDY)

deps:
	@./scripts/install-deps.sh

vet:
	$(GO) vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

## unit: the fast tests only (no Caddy binary)
unit:
	$(GO) test -race -count=1 $$($(GO) list ./... | grep -v /integration)

## bench: wrk on loopback against Caddy's policies, the plugin's and HAProxy;
## writes docs/results.md and its plots (about 20 minutes; BENCH_FLAGS=-quick for about two)
bench: $(BENCH_CADDY)
	@./scripts/install-deps.sh --bench
	cd bench && $(GO) run ./cmd/bench -caddy $(CURDIR)/$(BENCH_CADDY) -out ../docs $(BENCH_FLAGS)

$(BENCH_CADDY): $(SOURCES) $(wildcard bench/selecttimer/*.go) bench/selecttimer/go.mod
	$(GO) run ./integration/buildcaddy -selecttimer -o $(BENCH_CADDY)

## bench-go: the selection benchmarks beside Caddy's and caddy-l4's policies, as ratios
bench-go:
	./scripts/bench-go.sh 5

## fuzz: every fuzz target for FUZZTIME each (default 10m), with its executions
FUZZTIME ?= 10m
fuzz:
	./scripts/fuzz.sh $(FUZZTIME)

## soak: the long reliability soak (make test runs a short one)
soak: $(CADDY) deps
	AFFINITY_SOAK=long AFFINITY_SOAK_REPORT=$(CURDIR)/docs/soak.md $(GO) test -count=1 -run 'TestSoak$$' -v -timeout 30m ./integration

clean:
	rm -rf bin
