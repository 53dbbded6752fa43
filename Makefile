# diskci: `make demo` runs the whole path on the embedded defaults; `make test` runs every test.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_STAMP := $(VENV)/.apt-installed
SIGSTORE_JS := $(VENV)/sigstore-js
SIGSTORE_JS_STAMP := $(SIGSTORE_JS)/.installed
COMPOSEFS_STAMP := $(VENV)/.mkcomposefs
PYTEST_ARGS ?=

.PHONY: setup test demo lint bench unit integration e2e clean

setup: $(APT_STAMP) $(STAMP) $(SIGSTORE_JS_STAMP) $(COMPOSEFS_STAMP)

# Debian packages: installed only when one of them is missing (idempotent and fast when done).
$(APT_STAMP): deploy/debian-packages.txt deploy/setup-host.sh
	bash deploy/setup-host.sh deploy/debian-packages.txt
	@mkdir -p $(VENV) && touch $@

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

# sigstore-js (npm @sigstore/verify), the independent verifier the tests check bundles with
$(SIGSTORE_JS_STAMP): tests/interop/sigstore-js/package.json tests/interop/sigstore-js/package-lock.json $(APT_STAMP)
	@command -v npm >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends npm >/dev/null)
	@mkdir -p $(SIGSTORE_JS)
	cp tests/interop/sigstore-js/package.json tests/interop/sigstore-js/package-lock.json $(SIGSTORE_JS)/
	cd $(SIGSTORE_JS) && npm ci --quiet --no-audit --no-fund
	@touch $@

# mkcomposefs 1.0.8 (Debian 12 has no package): the oracle of the composefs byte-identity tests
$(COMPOSEFS_STAMP): deploy/build-composefs.sh $(APT_STAMP)
	bash deploy/build-composefs.sh
	@touch $@

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

test: setup
	$(MAKE) --no-print-directory lint
	$(BIN)/python -m pytest tests $(PYTEST_ARGS)

unit: setup
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

integration: setup
	$(BIN)/python -m pytest tests/integration $(PYTEST_ARGS)

e2e: setup
	$(BIN)/python -m pytest tests/e2e $(PYTEST_ARGS)

demo: setup
	$(BIN)/diskci demo

bench: setup
	@set -e; for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b; done

clean:
	rm -rf $(VENV) build-out .pytest_cache .mypy_cache .ruff_cache
