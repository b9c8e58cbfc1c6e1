# Quick start: `make demo` (dev provider + JupyterLab with the extension), `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: help install node test lint typecheck pytest demo bench clean

help:
	@echo "make demo   - dev OpenID provider + JupyterLab with the extension, demo notebook open"
	@echo "make test   - lint, type-check and the whole test suite (real provider on loopback)"
	@echo "make bench  - benchmarks under bench/ (slow; prints ratios against a same-run baseline)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

dev/idp/node_modules/.package-lock.json: dev/idp/package-lock.json
	cd dev/idp && npm ci --no-audit --no-fund --loglevel=error

dev/hub/node_modules/.package-lock.json: dev/hub/package-lock.json
	cd dev/hub && npm ci --no-audit --no-fund --loglevel=error

install: $(VENV)/.installed dev/idp/node_modules/.package-lock.json dev/hub/node_modules/.package-lock.json

node: dev/idp/node_modules/.package-lock.json dev/hub/node_modules/.package-lock.json

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

pytest: install
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

demo: install
	$(BIN)/python dev/demo.py

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) dev/idp/node_modules dev/hub/node_modules .pytest_cache .mypy_cache .ruff_cache
