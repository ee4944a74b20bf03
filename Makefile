# Two commands do all the set-up on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEPS   := $(VENV)/.deps-installed
NODE_SERVER := tests/integration/fhirserver
APP_BUILT := fhir_leuko/web/static/app/vendor/versions.json

.PHONY: serve test app lint typecheck bench bench-http bench-worker clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-install when pyproject.toml changes.
$(DEPS): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

## app: the trend app's libraries (fhirclient, uPlot) from npm, copied where the service serves them
app: $(APP_BUILT)

$(APP_BUILT): app/package.json app/package-lock.json app/build.mjs
	cd app && npm ci --no-audit --no-fund --ignore-scripts
	node app/build.mjs

## serve: start the service on 127.0.0.1:8080 (configuration from FHIR_LEUKO_* env vars)
serve: $(DEPS)
	@if command -v npm >/dev/null 2>&1; then $(MAKE) --no-print-directory app; \
	else echo "npm not found: /app/ will say the trend app is not built (make app)"; fi
	$(BIN)/fhir-leuko serve

## test: install everything (Python test extras, the local FHIR server and the trend app's
## libraries from npm, PostgreSQL and Chromium from Debian's packages where missing) and run
## all tests
test: $(DEPS) app
	@if [ -x $(NODE_SERVER)/install.sh ]; then $(NODE_SERVER)/install.sh; fi
	tests/postgres/install.sh
	tests/integration/install-browser.sh
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
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis app/node_modules \
	  fhir_leuko/web/static/app/vendor
