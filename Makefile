# `make run` and `make test` work on a fresh machine with Python 3.11+:
# each creates .venv on first use and installs what it needs into it.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= config/relay.toml

.PHONY: run test bench check clean

$(BIN)/relay: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	@touch $@

$(VENV)/.test-deps: $(BIN)/relay pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

run: $(BIN)/relay
	$(BIN)/relay serve -c $(CONFIG)

check: $(BIN)/relay
	$(BIN)/relay check -c $(CONFIG)

test: $(VENV)/.test-deps
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

$(VENV)/.bench-deps: $(BIN)/relay pyproject.toml
	$(BIN)/pip install --quiet -e '.[bench]'
	@touch $@

bench: $(VENV)/.bench-deps
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var
