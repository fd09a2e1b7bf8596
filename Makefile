# The two commands that do everything on a fresh machine:
#   make run    the embedded default (in-process Redis, sandbox WeChat, worker)
#   make test   vet and the whole test suite with the race detector
GO ?= go

.PHONY: run test build vet bench chaos fmt

run:
	$(GO) run ./cmd/wxdomain dev

test: vet
	$(GO) test -race -count=1 -p 1 -timeout 15m ./...

vet:
	$(GO) vet ./...

build:
	$(GO) build -o bin/wxdomain ./cmd/wxdomain

# Micro-benchmarks run as usual; the worker's scenario benchmarks run once
# each (every iteration is a whole scenario on the real Redis).
bench:
	$(GO) run ./cmd/wxbench
	$(GO) test -run '^$$' -bench . -benchmem ./internal/... ./tasks/...
	$(GO) test -run '^$$' -bench . -benchtime 1x ./worker/

# The fault suite: real processes, a Redis of its own, the sandbox upstream.
chaos:
	$(GO) run ./cmd/wxchaos

fmt:
	gofmt -w $$(git ls-files '*.go')
