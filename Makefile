# Two commands do all the set-up on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEPS   := $(VENV)/.deps-installed
NODE_SERVER := tests/integration/fhirserver

.PHONY: serve test lint typecheck bench bench-http bench-worker clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-install when pyproject.toml changes.
$(DEPS): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

## serve: start the service on 127.0.0.1:8080 (configuration from FHIR_LEUKO_* env vars)
serve: $(DEPS)
	$(BIN)/fhir-leuko serve

## test: install everything (Python test extras, the local FHIR server from npm, PostgreSQL from
## Debian's package when no initdb is found) and run all tests
test: $(DEPS)
	@if [ -x $(NODE_SERVER)/install.sh ]; then $(NODE_SERVER)/install.sh; fi
	tests/postgres/install.sh
	$(BIN)/python -m pytest

lint: $(DEPS)
	$(BIN)/ruff check fhir_leuko tests benchmarks

typecheck: $(DEPS)
	$(BIN)/mypy

## bench: speed of the core evaluation against the JSON parse (see benchmarks/README.md)
bench: $(DEPS)
	$(BIN)/python benchmarks/bench_core.py

## bench-http: CDS Hooks latency and throughput against uvicorn on loopback
bench-http: $(DEPS)
	$(BIN)/python benchmarks/http_bench.py

## bench-worker: notification write-backs per second, one process and three replicas on PostgreSQL
bench-worker: $(DEPS)
	tests/postgres/install.sh
	$(BIN)/python benchmarks/worker_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
