# The few verbs a newcomer needs. `make run` and `make test` work on a fresh machine.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= config.yaml

.PHONY: run test chaos demo bench lint sim db-start db-stop status verify clean install install-test

$(BIN)/qryptify: pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/pip install --quiet --upgrade pip
	@$(BIN)/pip install --quiet -c requirements.lock -e .
	@touch $@

$(VENV)/.test-deps: $(BIN)/qryptify
	@$(BIN)/pip install --quiet -c requirements.lock -e '.[test]'
	@touch $@

install: $(BIN)/qryptify
install-test: $(VENV)/.test-deps

## run: backfill then follow live candles from Binance (database: config, env, or a local cluster)
run: $(BIN)/qryptify
	@url="$${QRYPTIFY_DATABASE_URL:-}"; \
	if [ -z "$$url" ] && ! grep -qE '^database_url:' $(CONFIG) 2>/dev/null; then \
	  url=$$(scripts/localdb.sh start) || exit $$?; \
	fi; \
	if [ -n "$$url" ]; then export QRYPTIFY_DATABASE_URL="$$url"; fi; \
	exec $(BIN)/qryptify run --config $(CONFIG)

## test: the whole suite against throwaway PostgreSQL clusters and the simulator
test: $(VENV)/.test-deps
	$(BIN)/pytest -q

## chaos: the resilience suite (real CLI under injected faults)
chaos: $(VENV)/.test-deps
	$(BIN)/pytest -q -m chaos

## demo: simulator + ingestor on a temporary database, no internet, no Docker
demo: $(BIN)/qryptify
	$(BIN)/python scripts/demo.py

## bench: run the benchmarks (results go to bench/RESULTS.md by hand)
bench: $(VENV)/.test-deps
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b; done

lint: $(VENV)/.test-deps
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

sim: $(BIN)/qryptify
	$(BIN)/qryptify sim --port 8765

db-start:
	@scripts/localdb.sh start
db-stop:
	@scripts/localdb.sh stop

status: $(BIN)/qryptify
	$(BIN)/qryptify status --config $(CONFIG)
verify: $(BIN)/qryptify
	$(BIN)/qryptify verify --config $(CONFIG)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
