# Aviary — the two commands a fresh machine needs are `make demo` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# Reuse a build cache outside the clone when the machine has one; a bare machine builds in target/.
CACHE_TARGET := $(HOME)/.cache/aviary/target
ifeq ($(origin CARGO_TARGET_DIR),undefined)
  ifneq ($(wildcard $(CACHE_TARGET)),)
    export CARGO_TARGET_DIR := $(CACHE_TARGET)
  endif
endif
export PATH := $(CURDIR)/.tools/bin:$(HOME)/.cargo/bin:$(PATH)
CARGO ?= cargo

.PHONY: help bootstrap build test fmt-check clippy doc deny nextest helm-test demo bench fuzz clean

help:
	@echo "make demo    set up what is missing and run real rollouts end to end"
	@echo "make test    set up what is missing, then fmt check, clippy and every test"
	@echo "make bench   run the benchmarks; writes bench/results.json and prints a table"
	@echo "make fuzz    run each fuzz target for FUZZ_SECONDS (default 60) and print its executions"
	@echo "make soak    50 rollouts while processes are killed for 10 min; writes bench/soak.json"

bootstrap:
	@bash scripts/bootstrap.sh

build: bootstrap
	$(CARGO) build --workspace --bins

fmt-check:
	$(CARGO) fmt --all -- --check

clippy: bootstrap
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Every doc link resolves and no doc comment is malformed HTML.
doc: bootstrap
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps

# Licenses, sources and the heavy crates that must come in one version (deny.toml).
deny: bootstrap
	$(CARGO) deny check bans licenses sources

nextest: bootstrap
	$(CARGO) nextest run --workspace --no-fail-fast

helm-test: bootstrap
	@bash scripts/helm-test.sh

test: bootstrap fmt-check clippy doc deny nextest helm-test

demo: build
	@bash scripts/demo.sh

bench: bootstrap
	@bash scripts/bench.sh

fuzz:
	@bash scripts/bootstrap.sh --fuzz
	@bash fuzz/run.sh

soak: bootstrap
	@bash scripts/soak.sh

clean:
	$(CARGO) clean
